#if canImport(Glibc)
import Glibc
#endif
import CHost
import Synchronization

/// A fixed set of threads that run one data-parallel job at a time, `body(threadIndex)` on each.
///
/// Decoding calls a matrix-vector product hundreds of times per token, each a few tens of microseconds, so
/// the pool never creates threads per call: workers spin briefly on the job counter (a wake-up from a futex
/// costs as much as a small matvec) and then park on a condition variable until the next job. The caller
/// is thread 0 and does its share of the work.
public final class ThreadPool: @unchecked Sendable {
    public let size: Int
    private let shared: Shared
    private var threads: [pthread_t] = []
    /// Serialises callers: one job at a time.
    private let callerLock = Mutex<Void>(())

    /// How long an idle worker spins before parking, in polls of the job counter. Several processes sharing the
    /// cores (workers of a local cluster) set CONCLAVE_SPIN_POLLS low: a pool spinning while another process's
    /// stage computes takes that stage's cores.
    static let spinPolls: Int = {
        if let v = getenv("CONCLAVE_SPIN_POLLS"), let n = Int(String(cString: v)), n >= 0 { return n }
        return 200_000
    }()

    /// Most threads a pool may have: a few per core (more only thrash, and each costs a stack).
    public static var maxThreads: Int { 4 * max(1, availableCores) + 64 }

    /// What is wrong with a thread count a user gave, or nil.
    public static func problem(threads: Int) -> String? {
        (1...maxThreads).contains(threads) ? nil : "--threads \(threads) is outside 1...\(maxThreads) (this machine has \(availableCores) cores)"
    }

    public init(threads: Int) {
        size = min(max(1, threads), Self.maxThreads)
        shared = Shared()
        for index in 1..<size {
            let box = Unmanaged.passRetained(WorkerStart(shared: shared, index: index))
            var thread = pthread_t()
            let rc = pthread_create(&thread, nil, { arg in
                let start = Unmanaged<WorkerStart>.fromOpaque(arg!).takeRetainedValue()
                start.shared.workerLoop(index: start.index)
                return nil
            }, box.toOpaque())
            precondition(rc == 0, "pthread_create failed: \(rc)")
            self.threads.append(thread)
        }
    }

    deinit {
        shared.stop()
        for t in threads { pthread_join(t, nil) }
    }

    /// The number of cores this process may run on.
    public static var availableCores: Int { Int(host_available_cores()) }

    /// Runs `body(i)` for every i in 0..<size, in parallel, and returns when all have finished.
    public func run(_ body: (Int) -> Void) {
        if size == 1 {
            body(0)
            return
        }
        callerLock.withLock { _ in
            withoutActuallyEscaping(body) { escaping in
                shared.start(escaping, workers: size - 1)
                escaping(0)
                shared.waitForWorkers()
            }
        }
    }

    /// Splits `0..<count` into `size` contiguous ranges (multiples of `granularity`) and runs `body` on each.
    public func parallelFor(_ count: Int, granularity: Int = 1, _ body: (Range<Int>) -> Void) {
        let g = max(1, granularity)
        let units = (count + g - 1) / g
        let workers = min(size, max(1, units))
        if workers == 1 {
            if count > 0 { body(0..<count) }
            return
        }
        run { i in
            guard i < workers else { return }
            let lo = min(count, units * i / workers * g)
            let hi = min(count, units * (i + 1) / workers * g)
            if lo < hi { body(lo..<hi) }
        }
    }
}

/// The state workers share with the pool. Workers hold this, not the pool, so that dropping the last reference
/// to a pool runs its deinit, which stops and joins them.
private final class Shared: @unchecked Sendable {
    let generation = Atomic<Int>(0)
    let pending = Atomic<Int>(0)
    /// `ThreadPool.spinPolls`, read once: a static's lazy-initialisation check in the spin loop costs a call per poll.
    let spinPolls = ThreadPool.spinPolls
    var stopping = false
    var job: ((Int) -> Void)?
    var mutex = pthread_mutex_t()
    var wake = pthread_cond_t()

    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&wake, nil)
    }

    deinit {
        pthread_cond_destroy(&wake)
        pthread_mutex_destroy(&mutex)
    }

    func start(_ body: @escaping (Int) -> Void, workers: Int) {
        pthread_mutex_lock(&mutex)
        job = body
        pending.store(workers, ordering: .relaxed)
        generation.add(1, ordering: .releasing)
        pthread_cond_broadcast(&wake)
        pthread_mutex_unlock(&mutex)
    }

    func waitForWorkers() {
        var polls = 0
        while pending.load(ordering: .acquiring) > 0 {
            polls += 1
            if polls > spinPolls { sched_yield() }
        }
        pthread_mutex_lock(&mutex)
        job = nil
        pthread_mutex_unlock(&mutex)
    }

    func stop() {
        pthread_mutex_lock(&mutex)
        stopping = true
        generation.add(1, ordering: .releasing)
        pthread_cond_broadcast(&wake)
        pthread_mutex_unlock(&mutex)
    }

    func workerLoop(index: Int) {
        var seen = 0
        while true {
            var polls = 0
            while generation.load(ordering: .acquiring) == seen && polls < spinPolls { polls += 1 }
            if generation.load(ordering: .acquiring) == seen {
                pthread_mutex_lock(&mutex)
                while generation.load(ordering: .acquiring) == seen && !stopping { pthread_cond_wait(&wake, &mutex) }
                pthread_mutex_unlock(&mutex)
            }
            pthread_mutex_lock(&mutex)
            let stop = stopping
            var work = job
            seen = generation.load(ordering: .acquiring)
            pthread_mutex_unlock(&mutex)
            if stop { return }
            work?(index)
            // Drop our reference before reporting done: the caller's withoutActuallyEscaping checks, as soon
            // as the count reaches zero, that nobody still holds its closure.
            work = nil
            pending.subtract(1, ordering: .releasing)
        }
    }
}

private final class WorkerStart {
    let shared: Shared
    let index: Int
    init(shared: Shared, index: Int) {
        self.shared = shared
        self.index = index
    }
}
