import Foundation
import KryonixSync

// Quick start: open an agent, use the cache, queue an upload, sync, watch the status. Every
// call that touches the database or the network is async (none blocks the main actor);
// setNetwork / setDevice never block.
// dbKey: the 32-byte database key the app keeps in the iOS Keychain (ios/README.md).
func quickStart(dbPath: String, serverUrl: String, token: String, dbKey: Data) async throws -> SyncReport {
    let observer = SyncStatusStream()
    let agent = try await KryonixAgent.open(
        config: AgentConfig(
            dbPath: dbPath,
            serverUrl: serverUrl,
            tenant: "acme",
            device: .phone,
            network: NetworkProfile(kind: .wifi, metered: false),
            encryptionKey: dbKey // SQLCipher; the file holds no plaintext
        ),
        tokens: StaticTokenProvider(token),
        observer: observer
    )
    do {
        try await agent.put(namespace: .userCache, key: "profile-42", value: Data("Ada".utf8), ttl: .seconds(3600))
        let cached = try await agent.get(namespace: .userCache, key: "profile-42")
        precondition(cached == Data("Ada".utf8))

        try await agent.enqueue(namespace: .userCache, key: "profile-42", op: .put, payload: Data("Ada".utf8), tier: .critical)
        let report = try await agent.syncNow(tiers: [.critical]) // runs on the bindings' runtime

        // The status stream reports the emptied queue.
        for await status in observer.statuses where status.online && status.tiers.allSatisfy({ $0.depth == 0 }) {
            break
        }
        try await agent.shutdown()
        return report
    } catch KryonixError.unauthorized {
        try await agent.shutdown()
        fatalError("sign in again")
    } catch {
        try await agent.shutdown()
        throw error
    }
}
