import CoreMetrics
import Prometheus
import Synchronization

/// The process's one metrics registry. Figures of the catalog (`MetricSpec`) are counted through `counter` and
/// `gauge` handles, which keep their value readable: `samples()` is what a worker's heartbeat carries. Timings
/// and request counts use the swift-metrics API through `factory` (Scheduler, HTTP). `GET /metrics` is
/// `exposition()`; figures another process counted (a worker's samples) come in through `ingest`, so they too
/// come out of this registry, under Prometheus's conventions (`conclave_…_total`, `_seconds`, `_bytes`).
public final class MetricsRegistry: Sendable {
    public let registry: PrometheusCollectorRegistry
    public let factory: PrometheusMetricsFactory

    /// A series of the catalog: its value, and the Prometheus collector it moves with.
    public final class Handle: Sendable {
        public let spec: MetricSpec
        let labels: [MetricLabel]
        private let state: Mutex<(value: Double, reported: Double)>
        private let counter: Prometheus.Counter?
        private let gauge: Prometheus.Gauge?

        init(spec: MetricSpec, labels: [MetricLabel], registry: PrometheusCollectorRegistry) {
            self.spec = spec
            self.labels = labels
            state = Mutex((0, 0))
            let d = MetricNameDescriptor(metricName: spec.name, unitName: "", helpText: spec.help)
            let l = labels.map { ($0.name, $0.value) }
            switch spec.kind {
            case .counter: (counter, gauge) = (registry.makeCounter(descriptor: d, labels: l), nil)
            case .gauge: (counter, gauge) = (nil, registry.makeGauge(descriptor: d, labels: l))
            }
        }

        public var value: Double { state.withLock { $0.value } }

        /// Counts `amount` more (counters).
        public func increment(by amount: Double = 1) {
            guard amount > 0 else { return }
            state.withLock { $0.value += amount }
            counter?.increment(by: amount)
        }

        /// Sets the value (gauges).
        public func set(_ value: Double) {
            state.withLock { $0.value = value }
            gauge?.set(value)
        }

        /// Brings a counter up to a total counted elsewhere (the offload cache's own counters, another process's
        /// report): it moves by the difference since the last report. A total that went down means its owner
        /// restarted, and the new total is added. Gauges are set.
        public func advance(toTotal total: Double) {
            guard spec.kind == .counter else { return set(total) }
            let delta = state.withLock { s -> Double in
                let d = total >= s.reported ? total - s.reported : total
                s.reported = total
                s.value += d
                return d
            }
            if delta > 0 { counter?.increment(by: delta) }
        }

        var sample: MetricSample { MetricSample(name: spec.name, labels: labels, value: value) }
    }

    private let handles = Mutex<[String: Handle]>([:])
    /// Series in the order they were first made, so samples come out in a stable order.
    private let order = Mutex<[String]>([])

    public init() {
        registry = PrometheusCollectorRegistry()
        var f = PrometheusMetricsFactory(registry: registry)
        // Latencies of a token or a request: 1 ms to 2 min.
        f.defaultDurationHistogramBuckets = [.milliseconds(1), .milliseconds(2.5), .milliseconds(5), .milliseconds(10), .milliseconds(25),
                                             .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1),
                                             .seconds(2.5), .seconds(5), .seconds(10), .seconds(30), .seconds(120)]
        factory = f
    }

    /// The handle of `spec`'s series with `labels` added to the spec's own.
    public func handle(_ spec: MetricSpec, _ labels: [MetricLabel] = []) -> Handle {
        let all = (spec.labels + labels).sorted()
        let key = MetricSample.seriesName(spec.name, all)
        return handles.withLock { h in
            if let existing = h[key] { return existing }
            let made = Handle(spec: spec, labels: all, registry: registry)
            h[key] = made
            order.withLock { $0.append(key) }
            return made
        }
    }

    /// Every catalog series made here, with its current value.
    public func samples() -> [MetricSample] {
        let keys = order.withLock { $0 }
        return handles.withLock { h in keys.compactMap { h[$0]?.sample } }
    }

    /// Takes in samples another process reported (already checked): each series of the catalog is set or
    /// advanced, with `labels` added (which worker). Names the catalog does not know are left out.
    public func ingest(_ samples: [MetricSample], labels: [MetricLabel], catalog: [String: MetricSpec]) {
        for s in samples {
            guard let spec = catalog[MetricSample.seriesName(s.name, s.labels)] else { continue }
            handle(spec, labels).advance(toTotal: s.value)
        }
    }

    /// The text exposition format (version 0.0.4), what Prometheus scrapes.
    public func exposition() -> String { registry.emitToString() }

    /// A gauge of the coordinator's own state (a worker's state, its budget), set at scrape time.
    public func gauge(_ name: String, help: String, _ labels: [(String, String)] = [], _ value: Double) {
        registry.makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels).set(value)
    }
}
