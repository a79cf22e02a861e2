// Swift side of the toolchain self-test, compiled together with the generated Selftest.swift in
// Swift 6 language mode with -warnings-as-errors, run inside the Swift root. Ends with
// "N passed, M failed" and exits non-zero on any failure.
import Foundation

nonisolated(unsafe) var passed = 0
nonisolated(unsafe) var failed = 0

struct CheckFailure: Error, CustomStringConvertible {
    let description: String
}

func expect(_ cond: Bool, _ what: String) throws {
    if !cond { throw CheckFailure(description: what) }
}

func expectEqual<T: Equatable>(_ got: T, _ want: T) throws {
    if got != want { throw CheckFailure(description: "expected \(want), got \(got)") }
}

func expectThrows(_ want: SelftestError, _ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as SelftestError {
        try expectEqual(e, want)
        return
    }
    throw CheckFailure(description: "expected \(want) to be thrown")
}

func check(_ name: String, _ body: () throws -> Void) {
    do {
        try body()
        passed += 1
        print("ok   \(name)")
    } catch {
        failed += 1
        print("FAIL \(name): \(error)")
    }
}

@MainActor
func checkAsync(_ name: String, _ body: @MainActor () async throws -> Void) async {
    do {
        try await body()
        passed += 1
        print("ok   \(name)")
    } catch {
        failed += 1
        print("FAIL \(name): \(error)")
    }
}

/// Records every value and whether it arrived on the main thread. Called from Rust threads too.
final class Recorder: Observer, @unchecked Sendable {
    private let lock = NSLock()
    private var _seen: [(value: UInt64, onMain: Bool)] = []
    var seen: [(value: UInt64, onMain: Bool)] {
        lock.lock()
        defer { lock.unlock() }
        return _seen
    }
    func onCount(value: UInt64) {
        lock.lock()
        _seen.append((value, Thread.isMainThread))
        lock.unlock()
    }
}

check("function") { try expectEqual(try greet(name: "swift"), "hello, swift") }
check("error enum -> Swift Error") {
    try expectThrows(.Empty) { _ = try greet(name: "") }
    try expectThrows(.TooLong(len: 20)) { _ = try greet(name: String(repeating: "x", count: 20)) }
}
check("object") {
    let c = Counter(start: 5)
    try expectEqual(c.add(n: 2), 7)
    try expectEqual(c.get(), 7)
}
check("foreign trait called from Rust, on the caller's thread and on a Rust thread") {
    let c = Counter(start: 0)
    let r = Recorder()
    c.setObserver(observer: r)
    _ = c.add(n: 1)
    c.notifyFromThread()
    let seen = r.seen
    try expectEqual(seen.map(\.value), [1, 1])
    try expectEqual(seen.map(\.onMain), [true, false])
}
await checkAsync("async fn (10 at once, error path)") {
    try expectEqual(try await delayedEcho(value: "hi", delayMs: 20), "hi")
    let t0 = DispatchTime.now().uptimeNanoseconds
    let all = try await withThrowingTaskGroup(of: (Int, String).self) { group in
        for i in 1...10 {
            group.addTask { (i, try await delayedEcho(value: "v\(i)", delayMs: 100)) }
        }
        var out: [Int: String] = [:]
        for try await (i, v) in group { out[i] = v }
        return out
    }
    try expectEqual(all, Dictionary(uniqueKeysWithValues: (1...10).map { ($0, "v\($0)") }))
    let ms = (DispatchTime.now().uptimeNanoseconds - t0) / 1_000_000
    try expect(ms < 900, "10 concurrent 100 ms calls took \(ms) ms")
    do {
        _ = try await delayedEcho(value: "", delayMs: 10)
        throw CheckFailure(description: "expected SelftestError.Empty")
    } catch SelftestError.Empty {}
}

print("\(passed) passed, \(failed) failed")
exit(failed == 0 ? 0 : 1)
