// Hand-written Kotlin helpers: the agent's database calls as suspend functions (same package as
// the generated bindings, so `import dev.kryonix.sync.*` brings them in).
//
// The generated class keeps these calls blocking under `…Blocking` names because a UniFFI
// `suspend` call costs far more from Kotlin than the call itself (ADR 0024); here each runs on
// Dispatchers.IO, and `get` and `enqueue` go through the library's direct entry points
// (`kryonix_direct_*`), which skip the generated JNA marshalling; so does `enqueueAll`.
package dev.kryonix.sync

import com.sun.jna.Native
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.util.Collections
import java.util.WeakHashMap
import kotlin.time.Duration
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext

/** The cached value under [key], or `null` (never touches the network). */
suspend fun KryonixAgent.get(namespace: Namespace, key: String): ByteArray? =
    withContext(Dispatchers.IO) { DirectCalls.get(this@get, namespace, key) }

/** Several cached values of [namespace], in the order of [keys]. */
suspend fun KryonixAgent.getMany(namespace: Namespace, keys: List<String>): List<ByteArray?> =
    withContext(Dispatchers.IO) { getManyBlocking(namespace, keys) }

/** Stores [value] locally for [ttl], or by default for the adaptive TTL of the device profile. */
suspend fun KryonixAgent.put(namespace: Namespace, key: String, value: ByteArray, ttl: Duration? = null) =
    withContext(Dispatchers.IO) { putBlocking(namespace, key, value, ttl) }

/** Removes a cached value; true if there was one. */
suspend fun KryonixAgent.delete(namespace: Namespace, key: String): Boolean =
    withContext(Dispatchers.IO) { deleteBlocking(namespace, key) }

suspend fun KryonixAgent.contains(namespace: Namespace, key: String): Boolean =
    withContext(Dispatchers.IO) { containsBlocking(namespace, key) }

/** Queues a mutation for upload and returns its id once it is durable (one commit). */
suspend fun KryonixAgent.enqueue(namespace: Namespace, key: String, op: Op, payload: ByteArray, tier: Tier): String =
    withContext(Dispatchers.IO) { DirectCalls.enqueue(this@enqueue, namespace, key, op, payload, tier) }

/** Queues [items] in one transaction (all or none); their ids, in order, once durable. */
suspend fun KryonixAgent.enqueueAll(items: List<NewItem>): List<String> =
    withContext(Dispatchers.IO) { DirectCalls.enqueueAll(this@enqueueAll, items) }

/** Writes [value] to the cache and queues it for upload, in one transaction. */
suspend fun KryonixAgent.write(namespace: Namespace, key: String, value: ByteArray, tier: Tier): String =
    withContext(Dispatchers.IO) { writeBlocking(namespace, key, value, tier) }

/**
 * `get`, `enqueue` and `enqueueAll` through `kryonix_direct_*`: integers, byte
 * arrays and a direct buffer, which JNA's direct mapping passes without the `Structure`s every
 * generated call allocates. A failure comes back as a code and changes nothing; the generated call
 * is then made to throw the typed [KryonixException] with its message.
 */
internal object DirectCalls {
    private const val NONE = -1L
    private const val ID_LEN = 36
    private const val BUFFER_BYTES = 16 * 1024

    init {
        // The library the generated bindings load (same override property).
        Native.register(
            DirectCalls::class.java,
            System.getProperty("uniffi.component.kryonix_ffi.libraryOverride") ?: "kryonix_ffi",
        )
    }

    @JvmStatic
    private external fun kryonix_direct_get(
        agent: Long, namespace: Int, key: ByteArray, keyLen: Int, out: ByteBuffer, outCap: Int,
    ): Long

    @JvmStatic
    private external fun kryonix_direct_enqueue_all(
        agent: Long, items: ByteArray, itemsLen: Int, count: Int, idsOut: ByteArray, idsCap: Int,
    ): Long

    @JvmStatic
    private external fun kryonix_direct_enqueue(
        agent: Long, namespace: Int, key: ByteArray, keyLen: Int, op: Int,
        payload: ByteArray, payloadLen: Int, tier: Int, idOut: ByteArray, idCap: Int,
    ): Long

    // Each agent's number, asked once: that call is one generated call, the cost this avoids.
    private val ids: MutableMap<KryonixAgent, Long> = Collections.synchronizedMap(WeakHashMap())
    private fun id(agent: KryonixAgent): Long = ids.getOrPut(agent) { agent.directId() }

    private val buffers = ThreadLocal.withInitial { ByteBuffer.allocateDirect(BUFFER_BYTES) }

    fun get(agent: KryonixAgent, namespace: Namespace, key: String): ByteArray? {
        val keyBytes = key.encodeToByteArray()
        // JNA passes a direct buffer's address at its position: start each call at 0.
        val buffer = buffers.get()
        buffer.clear()
        val n = kryonix_direct_get(id(agent), namespace.ordinal, keyBytes, keyBytes.size, buffer, BUFFER_BYTES)
        return when {
            n == NONE -> null
            n in 0..BUFFER_BYTES -> ByteArray(n.toInt()).also { buffer.get(it) }
            // Larger than the buffer, or failed: the generated call returns it or throws.
            else -> agent.getBlocking(namespace, key)
        }
    }

    fun enqueue(agent: KryonixAgent, namespace: Namespace, key: String, op: Op, payload: ByteArray, tier: Tier): String {
        val keyBytes = key.encodeToByteArray()
        val id = ByteArray(ID_LEN)
        val n = kryonix_direct_enqueue(
            id(agent), namespace.ordinal, keyBytes, keyBytes.size, op.ordinal,
            payload, payload.size, tier.ordinal, id, ID_LEN,
        )
        // Failed means nothing was queued, so this makes the one attempt that throws (or succeeds).
        return if (n == ID_LEN.toLong()) id.decodeToString() else agent.enqueueBlocking(namespace, key, op, payload, tier)
    }

    fun enqueueAll(agent: KryonixAgent, items: List<NewItem>): List<String> {
        // Packed as kryonix_direct_enqueue_all reads them: per item namespace, op, tier, then the
        // key and the payload each as a length and its bytes; little-endian Int32s.
        val keys = items.map { it.key.encodeToByteArray() }
        val size = items.indices.sumOf { 20L + keys[it].size + items[it].payload.size }
        if (items.isEmpty() || size > Int.MAX_VALUE || items.size > Int.MAX_VALUE / ID_LEN) {
            return agent.enqueueAllBlocking(items)
        }
        val packed = ByteBuffer.allocate(size.toInt()).order(ByteOrder.LITTLE_ENDIAN)
        for ((i, item) in items.withIndex()) {
            packed.putInt(item.namespace.ordinal).putInt(item.op.ordinal).putInt(item.tier.ordinal)
            packed.putInt(keys[i].size).put(keys[i]).putInt(item.payload.size).put(item.payload)
        }
        val ids = ByteArray(items.size * ID_LEN)
        val n = kryonix_direct_enqueue_all(id(agent), packed.array(), size.toInt(), items.size, ids, ids.size)
        // Failed means nothing was queued: the generated call throws the typed error (or succeeds).
        if (n != ids.size.toLong()) return agent.enqueueAllBlocking(items)
        return List(items.size) { String(ids, it * ID_LEN, ID_LEN, Charsets.US_ASCII) }
    }
}
