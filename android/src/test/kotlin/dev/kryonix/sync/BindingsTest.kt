// Host-JVM glue tests of the Kotlin bindings (JNA loads the host build of libkryonix_ffi).
// A plain main harness: each check prints ok/FAIL, the last line is "N passed, M failed", and
// the exit status is non-zero on any failure. Run by scripts/test-bindings, which starts a
// kryonix-server and a redis-server and passes them in KRYONIX_TEST_* variables.
package dev.kryonix.sync

import java.io.File
import java.net.ServerSocket
import java.nio.file.Files
import java.security.MessageDigest
import java.security.SecureRandom
import java.util.Collections
import java.util.Random
import java.util.concurrent.atomic.AtomicInteger
import kotlin.system.exitProcess
import kotlinx.coroutines.CoroutineStart
import kotlinx.coroutines.async
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout

private var passed = 0
private var failed = 0

private fun check(name: String, body: suspend () -> Unit) {
    val t0 = System.nanoTime()
    try {
        runBlocking { withTimeout(60_000) { body() } }
        passed += 1
        println("ok   $name (${(System.nanoTime() - t0) / 1_000_000} ms)")
    } catch (e: Throwable) {
        failed += 1
        println("FAIL $name: $e")
        e.printStackTrace(System.out)
    }
}

private fun expect(cond: Boolean, what: () -> String) {
    if (!cond) throw AssertionError(what())
}

private inline fun <reified E : Throwable> expectThrows(block: () -> Unit): E {
    try {
        block()
    } catch (e: Throwable) {
        if (e is E) return e
        throw AssertionError("expected ${E::class.simpleName}, got $e", e)
    }
    throw AssertionError("expected ${E::class.simpleName}, nothing thrown")
}

/** Polls [probe] until it returns non-null, or fails after [timeoutMs]. No fixed sleeps. */
private suspend fun <T> pollUntil(what: String, timeoutMs: Long = 15_000, probe: suspend () -> T?): T {
    val deadline = System.nanoTime() + timeoutMs * 1_000_000
    while (true) {
        probe()?.let { return it }
        if (System.nanoTime() > deadline) throw AssertionError("timed out waiting for $what")
        delay(20)
    }
}

private val env = System.getenv()
private val serverUrl = env["KRYONIX_TEST_SERVER_URL"] ?: error("KRYONIX_TEST_SERVER_URL unset")
private val token = env["KRYONIX_TEST_TOKEN"] ?: error("KRYONIX_TEST_TOKEN unset")
private val redisPort = env["KRYONIX_TEST_REDIS_PORT"] ?: error("KRYONIX_TEST_REDIS_PORT unset")
private val tmp: File = Files.createTempDirectory("kryonix-kotlin").toFile()
private val dbCounter = AtomicInteger()

private fun dbPath() = File(tmp, "agent-${dbCounter.incrementAndGet()}.db").path

/** A fresh 32-byte database key (an app keeps its key in the Android Keystore: android/README.md). */
private fun newKey() = ByteArray(32).also { SecureRandom().nextBytes(it) }

/** The key every agent of this suite opens with: the suite runs encrypted. */
private val KEY = newKey()

private fun sha256(path: String): String =
    MessageDigest.getInstance("SHA-256").digest(File(path).readBytes()).joinToString("") { "%02x".format(it) }

/** The database file and its WAL, concatenated: what a copy of the app's files would hold. */
private fun fileBytes(path: String): ByteArray =
    listOf("", "-wal").map { File(path + it) }.filter { it.exists() }.fold(ByteArray(0)) { acc, f -> acc + f.readBytes() }

private fun ByteArray.containsText(needle: String): Boolean {
    val n = needle.encodeToByteArray()
    return (0..size - n.size).any { i -> n.indices.all { this[i + it] == n[it] } }
}

private val WIFI = NetworkProfile(NetworkClass.WIFI, metered = false)
private val OFFLINE = NetworkProfile(NetworkClass.OFFLINE, metered = false)

private fun config(
    url: String = serverUrl,
    network: NetworkProfile = OFFLINE,
    tenant: String = "acme",
    budget: ULong? = null,
    maxValue: ULong? = null,
    path: String = dbPath(),
    timeoutMs: ULong? = null,
    key: ByteArray? = KEY,
) = AgentConfig(path, url, tenant, DeviceClass.PHONE, network, budget, maxValue, timeoutMs, key)

private fun open(
    cfg: AgentConfig = config(),
    tokens: TokenProvider = StaticTokenProvider(token),
    observer: SyncObserver? = null,
) = KryonixAgent.open(cfg, tokens, observer)

/** The OS name of the current thread (JNA names the Rust threads it attaches "Thread-N"). */
private fun osThreadName(): String = File("/proc/thread-self/comm").readText().trim()

/** Records which threads the observer is called on. */
private class RecordingObserver : SyncObserver {
    val threads: MutableSet<String> = Collections.synchronizedSet(mutableSetOf())
    val statuses: MutableList<SyncStatus> = Collections.synchronizedList(mutableListOf())
    val dead: MutableList<String> = Collections.synchronizedList(mutableListOf())
    override fun onStatus(status: SyncStatus) {
        threads += osThreadName()
        statuses += status
    }
    override fun onDeadLetter(id: String, code: String, reason: String) {
        threads += osThreadName()
        dead += "$id $code"
    }
}

private class CountingTokens(private val value: String) : TokenProvider {
    val calls = AtomicInteger()
    val refreshes = AtomicInteger()
    override fun token(refresh: Boolean): String {
        calls.incrementAndGet()
        if (refresh) refreshes.incrementAndGet()
        return value
    }
}

private fun xlen(stream: String): Long {
    val p = ProcessBuilder("redis-cli", "-p", redisPort, "-n", "11", "XLEN", stream)
        .redirectErrorStream(true).start()
    val out = p.inputStream.bufferedReader().readText().trim()
    p.waitFor()
    return out.toLongOrNull() ?: throw AssertionError("redis-cli XLEN $stream: $out")
}

private fun incompressible(size: Int, seed: Long) = ByteArray(size).also { Random(seed).nextBytes(it) }

fun main() {
    check("open, status snapshot, set network / device, close") {
        val agent = open()
        val s = agent.status()
        expect(!s.online) { "starts offline: $s" }
        agent.setDevice(DeviceClass.TABLET)
        agent.setNetwork(NetworkProfile(NetworkClass.CELLULAR_SLOW, metered = true))
        pollUntil("online after set_network") { agent.status().takeIf { it.online } }
        agent.setNetwork(OFFLINE)
        pollUntil("offline again") { agent.status().takeIf { !it.online } }
        agent.shutdown()
        agent.shutdown() // twice is fine
    }

    check("cache: put, get, contains, get_many, delete, cache_stats") {
        val agent = open()
        agent.put(Namespace.USER_CACHE, "a", "1".encodeToByteArray(), ttlMs = null)
        agent.put(Namespace.USER_CACHE, "b", ByteArray(4096) { 7 }, ttlMs = 60_000UL)
        expect(agent.get(Namespace.USER_CACHE, "a")?.decodeToString() == "1") { "get a" }
        expect(agent.get(Namespace.USER_CACHE, "missing") == null) { "miss" }
        expect(agent.contains(Namespace.USER_CACHE, "b")) { "contains b" }
        val many = agent.getMany(Namespace.USER_CACHE, listOf("b", "missing", "a"))
        expect(many.size == 3 && many[0]?.size == 4096 && many[1] == null && many[2]?.decodeToString() == "1") {
            "get_many: $many"
        }
        expect(agent.delete(Namespace.USER_CACHE, "a")) { "delete a" }
        expect(!agent.delete(Namespace.USER_CACHE, "a")) { "delete a again" }
        expect(agent.get(Namespace.USER_CACHE, "a") == null) { "a gone" }
        val stats = agent.cacheStats()
        expect(stats.entries == 1UL && stats.hits >= 2UL && stats.misses >= 1UL) { "stats: $stats" }
        expect(stats.storedBytes < stats.rawBytes) { "4 KiB of sevens is stored compressed: $stats" }
        agent.shutdown()
    }

    check("InvalidInput: invalid key, invalid tenant, zero TTL, bad item id") {
        val agent = open()
        val e = expectThrows<KryonixException.InvalidInput> { agent.put(Namespace.USER_CACHE, "", byteArrayOf(1), null) }
        expect(e.reason.contains("empty")) { e.reason }
        expectThrows<KryonixException.InvalidInput> { agent.get(Namespace.USER_CACHE, "bad\u0001key") }
        expectThrows<KryonixException.InvalidInput> {
            agent.enqueue(Namespace.USER_CACHE, "", Op.PUT, byteArrayOf(), Tier.CRITICAL)
        }
        expectThrows<KryonixException.InvalidInput> { agent.put(Namespace.USER_CACHE, "k", byteArrayOf(1), 0UL) }
        expectThrows<KryonixException.InvalidInput> { agent.retryDeadLetter("not-a-uuid") }
        expectThrows<KryonixException.InvalidInput> { open(config(tenant = "bad:tenant")) }
        agent.shutdown()
    }

    check("InvalidInput: oversized value") {
        val agent = open(config(maxValue = 1024UL))
        agent.put(Namespace.API_CACHE, "fits", ByteArray(1024), null)
        val e = expectThrows<KryonixException.InvalidInput> { agent.put(Namespace.API_CACHE, "big", ByteArray(1025), null) }
        expect(e.reason.contains("1025")) { e.reason }
        agent.shutdown()
    }

    check("NamespaceFull: a full noeviction namespace refuses the write") {
        // 64 KiB for the device: mobile_sync (noeviction) gets about 12 KiB of it.
        val agent = open(config(budget = 65_536UL))
        val e = expectThrows<KryonixException.NamespaceFull> {
            for (i in 0 until 64) agent.put(Namespace.MOBILE_SYNC, "k$i", incompressible(2048, i.toLong()), null)
        }
        expect(e.namespace == "mobile_sync" && e.needed > 0UL && e.used + e.needed > e.budget) { "$e" }
        expect(agent.get(Namespace.MOBILE_SYNC, "k0") != null) { "nothing was evicted" }
        agent.shutdown()
    }

    check("Storage: a file that is not a database") {
        // Not a whole number of pages, so not an encrypted database either (random whole pages
        // are indistinguishable from one under another key: WrongKey, below).
        val path = dbPath()
        File(path).writeBytes(incompressible(8000, 1))
        val e = expectThrows<KryonixException.Storage> { open(config(path = path)) }
        expect(!e.retryable) { "a corrupt file is not retryable: $e" }
    }

    check("encrypted: no plaintext on disk; WrongKey for another key or none, file untouched") {
        val path = dbPath()
        val agent = open(config(path = path))
        agent.put(Namespace.USER_CACHE, "secret-key-1", "tenant secret value".encodeToByteArray(), null)
        agent.enqueue(Namespace.USER_CACHE, "secret-key-2", Op.PUT, "tenant secret payload".encodeToByteArray(), Tier.CRITICAL)
        agent.shutdown()
        val bytes = fileBytes(path)
        expect(bytes.size >= 4096 && listOf("tenant secret", "secret-key", "SQLite format 3").none { bytes.containsText(it) }) {
            "plaintext in the file"
        }
        val before = sha256(path)
        val e = expectThrows<KryonixException.WrongKey> { open(config(path = path, key = newKey())) }
        expect(!e.reason.contains(KEY.joinToString("") { "%02x".format(it) })) { "the key is never in a message" }
        expectThrows<KryonixException.WrongKey> { open(config(path = path, key = null)) }
        expectThrows<KryonixException.InvalidInput> { open(config(path = path, key = ByteArray(16))) }
        expect(sha256(path) == before) { "the refused opens changed the file" }
        val again = open(config(path = path))
        expect(again.get(Namespace.USER_CACHE, "secret-key-1")?.decodeToString() == "tenant secret value") { "right key" }
        again.shutdown()
    }

    check("rekey: the old key is refused afterwards, the new key reads the data") {
        val path = dbPath()
        val agent = open(config(path = path))
        agent.put(Namespace.USER_CACHE, "k", "v".encodeToByteArray(), null)
        agent.enqueue(Namespace.USER_CACHE, "k", Op.PUT, "v".encodeToByteArray(), Tier.BACKGROUND)
        val next = newKey()
        expectThrows<KryonixException.InvalidInput> { agent.rekey(ByteArray(31)) }
        agent.rekey(next)
        expect(agent.get(Namespace.USER_CACHE, "k")?.decodeToString() == "v") { "usable after the rekey" }
        agent.shutdown()
        expectThrows<KryonixException.WrongKey> { open(config(path = path)) }
        val reopened = open(config(path = path, key = next))
        expect(reopened.get(Namespace.USER_CACHE, "k")?.decodeToString() == "v") { "new key reads the cache" }
        pollUntil("the queued item") { reopened.status().tiers.sumOf { it.depth }.takeIf { it == 1UL } }
        reopened.shutdown()
        val plain = open(config(key = null))
        expectThrows<KryonixException.NotEncrypted> { plain.rekey(next) }
        plain.shutdown()
    }

    check("encryptDatabase: a plaintext database is refused with a key until migrated on request") {
        val path = dbPath()
        val plain = open(config(path = path, key = null))
        plain.put(Namespace.USER_CACHE, "kept", "cached".encodeToByteArray(), null)
        repeat(3) { plain.enqueue(Namespace.USER_CACHE, "item-$it", Op.PUT, "queued".encodeToByteArray(), Tier.APPLICATION) }
        expectThrows<KryonixException.AlreadyOpen> { encryptDatabase(path, KEY) }
        plain.shutdown()
        expectThrows<KryonixException.NotEncrypted> { open(config(path = path)) }
        expect(fileBytes(path).containsText("cached")) { "still plaintext: nothing converted silently" }
        encryptDatabase(path, KEY)
        expect(!fileBytes(path).containsText("cached")) { "encrypted" }
        val agent = open(config(path = path))
        expect(agent.get(Namespace.USER_CACHE, "kept")?.decodeToString() == "cached") { "cache entry kept" }
        pollUntil("the 3 queued items") { agent.status().tiers.sumOf { it.depth }.takeIf { it == 3UL } }
        agent.shutdown()
    }

    check("AlreadyOpen: a second agent on the same file, until the first shuts down") {
        val path = dbPath()
        val first = open(config(path = path))
        val e = expectThrows<KryonixException.AlreadyOpen> { open(config(path = path)) }
        expect(e.path == path) { e.path }
        first.shutdown()
        val second = open(config(path = path))
        second.shutdown()
    }

    check("Closed: every call after close") {
        val agent = open()
        agent.shutdown()
        expectThrows<KryonixException.Closed> { agent.get(Namespace.USER_CACHE, "a") }
        expectThrows<KryonixException.Closed> { agent.put(Namespace.USER_CACHE, "a", byteArrayOf(), null) }
        expectThrows<KryonixException.Closed> { agent.enqueue(Namespace.USER_CACHE, "a", Op.PUT, byteArrayOf(), Tier.CRITICAL) }
        expectThrows<KryonixException.Closed> { agent.status() }
        expectThrows<KryonixException.Closed> { agent.setNetwork(WIFI) }
        expectThrows<KryonixException.Closed> { agent.syncNow(emptyList()) }
        expectThrows<KryonixException.Closed> { agent.flush(1000UL) }
    }

    check("Offline: read-through with no server listening") {
        val port = ServerSocket(0).use { it.localPort } // free, then closed: connection refused
        val agent = open(config(url = "http://127.0.0.1:$port", network = WIFI))
        expectThrows<KryonixException.Offline> { agent.getOrFetch(Namespace.API_CACHE, "k") }
        agent.shutdown()
    }

    check("enqueue / write offline; sync_now and flush report what is left") {
        val agent = open()
        val ids = (0 until 6).map { agent.enqueue(Namespace.USER_CACHE, "k$it", Op.PUT, byteArrayOf(it.toByte()), Tier.entries[it % 4]) }
        expect(ids.toSet().size == 6) { "distinct ids: $ids" }
        agent.write(Namespace.USER_CACHE, "w", "x".encodeToByteArray(), Tier.BACKGROUND)
        expect(agent.get(Namespace.USER_CACHE, "w")?.decodeToString() == "x") { "write is visible at once" }
        val r = agent.syncNow(emptyList())
        expect(!r.online && r.itemsSent == 0UL && r.remaining == 7UL) { "$r" }
        val f = agent.flush(500UL)
        expect(!f.online && f.remaining == 7UL) { "$f" }
        val depth = pollUntil("status shows the queue") { agent.status().tiers.sumOf { it.depth }.takeIf { it == 7UL } }
        expect(depth == 7UL) { "depth" }
        agent.shutdown()
    }

    check("observer: callbacks arrive on Rust threads, Flow<SyncStatus> follows") {
        val rec = RecordingObserver()
        val agent = open(observer = rec)
        agent.enqueue(Namespace.USER_CACHE, "k", Op.PUT, byteArrayOf(1), Tier.CRITICAL)
        pollUntil("a status callback") { rec.statuses.lastOrNull()?.takeIf { s -> s.tiers.any { it.depth == 1UL } } }
        val mine = osThreadName()
        expect(rec.threads.isNotEmpty() && rec.threads.none { it == mine }) { "threads: ${rec.threads}" }
        expect(rec.threads.all { it.startsWith("kryonix-sync") }) { "threads: ${rec.threads}" }
        agent.shutdown()

        val flow = SyncStatusFlow()
        val agent2 = open(config(url = serverUrl), observer = flow)
        agent2.setNetwork(WIFI)
        val online = flow.statuses.first { it.online }
        expect(online.online) { "$online" }
        agent2.shutdown()
    }

    check("suspend functions cancelled mid-request; the agent still works") {
        // A server that accepts connections and never answers: sync_now and flush hang in a request.
        ServerSocket(0).use { silent ->
            val held = Collections.synchronizedList(mutableListOf<java.net.Socket>())
            val acceptor = Thread { try { while (true) held += silent.accept() } catch (_: Exception) {} }
            acceptor.isDaemon = true
            acceptor.start()
            val agent = open(config(url = "http://127.0.0.1:${silent.localPort}", timeoutMs = 500UL))
            agent.enqueue(Namespace.USER_CACHE, "k", Op.PUT, byteArrayOf(1), Tier.CRITICAL)
            agent.setNetwork(WIFI)
            coroutineScope {
                val sync = async(start = CoroutineStart.UNDISPATCHED) { agent.syncNow(emptyList()) }
                val flush = launch(start = CoroutineStart.UNDISPATCHED) { agent.flush(30_000UL) }
                pollUntil("the request reached the silent server") { held.firstOrNull() }
                sync.cancelAndJoin()
                flush.cancelAndJoin()
                expect(sync.isCancelled && flush.isCancelled) { "both cancelled" }
            }
            // Still usable: cache, status, enqueue, and a sync that completes (after the timeout).
            agent.put(Namespace.USER_CACHE, "after", byteArrayOf(2), null)
            expect(agent.get(Namespace.USER_CACHE, "after")?.single() == 2.toByte()) { "cache after cancel" }
            agent.enqueue(Namespace.USER_CACHE, "k2", Op.PUT, byteArrayOf(1), Tier.CRITICAL)
            agent.setNetwork(OFFLINE)
            val r = agent.syncNow(emptyList())
            expect(r.remaining == 2UL) { "nothing lost: $r" }
            agent.shutdown()
            held.forEach { it.close() }
        }
    }

    check("real sync against kryonix-server + redis-server: items reach the up streams") {
        val stream1 = "tenant:acme:mobile_sync:up:{acme:p0}:t1"
        val stream3 = "tenant:acme:mobile_sync:up:{acme:p0}:t3"
        val before1 = xlen(stream1)
        val before3 = xlen(stream3)
        val flow = SyncStatusFlow()
        val agent = open(config(network = WIFI), observer = flow)
        repeat(5) { agent.enqueue(Namespace.USER_CACHE, "real-$it", Op.PUT, "v$it".encodeToByteArray(), Tier.CRITICAL) }
        repeat(3) { agent.enqueue(Namespace.USER_CACHE, "app-$it", Op.PUT, "a$it".encodeToByteArray(), Tier.APPLICATION) }
        // The driver may send before sync_now is called (a tier whose slot has passed goes at once),
        // so the report's own count is not asserted: the streams and the status are.
        val report = pollUntil("everything sent") { agent.syncNow(emptyList()).takeIf { it.remaining == 0UL } }
        expect(report.online) { "$report" }
        pollUntil("5 items in up:t1 and 3 in up:t3") {
            true.takeIf { xlen(stream1) - before1 == 5L && xlen(stream3) - before3 == 3L }
        }
        flow.statuses.first { s -> s.itemsSent >= 8UL && s.tiers.all { it.depth == 0UL } }
        // Read-through: a key the server has never seen is a miss, not an error.
        expect(agent.getOrFetch(Namespace.API_CACHE, "never-written") == null) { "miss" }
        agent.shutdown()
    }

    check("dead letters: list, retry, discard (the server refuses an oversized item)") {
        val rec = RecordingObserver()
        val agent = open(config(network = WIFI), observer = rec)
        val id = agent.enqueue(Namespace.USER_CACHE, "huge", Op.PUT, incompressible(100 * 1024, 3), Tier.CRITICAL)
        agent.syncNow(emptyList())
        val dead = pollUntil("a dead letter") { agent.deadLetters().singleOrNull() }
        expect(dead.id == id && dead.key == "huge" && dead.tier == Tier.CRITICAL && dead.payload.size == 100 * 1024) { "$dead" }
        pollUntil("on_dead_letter") { rec.dead.firstOrNull() }
        agent.retryDeadLetter(id)
        agent.syncNow(emptyList())
        pollUntil("dead again after the retry") { agent.deadLetters().singleOrNull()?.takeIf { it.attempts >= 0u } }
        agent.discardDeadLetter(id)
        expect(agent.deadLetters().isEmpty()) { "discarded" }
        expectThrows<KryonixException.NotFound> { agent.discardDeadLetter(id) }
        agent.shutdown()
    }

    check("Unauthorized: a token the real server refuses") {
        val tokens = CountingTokens("not-a-valid-token")
        val agent = open(config(network = WIFI), tokens = tokens)
        agent.enqueue(Namespace.USER_CACHE, "k", Op.PUT, byteArrayOf(1), Tier.CRITICAL)
        val r = agent.syncNow(emptyList())
        expect(r.remaining == 1UL) { "kept: $r" }
        pollUntil("status.unauthorized") { agent.status().takeIf { it.unauthorized } }
        expect(tokens.refreshes.get() >= 1) { "asked for a fresh token" }
        expectThrows<KryonixException.Unauthorized> { agent.getOrFetch(Namespace.API_CACHE, "k") }
        agent.shutdown()
    }

    check("quick start (README) against the real server") {
        val report = quickStart(dbPath(), serverUrl, token, KEY)
        expect(report.online && report.remaining == 0UL) { "$report" }
    }

    tmp.deleteRecursively()
    println("$passed passed, $failed failed")
    exitProcess(if (failed == 0) 0 else 1)
}
