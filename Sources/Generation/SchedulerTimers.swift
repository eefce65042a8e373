import CoreMetrics

/// The scheduler's latencies, as swift-metrics timers of its registry's factory (Prometheus histograms on
/// `GET /metrics`). Counts and gauges are catalog entries (`ServingMetrics`), counted through the registry.
struct SchedulerTimers: Sendable {
    let timeToFirstToken: Timer
    let interToken: Timer
    let requestDuration: Timer

    init(factory: MetricsFactory) {
        timeToFirstToken = Timer(label: "conclave_time_to_first_token_seconds", factory: factory)
        interToken = Timer(label: "conclave_inter_token_latency_seconds", factory: factory)
        requestDuration = Timer(label: "conclave_request_duration_seconds", factory: factory)
    }

    func seconds(_ timer: Timer, _ s: Double) { timer.recordNanoseconds(Int64(max(0, s) * 1e9)) }
}
