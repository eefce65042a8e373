#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Kernels
import Model
import Synchronization
import Telemetry
import Wire

/// What a worker counts, in its own metrics registry (the catalog's `WorkerMetric` entries): the message loop,
/// the stage queue and the expert queue count into it, and the heartbeat carries its samples. Step latencies
/// are kept as a ring of the most recent 1024 and reported as quantile gauges.
public final class WorkerMetrics: Sendable {
    public let registry = MetricsRegistry()
    private let latencies = Mutex<(ring: [Double], next: Int)>(([], 0))
    static let window = 1024

    public init() {}

    public func recordStep(tokens: Int, ms: Double) {
        registry.handle(WorkerMetric.tokens).increment(by: Double(tokens))
        push(ms)
    }

    /// Activations sent to the next stage: the bytes of the whole multipart message, for `rows` rows.
    public func recordForward(bytes: Int, rows: Int) {
        registry.handle(WorkerMetric.forwardedBytes).increment(by: Double(bytes))
        registry.handle(WorkerMetric.forwardedRows).increment(by: Double(rows))
    }

    public func recordExpertCall(ms: Double, countLatency: Bool) {
        registry.handle(WorkerMetric.expertCalls).increment()
        registry.handle(WorkerMetric.expertServeSeconds).increment(by: ms / 1000)
        if countLatency { push(ms) }
    }

    private func push(_ ms: Double) {
        latencies.withLock { l in
            if l.ring.count < Self.window { l.ring.append(ms) } else { l.ring[l.next] = ms }
            l.next = (l.next + 1) % Self.window
        }
    }

    /// Every figure now: the counters as counted, and the gauges read at this moment (memory, latency
    /// quantiles, the figures the shard and its offload cache keep themselves).
    public func samples(resident: Int, expertCallBytes: UInt64, offload: BudgetedExperts?, refusedPeers: Int = 0,
                        remote: RemoteExperts.Timing.Totals? = nil, grammar: (seconds: Double, tokens: Int)? = nil,
                        kept: (entries: Int, positions: Int, room: Int)? = nil, expertReads: (passes: UInt64, experts: UInt64)? = nil) -> [MetricSample] {
        let sorted = latencies.withLock { $0.ring }.sorted()
        func pct(_ p: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] / 1000 }
        registry.handle(WorkerMetric.stepP50).set(pct(0.5))
        registry.handle(WorkerMetric.stepP99).set(pct(0.99))
        registry.handle(WorkerMetric.rss).set(Double(Self.rssBytes()))
        registry.handle(WorkerMetric.resident).set(Double(resident))
        registry.handle(WorkerMetric.expertCallBytes).advance(toTotal: Double(expertCallBytes))
        registry.handle(WorkerMetric.refusedPeers).advance(toTotal: Double(refusedPeers))
        if let grammar {
            registry.handle(WorkerMetric.constrainedTokens).advance(toTotal: Double(grammar.tokens))
            registry.handle(WorkerMetric.grammarSeconds).advance(toTotal: grammar.seconds)
        }
        if let kept {
            registry.handle(WorkerMetric.keptPrefixes).set(Double(kept.entries))
            registry.handle(WorkerMetric.keptPositions).set(Double(kept.positions))
            registry.handle(WorkerMetric.kvRoom).set(Double(kept.room))
        }
        if let expertReads { registry.record(expertReads: expertReads) }
        if let offload { registry.record(offload: offload) }
        if let remote {
            registry.handle(WorkerMetric.remoteLayers).advance(toTotal: Double(remote.layers))
            registry.handle(WorkerMetric.remoteCalls).advance(toTotal: Double(remote.calls))
            registry.handle(WorkerMetric.remoteLocalSeconds).advance(toTotal: remote.localSeconds)
            registry.handle(WorkerMetric.remoteWaitSeconds).advance(toTotal: remote.waitSeconds)
        }
        return registry.samples()
    }

    /// Resident set size of this process, from /proc/self/statm.
    public static func rssBytes() -> UInt64 {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = UInt64(fields[1]) else { return 0 }
        return pages * UInt64(sysconf(Int32(_SC_PAGESIZE)))
    }
}

public extension MetricsRegistry {
    /// The offload cache's counters (it owns them) brought into this registry: a worker's heartbeat, or
    /// `conclave serve` in one process at each scrape.
    func record(offload cache: BudgetedExperts, labels: [MetricLabel] = []) {
        let c = cache.snapshot
        let figures: [(MetricSpec, Double)] = [
            (WorkerMetric.offloadSlots, Double(cache.slotCount)), (WorkerMetric.offloadPaged, Double(cache.pagedCount)),
            (WorkerMetric.offloadHits, Double(c.hits)), (WorkerMetric.offloadMisses, Double(c.misses)),
            (WorkerMetric.offloadReadBytes, Double(c.bytesRead)), (WorkerMetric.offloadReadSeconds, c.readSeconds),
            (WorkerMetric.offloadPrefetchIssued, Double(c.prefetchIssued)), (WorkerMetric.offloadPrefetchUsed, Double(c.prefetchUsed)),
            (WorkerMetric.offloadPrefetchWasted, Double(c.prefetchWasted)), (WorkerMetric.offloadStall, c.stallSeconds),
        ]
        for (spec, value) in figures { handle(spec, labels).advance(toTotal: value) }
    }
}
