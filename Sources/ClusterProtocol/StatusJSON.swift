import JSON
import Model
import Telemetry
import Wire

public extension Conclave_V1_StatusReply {
    /// The cluster's status as `conclave status --json` prints it and `GET /v1/cluster` answers.
    var json: JSONValue {
        let s = self
        return .object([
            ("model", .string(s.model)),
            ("workers", .array(s.workers.map(\.json))),
            ("sequences", .int(Int(s.sequences))),
            ("tokens_generated", .uint(s.tokensGenerated)),
            ("requests_failed", .int(Int(s.requestsFailed))),
            ("micro_batches", .int(Int(s.microBatches))), ("peak_in_flight", .int(Int(s.peakInFlight))),
            ("plan", .string(s.plan)),
            ("epoch", .uint(s.epoch)),
            ("security", .string(s.security.isEmpty ? "none" : s.security)),
            ("refused_peers", .uint(s.totalRefusedPeers)),
            ("draft", s.hasDraft ? .object([("proposed", .uint(s.draft.proposed)), ("accepted", .uint(s.draft.accepted)), ("passes", .uint(s.draft.passes)),
                                            ("acceptance", .double(round3(s.draft.stats.acceptanceRate))),
                                            ("tokens_per_pass", .double(round3(s.draft.stats.tokensPerPass)))]) : .null),
            ("recoveries", .array(s.recoveries.map { r in
                .object([("epoch", .uint(r.epoch)), ("cause", .string(r.cause)), ("seconds", .double(r.seconds)),
                         ("sequences_replayed", .int(Int(r.sequencesReplayed))), ("recovered", .bool(r.recovered)), ("plan", .string(r.plan)),
                         ("reloaded", .array(r.reloaded.map { .string($0) }))])
            })),
        ])
    }
}

public extension Conclave_V1_StatusReply {
    /// Connections refused by the coordinator's client endpoint and by every worker's.
    var totalRefusedPeers: UInt64 { workers.reduce(refusedPeers) { $0 + UInt64($1.samples.value(WorkerMetric.refusedPeers)) } }
}

public extension Conclave_V1_WorkerStatus {
    /// The worker's samples (checked when its heartbeat came).
    var samples: [MetricSample] { metrics.map { MetricSample(name: $0.name, labels: $0.labels.map { MetricLabel($0.name, $0.value) }, value: $0.value) } }

    /// What the coordinator knows of the worker (state, shard, budget), then every catalog figure with a status
    /// key, under that key (`offload.` keys in their own object), then the rates derived from them.
    var json: JSONValue {
        var top: [(String, JSONValue)] = [
            ("name", .string(name)), ("endpoint", .string(endpoint)), ("state", .string(state)),
            ("layers", .array(endLayer > firstLayer ? [.int(Int(firstLayer)), .int(Int(endLayer))] : [])),
            ("experts", .int(Int(experts))), ("memory_budget", .uint(memoryBudget)),
            ("resident_bytes", .uint(residentBytes)), ("heartbeat_age_s", .double(heartbeatAgeS)),
            ("read_gbps", .double((readBytesPerSecond / 1e6).rounded() / 1000)), ("round_trip_ms", .double((roundTripS * 1e6).rounded() / 1000)),
        ]
        var offload: [(String, JSONValue)] = []
        let values = samples
        for spec in WorkerMetric.all {
            guard let key = spec.statusKey else { continue }
            let v = values.value(spec) * spec.statusScale
            let fractional = spec.statusScale != 1 || spec.name.hasSuffix("_seconds") || spec.name.hasSuffix("_seconds_total")
            let value: JSONValue = fractional ? .double(v) : .int(Int(v))
            if key.hasPrefix("offload.") { offload.append((String(key.dropFirst(8)), value)) } else { top.append((key, value)) }
        }
        let hits = values.value(WorkerMetric.offloadHits), uses = hits + values.value(WorkerMetric.offloadMisses)
        let read = values.value(WorkerMetric.offloadReadBytes), readSeconds = values.value(WorkerMetric.offloadReadSeconds)
        offload.append(("hit_rate", .double(uses > 0 ? hits / uses : 0)))
        offload.append(("read_gbps", .double(readSeconds > 0 ? read / readSeconds / 1e9 : 0)))
        top.append(("offload", .object(offload)))
        return .object(top)
    }
}

public extension Conclave_V1_DraftStatus {
    var stats: DraftStats { DraftStats(proposed: Int(clamping: proposed), accepted: Int(clamping: accepted), passes: Int(clamping: passes)) }
}

private func round3(_ x: Double) -> Double { (x * 1000).rounded() / 1000 }
