import Telemetry
import Wire

public extension Conclave_V1_StatusReply {
    /// The workers' figures (counted in their processes, reported by heartbeat) as Prometheus series in the
    /// coordinator's registry, refreshed at each scrape of GET /metrics.
    func mirror(into m: MetricsRegistry) {
        for w in workers {
            let l = [("worker", w.name)]
            for state in ["joining", "loading", "ready", "suspect", "down"] {
                m.gauge("conclave_worker_state", l + [("state", state)], w.state == state ? 1 : 0)
            }
            m.gauge("conclave_worker_memory_budget_bytes", l, Double(w.memoryBudget))
            m.gauge("conclave_worker_resident_bytes", l, Double(w.residentBytes))
            m.gauge("conclave_worker_rss_bytes", l, Double(w.rssBytes))
            m.gauge("conclave_worker_step_latency_seconds", l + [("quantile", "0.5")], w.p50Ms / 1000)
            m.gauge("conclave_worker_step_latency_seconds", l + [("quantile", "0.99")], w.p99Ms / 1000)
            m.gauge("conclave_worker_heartbeat_age_seconds", l, max(0, w.heartbeatAgeS))
            m.mirror("conclave_worker_tokens_total", l, total: Double(w.tokens))
            m.mirror("conclave_worker_expert_calls_total", l, total: Double(w.expertCalls))
            m.mirror("conclave_worker_forwarded_bytes_total", l, total: Double(w.forwardedBytes))
            m.mirror("conclave_worker_expert_call_bytes_total", l, total: Double(w.expertCallBytes))
            guard w.offload.slots > 0 else { continue }
            let o = w.offload
            m.gauge("conclave_offload_slots", l, Double(o.slots))
            m.gauge("conclave_offload_paged_experts", l, Double(o.pagedExperts))
            m.mirror("conclave_offload_hits_total", l, total: Double(o.hits))
            m.mirror("conclave_offload_misses_total", l, total: Double(o.misses))
            m.mirror("conclave_offload_read_bytes_total", l, total: Double(o.bytesRead))
            m.mirror("conclave_offload_prefetch_issued_total", l, total: Double(o.prefetchIssued))
            m.mirror("conclave_offload_prefetch_used_total", l, total: Double(o.prefetchUsed))
            m.mirror("conclave_offload_stall_seconds_total", l, total: o.stallMs / 1000)
        }
    }
}
