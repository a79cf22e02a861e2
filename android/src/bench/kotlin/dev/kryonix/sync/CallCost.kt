// The Kotlin side of scripts/bench-bindings: the same calls as core/examples/call_cost.rs (one
// enqueue, one item of a 100-item enqueueAll, one get of a hot key; encrypted database, no
// server), made as an app makes them — the suspend functions, from a coroutine on
// Dispatchers.Default — plus the generated blocking calls for comparison. Prints one
// `kotlin <name> <µs>` line per figure (the median of ROUNDS rounds, after WARMUP_ROUNDS for the
// JIT).
package dev.kryonix.sync

import java.nio.file.Files
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.runBlocking

private const val ROUNDS = 3
private const val WARMUP_ROUNDS = 3
private const val CALLS = 2_000
private const val BATCHES = 20
private const val BATCH = 100
private const val GETS = 20_000

private inline fun microsPer(n: Int, body: () -> Unit): Double {
    val t0 = System.nanoTime()
    body()
    return (System.nanoTime() - t0) / 1_000.0 / n
}

private fun median(v: List<Double>) = v.sorted()[v.size / 2]

fun main(): Unit = runBlocking(Dispatchers.Default) {
    val dir = Files.createTempDirectory("kryonix-call-cost").toFile()
    suspend fun openAgent(name: String) = KryonixAgent.open(
        AgentConfig(
            dbPath = dir.resolve(name).path,
            serverUrl = "http://127.0.0.1:9",
            tenant = "acme",
            device = DeviceClass.PHONE,
            network = NetworkProfile(NetworkClass.OFFLINE),
            encryptionKey = ByteArray(32) { 7 },
        ),
        StaticTokenProvider("t"),
        null,
    )
    // The measured agent queues exactly what the Rust run queues (the per-call cost grows a
    // little with the queue); the generated calls, for comparison, use an agent of their own.
    val agent = openAgent("bench.db")
    val generated = openAgent("generated.db")
    agent.put(Namespace.USER_CACHE, "hot", "value".encodeToByteArray())
    generated.put(Namespace.USER_CACHE, "hot", "value".encodeToByteArray())
    val figures = linkedMapOf<String, MutableList<Double>>()
    fun record(name: String, round: Int, value: Double) {
        if (round > WARMUP_ROUNDS - 1) figures.getOrPut(name) { mutableListOf() } += value
    }
    val payload = byteArrayOf(1)
    for (round in 0 until WARMUP_ROUNDS + ROUNDS) {
        record("enqueue", round, microsPer(CALLS) {
            for (i in 0 until CALLS) agent.enqueue(Namespace.USER_CACHE, "one-$round-$i", Op.PUT, payload, Tier.BACKGROUND)
        })
        val items = (0 until BATCH).map { NewItem(Namespace.USER_CACHE, "many-$round-$it", Op.PUT, payload, Tier.BACKGROUND) }
        record("enqueue_all_item", round, microsPer(BATCHES * BATCH) {
            repeat(BATCHES) { agent.enqueueAll(items) }
        })
        record("get", round, microsPer(GETS) {
            repeat(GETS) { agent.get(Namespace.USER_CACHE, "hot") }
        })
        record("enqueue_blocking", round, microsPer(CALLS) {
            for (i in 0 until CALLS) generated.enqueueBlocking(Namespace.USER_CACHE, "blk-$round-$i", Op.PUT, payload, Tier.BACKGROUND)
        })
        record("get_blocking", round, microsPer(GETS) {
            repeat(GETS) { generated.getBlocking(Namespace.USER_CACHE, "hot") }
        })
    }
    for ((name, values) in figures) println("kotlin $name %.2f".format(median(values)))
    agent.shutdown()
    generated.shutdown()
    dir.deleteRecursively()
    Unit
}
