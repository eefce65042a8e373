import Synchronization
import Testing
@testable import Runtime

struct ThreadPoolTests {
    /// Many short jobs on pools that come and go: every index runs exactly once per job, nothing leaks or hangs.
    @Test func everyIndexRunsOncePerJob() {
        for size in 1...4 {
            let pool = ThreadPool(threads: size)
            let counts = Mutex<[Int]>(Array(repeating: 0, count: size))
            for _ in 0..<2000 {
                pool.run { i in counts.withLock { $0[i] += 1 } }
            }
            counts.withLock { #expect($0 == Array(repeating: 2000, count: size)) }
        }
    }

    @Test func parallelForCoversTheRangeOnce() {
        let pool = ThreadPool(threads: 3)
        for (count, granularity) in [(0, 1), (1, 4), (7, 4), (100, 1), (101, 8)] {
            let seen = Mutex<[Int]>([])
            pool.parallelFor(count, granularity: granularity) { r in seen.withLock { $0.append(contentsOf: r) } }
            #expect(seen.withLock { $0.sorted() } == Array(0..<count))
        }
    }

    @Test func poolsAreReleased() {
        weak var weakPool: ThreadPool?
        do {
            let pool = ThreadPool(threads: 3)
            pool.run { _ in }
            weakPool = pool
        }
        #expect(weakPool == nil)
    }
}
