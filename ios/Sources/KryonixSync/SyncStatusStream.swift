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

/// A `SyncObserver` for UI code: it hands every status and dead letter to closures that run on
/// the main actor, in the order the agent announced them. (A `@MainActor` class cannot adopt
/// `SyncObserver` itself: the library calls it on its own threads.) Pass it to
/// `KryonixAgent.open`; keep the closures quick, they run on the UI thread.
public final class MainActorSyncObserver: SyncObserver, @unchecked Sendable {
    private enum Notice: Sendable {
        case status(SyncStatus)
        case deadLetter(DeadLetterNotice)
    }

    private let continuation: AsyncStream<Notice>.Continuation

    public init(
        onStatus: @escaping @MainActor @Sendable (SyncStatus) -> Void,
        onDeadLetter: @escaping @MainActor @Sendable (DeadLetterNotice) -> Void = { _ in }
    ) {
        let (notices, continuation) = AsyncStream<Notice>.makeStream()
        self.continuation = continuation
        // One consumer on the main actor keeps the agent's order (a Task per callback would not).
        Task { @MainActor in
            for await notice in notices {
                switch notice {
                case .status(let status): onStatus(status)
                case .deadLetter(let notice): onDeadLetter(notice)
                }
            }
        }
    }

    deinit { continuation.finish() }

    public func onStatus(status: SyncStatus) {
        continuation.yield(.status(status))
    }

    public func onDeadLetter(id: String, code: String, reason: String) {
        continuation.yield(.deadLetter(DeadLetterNotice(id: id, code: code, reason: reason)))
    }
}
