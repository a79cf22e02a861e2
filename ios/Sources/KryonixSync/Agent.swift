// Hand-written Swift helpers: the agent's hot database calls as async functions.
//
// The generated class keeps `get`, `put`, `enqueue` and the like blocking under `…Blocking` names
// (on Kotlin a UniFFI async call costs far more than the call itself; ADR 0024). Here each runs
// on a concurrent dispatch queue of the package's own, so that neither the caller's thread (the
// main actor, often) nor Swift's cooperative pool waits on SQLite.
import Dispatch
import Foundation

extension KryonixAgent {
    /// The cached value under `key`, or `nil` (never touches the network).
    public func get(namespace: Namespace, key: String) async throws -> Data? {
        try await offCaller { try self.getBlocking(namespace: namespace, key: key) }
    }

    /// Several cached values of `namespace`, in the order of `keys`.
    public func getMany(namespace: Namespace, keys: [String]) async throws -> [Data?] {
        try await offCaller { try self.getManyBlocking(namespace: namespace, keys: keys) }
    }

    /// Stores `value` locally for `ttl`, or by default for the adaptive TTL of the device profile.
    public func put(namespace: Namespace, key: String, value: Data, ttl: Duration? = nil) async throws {
        try await offCaller { try self.putBlocking(namespace: namespace, key: key, value: value, ttl: ttl) }
    }

    /// Removes a cached value; true if there was one.
    @discardableResult
    public func delete(namespace: Namespace, key: String) async throws -> Bool {
        try await offCaller { try self.deleteBlocking(namespace: namespace, key: key) }
    }

    public func contains(namespace: Namespace, key: String) async throws -> Bool {
        try await offCaller { try self.containsBlocking(namespace: namespace, key: key) }
    }

    /// Queues a mutation for upload and returns its id once it is durable (one commit).
    @discardableResult
    public func enqueue(namespace: Namespace, key: String, op: Op, payload: Data, tier: Tier) async throws -> String {
        try await offCaller {
            try self.enqueueBlocking(namespace: namespace, key: key, op: op, payload: payload, tier: tier)
        }
    }

    /// Queues `items` in one transaction (all or none); their ids, in order, once durable.
    @discardableResult
    public func enqueueAll(items: [NewItem]) async throws -> [String] {
        try await offCaller { try self.enqueueAllBlocking(items: items) }
    }

    /// Writes `value` to the cache and queues it for upload, in one transaction.
    @discardableResult
    public func write(namespace: Namespace, key: String, value: Data, tier: Tier) async throws -> String {
        try await offCaller { try self.writeBlocking(namespace: namespace, key: key, value: value, tier: tier) }
    }
}

/// Where the blocking calls run: concurrent, since the agent serialises what must be serial.
private let databaseQueue = DispatchQueue(
    label: "dev.kryonix.sync.database", qos: .userInitiated, attributes: .concurrent)

private func offCaller<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        databaseQueue.async { continuation.resume(with: Result(catching: work)) }
    }
}
