package com.example.app

import dev.kryonix.sync.*
import kotlin.time.Duration.Companion.hours
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.withTimeout

// Quick start: open an agent, use the cache, queue an upload, sync, watch the status. Every
// call that touches the database or the network suspends (call them from any dispatcher,
// Dispatchers.Main included); setNetwork / setDevice never block.
// dbKey: the 32-byte database key the app keeps in the Android Keystore (android/README.md).
suspend fun quickStart(dbPath: String, serverUrl: String, token: String, dbKey: ByteArray): SyncReport {
    val observer = SyncStatusFlow()
    val agent = KryonixAgent.open(
        AgentConfig(
            dbPath = dbPath,
            serverUrl = serverUrl,
            tenant = "acme",
            device = DeviceClass.PHONE,
            network = NetworkProfile(NetworkClass.WIFI, metered = false),
            encryptionKey = dbKey, // SQLCipher; the file holds no plaintext
        ),
        StaticTokenProvider(token),
        observer,
    )
    try {
        agent.put(Namespace.USER_CACHE, "profile-42", "Ada".encodeToByteArray(), ttl = 1.hours)
        check(agent.get(Namespace.USER_CACHE, "profile-42")?.decodeToString() == "Ada")

        agent.enqueue(Namespace.USER_CACHE, "profile-42", Op.PUT, "Ada".encodeToByteArray(), Tier.CRITICAL)
        val report = agent.syncNow(listOf(Tier.CRITICAL)) // suspends; runs on the bindings' runtime

        // The status flow reports the emptied queue.
        withTimeout(10_000) {
            observer.statuses.first { s -> s.online && s.tiers.all { it.depth == 0L } }
        }
        return report
    } catch (e: KryonixException.Unauthorized) {
        error("sign in again: $e")
    } finally {
        agent.shutdown()
    }
}
