// Hand-written Swift helpers: cache watches as AsyncStreams (next to Generated/KryonixSync.swift).
import Foundation

extension KryonixAgent {
    /// The value under `key` as an `AsyncStream`: its current value first (`nil` when it has
    /// none), then its value after every change — a put, delete or write here, a change pulled
    /// from the server, an expiry noticed, an eviction. A consumer that falls behind gets the
    /// newest value.
    ///
    /// The watch ends when the task iterating the stream is cancelled (SwiftUI's `.task` does so
    /// when its view goes away) or the agent shuts down. Leaving a `for await` loop with `break`
    /// does not cancel anything: iterate in a task you cancel.
    public func watchStream(namespace: Namespace, key: String) async throws -> AsyncStream<Data?> {
        let (stream, continuation) = AsyncStream<Data?>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let handle = try await watch(namespace: namespace, key: key, watcher: ForwardingWatcher { changes in
            if let last = changes.last {
                continuation.yield(last.value)
            }
        })
        continuation.onTermination = { _ in handle.cancel() }
        return stream
    }

    /// The live entries of `namespace` (only keys starting with `prefix`, when given) as an
    /// `AsyncStream` of dictionaries, key to value: the current entries first, then the whole
    /// dictionary again after every committed change (a pulled page is one update). A consumer
    /// that falls behind gets the newest dictionary. Ends like `watchStream`.
    public func watchNamespaceStream(namespace: Namespace, prefix: String? = nil) async throws -> AsyncStream<[String: Data]> {
        let (stream, continuation) = AsyncStream<[String: Data]>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let entries = LiveEntries()
        let handle = try await watchNamespace(namespace: namespace, prefix: prefix, watcher: ForwardingWatcher { changes in
            continuation.yield(entries.apply(changes))
        })
        continuation.onTermination = { _ in handle.cancel() }
        return stream
    }
}

/// A `CacheWatcher` that hands each batch to a closure.
private final class ForwardingWatcher: CacheWatcher, Sendable {
    private let forward: @Sendable ([CacheChange]) -> Void
    init(_ forward: @escaping @Sendable ([CacheChange]) -> Void) { self.forward = forward }
    func onChange(changes: [CacheChange]) { forward(changes) }
}

/// The entries a namespace watch has seen, updated batch by batch (on the runtime's threads).
private final class LiveEntries: @unchecked Sendable {
    private let lock = NSLock()
    private var entries: [String: Data] = [:]

    func apply(_ changes: [CacheChange]) -> [String: Data] {
        lock.withLock {
            for change in changes {
                entries[change.key] = change.value // nil removes the key
            }
            return entries
        }
    }
}
