import JSON
import Wire

public extension Conclave_V1_StatusReply {
    /// The cluster's status as `conclave status --json` prints it and `GET /v1/cluster` answers.
    var json: JSONValue {
        let s = self
        return .object([
            ("model", .string(s.model)),
            ("workers", .array(s.workers.map { w in
                .object([
                    ("name", .string(w.name)), ("endpoint", .string(w.endpoint)), ("state", .string(w.state)),
                    ("layers", .array(w.endLayer > w.firstLayer ? [.int(Int(w.firstLayer)), .int(Int(w.endLayer))] : [])),
                    ("experts", .int(Int(w.experts))), ("memory_budget", .uint(w.memoryBudget)),
                    ("resident_bytes", .uint(w.residentBytes)), ("rss_bytes", .uint(w.rssBytes)),
                    ("tokens", .uint(w.tokens)), ("expert_calls", .uint(w.expertCalls)),
                    ("p50_ms", .double(w.p50Ms)), ("p99_ms", .double(w.p99Ms)), ("heartbeat_age_s", .double(w.heartbeatAgeS)),
                    ("forwarded_bytes", .uint(w.forwardedBytes)), ("forwarded_rows", .uint(w.forwardedRows)),
                    ("expert_call_bytes", .uint(w.expertCallBytes)),
                    ("offload", .object([
                        ("slots", .int(Int(w.offload.slots))), ("paged_experts", .int(Int(w.offload.pagedExperts))),
                        ("hits", .uint(w.offload.hits)), ("misses", .uint(w.offload.misses)),
                        ("hit_rate", .double(w.offload.hits + w.offload.misses > 0 ? Double(w.offload.hits) / Double(w.offload.hits + w.offload.misses) : 0)),
                        ("bytes_read", .uint(w.offload.bytesRead)),
                        ("read_gbps", .double(w.offload.readSeconds > 0 ? Double(w.offload.bytesRead) / w.offload.readSeconds / 1e9 : 0)),
                        ("prefetch_issued", .uint(w.offload.prefetchIssued)), ("prefetch_used", .uint(w.offload.prefetchUsed)),
                        ("stall_ms", .double(w.offload.stallMs)),
                    ])),
                ])
            })),
            ("sequences", .int(Int(s.sequences))),
            ("tokens_generated", .uint(s.tokensGenerated)),
            ("requests_failed", .int(Int(s.requestsFailed))),
            ("micro_batches", .int(Int(s.microBatches))), ("peak_in_flight", .int(Int(s.peakInFlight))),
            ("plan", .string(s.plan)),
        ])
    }
}
