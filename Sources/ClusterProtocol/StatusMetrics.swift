import Telemetry
import Wire

public extension Conclave_V1_StatusReply {
    /// The coordinator's view of each worker (its state, budget, heartbeat age) as gauges, and the figures the
    /// worker counted (its heartbeat's samples) taken into the coordinator's registry with a `worker` label;
    /// refreshed at each scrape of GET /metrics.
    func mirror(into m: MetricsRegistry) {
        let c = ServingMetrics.catalog
        m.handle(c.refusedPeers).advance(toTotal: Double(refusedPeers))
        for w in workers {
            let l = MetricLabel("worker", w.name)
            for state in ["joining", "loading", "ready", "suspect", "down", "spare", "draining", "left"] {
                m.handle(c.workerState, [l, MetricLabel("state", state)]).set(w.state == state ? 1 : 0)
            }
            m.handle(c.workerBudget, [l]).set(Double(w.memoryBudget))
            m.handle(c.workerHeartbeatAge, [l]).set(max(0, w.heartbeatAgeS))
            m.ingest(w.samples, labels: [MetricLabel("worker", w.name)], catalog: WorkerMetric.bySeries)
        }
    }
}
