// Hand-written Kotlin helpers: cache watches as Flows (same package as the generated bindings).
package dev.kryonix.sync

import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.flow.conflate

/**
 * The value under [key] as a [Flow]: its current value first (`null` when it has none), then its
 * value after every change — a put, delete or write here, a change pulled from the server, an
 * expiry noticed, an eviction. A collector that falls behind gets the newest value (conflated).
 *
 * Each collection is one watch: it starts when collection starts and ends when the collecting
 * coroutine is cancelled or completes (`first { … }`, a `viewModelScope` going away), or when
 * the agent shuts down.
 */
fun KryonixAgent.watchFlow(namespace: Namespace, key: String): Flow<ByteArray?> = callbackFlow {
    val handle = watch(namespace, key, object : CacheWatcher {
        override fun onChange(changes: List<CacheChange>) {
            changes.lastOrNull()?.let { trySend(it.value) }
        }
    })
    awaitClose {
        handle.cancel()
        handle.close() // frees the native handle now rather than at garbage collection
    }
}.conflate()

/**
 * The live entries of [namespace] (only keys starting with [prefix], when given) as a [Flow] of
 * maps, key to value: the current entries first, then the whole map again after every committed
 * change (a pulled page is one update). A collector that falls behind gets the newest map.
 * Starts and ends with its collection, like [watchFlow].
 */
fun KryonixAgent.watchNamespaceFlow(namespace: Namespace, prefix: String? = null): Flow<Map<String, ByteArray>> =
    callbackFlow {
        val entries = HashMap<String, ByteArray>()
        val handle = watchNamespace(namespace, prefix, object : CacheWatcher {
            override fun onChange(changes: List<CacheChange>) {
                // Batches of one watch arrive one at a time, but on whichever runtime thread.
                val snapshot = synchronized(entries) {
                    for (change in changes) {
                        val value = change.value
                        if (value == null) entries.remove(change.key) else entries[change.key] = value
                    }
                    entries.toMap()
                }
                trySend(snapshot)
            }
        })
        awaitClose {
            handle.cancel()
            handle.close()
        }
    }.conflate()
