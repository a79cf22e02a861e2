// Hand-written Swift helpers next to the generated bindings (Generated/KryonixSync.swift).
import Foundation

/// A dead letter as the observer announces it; the full item is in `KryonixAgent.deadLetters()`.
public struct DeadLetterNotice: Sendable, Equatable {
    public let id: String
    public let code: String
    public let reason: String
}

/// A `SyncObserver` that exposes the agent's status as an `AsyncStream`: pass it to
/// `KryonixAgent.open` and iterate `statuses` with `for await`. If the consumer falls behind,
/// only the newest statuses are kept.
///
/// Rust calls it from its own threads. It holds no reference to the agent, so the agent and its
/// observer never keep each other alive. The streams finish when the observer is released.
public final class SyncStatusStream: SyncObserver, @unchecked Sendable {
    public let statuses: AsyncStream<SyncStatus>
    public let deadLetters: AsyncStream<DeadLetterNotice>
    private let statusContinuation: AsyncStream<SyncStatus>.Continuation
    private let deadContinuation: AsyncStream<DeadLetterNotice>.Continuation

    public init(buffer: Int = 16) {
        (statuses, statusContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(buffer))
        (deadLetters, deadContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(buffer))
    }

    deinit {
        statusContinuation.finish()
        deadContinuation.finish()
    }

    public func onStatus(status: SyncStatus) {
        statusContinuation.yield(status)
    }

    public func onDeadLetter(id: String, code: String, reason: String) {
        deadContinuation.yield(DeadLetterNotice(id: id, code: code, reason: reason))
    }
}

/// A `TokenProvider` for a token the app refreshes itself (or tests).
public final class StaticTokenProvider: TokenProvider, Sendable {
    private let value: String
    public init(_ token: String) { value = token }
    public func token(refresh: Bool) -> String { value }
}
