// Hand-written Kotlin helpers next to the generated bindings (same package, dev.kryonix.sync).
package dev.kryonix.sync

import kotlinx.coroutines.channels.BufferOverflow
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.MutableSharedFlow
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.SharedFlow
import kotlinx.coroutines.flow.asSharedFlow
import kotlinx.coroutines.flow.filterNotNull

/** A dead letter as the observer announces it; the full item is in `KryonixAgent.deadLetters()`. */
data class DeadLetterNotice(val id: String, val code: String, val reason: String)

/**
 * A [SyncObserver] that exposes the agent's status as a [Flow]: pass it to `KryonixAgent.open`
 * and collect [statuses] anywhere. The latest status is replayed to new collectors; statuses
 * that arrive faster than a collector runs are conflated (the newest wins).
 *
 * Rust calls it from its own threads. It holds no reference to the agent, so the agent and
 * its observer never keep each other alive.
 */
class SyncStatusFlow : SyncObserver {
    private val latest = MutableStateFlow<SyncStatus?>(null)
    private val dead = MutableSharedFlow<DeadLetterNotice>(
        extraBufferCapacity = 64,
        onBufferOverflow = BufferOverflow.DROP_OLDEST,
    )

    /** Every status the sync task publishes, starting with the latest one. */
    val statuses: Flow<SyncStatus> = latest.filterNotNull()

    /** Items the server refused for good, as they happen. */
    val deadLetters: SharedFlow<DeadLetterNotice> = dead.asSharedFlow()

    override fun onStatus(status: SyncStatus) {
        latest.value = status
    }

    override fun onDeadLetter(id: String, code: String, reason: String) {
        dead.tryEmit(DeadLetterNotice(id, code, reason))
    }
}

/** A [TokenProvider] for a token the app refreshes itself (or tests). */
class StaticTokenProvider(private val token: String) : TokenProvider {
    override fun token(refresh: Boolean): String = token
}
