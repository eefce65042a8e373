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
                        remote: RemoteExperts.Timing.Totals? = nil) -> [MetricSample] {
        let sorted = latencies.withLock { $0.ring }.sorted()
        func pct(_ p: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] / 1000 }
        registry.handle(WorkerMetric.stepP50).set(pct(0.5))
        registry.handle(WorkerMetric.stepP99).set(pct(0.99))
        registry.handle(WorkerMetric.rss).set(Double(Self.rssBytes()))
        registry.handle(WorkerMetric.resident).set(Double(resident))
        registry.handle(WorkerMetric.expertCallBytes).advance(toTotal: Double(expertCallBytes))
        registry.handle(WorkerMetric.refusedPeers).advance(toTotal: Double(refusedPeers))
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

// MARK: On the wire

public extension Conclave_V1_MetricSample {
    init(_ s: MetricSample) {
        self.init()
        name = s.name
        labels = s.labels.map { l in
            var p = Conclave_V1_MetricLabel()
            p.name = l.name
            p.value = l.value
            return p
        }
        value = s.value
    }
}

public extension MetricSample {
    /// Limits on what a peer may report: a heartbeat is a few dozen series of a few labels.
    static let maxPerMessage = 512
    static let maxLabels = 8
    static let maxText = 128

    /// A sample from the wire, every field checked: a Prometheus name and label names, bounded text, a finite
    /// value (never negative for a counter).
    init(checking p: Conclave_V1_MetricSample) throws(WireError) {
        func name(_ s: String, _ what: String) throws(WireError) {
            let ok = !s.isEmpty && s.utf8.count <= Self.maxText && s.utf8.allSatisfy { c in
                (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c == 95 || (c >= 48 && c <= 57)
            } && !(s.utf8.first! >= 48 && s.utf8.first! <= 57)
            guard ok else { throw WireError(.malformed, "metric \(what) '\(s.prefix(40))' is not a Prometheus name") }
        }
        try name(p.name, "name")
        guard p.labels.count <= Self.maxLabels else { throw WireError(.malformed, "metric \(p.name) has \(p.labels.count) labels (at most \(Self.maxLabels))") }
        for l in p.labels {
            try name(l.name, "label")
            guard l.value.utf8.count <= Self.maxText else { throw WireError(.malformed, "metric \(p.name) has a label value over \(Self.maxText) bytes") }
        }
        guard p.value.isFinite else { throw WireError(.malformed, "metric \(p.name) has a non-finite value") }
        self.init(name: p.name, labels: p.labels.map { MetricLabel($0.name, $0.value) }, value: p.value)
    }

    /// A report's samples, checked; those the catalog does not name (a newer worker's) are left out.
    static func checked(_ report: [Conclave_V1_MetricSample], catalog: [String: MetricSpec]) throws(WireError) -> [MetricSample] {
        guard report.count <= maxPerMessage else { throw WireError(.tooLarge, "\(report.count) metric samples in one report (at most \(maxPerMessage))") }
        var out: [MetricSample] = []
        for p in report {
            let s = try MetricSample(checking: p)
            guard let spec = catalog[MetricSample.seriesName(s.name, s.labels)] else { continue }
            if spec.kind == .counter, s.value < 0 { throw WireError(.malformed, "counter \(s.name) is negative") }
            out.append(s)
        }
        return out
    }
}
