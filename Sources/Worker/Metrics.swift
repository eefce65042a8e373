#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Kernels
import Synchronization

/// Counters and step latencies a worker reports in its heartbeat. Shared by the message loop, the stage queue
/// and the expert queue, hence the lock.
public final class WorkerMetrics: Sendable {
    struct State {
        var tokens: UInt64 = 0
        var expertCalls: UInt64 = 0
        var forwardedBytes: UInt64 = 0
        var forwardedRows: UInt64 = 0
        var latencies: [Double] = []  // ring of the most recent step times, ms
        var next = 0
    }
    private let state = Mutex(State())
    static let window = 1024

    public init() {}

    public func recordStep(tokens: Int, ms: Double) {
        state.withLock { s in
            s.tokens += UInt64(tokens)
            Self.push(&s, ms)
        }
    }

    /// Activations sent to the next stage: the bytes of the whole multipart message, for `rows` rows.
    public func recordForward(bytes: Int, rows: Int) {
        state.withLock { s in
            s.forwardedBytes += UInt64(bytes)
            s.forwardedRows += UInt64(rows)
        }
    }

    public var forwarded: (bytes: UInt64, rows: UInt64) { state.withLock { ($0.forwardedBytes, $0.forwardedRows) } }

    public func recordExpertCall(ms: Double, countLatency: Bool) {
        state.withLock { s in
            s.expertCalls += 1
            if countLatency { Self.push(&s, ms) }
        }
    }

    private static func push(_ s: inout State, _ ms: Double) {
        if s.latencies.count < window { s.latencies.append(ms) } else { s.latencies[s.next] = ms }
        s.next = (s.next + 1) % window
    }

    /// (tokens, expert calls, p50 ms, p99 ms).
    public func snapshot() -> (tokens: UInt64, expertCalls: UInt64, p50: Double, p99: Double) {
        state.withLock { s in
            let sorted = s.latencies.sorted()
            func pct(_ p: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
            return (s.tokens, s.expertCalls, pct(0.5), pct(0.99))
        }
    }

    /// Resident set size of this process, from /proc/self/statm.
    public static func rssBytes() -> UInt64 {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = UInt64(fields[1]) else { return 0 }
        return pages * UInt64(sysconf(Int32(_SC_PAGESIZE)))
    }
}
