// XCTest glue tests of the Swift bindings, the same surface as the Kotlin suite
// (android/src/test/kotlin/dev/kryonix/sync/BindingsTest.kt). Run by scripts/test-bindings in the
// Swift root, against a kryonix-server it starts (KRYONIX_TEST_SERVER_URL, KRYONIX_TEST_TOKEN).
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import XCTest
@testable import KryonixSync

private let env = ProcessInfo.processInfo.environment
private let serverUrl = env["KRYONIX_TEST_SERVER_URL"] ?? "http://127.0.0.1:9"
private let token = env["KRYONIX_TEST_TOKEN"] ?? "unset"
private let serviceToken = env["KRYONIX_TEST_SERVICE_TOKEN"] ?? "unset"
private let wifi = NetworkProfile(kind: .wifi, metered: false)

/// A fresh 32-byte database key (an app keeps its key in the iOS Keychain: ios/README.md).
private func newKey() -> Data {
    var generator = SystemRandomNumberGenerator()
    return Data((0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) })
}

/// The key every agent of this suite opens with: the suite runs encrypted.
private let suiteKey = newKey()

/// The database file and its WAL, concatenated: what a copy of the app's files would hold.
private func fileBytes(_ path: String) -> Data {
    ["", "-wal"].reduce(into: Data()) { all, suffix in
        if let data = FileManager.default.contents(atPath: path + suffix) { all.append(data) }
    }
}
private let offline = NetworkProfile(kind: .offline, metered: false)

/// The OS name of the current thread (Linux; the Rust runtime names its threads "kryonix-sync").
private func threadName() -> String {
    let name = try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)
    return name?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
}

/// Records what the observer is told and on which threads.
private final class RecordingObserver: SyncObserver, @unchecked Sendable {
    private let lock = NSLock()
    private var _threads = Set<String>()
    private var _statuses: [SyncStatus] = []
    private var _dead: [String] = []
    var threads: Set<String> { lock.withLock { _threads } }
    var statuses: [SyncStatus] { lock.withLock { _statuses } }
    var dead: [String] { lock.withLock { _dead } }
    func onStatus(status: SyncStatus) {
        let name = threadName()
        lock.withLock { _threads.insert(name); _statuses.append(status) }
    }
    func onDeadLetter(id: String, code: String, reason: String) {
        lock.withLock { _dead.append("\(id) \(code)") }
    }
}

private final class CountingTokens: TokenProvider, @unchecked Sendable {
    private let lock = NSLock()
    private var _refreshes = 0
    var refreshes: Int { lock.withLock { _refreshes } }
    func token(refresh: Bool) -> String {
        if refresh { lock.withLock { _refreshes += 1 } }
        return "not-a-valid-token"
    }
}

/// A UI model: main-actor state an observer updates.
@MainActor
private final class ViewModel {
    var depths: [Int] = []
}

/// Counts turns of a task that shares the main actor with the calls under test.
@MainActor
private final class Ticks {
    var count = 0
}

/// Records the library's log lines.
private final class RecordingLogSink: LogSink, @unchecked Sendable {
    private let lock = NSLock()
    private var _lines: [(LogLevel, String, String)] = []
    var lines: [(LogLevel, String, String)] { lock.withLock { _lines } }
    func clear() { lock.withLock { _lines.removeAll() } }
    func log(level: LogLevel, target: String, message: String) {
        lock.withLock { _lines.append((level, target, message)) }
    }
}

/// A provider that always throws `error`.
private final class ThrowingTokens: TokenProvider, @unchecked Sendable {
    private let error: TokenError
    init(_ error: TokenError) { self.error = error }
    func token(refresh: Bool) throws -> String { throw error }
}

/// A provider whose refresh waits on the network: it blocks its caller until released.
private final class GatedTokens: TokenProvider, @unchecked Sendable {
    private let value: String
    private let condition = NSCondition()
    private var open = false
    private var _asked = 0
    init(_ value: String) { self.value = value }
    var asked: Int { condition.withLock { _asked } }
    var released: Bool { condition.withLock { open } }
    func release() { condition.withLock { open = true; condition.broadcast() } }
    func token(refresh: Bool) -> String {
        condition.withLock {
            _asked += 1
            let deadline = Date().addingTimeInterval(30)
            while !open && condition.wait(until: deadline) {}
        }
        return value
    }
}

/// Records what a CacheWatcher is told, and what the streams yield.
private final class Recorder<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var _items: [T] = []
    var items: [T] { lock.withLock { _items } }
    func append(_ item: T) { lock.withLock { _items.append(item) } }
}

private final class RecordingWatcher: CacheWatcher, Sendable {
    let changes = Recorder<CacheChange>()
    func onChange(changes: [CacheChange]) {
        for change in changes { self.changes.append(change) }
    }
}

private struct PublishFailed: Error, CustomStringConvertible {
    let description: String
}

/// Publishes a put to every device of the tenant, as a backend does (`POST /v1/publish`).
private func publish(namespace: String, key: String, value: Data) async throws {
    guard let url = URL(string: "\(serverUrl)/v1/publish") else { throw PublishFailed(description: "bad URL") }
    var request = URLRequest(url: url)
    request.httpMethod = "POST"
    request.setValue("Bearer \(serviceToken)", forHTTPHeaderField: "authorization")
    request.setValue("application/json", forHTTPHeaderField: "content-type")
    let change = #"{"namespace":"\#(namespace)","key":"\#(key)","op":"put","value":"\#(value.base64EncodedString())"}"#
    request.httpBody = Data(#"{"changes":[\#(change)]}"#.utf8)
    let status: Int = try await withCheckedThrowingContinuation { continuation in
        URLSession.shared.dataTask(with: request) { _, response, error in
            if let error {
                continuation.resume(throwing: error)
            } else {
                continuation.resume(returning: (response as? HTTPURLResponse)?.statusCode ?? 0)
            }
        }.resume()
    }
    guard status == 200 else { throw PublishFailed(description: "publish answered \(status)") }
}

private func noise(_ count: Int, seed: UInt64) -> Data {
    var state = seed &+ 0x9E37_79B9_7F4A_7C15
    return Data((0..<count).map { _ in
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return UInt8(truncatingIfNeeded: state >> 33)
    })
}

/// Polls `probe` until it returns a value, or fails after `timeout` seconds. No fixed sleeps.
private func poll<T>(_ what: String, timeout: Double = 15, _ probe: () async throws -> T?) async throws -> T {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        if let value = try await probe() { return value }
        if Date() > deadline { throw PollTimeout(what: what) }
        try await Task.sleep(nanoseconds: 20_000_000)
    }
}

private struct PollTimeout: Error, CustomStringConvertible {
    let what: String
    var description: String { "timed out waiting for \(what)" }
}

/// Runs `body` and returns the KryonixError it throws (fails the test if it throws nothing else).
private func kryonixError<T>(_ body: () async throws -> T, file: StaticString = #filePath, line: UInt = #line) async -> KryonixError? {
    do {
        _ = try await body()
        XCTFail("expected a KryonixError, nothing thrown", file: file, line: line)
    } catch let error as KryonixError {
        return error
    } catch {
        XCTFail("expected a KryonixError, got \(error)", file: file, line: line)
    }
    return nil
}

final class KryonixSyncTests: XCTestCase {
    private var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("kryonix-swift-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    private func config(
        url: String = serverUrl, network: NetworkProfile = offline, tenant: String = "acme",
        budget: Int? = nil, maxValue: Int? = nil, path: String? = nil, appVersion: String? = nil,
        maxDbBytes: Int? = nil, key: Data? = suiteKey
    ) -> AgentConfig {
        AgentConfig(
            dbPath: path ?? dir.appendingPathComponent("\(UUID().uuidString).db").path,
            serverUrl: url, tenant: tenant, device: .phone, network: network,
            cacheBudgetBytes: budget, maxValueBytes: maxValue, requestTimeout: nil, maxDbBytes: maxDbBytes,
            appVersion: appVersion, encryptionKey: key
        )
    }

    private func open(_ config: AgentConfig? = nil, tokens: TokenProvider = StaticTokenProvider(token),
                      observer: SyncObserver? = nil) async throws -> KryonixAgent {
        try await KryonixAgent.open(config: config ?? self.config(), tokens: tokens, observer: observer)
    }

    func testOpenStatusNetworkDeviceClose() async throws {
        let agent = try await open()
        let got1 = try await agent.status().online
        XCTAssertFalse(got1)
        try agent.setDevice(device: .tablet)
        try agent.setNetwork(network: NetworkProfile(kind: .cellularSlow, metered: true))
        _ = try await poll("online") { try await agent.status().online ? true : nil }
        try agent.setNetwork(network: offline)
        _ = try await poll("offline") { try await agent.status().online ? nil : true }
        try await agent.shutdown()
        try await agent.shutdown()
    }

    func testCache() async throws {
        let agent = try await open()
        try await agent.put(namespace: .userCache, key: "a", value: Data("1".utf8), ttl: nil)
        try await agent.put(namespace: .userCache, key: "b", value: Data(repeating: 7, count: 4096), ttl: .seconds(60))
        let got2 = try await agent.get(namespace: .userCache, key: "a")
        XCTAssertEqual(got2, Data("1".utf8))
        let got3 = try await agent.get(namespace: .userCache, key: "missing")
        XCTAssertNil(got3)
        let got4 = try await agent.contains(namespace: .userCache, key: "b")
        XCTAssertTrue(got4)
        let many = try await agent.getMany(namespace: .userCache, keys: ["b", "missing", "a"])
        XCTAssertEqual(many.map { $0?.count }, [4096, nil, 1])
        let got5 = try await agent.delete(namespace: .userCache, key: "a")
        XCTAssertTrue(got5)
        let got6 = try await agent.delete(namespace: .userCache, key: "a")
        XCTAssertFalse(got6)
        let stats = try await agent.cacheStats()
        XCTAssertEqual(stats.entries, 1)
        XCTAssertLessThan(stats.storedBytes, stats.rawBytes)
        try await agent.shutdown()
    }

    /// The database calls are async and leave the main actor free while they run: a task on
    /// the main actor keeps turning while 2 000 items are committed from the main actor.
    func testDatabaseCallsLeaveTheMainActorFree() async throws {
        let config = config()
        // The body runs on the main actor, as an app's view code does.
        try await Task { @MainActor in
            let agent = try await KryonixAgent.open(config: config, tokens: StaticTokenProvider(token), observer: nil)
            let ticks = Ticks()
            let ticker = Task { @MainActor in
                while !Task.isCancelled {
                    ticks.count += 1
                    await Task.yield()
                }
            }
            let items = (0..<2_000).map {
                NewItem(namespace: .userCache, key: "main-\($0)", op: .put, payload: Data([1]), tier: .background)
            }
            let before = ticks.count
            try await agent.enqueueAll(items: items)
            try await agent.put(namespace: .userCache, key: "main", value: Data([1]))
            _ = try await agent.get(namespace: .userCache, key: "main")
            try await agent.enqueue(namespace: .userCache, key: "main", op: .put, payload: Data([1]), tier: .background)
            _ = try await agent.status()
            _ = try await agent.deadLetters()
            let during = ticks.count - before
            ticker.cancel()
            XCTAssertGreaterThan(during, 0, "the main actor was blocked during the calls")
            try await agent.shutdown()
        }.value
    }

    /// Spans are `Duration`s; a negative one is refused with the field's name, and changes nothing.
    func testDurationsAreCheckedAndNegativeOnesRefused() async throws {
        let agent = try await open()
        try await agent.put(namespace: .userCache, key: "short", value: Data([1]), ttl: .milliseconds(1500))
        let got = try await agent.get(namespace: .userCache, key: "short")
        XCTAssertEqual(got, Data([1]))
        let ttl = await kryonixError { try await agent.put(namespace: .userCache, key: "k", value: Data([1]), ttl: .seconds(-1)) }
        guard case .invalidInput(let reason) = ttl, reason.contains("ttl") else {
            return XCTFail("\(String(describing: ttl))")
        }
        let none = try await agent.contains(namespace: .userCache, key: "k")
        XCTAssertFalse(none)
        let window = await kryonixError { try await agent.flush(window: .seconds(-5)) }
        guard case .invalidInput = window else { return XCTFail("\(String(describing: window))") }
        XCTAssertEqual(kryonixWholeMilliseconds(.seconds(Int64.max)), Int64.max)
        XCTAssertEqual(kryonixWholeMilliseconds(.milliseconds(-250)), -250)
        try await agent.shutdown()
    }

    func testInvalidInput() async throws {
        let agent = try await open()
        for call in [
            { try await agent.put(namespace: .userCache, key: "", value: Data([1]), ttl: nil) },
            { _ = try await agent.get(namespace: .userCache, key: "bad\u{1}key") },
            { _ = try await agent.enqueue(namespace: .userCache, key: "", op: .put, payload: Data(), tier: .critical) },
            { try await agent.put(namespace: .userCache, key: "k", value: Data([1]), ttl: .zero) },
            { _ = try await self.open(self.config(tenant: "bad:tenant")) },
            {
                var pinned = self.config()
                pinned.serverPins = ["sha256/not-a-hash"]
                _ = try await self.open(pinned)
            },
            {
                var privateCa = self.config()
                privateCa.serverCaPem = Data("nope".utf8)
                _ = try await self.open(privateCa)
            },
        ] as [() async throws -> Void] {
            let error = await kryonixError { try await call() }
            guard case .invalidInput = error else { return XCTFail("\(String(describing: error))") }
        }
        for url in ["not a url", "ftp://sync.example.com", "sync.example.com"] {
            let error = await kryonixError { try await self.open(self.config(url: url)) }
            guard case .invalidInput(let reason) = error, reason.contains("server_url") else {
                return XCTFail("\(url): \(String(describing: error))")
            }
        }
        let unknown = await kryonixError { try await agent.retryDeadLetter(id: "not-a-uuid") }
        guard case .notFound = unknown else { return XCTFail("\(String(describing: unknown))") }
        try await agent.shutdown()
    }

    func testOversizedValue() async throws {
        let agent = try await open(config(maxValue: 1024))
        try await agent.put(namespace: .apiCache, key: "fits", value: Data(count: 1024), ttl: nil)
        let error = await kryonixError { try await agent.put(namespace: .apiCache, key: "big", value: Data(count: 1025), ttl: nil) }
        guard case .invalidInput(let reason) = error else { return XCTFail("\(String(describing: error))") }
        XCTAssertTrue(reason.contains("1025"), reason)
        try await agent.shutdown()
    }

    func testNamespaceFull() async throws {
        let agent = try await open(config(budget: 65_536))
        let error = await kryonixError {
            for i in 0..<64 {
                try await agent.put(namespace: .mobileSync, key: "k\(i)", value: noise(2048, seed: UInt64(i)), ttl: nil)
            }
        }
        guard case .namespaceFull(let namespace, let used, let needed, let budget) = error else {
            return XCTFail("\(String(describing: error))")
        }
        XCTAssertEqual(namespace, "mobile_sync")
        XCTAssertGreaterThan(used + needed, budget)
        let got7 = try await agent.get(namespace: .mobileSync, key: "k0")
        XCTAssertNotNil(got7)
        try await agent.shutdown()
    }

    func testTableEvictionKeepsEveryPutAndLetsTheOldestGo() async throws {
        // 64 KiB for the device: sessions (allkeys-lru) holds a few of these 2 KiB values.
        var cfg = config(budget: 65_536)
        cfg.cacheEviction = .table
        let agent = try await open(cfg)
        for i in 0..<64 {
            try await agent.put(namespace: .sessions, key: "k\(i)", value: noise(2048, seed: UInt64(i)), ttl: nil)
        }
        let newest = try await agent.get(namespace: .sessions, key: "k63")
        XCTAssertNotNil(newest, "the newest put is kept")
        let oldest = try await agent.get(namespace: .sessions, key: "k0")
        XCTAssertNil(oldest, "the oldest went")
        try await agent.shutdown()
    }

    func testCorruptDatabase() async throws {
        // Not a whole number of pages, so not an encrypted database either (random whole pages
        // are indistinguishable from one under another key: WrongKey).
        let path = dir.appendingPathComponent("corrupt.db").path
        try noise(8000, seed: 1).write(to: URL(fileURLWithPath: path))
        let error = await kryonixError { try await self.open(self.config(path: path)) }
        guard case .storage(_, let retryable) = error else { return XCTFail("\(String(describing: error))") }
        XCTAssertFalse(retryable)
    }

    /// What a view model does: observe the agent from the main actor.
    func testMainActorObserverDeliversOnTheMainActorInOrder() async throws {
        let model = ViewModel()
        let observer = MainActorSyncObserver(onStatus: { status in
            MainActor.assertIsolated()
            model.depths.append(status.tiers.reduce(0) { $0 + $1.depth })
        })
        let agent = try await open(observer: observer)
        for i in 0..<3 {
            _ = try await agent.enqueue(namespace: .userCache, key: "ui-\(i)", op: .put, payload: Data([1]), tier: .background)
        }
        let deadline = Date().addingTimeInterval(15)
        while await model.depths.last != 3 {
            if Date() > deadline { return XCTFail("the main actor never saw 3 waiting") }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        let depths = await model.depths
        XCTAssertEqual(depths, depths.sorted(), "statuses out of order: \(depths)")
        try await agent.shutdown()
    }

    func testErrorsReadAsSentencesAndEnumsIterate() {
        let error: Error = KryonixError.offline(reason: "connection refused")
        XCTAssertEqual(error.localizedDescription, "offline: connection refused")
        XCTAssertEqual(KryonixError.storageFull.localizedDescription, "the device storage is full; nothing was written")
        XCTAssertEqual(Tier.allCases.count, 4)
        XCTAssertEqual(Namespace.allCases.count, 16)
        XCTAssertEqual(Set(Namespace.allCases).count, 16, "a namespace listed twice")
    }

    func testEnqueueAllIsOneTransaction() async throws {
        let agent = try await open()
        let batch = (0..<100).map {
            NewItem(namespace: .userCache, key: "batch-\($0)", op: .put, payload: Data([UInt8($0)]), tier: .application)
        }
        let ids = try await agent.enqueueAll(items: batch)
        XCTAssertEqual(Set(ids).count, 100)
        let got8 = try await agent.status().tiers.reduce(0) { $0 + $1.depth }
        XCTAssertEqual(got8, 100)
        var bad = batch
        bad[50].key = ""
        let refused = await kryonixError { try await agent.enqueueAll(items: bad) }
        guard case .invalidInput = refused else { return XCTFail("\(String(describing: refused))") }
        let got9 = try await agent.status().tiers.reduce(0) { $0 + $1.depth }
        XCTAssertEqual(got9, 100)
        try await agent.shutdown()
    }

    func testStorageFull() async throws {
        let agent = try await open(config(maxDbBytes: 256 * 1024))
        var written = 0
        let full = await kryonixError { () async throws -> Void in
            while written < 5_000 {
                _ = try await agent.write(namespace: .userCache, key: "k\(written)", value: noise(1024, seed: UInt64(written)), tier: .critical)
                written += 1
            }
        }
        guard case .storageFull = full else { return XCTFail("\(String(describing: full))") }
        XCTAssertGreaterThan(written, 50)
        let got10 = try await agent.get(namespace: .userCache, key: "k\(written)")
        XCTAssertNil(got10)
        let got11 = try await agent.status().tiers.reduce(0) { $0 + $1.depth }
        XCTAssertEqual(got11, written)
        try await agent.shutdown()
    }

    func testEncryptedWrongKeyLeavesTheFileUntouched() async throws {
        let path = dir.appendingPathComponent("encrypted.db").path
        let agent = try await open(config(path: path))
        try await agent.put(namespace: .userCache, key: "secret-key-1", value: Data("tenant secret value".utf8), ttl: nil)
        _ = try await agent.enqueue(namespace: .userCache, key: "secret-key-2", op: .put,
                              payload: Data("tenant secret payload".utf8), tier: .critical)
        try await agent.shutdown()
        let bytes = fileBytes(path)
        XCTAssertGreaterThanOrEqual(bytes.count, 4096)
        for plaintext in ["tenant secret", "secret-key", "SQLite format 3"] {
            XCTAssertNil(bytes.range(of: Data(plaintext.utf8)), "\(plaintext) is in the file")
        }
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        for key in [newKey(), nil] as [Data?] {
            let error = await kryonixError { try await self.open(self.config(path: path, key: key)) }
            guard case .wrongKey = error else { return XCTFail("\(String(describing: error))") }
        }
        let short = await kryonixError { try await self.open(self.config(path: path, key: Data(count: 16))) }
        guard case .invalidInput = short else { return XCTFail("\(String(describing: short))") }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), before, "the refused opens changed the file")
        let again = try await open(config(path: path))
        let got12 = try await again.get(namespace: .userCache, key: "secret-key-1")
        XCTAssertEqual(got12, Data("tenant secret value".utf8))
        try await again.shutdown()
    }

    func testRekey() async throws {
        let path = dir.appendingPathComponent("rekey.db").path
        let agent = try await open(config(path: path))
        try await agent.put(namespace: .userCache, key: "k", value: Data("v".utf8), ttl: nil)
        _ = try await agent.enqueue(namespace: .userCache, key: "k", op: .put, payload: Data("v".utf8), tier: .background)
        let next = newKey()
        let short = await kryonixError { try await agent.rekey(newKey: Data(count: 31)) }
        guard case .invalidInput = short else { return XCTFail("\(String(describing: short))") }
        try await agent.rekey(newKey: next)
        let got13 = try await agent.get(namespace: .userCache, key: "k")
        XCTAssertEqual(got13, Data("v".utf8))
        try await agent.shutdown()
        let old = await kryonixError { try await self.open(self.config(path: path)) }
        guard case .wrongKey = old else { return XCTFail("\(String(describing: old))") }
        let reopened = try await open(config(path: path, key: next))
        let got14 = try await reopened.get(namespace: .userCache, key: "k")
        XCTAssertEqual(got14, Data("v".utf8))
        _ = try await poll("the queued item") { try await reopened.status().tiers.reduce(0) { $0 + $1.depth } == 1 ? true : nil }
        try await reopened.shutdown()
    }

    func testEncryptDatabaseOnRequestOnly() async throws {
        let path = dir.appendingPathComponent("plain.db").path
        let plain = try await open(config(path: path, key: nil))
        try await plain.put(namespace: .userCache, key: "kept", value: Data("cached".utf8), ttl: nil)
        for i in 0..<3 {
            _ = try await plain.enqueue(namespace: .userCache, key: "item-\(i)", op: .put, payload: Data("queued".utf8), tier: .application)
        }
        let held = await kryonixError { try await encryptDatabase(dbPath: path, key: suiteKey) }
        guard case .alreadyOpen = held else { return XCTFail("\(String(describing: held))") }
        try await plain.shutdown()
        let refused = await kryonixError { try await self.open(self.config(path: path)) }
        guard case .notEncrypted = refused else { return XCTFail("\(String(describing: refused))") }
        XCTAssertNotNil(fileBytes(path).range(of: Data("cached".utf8)), "nothing converted silently")
        try await encryptDatabase(dbPath: path, key: suiteKey)
        XCTAssertNil(fileBytes(path).range(of: Data("cached".utf8)))
        let agent = try await open(config(path: path))
        let got15 = try await agent.get(namespace: .userCache, key: "kept")
        XCTAssertEqual(got15, Data("cached".utf8))
        _ = try await poll("the 3 queued items") { try await agent.status().tiers.reduce(0) { $0 + $1.depth } == 3 ? true : nil }
        try await agent.shutdown()
    }

    func testAlreadyOpen() async throws {
        let path = dir.appendingPathComponent("shared.db").path
        let first = try await open(config(path: path))
        let error = await kryonixError { try await self.open(self.config(path: path)) }
        XCTAssertEqual(error, .alreadyOpen(path: path))
        try await first.shutdown()
        let second = try await open(config(path: path))
        try await second.shutdown()
    }

    func testClosed() async throws {
        let agent = try await open()
        try await agent.shutdown()
        for call in [
            { _ = try await agent.get(namespace: .userCache, key: "a") },
            { _ = try await agent.enqueue(namespace: .userCache, key: "a", op: .put, payload: Data(), tier: .critical) },
            { _ = try await agent.status() },
            { try agent.setNetwork(network: wifi) },
        ] as [() async throws -> Void] {
            let error = await kryonixError { try await call() }
            guard case .closed = error else { return XCTFail("\(String(describing: error))") }
        }
        let sync = await kryonixError { try await agent.syncNow(tiers: []) }
        guard case .closed(let reason) = sync, !reason.isEmpty else { return XCTFail("\(String(describing: sync))") }
        let flush = await kryonixError { try await agent.flush(window: .seconds(1)) }
        guard case .closed = flush else { return XCTFail("\(String(describing: flush))") }
    }

    func testOffline() async throws {
        // Port 9 (discard) has no listener here: connection refused.
        let agent = try await open(config(url: "http://127.0.0.1:9", network: wifi))
        let error = await kryonixError { try await agent.getOrFetch(namespace: .apiCache, key: "k") }
        guard case .offline = error else { return XCTFail("\(String(describing: error))") }
        try await agent.shutdown()
    }

    func testEnqueueOfflineAndCancelledTask() async throws {
        let agent = try await open()
        for i in 0..<6 {
            _ = try await agent.enqueue(namespace: .userCache, key: "k\(i)", op: .put, payload: Data([UInt8(i)]),
                                  tier: [Tier.critical, .preferences, .application, .background][i % 4])
        }
        _ = try await agent.write(namespace: .userCache, key: "w", value: Data("x".utf8), tier: .background)
        let got16 = try await agent.get(namespace: .userCache, key: "w")
        XCTAssertEqual(got16, Data("x".utf8))
        // Offline, asking says why nothing went; the status counts every item at once.
        let got17 = try await agent.status().tiers.reduce(0) { $0 + $1.depth }
        XCTAssertEqual(got17, 7)
        let offline = await kryonixError { try await agent.syncNow(tiers: []) }
        guard case .offline(let reason) = offline, reason.contains("offline") else {
            return XCTFail("\(String(describing: offline))")
        }
        // uniffi does not pass Swift Task cancellation to Rust: the call runs to completion.
        let task = Task { try await agent.flush(window: .milliseconds(500)) }
        task.cancel()
        let flushed = await task.result
        guard case .failure(KryonixError.offline) = flushed else { return XCTFail("\(flushed)") }
        let got18 = try await agent.status().tiers.reduce(0) { $0 + $1.depth }
        XCTAssertEqual(got18, 7)
        try await agent.shutdown()
    }

    func testObserverOnRustThreadsAndAsyncStream() async throws {
        let recorder = RecordingObserver()
        let agent = try await open(observer: recorder)
        _ = try await agent.enqueue(namespace: .userCache, key: "k", op: .put, payload: Data([1]), tier: .critical)
        _ = try await poll("a status callback") { recorder.statuses.last?.tiers.contains { $0.depth == 1 } == true ? true : nil }
        let mine = threadName()
        XCTAssertFalse(recorder.threads.contains(mine), "\(recorder.threads)")
        XCTAssertTrue(recorder.threads.allSatisfy { $0.hasPrefix("kryonix-sync") }, "\(recorder.threads)")
        try await agent.shutdown()

        let stream = SyncStatusStream()
        let agent2 = try await open(observer: stream)
        try agent2.setNetwork(network: wifi)
        var sawOnline = false
        for await status in stream.statuses where status.online {
            sawOnline = true
            break
        }
        XCTAssertTrue(sawOnline)
        try await agent2.shutdown()
    }

    func testRealSync() async throws {
        let stream = SyncStatusStream()
        let agent = try await open(config(network: wifi), observer: stream)
        for i in 0..<4 {
            _ = try await agent.enqueue(namespace: .userCache, key: "swift-\(i)", op: .put, payload: Data("v\(i)".utf8), tier: .preferences)
        }
        // The driver may send before syncNow is called, so the report's count is not asserted;
        // scripts/test-bindings checks the up stream in Redis after this suite.
        let report = try await poll("everything sent") { () async throws -> SyncReport? in
            let r = try await agent.syncNow(tiers: [.preferences])
            return r.remaining == 0 ? r : nil
        }
        XCTAssertTrue(report.online)
        for await status in stream.statuses where status.itemsSent >= 4 && status.tiers.allSatisfy({ $0.depth == 0 }) {
            break
        }
        let missing = try await agent.getOrFetch(namespace: .apiCache, key: "never-written")
        XCTAssertNil(missing)
        try await agent.shutdown()
    }

    func testDeadLetters() async throws {
        let recorder = RecordingObserver()
        let agent = try await open(config(network: wifi), observer: recorder)
        let id = try await agent.enqueue(namespace: .userCache, key: "huge", op: .put, payload: noise(100 * 1024, seed: 3), tier: .critical)
        _ = try await agent.syncNow(tiers: [])
        let dead = try await poll("a dead letter") { try await agent.deadLetters().first }
        XCTAssertEqual(dead.id, id)
        XCTAssertEqual(dead.key, "huge")
        XCTAssertEqual(dead.payload.count, 100 * 1024)
        _ = try await poll("on_dead_letter") { recorder.dead.first }
        try await agent.retryDeadLetter(id: id)
        _ = try await agent.syncNow(tiers: [])
        _ = try await poll("dead again") { try await agent.deadLetters().first }
        try await agent.discardDeadLetter(id: id)
        let got19 = try await agent.deadLetters().count
        XCTAssertEqual(got19, 0)
        let error = await kryonixError { try await agent.discardDeadLetter(id: id) }
        guard case .notFound = error else { return XCTFail("\(String(describing: error))") }
        try await agent.shutdown()
    }

    func testUnauthorized() async throws {
        let tokens = CountingTokens()
        let agent = try await open(config(network: wifi), tokens: tokens)
        _ = try await agent.enqueue(namespace: .userCache, key: "k", op: .put, payload: Data([1]), tier: .critical)
        let refused = await kryonixError { try await agent.syncNow(tiers: []) }
        guard case .unauthorized(let reason) = refused, reason.contains("401") else {
            return XCTFail("\(String(describing: refused))")
        }
        let got20 = try await agent.status().tiers.reduce(0) { $0 + $1.depth }
        XCTAssertEqual(got20, 1)
        _ = try await poll("status.unauthorized") { try await agent.status().unauthorized ? true : nil }
        XCTAssertGreaterThanOrEqual(tokens.refreshes, 1)
        let error = await kryonixError { try await agent.getOrFetch(namespace: .apiCache, key: "k") }
        guard case .unauthorized = error else { return XCTFail("\(String(describing: error))") }
        try await agent.shutdown()
    }

    /// A provider that cannot reach its identity provider is "offline", not "sign in again"; one
    /// that says the user must sign in is; an agent opened for another tenant uploads nothing.
    func testTokenFailuresKeepTheirKindAndATenantMismatchIsCaught() async throws {
        let unreachable = try await open(config(network: wifi), tokens: ThrowingTokens(.unavailable(reason: "identity provider unreachable")))
        _ = try await unreachable.enqueue(namespace: .userCache, key: "k", op: .put, payload: Data([1]), tier: .critical)
        let offline = await kryonixError { try await unreachable.syncNow(tiers: []) }
        guard case .offline(let reason) = offline, reason.contains("identity provider unreachable") else {
            return XCTFail("\(String(describing: offline))")
        }
        let got21 = try await unreachable.status().unauthorized
        XCTAssertFalse(got21)
        try await unreachable.shutdown()

        let signedOut = try await open(config(network: wifi), tokens: ThrowingTokens(.signInRequired(reason: "refresh token revoked")))
        _ = try await signedOut.enqueue(namespace: .userCache, key: "k", op: .put, payload: Data([1]), tier: .critical)
        let signIn = await kryonixError { try await signedOut.syncNow(tiers: []) }
        guard case .unauthorized(let why) = signIn, why.contains("refresh token revoked") else {
            return XCTFail("\(String(describing: signIn))")
        }
        try await signedOut.shutdown()

        let wrong = try await open(config(network: wifi, tenant: "globex"))
        _ = try await wrong.enqueue(namespace: .userCache, key: "k", op: .put, payload: Data([1]), tier: .critical)
        let mismatch = await kryonixError { try await wrong.syncNow(tiers: []) }
        guard case .tenantMismatch(let tokenTenant, _) = mismatch, tokenTenant == "acme" else {
            return XCTFail("\(String(describing: mismatch))")
        }
        let got22 = try await wrong.status().tenantMismatch
        XCTAssertEqual(got22, "acme")
        try await wrong.shutdown()
    }

    func testBlockingTokenProviderDoesNotStallOtherAgents() async throws {
        // Two agents whose provider blocks hold as many threads as the runtime has workers.
        let gates = [GatedTokens(token), GatedTokens(token)]
        var slow: [KryonixAgent] = []
        for gate in gates {
            let agent = try await open(config(network: wifi), tokens: gate)
            _ = try await agent.enqueue(namespace: .userCache, key: "gated", op: .put, payload: Data([1]), tier: .critical)
            slow.append(agent)
        }
        do {
            _ = try await poll("both providers asked") { gates.allSatisfy { $0.asked >= 1 } ? true : nil }
            let quick = try await open(config(network: wifi))
            _ = try await quick.enqueue(namespace: .userCache, key: "quick", op: .put, payload: Data([2]), tier: .critical)
            _ = try await poll("the quick agent synced") { () async throws -> SyncReport? in
                let r = try await quick.syncNow(tiers: [])
                return r.remaining == 0 ? r : nil
            }
            XCTAssertTrue(gates.allSatisfy { !$0.released }, "the slow providers were still blocked")
            try await quick.shutdown()
        } catch {
            gates.forEach { $0.release() }
            throw error
        }
        gates.forEach { $0.release() }
        for agent in slow {
            _ = try await poll("released, the slow agent syncs") { () async throws -> SyncReport? in
                let r = try await agent.syncNow(tiers: [])
                return r.remaining == 0 ? r : nil
            }
            try await agent.shutdown()
        }
    }

    /// scripts/test-bindings starts the server with KRYONIX_MIN_APP_VERSION=2.0.0.
    func testUpgradeRequiredKeepsItemsUntilTheAppIsUpdated() async throws {
        let bad = await kryonixError { try await self.open(self.config(appVersion: "not a version")) }
        guard case .invalidInput = bad else { return XCTFail("\(String(describing: bad))") }
        let path = dir.appendingPathComponent("gate.db").path
        let recorder = RecordingObserver()
        let old = try await open(config(path: path, appVersion: "1.9.3"), observer: recorder)
        for i in 0..<3 {
            _ = try await old.enqueue(namespace: .userCache, key: "gate-\(i)", op: .put, payload: Data([UInt8(i)]), tier: .background)
        }
        try old.setNetwork(network: wifi)
        let gated = await kryonixError { try await old.syncNow(tiers: []) }
        guard case .upgradeRequired(_, let minimum) = gated, minimum == "2.0.0" else {
            return XCTFail("\(String(describing: gated))")
        }
        let got23 = try await old.status().tiers.reduce(0) { $0 + $1.depth }
        XCTAssertEqual(got23, 3)
        let gate = UpgradeRequired(minProtocol: 2, minAppVersion: "2.0.0")
        let got24 = try await old.status().upgradeRequired
        XCTAssertEqual(got24, gate)
        _ = try await poll("the observer told") { recorder.statuses.last?.upgradeRequired == gate ? true : nil }
        let refused = await kryonixError { try await old.getOrFetch(namespace: .userCache, key: "any") }
        guard case .upgradeRequired(_, let minAppVersion) = refused, minAppVersion == "2.0.0" else {
            return XCTFail("\(String(describing: refused))")
        }
        try await old.shutdown()

        let updated = try await open(config(path: path, appVersion: "2.0.0"))
        try updated.setNetwork(network: wifi)
        _ = try await poll("the updated app delivered") { () async throws -> SyncReport? in
            let r = try await updated.syncNow(tiers: [])
            return r.remaining == 0 ? r : nil
        }
        let got25 = try await updated.status().upgradeRequired
        XCTAssertNil(got25)
        try await updated.shutdown()
    }

    func testLogSinkGetsLinesAtItsLevel() async throws {
        let sink = RecordingLogSink()
        try setLogSink(sink: sink, level: .debug)
        defer { try? setLogSink(sink: nil, level: .error) }
        let agent = try await open(config(network: wifi))
        _ = try await agent.enqueue(namespace: .userCache, key: "logged", op: .put, payload: Data([1]), tier: .critical)
        _ = try await poll("everything sent") { () async throws -> SyncReport? in
            let r = try await agent.syncNow(tiers: [])
            return r.remaining == 0 ? r : nil
        }
        let sync = sink.lines.filter { $0.1.hasPrefix("kryonix_core::sync") }
        XCTAssertTrue(sync.contains { $0.0 == .debug && $0.2.hasPrefix("sync: wake-up") }, "\(sync)")
        XCTAssertFalse(sink.lines.contains { $0.2.contains("logged") }, "a key reached the log")
        try setLogSink(sink: sink, level: .warn)
        sink.clear()
        _ = try await agent.enqueue(namespace: .userCache, key: "quiet", op: .put, payload: Data([1]), tier: .critical)
        _ = try await poll("everything sent") { () async throws -> SyncReport? in
            let r = try await agent.syncNow(tiers: [])
            return r.remaining == 0 ? r : nil
        }
        XCTAssertFalse(sink.lines.contains { $0.0 == .debug || $0.0 == .info }, "\(sink.lines)")
        try await agent.shutdown()
    }

    func testWatchWithACacheWatcher() async throws {
        let agent = try await open()
        let watcher = RecordingWatcher()
        let handle = try await agent.watch(namespace: .userCache, key: "watched", watcher: watcher)
        XCTAssertEqual(try agent.watcherCount(), 1)
        _ = try await poll("the initial state") { watcher.changes.items.first }
        try await agent.put(namespace: .userCache, key: "watched", value: Data("1".utf8), ttl: nil)
        _ = try await poll("the put") { watcher.changes.items.count >= 2 ? true : nil }
        let got26 = try await agent.delete(namespace: .userCache, key: "watched")
        XCTAssertTrue(got26)
        _ = try await poll("the delete") { watcher.changes.items.count >= 3 ? true : nil }
        XCTAssertEqual(watcher.changes.items.map(\.cause), [.initial, .put, .deleted])
        XCTAssertEqual(watcher.changes.items.map(\.value), [nil, Data("1".utf8), nil])
        handle.cancel()
        XCTAssertEqual(try agent.watcherCount(), 0)
        let bad = await kryonixError { try await agent.watchNamespace(namespace: .userCache, prefix: "bad\u{1}", watcher: watcher) }
        guard case .invalidInput = bad else { return XCTFail("\(String(describing: bad))") }
        try await agent.shutdown()
        let closed = await kryonixError { try await agent.watch(namespace: .userCache, key: "watched", watcher: watcher) }
        guard case .closed = closed else { return XCTFail("\(String(describing: closed))") }
    }

    func testWatchStreamsSeeAChangePublishedOnTheServer() async throws {
        let agent = try await open(config(network: wifi))
        let key = "flags-swift-\(UUID().uuidString)"
        let values = try await agent.watchStream(namespace: .tenantConfig, key: key)
        let entries = try await agent.watchNamespaceStream(namespace: .tenantConfig, prefix: key)
        XCTAssertEqual(try agent.watcherCount(), 2)
        let seenValues = Recorder<Data?>()
        let seenEntries = Recorder<[String: Data]>()
        let valueTask = Task { for await value in values { seenValues.append(value) } }
        let entriesTask = Task { for await map in entries { seenEntries.append(map) } }
        _ = try await poll("the initial state (no value)") { seenValues.items.isEmpty ? nil : true }
        XCTAssertEqual(seenValues.items.first, .some(nil))

        try await publish(namespace: "tenant_config", key: key, value: Data("on".utf8))
        _ = try await agent.syncNow(tiers: []) // pulls the published change
        _ = try await poll("the value stream") { seenValues.items.last == Data("on".utf8) ? true : nil }
        _ = try await poll("the entries stream") { seenEntries.items.last?[key] == Data("on".utf8) ? true : nil }

        // Cancelling the iterating tasks ends both watches.
        valueTask.cancel()
        entriesTask.cancel()
        _ = try await poll("every watch ended") { try agent.watcherCount() == 0 ? true : nil }
        try await agent.shutdown()
    }

    func testQuickStart() async throws {
        let report = try await quickStart(dbPath: dir.appendingPathComponent("quick.db").path, serverUrl: serverUrl, token: token,
                                          dbKey: suiteKey)
        XCTAssertTrue(report.online)
        XCTAssertEqual(report.remaining, 0)
    }
}
