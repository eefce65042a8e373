import Telemetry
import Wire

public extension Conclave_V1_StatusReply {
    static let refusedPeersSpec = MetricSpec(.counter, "conclave_refused_peers_total",
                                             help: "Connections the coordinator's client endpoint refused (CurveZMQ: an unlisted key, or none); each worker's are conclave_worker_refused_peers_total.")

    /// The coordinator's view of each worker (its state, budget, heartbeat age) as gauges, and the figures the
    /// worker counted (its heartbeat's samples) taken into the coordinator's registry with a `worker` label;
    /// refreshed at each scrape of GET /metrics.
    func mirror(into m: MetricsRegistry) {
        m.handle(Self.refusedPeersSpec).advance(toTotal: Double(refusedPeers))
        for w in workers {
            let l = [("worker", w.name)]
            for state in ["joining", "loading", "ready", "suspect", "down"] {
                m.gauge("conclave_worker_state", help: "1 for the worker's state as the coordinator sees it.", l + [("state", state)], w.state == state ? 1 : 0)
            }
            m.gauge("conclave_worker_memory_budget_bytes", help: "The worker's memory budget in force (the smaller of its own and the cluster file's).", l, Double(w.memoryBudget))
            m.gauge("conclave_worker_heartbeat_age_seconds", help: "Seconds since the worker's last heartbeat.", l, max(0, w.heartbeatAgeS))
            m.ingest(w.samples, labels: [MetricLabel("worker", w.name)], catalog: WorkerMetric.bySeries)
        }
    }
}
