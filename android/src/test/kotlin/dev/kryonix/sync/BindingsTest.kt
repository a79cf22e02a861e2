// Host-JVM glue tests of the Kotlin bindings (JNA loads the host build of libkryonix_ffi).
// A plain main harness: each check prints ok/FAIL, the last line is "N passed, M failed", and
// the exit status is non-zero on any failure. Run by scripts/test-bindings, which starts a
// kryonix-server and a redis-server and passes them in KRYONIX_TEST_* variables.
package dev.kryonix.sync

import com.example.app.quickStart
import java.io.File
import java.net.ServerSocket
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.file.Files
import java.security.MessageDigest
import java.security.SecureRandom
import java.util.Base64
import java.util.Collections
import java.util.Random
import java.util.concurrent.CountDownLatch
import java.util.concurrent.Executors
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger
import kotlin.system.exitProcess
import kotlin.time.Duration
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.seconds
import kotlinx.coroutines.CoroutineStart
import kotlinx.coroutines.async
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import kotlinx.coroutines.yield
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

private inline fun expect(cond: Boolean, what: () -> String) {
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
private val serviceToken = env["KRYONIX_TEST_SERVICE_TOKEN"] ?: error("KRYONIX_TEST_SERVICE_TOKEN unset")
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
    budget: Long? = null,
    maxValue: Long? = null,
    path: String = dbPath(),
    timeout: Duration? = null,
    appVersion: String? = null,
    maxDbBytes: Long? = null,
    key: ByteArray? = KEY,
) = AgentConfig(
    path, url, tenant, DeviceClass.PHONE, network, budget, maxValue, timeout,
    maxDbBytes = maxDbBytes, appVersion = appVersion, encryptionKey = key,
)

private suspend fun open(
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

/** A provider whose refresh waits on the network: it blocks its caller until released. */
private class GatedTokens(private val value: String) : TokenProvider {
    val asked = AtomicInteger()
    val gate = CountDownLatch(1)
    override fun token(refresh: Boolean): String {
        asked.incrementAndGet()
        gate.await(30, TimeUnit.SECONDS)
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

/** Publishes a put to every device of the tenant, as a backend does (`POST /v1/publish`). */
private fun publish(namespace: String, key: String, value: ByteArray) {
    val value64 = Base64.getEncoder().encodeToString(value)
    val body = """{"changes":[{"namespace":"$namespace","key":"$key","op":"put","value":"$value64"}]}"""
    val request = HttpRequest.newBuilder(URI.create("$serverUrl/v1/publish"))
        .header("authorization", "Bearer $serviceToken")
        .header("content-type", "application/json")
        .POST(HttpRequest.BodyPublishers.ofString(body))
        .build()
    val response = HttpClient.newHttpClient().send(request, HttpResponse.BodyHandlers.ofString())
    expect(response.statusCode() == 200) { "publish answered ${response.statusCode()}: ${response.body()}" }
}

/** Records what a CacheWatcher is told. */
private class RecordingWatcher : CacheWatcher {
    val changes: MutableList<CacheChange> = Collections.synchronizedList(mutableListOf())
    override fun onChange(changes: List<CacheChange>) {
        this.changes += changes
    }
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
        agent.put(Namespace.USER_CACHE, "a", "1".encodeToByteArray(), ttl = null)
        agent.put(Namespace.USER_CACHE, "b", ByteArray(4096) { 7 }, ttl = 60.seconds)
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
        expect(stats.entries == 1L && stats.hits >= 2L && stats.misses >= 1L) { "stats: $stats" }
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
        expectThrows<KryonixException.InvalidInput> { agent.put(Namespace.USER_CACHE, "k", byteArrayOf(1), Duration.ZERO) }
        expectThrows<KryonixException.NotFound> { agent.retryDeadLetter("not-a-uuid") }
        // toString is the library's sentence (the exported Display), not a field dump.
        expect(KryonixException.Offline("connection refused").toString() == "offline: connection refused") {
            KryonixException.Offline("connection refused").toString()
        }
        // So is `message`, what apps show and log (not UniFFI's `reason=…` field dump).
        expect(e.message == "invalid input: ${e.reason}") { "${e.message}" }
        expect(TokenException.Unavailable("identity provider unreachable").message == "no token for now: identity provider unreachable") {
            "${TokenException.Unavailable("identity provider unreachable").message}"
        }
        expectThrows<KryonixException.InvalidInput> { open(config(tenant = "bad:tenant")) }
        // Server trust: a pin that is not sha256/<base64 of 32 bytes>, a CA that is not PEM.
        val pin = expectThrows<KryonixException.InvalidInput> {
            open(config().copy(serverPins = listOf("sha256/not-a-hash")))
        }
        expect(pin.reason.contains("pin")) { pin.reason }
        expectThrows<KryonixException.InvalidInput> { open(config().copy(serverCaPem = "nope".encodeToByteArray())) }
        open(config().copy(serverPins = listOf("sha256/" + java.util.Base64.getEncoder().encodeToString(ByteArray(32))))).shutdown()
        for (url in listOf("not a url", "ftp://sync.example.com", "sync.example.com")) {
            val bad = expectThrows<KryonixException.InvalidInput> { open(config(url = url)) }
            expect(bad.reason.contains("server_url")) { bad.reason }
        }
        agent.shutdown()
    }

    check("InvalidInput: oversized value") {
        val agent = open(config(maxValue = 1024L))
        agent.put(Namespace.API_CACHE, "fits", ByteArray(1024), null)
        val e = expectThrows<KryonixException.InvalidInput> { agent.put(Namespace.API_CACHE, "big", ByteArray(1025), null) }
        expect(e.reason.contains("1025")) { e.reason }
        agent.shutdown()
    }

    check("NamespaceFull: a full noeviction namespace refuses the write") {
        // 64 KiB for the device: mobile_sync (noeviction) gets about 12 KiB of it.
        val agent = open(config(budget = 65_536L))
        val e = expectThrows<KryonixException.NamespaceFull> {
            for (i in 0 until 64) agent.put(Namespace.MOBILE_SYNC, "k$i", incompressible(2048, i.toLong()), null)
        }
        expect(e.namespace == "mobile_sync" && e.needed > 0L && e.used + e.needed > e.budget) { "$e" }
        expect(agent.get(Namespace.MOBILE_SYNC, "k0") != null) { "nothing was evicted" }
        agent.shutdown()
    }

    check("CacheEviction.TABLE: plain LRU keeps every put and lets the oldest go") {
        // 64 KiB for the device: sessions (allkeys-lru) holds a few of these 2 KiB values.
        val agent = open(config(budget = 65_536L).copy(cacheEviction = CacheEviction.TABLE))
        for (i in 0 until 64) agent.put(Namespace.SESSIONS, "k$i", incompressible(2048, i.toLong()), null)
        expect(agent.get(Namespace.SESSIONS, "k63") != null) { "the newest put is kept" }
        expect(agent.get(Namespace.SESSIONS, "k0") == null) { "the oldest went" }
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

    check("enqueueAll: one transaction for a batch, all or nothing") {
        val agent = open()
        val batch = (0 until 100).map { NewItem(Namespace.USER_CACHE, "batch-$it", Op.PUT, byteArrayOf(it.toByte()), Tier.APPLICATION) }
        val ids = agent.enqueueAll(batch)
        expect(ids.size == 100 && ids.toSet().size == 100) { "$ids" }
        expect(agent.status().tiers.sumOf { it.depth } == 100L) { "${agent.status()}" }
        val bad = batch.toMutableList().also { it[50] = it[50].copy(key = "") }
        expectThrows<KryonixException.InvalidInput> { agent.enqueueAll(bad) }
        expect(agent.status().tiers.sumOf { it.depth } == 100L) { "nothing of a refused batch" }
        // Per-call cost from Kotlin (a figure for the log, not a check), after a warm-up so the
        // JIT has compiled the call path.
        val n = 500
        repeat(n) { agent.enqueue(Namespace.USER_CACHE, "warm-$it", Op.PUT, byteArrayOf(1), Tier.BACKGROUND) }
        agent.enqueueAll((0 until n).map { NewItem(Namespace.USER_CACHE, "warm-many-$it", Op.PUT, byteArrayOf(1), Tier.BACKGROUND) })
        val single = System.nanoTime().let { t0 ->
            repeat(n) { agent.enqueue(Namespace.USER_CACHE, "one-$it", Op.PUT, byteArrayOf(1), Tier.BACKGROUND) }
            (System.nanoTime() - t0) / 1_000.0 / n
        }
        val batched = System.nanoTime().let { t0 ->
            agent.enqueueAll((0 until n).map { NewItem(Namespace.USER_CACHE, "many-$it", Op.PUT, byteArrayOf(1), Tier.BACKGROUND) })
            (System.nanoTime() - t0) / 1_000.0 / n
        }
        println("     enqueue from Kotlin: %.1f µs per call, %.1f µs per item in enqueueAll".format(single, batched))
        agent.shutdown()
    }

    check("suspend calls leave the caller's thread free (a single-thread 'main' dispatcher keeps ticking)") {
        val agent = open()
        val main = Executors.newSingleThreadExecutor { r -> Thread(r, "fake-main") }.asCoroutineDispatcher()
        try {
            withContext(main) {
                val ticks = AtomicInteger()
                val ticker = launch { while (true) { ticks.incrementAndGet(); yield() } }
                // ~2 000 commits' worth of work, issued from the 'main' thread: were any of these
                // calls blocking, the ticker (same thread) could not run until they returned.
                val items = (0 until 2_000).map { NewItem(Namespace.USER_CACHE, "m-$it", Op.PUT, byteArrayOf(1), Tier.BACKGROUND) }
                val before = ticks.get()
                agent.enqueueAll(items)
                agent.put(Namespace.USER_CACHE, "m", byteArrayOf(1))
                agent.get(Namespace.USER_CACHE, "m")
                agent.enqueue(Namespace.USER_CACHE, "m", Op.PUT, byteArrayOf(1), Tier.BACKGROUND)
                agent.status()
                agent.deadLetters()
                agent.cacheStats()
                val during = ticks.get() - before
                ticker.cancel()
                expect(during > 0) { "the caller's thread was blocked ($during ticks during the calls)" }
                expect(Thread.currentThread().name == "fake-main") { Thread.currentThread().name }
            }
        } finally {
            main.close()
        }
        agent.shutdown()
    }

    check("get / enqueue (direct entry points) agree with the generated calls, errors typed") {
        val agent = open()
        for (ns in Namespace.entries.filter { it != Namespace.DISTRIBUTED_LOCKS }) {
            val value = "v-${ns.name}".encodeToByteArray()
            agent.putBlocking(ns, "same", value, null)
            expect(agent.get(ns, "same")?.contentEquals(value) == true) { "direct get in $ns" }
            expect(agent.get(ns, "absent") == null) { "direct miss in $ns" }
        }
        // Larger than the direct path's buffer: the generated call returns it.
        val big = incompressible(40_000, 9)
        agent.put(Namespace.FILE_METADATA, "big", big)
        expect(agent.get(Namespace.FILE_METADATA, "big")?.contentEquals(big) == true) { "big value" }
        expect(agent.get(Namespace.USER_CACHE, "ünï-cødé")  == null) { "UTF-8 key" }
        agent.put(Namespace.USER_CACHE, "ünï-cødé", byteArrayOf(5))
        expect(agent.get(Namespace.USER_CACHE, "ünï-cødé")?.single() == 5.toByte()) { "UTF-8 key read back" }
        val ids = Tier.entries.map { tier -> agent.enqueue(Namespace.USER_CACHE, "d-$tier", Op.DELETE, byteArrayOf(), tier) }
        expect(ids.all { it.length == 36 } && ids.toSet().size == 4) { "$ids" }
        expect(agent.status().tiers.associate { it.tier to it.depth } == Tier.entries.associateWith { 1L }) {
            "one item per tier: ${agent.status().tiers}"
        }
        // A refused enqueue through the direct path is typed, and queues nothing.
        val bad = expectThrows<KryonixException.InvalidInput> {
            agent.enqueue(Namespace.USER_CACHE, "bad\u0001key", Op.PUT, byteArrayOf(1), Tier.CRITICAL)
        }
        expect(bad.reason.isNotEmpty()) { "a message" }
        expect(agent.status().tiers.sumOf { it.depth } == 4L) { "nothing queued: ${agent.status()}" }
        // Negative spans are refused with the field's name.
        val ttl = expectThrows<KryonixException.InvalidInput> { agent.put(Namespace.USER_CACHE, "k", byteArrayOf(1), (-1).seconds) }
        expect(ttl.reason.contains("ttl")) { ttl.reason }
        expectThrows<KryonixException.InvalidInput> { agent.flush((-5).seconds) }
        expectThrows<KryonixException.InvalidInput> { open(config(budget = -1L)) }
        agent.shutdown()
        expectThrows<KryonixException.Closed> { agent.get(Namespace.USER_CACHE, "same") }
        expectThrows<KryonixException.Closed> { agent.enqueue(Namespace.USER_CACHE, "k", Op.PUT, byteArrayOf(), Tier.CRITICAL) }
    }

    check("StorageFull: a full database refuses the write and keeps what it holds") {
        val agent = open(config(maxDbBytes = 256L * 1024L))
        var written = 0
        val full = expectThrows<KryonixException.StorageFull> {
            while (written < 5_000) {
                agent.write(Namespace.USER_CACHE, "k$written", incompressible(1024, written.toLong()), Tier.CRITICAL)
                written += 1
            }
        }
        expect(written > 50) { "only $written writes fitted: $full" }
        expect(agent.get(Namespace.USER_CACHE, "k$written") == null) { "the refused write is visible" }
        expect(agent.status().tiers.sumOf { it.depth } == written.toLong()) { "${agent.status()}" }
        agent.shutdown()
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
        pollUntil("the queued item") { reopened.status().tiers.sumOf { it.depth }.takeIf { it == 1L } }
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
        pollUntil("the 3 queued items") { agent.status().tiers.sumOf { it.depth }.takeIf { it == 3L } }
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
        expectThrows<KryonixException.Closed> { agent.flush(1.seconds) }
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
        // Offline, asking says why nothing went; the status counts every item at once.
        val offline = expectThrows<KryonixException.Offline> { agent.syncNow(emptyList()) }
        expect(offline.reason.contains("offline")) { offline.reason }
        expectThrows<KryonixException.Offline> { agent.flush(500.milliseconds) }
        expect(agent.status().tiers.sumOf { it.depth } == 7L) { "${agent.status()}" }
        agent.shutdown()
    }

    check("observer: callbacks arrive on Rust threads, Flow<SyncStatus> follows") {
        val rec = RecordingObserver()
        val agent = open(observer = rec)
        agent.enqueue(Namespace.USER_CACHE, "k", Op.PUT, byteArrayOf(1), Tier.CRITICAL)
        pollUntil("a status callback") { rec.statuses.lastOrNull()?.takeIf { s -> s.tiers.any { it.depth == 1L } } }
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
            val agent = open(config(url = "http://127.0.0.1:${silent.localPort}", timeout = 500.milliseconds))
            agent.enqueue(Namespace.USER_CACHE, "k", Op.PUT, byteArrayOf(1), Tier.CRITICAL)
            agent.setNetwork(WIFI)
            coroutineScope {
                val sync = async(start = CoroutineStart.UNDISPATCHED) { agent.syncNow(emptyList()) }
                val flush = launch(start = CoroutineStart.UNDISPATCHED) { agent.flush(30.seconds) }
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
            expectThrows<KryonixException.Offline> { agent.syncNow(emptyList()) }
            expect(agent.status().tiers.sumOf { it.depth } == 2L) { "nothing lost: ${agent.status()}" }
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
        val report = pollUntil("everything sent") { agent.syncNow(emptyList()).takeIf { it.remaining == 0L } }
        expect(report.online) { "$report" }
        pollUntil("5 items in up:t1 and 3 in up:t3") {
            true.takeIf { xlen(stream1) - before1 == 5L && xlen(stream3) - before3 == 3L }
        }
        flow.statuses.first { s -> s.itemsSent >= 8L && s.tiers.all { it.depth == 0L } }
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
        pollUntil("dead again after the retry") { agent.deadLetters().singleOrNull()?.takeIf { it.attempts >= 0 } }
        agent.discardDeadLetter(id)
        expect(agent.deadLetters().isEmpty()) { "discarded" }
        expectThrows<KryonixException.NotFound> { agent.discardDeadLetter(id) }
        agent.shutdown()
    }

    check("Unauthorized: a token the real server refuses") {
        val tokens = CountingTokens("not-a-valid-token")
        val agent = open(config(network = WIFI), tokens = tokens)
        agent.enqueue(Namespace.USER_CACHE, "k", Op.PUT, byteArrayOf(1), Tier.CRITICAL)
        val refused = expectThrows<KryonixException.Unauthorized> { agent.syncNow(emptyList()) }
        expect(refused.reason.contains("401")) { refused.reason }
        expect(agent.status().tiers.sumOf { it.depth } == 1L) { "kept: ${agent.status()}" }
        pollUntil("status.unauthorized") { agent.status().takeIf { it.unauthorized } }
        expect(tokens.refreshes.get() >= 1) { "asked for a fresh token" }
        expectThrows<KryonixException.Unauthorized> { agent.getOrFetch(Namespace.API_CACHE, "k") }
        agent.shutdown()
    }

    check("token provider failures keep their kind; a tenant mismatch is caught before any upload") {
        // The provider cannot reach its identity provider: "offline", not "sign in again", and
        // the status carries the exception's message without its stack trace.
        val unreachable = open(config(network = WIFI), tokens = object : TokenProvider {
            override fun token(refresh: Boolean): String = throw java.io.IOException("identity provider unreachable")
        })
        unreachable.enqueue(Namespace.USER_CACHE, "k", Op.PUT, byteArrayOf(1), Tier.CRITICAL)
        val offline = expectThrows<KryonixException.Offline> { unreachable.syncNow(emptyList()) }
        expect(offline.reason.contains("identity provider unreachable") && !offline.reason.contains("\tat ")) { offline.reason }
        expect(!unreachable.status().unauthorized) { "${unreachable.status()}" }
        unreachable.shutdown()
        // The provider says the user must sign in.
        val signedOut = open(config(network = WIFI), tokens = object : TokenProvider {
            override fun token(refresh: Boolean): String = throw TokenException.SignInRequired("refresh token revoked")
        })
        signedOut.enqueue(Namespace.USER_CACHE, "k", Op.PUT, byteArrayOf(1), Tier.CRITICAL)
        val signIn = expectThrows<KryonixException.Unauthorized> { signedOut.syncNow(emptyList()) }
        expect(signIn.reason.contains("refresh token revoked")) { signIn.reason }
        signedOut.shutdown()
        // An agent opened for globex with acme's token uploads nothing.
        val wrong = open(config(network = WIFI, tenant = "globex"))
        wrong.enqueue(Namespace.USER_CACHE, "k", Op.PUT, byteArrayOf(1), Tier.CRITICAL)
        val mismatch = expectThrows<KryonixException.TenantMismatch> { wrong.syncNow(emptyList()) }
        expect(mismatch.tokenTenant == "acme" && mismatch.reason.contains("globex")) { "$mismatch" }
        expect(wrong.status().tenantMismatch == "acme") { "${wrong.status()}" }
        wrong.shutdown()
    }

    check("a token provider that blocks (a refresh over the network) does not stall other agents") {
        // Two agents whose provider blocks hold as many threads as the runtime has workers.
        val gates = List(2) { GatedTokens(token) }
        val slow = gates.map { gate ->
            open(config(network = WIFI), tokens = gate).also {
                it.enqueue(Namespace.USER_CACHE, "gated", Op.PUT, byteArrayOf(1), Tier.CRITICAL)
            }
        }
        try {
            pollUntil("both providers asked") { true.takeIf { gates.all { it.asked.get() >= 1 } } }
            val quick = open(config(network = WIFI))
            quick.enqueue(Namespace.USER_CACHE, "quick", Op.PUT, byteArrayOf(2), Tier.CRITICAL)
            pollUntil("the quick agent synced") { quick.syncNow(emptyList()).takeIf { it.remaining == 0L } }
            expect(gates.all { it.gate.count == 1L }) { "the slow providers were still blocked" }
            quick.shutdown()
        } finally {
            gates.forEach { it.gate.countDown() }
        }
        for (agent in slow) {
            pollUntil("released, the slow agent syncs") { agent.syncNow(emptyList()).takeIf { it.remaining == 0L } }
            agent.shutdown()
        }
    }

    check("UpgradeRequired: an app older than the server's minimum keeps its items until updated") {
        // scripts/test-bindings starts the server with KRYONIX_MIN_APP_VERSION=2.0.0.
        expectThrows<KryonixException.InvalidInput> { open(config(appVersion = "not a version")) }
        val path = dbPath()
        val rec = RecordingObserver()
        val old = open(config(path = path, appVersion = "1.9.3"), observer = rec)
        repeat(3) { old.enqueue(Namespace.USER_CACHE, "gate-$it", Op.PUT, byteArrayOf(it.toByte()), Tier.BACKGROUND) }
        old.setNetwork(WIFI)
        val gated = expectThrows<KryonixException.UpgradeRequired> { old.syncNow(emptyList()) }
        expect(gated.minAppVersion == "2.0.0") { "$gated" }
        expect(old.status().tiers.sumOf { it.depth } == 3L) { "${old.status()}" }
        val gate = UpgradeRequired(minProtocol = 2, minAppVersion = "2.0.0")
        expect(old.status().upgradeRequired == gate) { "${old.status()}" }
        pollUntil("the observer told") { rec.statuses.lastOrNull()?.takeIf { it.upgradeRequired == gate } }
        val refused = expectThrows<KryonixException.UpgradeRequired> { old.getOrFetch(Namespace.USER_CACHE, "any") }
        expect(refused.minAppVersion == "2.0.0") { "$refused" }
        old.shutdown()

        val updated = open(config(path = path, appVersion = "2.0.0"))
        updated.setNetwork(WIFI)
        pollUntil("the updated app delivered") { updated.syncNow(emptyList()).takeIf { it.remaining == 0L } }
        expect(updated.status().upgradeRequired == null) { "${updated.status()}" }
        updated.shutdown()
    }

    check("log sink: the library's lines at the chosen level, level changes honoured") {
        val lines = Collections.synchronizedList(mutableListOf<Triple<LogLevel, String, String>>())
        val sink = object : LogSink {
            override fun log(level: LogLevel, target: String, message: String) { lines += Triple(level, target, message) }
        }
        setLogSink(sink, LogLevel.DEBUG)
        try {
            val agent = open(config(network = WIFI))
            agent.enqueue(Namespace.USER_CACHE, "logged", Op.PUT, byteArrayOf(1), Tier.CRITICAL)
            pollUntil("everything sent") { agent.syncNow(emptyList()).takeIf { it.remaining == 0L } }
            val sync = lines.filter { it.second.startsWith("kryonix_core::sync") }
            expect(sync.any { it.first == LogLevel.DEBUG && it.third.startsWith("sync: wake-up") }) { "$sync" }
            expect(lines.none { it.third.contains("logged") }) { "a key reached the log: $lines" }
            setLogSink(sink, LogLevel.WARN)
            lines.clear()
            agent.enqueue(Namespace.USER_CACHE, "quiet", Op.PUT, byteArrayOf(1), Tier.CRITICAL)
            pollUntil("everything sent") { agent.syncNow(emptyList()).takeIf { it.remaining == 0L } }
            expect(lines.none { it.first == LogLevel.DEBUG || it.first == LogLevel.INFO }) { "$lines" }
            agent.shutdown()
        } finally {
            setLogSink(null, LogLevel.ERROR)
        }
    }

    check("watch: a CacheWatcher sees the initial state, a put and a delete; cancel ends it") {
        val agent = open()
        val watcher = RecordingWatcher()
        val handle = agent.watch(Namespace.USER_CACHE, "watched", watcher)
        expect(agent.watcherCount() == 1L) { "one watch" }
        pollUntil("the initial state") { watcher.changes.firstOrNull() }
        agent.put(Namespace.USER_CACHE, "watched", "1".encodeToByteArray(), ttl = null)
        pollUntil("the put") { watcher.changes.getOrNull(1) }
        agent.delete(Namespace.USER_CACHE, "watched")
        pollUntil("the delete") { watcher.changes.getOrNull(2) }
        val seen = watcher.changes.map { Triple(it.key, it.value?.decodeToString(), it.cause) }
        expect(
            seen == listOf(
                Triple("watched", null, ChangeCause.INITIAL),
                Triple("watched", "1", ChangeCause.PUT),
                Triple("watched", null, ChangeCause.DELETED),
            ),
        ) { "$seen" }
        handle.cancel()
        expect(agent.watcherCount() == 0L) { "cancelled" }
        handle.close()
        val prefixed = agent.watchNamespace(Namespace.USER_CACHE, "user:", RecordingWatcher())
        expectThrows<KryonixException.InvalidInput> { agent.watchNamespace(Namespace.USER_CACHE, "bad\u0001", watcher) }
        agent.shutdown()
        expectThrows<KryonixException.Closed> { agent.watch(Namespace.USER_CACHE, "watched", watcher) }
        prefixed.close()
    }

    check("watch: Flows see a change published on the real server; cancelling the collector ends the watch") {
        val agent = open(config(network = WIFI))
        val key = "flags-kotlin-${System.nanoTime()}"
        coroutineScope {
            val value = async(start = CoroutineStart.UNDISPATCHED) {
                agent.watchFlow(Namespace.TENANT_CONFIG, key).first { it?.decodeToString() == "on" }
            }
            val maps = Collections.synchronizedList(mutableListOf<Map<String, ByteArray>>())
            val collector = launch(start = CoroutineStart.UNDISPATCHED) {
                agent.watchNamespaceFlow(Namespace.TENANT_CONFIG, prefix = key).collect { maps += it }
            }
            pollUntil("both watches live") { true.takeIf { agent.watcherCount() == 2L } }
            pollUntil("the namespace flow's initial (empty) map") { maps.firstOrNull() }
            publish("tenant_config", key, "on".encodeToByteArray())
            agent.syncNow(emptyList()) // pulls the published change
            expect(value.await()?.decodeToString() == "on") { "the key flow" }
            pollUntil("the namespace flow") { maps.lastOrNull()?.get(key)?.takeIf { it.decodeToString() == "on" } }
            // `first` completed its collection: that watch is gone. Cancel the other collector.
            pollUntil("the key flow's watch ended") { true.takeIf { agent.watcherCount() == 1L } }
            collector.cancelAndJoin()
            pollUntil("every watch ended") { true.takeIf { agent.watcherCount() == 0L } }
        }
        agent.shutdown()
    }

    check("quick start (README) against the real server") {
        val report = quickStart(dbPath(), serverUrl, token, KEY)
        expect(report.online && report.remaining == 0L) { "$report" }
    }

    tmp.deleteRecursively()
    println("$passed passed, $failed failed")
    exitProcess(if (failed == 0) 0 else 1)
}
