import CoreMetrics
import Prometheus
import Synchronization

/// The process's one metrics registry. Code that counts uses the swift-metrics API through `factory` (a counter
/// is one line where the event happens); `GET /metrics` is `exposition()`. Figures that other processes count
/// (workers' tokens, expert calls, offload reads) are mirrored in at scrape time with `mirror`, so they too come
/// out of the same registry, under Prometheus's conventions (`conclave_…_total`, `_seconds`, `_bytes`).
public final class MetricsRegistry: Sendable {
    public let registry: PrometheusCollectorRegistry
    public let factory: PrometheusMetricsFactory
    private let mirrored = Mutex<[String: Double]>([:])

    public init() {
        registry = PrometheusCollectorRegistry()
        var f = PrometheusMetricsFactory(registry: registry)
        // Latencies of a token or a request: 1 ms to 2 min.
        f.defaultDurationHistogramBuckets = [.milliseconds(1), .milliseconds(2.5), .milliseconds(5), .milliseconds(10), .milliseconds(25),
                                             .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1),
                                             .seconds(2.5), .seconds(5), .seconds(10), .seconds(30), .seconds(120)]
        factory = f
    }

    static let mirroredHelp = "Reported by another process of the cluster (a worker's heartbeat) and mirrored at scrape time."

    /// Our names carry their unit already (`_total`, `_bytes`, `_seconds`), so the descriptor adds none.
    static func descriptor(_ name: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: mirroredHelp)
    }

    /// The text exposition format (version 0.0.4), what Prometheus scrapes.
    public func exposition() -> String { registry.emitToString() }

    /// Sets a gauge to a value another process reported.
    public func gauge(_ name: String, _ labels: [(String, String)] = [], _ value: Double) {
        registry.makeGauge(descriptor: Self.descriptor(name), labels: labels).set(value)
    }

    /// Brings a counter up to a total another process reported: it moves by the difference since the last
    /// scrape (a total that went down means that process restarted, and its new total is added).
    public func mirror(_ name: String, _ labels: [(String, String)], total: Double) {
        let key = name + "|" + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
        let delta = mirrored.withLock { m -> Double in
            let last = m[key] ?? 0
            m[key] = total
            return total >= last ? total - last : total
        }
        let c = registry.makeCounter(descriptor: Self.descriptor(name), labels: labels)
        if delta > 0 { c.increment(by: delta) }
    }
}
