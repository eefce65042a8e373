import JSON
import Model
import Telemetry
import Wire

public extension Conclave_V1_StatusReply {
    /// The cluster's status as `conclave status --json` prints it and `GET /v1/cluster` answers.
    var json: JSONValue {
        let s = self
        let (figures, groups) = s.serving
        var top: [(String, JSONValue)] = [("model", .string(s.model)), ("workers", .array(s.workers.map(\.json)))]
        top += figures.map { ($0.key, .uint(UInt64(max(0, $0.value)))) }
        top += [
            ("micro_batches", .int(Int(s.microBatches))),
            ("plan", .string(s.plan)),
            ("epoch", .uint(s.epoch)),
            ("security", .string(s.security.isEmpty ? "none" : s.security)),
            ("refused_peers", .uint(s.totalRefusedPeers)),
        ]
        for (name, entries) in groups {
            var object: [(String, JSONValue)] = entries.map { ($0.key, .uint(UInt64(max(0, $0.value)))) }
            if name == "draft", let d = s.draftStats {
                object += [("acceptance", .double(round3(d.acceptanceRate))), ("tokens_per_pass", .double(round3(d.tokensPerPass)))]
            }
            top.append((name, .object(object)))
        }
        if s.draftStats == nil { top.append(("draft", .null)) }
        top.append(("recoveries", .array(s.recoveries.map { r in
            .object([("epoch", .uint(r.epoch)), ("cause", .string(r.cause)), ("seconds", .double(r.seconds)),
                     ("sequences_replayed", .int(Int(r.sequencesReplayed))), ("recovered", .bool(r.recovered)), ("plan", .string(r.plan)),
                     ("reloaded", .array(r.reloaded.map { .string($0) }))])
        })))
        return .object(top)
    }

    /// The serving process's figures (checked samples of the catalog's entries).
    var samples: [MetricSample] { metrics.map { MetricSample(name: $0.name, labels: $0.labels.map { MetricLabel($0.name, $0.value) }, value: $0.value) } }

    /// Every catalog entry the reply carries, under its status key, in the catalog's order: plain keys first,
    /// then those with a dot grouped by what stands before it (`draft.proposed` → group `draft`, key `proposed`).
    var serving: (figures: [(key: String, value: Double)], groups: [(name: String, entries: [(key: String, value: Double)])]) {
        let values = samples
        let present = Set(values.map { MetricSample.seriesName($0.name, $0.labels) })
        var figures: [(key: String, value: Double)] = [], groups: [(name: String, entries: [(key: String, value: Double)])] = []
        for spec in ServingMetrics.catalog.all {
            guard let key = spec.statusKey, present.contains(spec.description) else { continue }
            let v = values.value(spec) * spec.statusScale
            guard let dot = key.firstIndex(of: ".") else { figures.append((key, v)); continue }
            let (group, sub) = (String(key[..<dot]), String(key[key.index(after: dot)...]))
            if let i = groups.firstIndex(where: { $0.name == group }) { groups[i].entries.append((sub, v)) } else { groups.append((group, [(sub, v)])) }
        }
        return (figures, groups)
    }

    /// The draft's figures, when speculative decoding is on (the reply carries them only then).
    var draftStats: DraftStats? {
        let c = ServingMetrics.catalog, values = samples
        guard values.contains(where: { $0.name == c.draftProposed.name }) else { return nil }
        return DraftStats(proposed: Int(values.value(c.draftProposed)), accepted: Int(values.value(c.draftAccepted)), passes: Int(values.value(c.draftPasses)))
    }

    /// The value of a serving figure (0 when the reply does not carry it).
    func value(_ spec: KeyPath<ServingMetrics, MetricSpec>) -> Double { samples.value(ServingMetrics.catalog[keyPath: spec]) }
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
            ("planned_bytes", .uint(plannedBytes)), ("resident_bytes", .uint(residentBytes)), ("heartbeat_age_s", .double(heartbeatAgeS)),
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

private func round3(_ x: Double) -> Double { (x * 1000).rounded() / 1000 }
