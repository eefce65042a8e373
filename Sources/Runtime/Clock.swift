#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Synchronization

/// Time for everything that schedules, times out or judges silence: the scheduler's step timeouts, the
/// coordinator's join and load deadlines, a worker link's heartbeat age, a worker's heartbeat period, the offload
/// cache's stall figures. Injected, so that a test can run a whole cluster on a `ManualClock` and decide when a
/// worker's silence becomes "suspect" or "down" without sleeping. Benchmarks keep their own timer
/// (`KernelBench`'s): they measure the machine, not the program's logic.
///
/// Seconds on a monotonic scale whose origin means nothing; only differences do.
public protocol Clock: Sendable {
    func now() -> Double
    /// Blocks this thread until `deadline`.
    func sleep(until deadline: Double)
    /// Suspends this task until `deadline` (or until the task is cancelled).
    func sleep(until deadline: Double) async
    /// Waits for `semaphore` until `deadline`; true when it was signalled (and its count taken), false when the
    /// deadline passed first.
    func wait(_ semaphore: DispatchSemaphore, until deadline: Double) -> Bool
}

extension Clock {
    /// Blocks this thread for `seconds`.
    public func sleep(seconds: Double) { sleep(until: now() + seconds) }
    /// Suspends this task for `seconds`.
    public func sleep(seconds: Double) async { await sleep(until: now() + seconds) }
    /// Waits for `semaphore` at most `seconds`; true when it was signalled.
    public func wait(_ semaphore: DispatchSemaphore, seconds: Double) -> Bool { wait(semaphore, until: now() + seconds) }
}

/// The machine's monotonic clock (CLOCK_MONOTONIC): what every daemon runs on.
public struct MonotonicClock: Clock {
    public init() {}

    public static func seconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    public func now() -> Double { Self.seconds() }

    public func sleep(until deadline: Double) {
        let left = deadline - now()
        guard left > 0 else { return }
        var ts = timespec(tv_sec: Int(left), tv_nsec: Int((left - Double(Int(left))) * 1e9))
        var rest = timespec()
        while nanosleep(&ts, &rest) != 0 && errno == EINTR { ts = rest }
    }

    public func sleep(until deadline: Double) async {
        let left = deadline - now()
        guard left > 0 else { return }
        try? await Task.sleep(nanoseconds: UInt64(left * 1e9))
    }

    public func wait(_ semaphore: DispatchSemaphore, until deadline: Double) -> Bool {
        semaphore.wait(timeout: .now() + max(0, deadline - now())) == .success
    }
}

/// A clock that moves only when told (`advance`): tests decide exactly when a deadline passes. Sleepers wake
/// when an advance reaches their deadline; a semaphore waiter also wakes when signalled.
public final class ManualClock: Clock, @unchecked Sendable {
    private struct State {
        var now: Double
        /// Threads blocked in `sleep(until:)` (each on its own semaphore) and tasks suspended in the async form.
        var sleepers: [(deadline: Double, wake: DispatchSemaphore)] = []
        var tasks: [(deadline: Double, id: UInt64, resume: CheckedContinuation<Void, Never>)] = []
        var nextTask: UInt64 = 0
        /// Deadlines of threads waiting on a semaphore with a deadline (`wait`), one entry per thread.
        var waits: [UInt64: Double] = [:]
    }
    private let state: Mutex<State>

    public init(start: Double = 1000) { state = Mutex(State(now: start)) }

    public func now() -> Double { state.withLock { $0.now } }

    /// Moves time forward by `seconds` and wakes everything whose deadline has come.
    public func advance(by seconds: Double) {
        precondition(seconds >= 0, "a clock does not go back")
        let (threads, tasks) = state.withLock { s -> ([DispatchSemaphore], [CheckedContinuation<Void, Never>]) in
            s.now += seconds
            let now = s.now
            let threads = s.sleepers.filter { $0.deadline <= now }.map(\.wake)
            s.sleepers.removeAll { $0.deadline <= now }
            let tasks = s.tasks.filter { $0.deadline <= now }.map(\.resume)
            s.tasks.removeAll { $0.deadline <= now }
            return (threads, tasks)
        }
        for t in threads { t.signal() }
        for t in tasks { t.resume() }
    }

    /// Tasks and threads asleep on this clock right now (a test waits for the system to settle on it).
    public var sleepers: Int { state.withLock { $0.sleepers.count + $0.tasks.count } }

    /// Deadlines that threads are waiting for in `wait` right now: a test sees that the system waits on time
    /// (a join, a reply) before it moves the clock.
    public var waitDeadlines: [Double] { state.withLock { Array($0.waits.values) } }

    public func sleep(until deadline: Double) {
        let wake = DispatchSemaphore(value: 0)
        let asleep = state.withLock { s -> Bool in
            guard deadline > s.now else { return false }
            s.sleepers.append((deadline, wake))
            return true
        }
        if asleep { wake.wait() }
    }

    public func sleep(until deadline: Double) async {
        let id = state.withLock { s -> UInt64 in s.nextTask += 1; return s.nextTask }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let asleep = state.withLock { s -> Bool in
                    guard deadline > s.now, !Task.isCancelled else { return false }
                    s.tasks.append((deadline, id, c))
                    return true
                }
                if !asleep { c.resume() }
            }
        } onCancel: {
            let c = state.withLock { s -> CheckedContinuation<Void, Never>? in
                guard let i = s.tasks.firstIndex(where: { $0.id == id }) else { return nil }
                return s.tasks.remove(at: i).resume
            }
            c?.resume()
        }
    }

    /// The semaphore is looked at in short real-time slices, the deadline against this clock's time: the outcome
    /// depends only on whether the signal or the advance came first, never on how long the machine took.
    public func wait(_ semaphore: DispatchSemaphore, until deadline: Double) -> Bool {
        let id = state.withLock { s -> UInt64 in
            s.nextTask += 1
            s.waits[s.nextTask] = deadline
            return s.nextTask
        }
        defer { _ = state.withLock { $0.waits.removeValue(forKey: id) } }
        while true {
            if semaphore.wait(timeout: .now() + .milliseconds(2)) == .success { return true }
            if now() >= deadline { return semaphore.wait(timeout: .now()) == .success }
        }
    }
}
