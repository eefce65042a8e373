#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A serial queue of jobs on one thread of its own that, when it runs dry, keeps polling for the next job for a
/// while (yielding the CPU between looks) before it sleeps.
///
/// An expert-parallel token sends each remote worker one call per layer, a few hundred microseconds apart. A
/// worker whose threads all sleep between calls lets its virtual CPU halt, and every hop of the next call (the
/// socket's I/O thread, our socket thread, the queue) then waits for a halted CPU to wake: measured here, the
/// same call took 190 µs to arrive at an idle worker. A queue that polls keeps the CPU awake through the gaps,
/// and hands a job over without a wake-up; it yields between polls, so whatever else wants the CPU runs.
public final class PollingQueue: @unchecked Sendable {
    private let state = Mutex<(jobs: [@Sendable () -> Void], stopping: Bool)>(([], false))
    private let queued = Atomic<Int>(0)
    private let sleeping = Atomic<Bool>(false)
    private let wake = DispatchSemaphoreLike()
    /// How long the thread polls after its last job before it sleeps, in seconds.
    public let pollFor: Double
    private var thread = pthread_t()

    public init(pollFor: Double = 0.005) {
        self.pollFor = pollFor
        let box = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&thread, nil, { arg in
            let me = Unmanaged<PollingQueue>.fromOpaque(arg!).takeRetainedValue()
            me.loop()
            return nil
        }, box)
    }

    /// Queues `job`; jobs run one at a time, in order.
    public func async(_ job: @escaping @Sendable () -> Void) {
        state.withLock { $0.jobs.append(job) }
        // Sequentially consistent, with the sleeper's store-then-look below: one of the two sees the other.
        queued.add(1, ordering: .sequentiallyConsistent)
        if sleeping.load(ordering: .sequentiallyConsistent) { wake.signal() }
    }

    /// Waits until every job queued before this call has run.
    public func sync() {
        let done = DispatchSemaphoreLike()
        async { done.signal() }
        done.wait()
    }

    /// Stops the thread after the jobs already queued (the queue keeps itself alive until then).
    public func stop() {
        state.withLock { $0.stopping = true }
        queued.add(1, ordering: .releasing)
        wake.signal()
    }

    private func loop() {
        while true {
            let (jobs, stopping) = state.withLock { s in defer { s.jobs.removeAll() }; return (s.jobs, s.stopping) }
            for job in jobs { job() }
            if stopping && jobs.isEmpty { return }
            if !jobs.isEmpty { queued.subtract(jobs.count, ordering: .relaxed); continue }
            // Dry: poll for a while, then sleep until a job (or stop) arrives.
            let end = MonotonicClock.seconds() + pollFor
            while queued.load(ordering: .acquiring) == 0 && MonotonicClock.seconds() < end { sched_yield() }
            if queued.load(ordering: .acquiring) == 0 {
                sleeping.store(true, ordering: .sequentiallyConsistent)
                // A job queued between the look and the flag has seen no sleeper: look once more.
                if queued.load(ordering: .sequentiallyConsistent) == 0 { wake.wait() }
                sleeping.store(false, ordering: .releasing)
            }
        }
    }
}

/// A counting semaphore on a Monitor (no Dispatch below this queue).
final class DispatchSemaphoreLike: @unchecked Sendable {
    private let monitor = Monitor()
    private var count = 0

    func signal() {
        monitor.locked {
            count += 1
            monitor.broadcast()
        }
    }

    func wait() {
        monitor.locked {
            while count == 0 { monitor.wait() }
            count -= 1
        }
    }
}
