// Uses the public API the way an app does: a token provider that throws the library's
// TokenError, an agent with a key and an app version, an upload, a sync, typed errors caught by
// case. Exits non-zero if anything is off.
import Foundation
import KryonixSync

final class AppTokens: TokenProvider, @unchecked Sendable {
    let token: String
    init(_ token: String) { self.token = token }
    func token(refresh: Bool) throws -> String {
        if token.isEmpty { throw TokenError.signInRequired(reason: "no session") }
        return token
    }
}

let env = ProcessInfo.processInfo.environment
let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kryonix-consumer-\(UUID().uuidString)")
try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(at: dir) }

let config = AgentConfig(
    dbPath: dir.appendingPathComponent("app.db").path,
    serverUrl: env["KRYONIX_TEST_SERVER_URL"] ?? "http://127.0.0.1:9",
    tenant: "acme",
    device: .phone,
    network: NetworkProfile(kind: .wifi, metered: false),
    appVersion: "2.0.0",
    encryptionKey: Data((0..<32).map { UInt8($0) })
)
let agent = try await KryonixAgent.open(config: config, tokens: AppTokens(env["KRYONIX_TEST_TOKEN"] ?? ""), observer: nil)
// The package's async calls and platform types, from outside the module.
try await agent.put(namespace: .userCache, key: "draft", value: Data("kept".utf8), ttl: .seconds(60))
guard try await agent.get(namespace: .userCache, key: "draft") == Data("kept".utf8) else { exit(1) }
let depth: Int = try await agent.status().tiers.reduce(0) { $0 + $1.depth }
print("consumer: \(depth) waiting before the enqueue")
try await agent.enqueue(namespace: .userCache, key: "consumer", op: .put, payload: Data("hi".utf8), tier: .background)
do {
    let report = try await agent.syncNow(tiers: Tier.allCases)
    print("consumer: sent \(report.itemsSent), \(report.remaining) waiting")
    guard report.remaining == 0 else { exit(1) }
} catch KryonixError.unauthorized(let reason) {
    print("consumer: sign in again (\(reason))")
    exit(1)
} catch let error as KryonixError {
    print("consumer: \(error.localizedDescription)")
    exit(1)
}
try await agent.shutdown()
print("consumer: ok")
