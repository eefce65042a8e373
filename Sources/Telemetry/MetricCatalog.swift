/// A metric the product counts: its Prometheus name (base units, `_total` for counters), kind, help text, the
/// labels that tell its series apart, and where `conclave status` (text and `--json`) shows it. The catalog is
/// data: a worker's heartbeat, the coordinator's StatusReply, `status` and `GET /metrics` all read figures
/// through these entries, so adding a figure is one entry in the catalog and one call where it happens.
public struct MetricSpec: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable { case counter, gauge }
    public let name: String
    public let kind: Kind
    public let help: String
    /// Labels fixed by this entry (a quantile of a latency), in the series' identity.
    public let labels: [MetricLabel]
    /// Key in each worker's object of `status --json` ("tokens", "offload.hits"); nil: not shown there.
    public let statusKey: String?
    /// Multiplies the base-unit value for the status key (seconds shown as ms: 1000).
    public let statusScale: Double

    public init(_ kind: Kind, _ name: String, labels: [MetricLabel] = [], help: String, status: String? = nil, scale: Double = 1) {
        self.kind = kind
        self.name = name
        self.help = help
        self.labels = labels.sorted()
        statusKey = status
        statusScale = scale
    }

    public var description: String { MetricSample.seriesName(name, labels) }
}

public struct MetricLabel: Sendable, Hashable, Comparable {
    public let name: String
    public let value: String
    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
    public static func < (a: MetricLabel, b: MetricLabel) -> Bool { (a.name, a.value) < (b.name, b.value) }
}

/// One series' value at one moment: what heartbeats carry and what the coordinator keeps per worker.
public struct MetricSample: Sendable, Hashable {
    public let name: String
    /// Sorted by name.
    public let labels: [MetricLabel]
    public let value: Double
    public init(name: String, labels: [MetricLabel], value: Double) {
        self.name = name
        self.labels = labels.sorted()
        self.value = value
    }

    public static func seriesName(_ name: String, _ labels: [MetricLabel]) -> String {
        labels.isEmpty ? name : name + "{" + labels.map { "\($0.name)=\"\($0.value)\"" }.joined(separator: ",") + "}"
    }
}

/// The figures a worker counts and reports in its heartbeat (its stage, its experts, its offload cache).
/// The coordinator accepts exactly these from a worker and exports them with a `worker` label.
public enum WorkerMetric {
    public static let tokens = MetricSpec(.counter, "conclave_worker_tokens_total", help: "Rows this worker's stage computed.", status: "tokens")
    public static let expertCalls = MetricSpec(.counter, "conclave_worker_expert_calls_total", help: "Expert calls this worker served.", status: "expert_calls")
    public static let forwardedBytes = MetricSpec(.counter, "conclave_worker_forwarded_bytes_total", help: "Bytes of activations sent to the next stage.", status: "forwarded_bytes")
    public static let forwardedRows = MetricSpec(.counter, "conclave_worker_forwarded_rows_total", help: "Rows of activations sent to the next stage.", status: "forwarded_rows")
    public static let expertCallBytes = MetricSpec(.counter, "conclave_worker_expert_call_bytes_total", help: "Bytes of expert calls this worker sent to other workers.", status: "expert_call_bytes")
    public static let expertServeSeconds = MetricSpec(.counter, "conclave_worker_expert_serve_seconds_total", help: "Time computing the expert calls this worker served.", status: "expert_serve_seconds")
    public static let remoteLayers = MetricSpec(.counter, "conclave_worker_remote_layers_total", help: "MoE layers of this worker's stage that called other workers' experts.", status: "remote_layers")
    public static let remoteCalls = MetricSpec(.counter, "conclave_worker_remote_calls_total", help: "Expert calls this worker's stage sent to other workers (one per remote worker per layer).", status: "remote_calls")
    public static let remoteLocalSeconds = MetricSpec(.counter, "conclave_worker_remote_local_seconds_total", help: "In those layers, time computing this worker's own experts while the calls were out.", status: "remote_local_seconds")
    public static let remoteWaitSeconds = MetricSpec(.counter, "conclave_worker_remote_wait_seconds_total", help: "In those layers, time waiting for other workers' replies after the local experts were done.", status: "remote_wait_seconds")
    public static let rss = MetricSpec(.gauge, "conclave_worker_rss_bytes", help: "Resident set size of the worker process.", status: "rss_bytes")
    public static let resident = MetricSpec(.gauge, "conclave_worker_resident_bytes", help: "Bytes of weights, KV and slots the worker holds.")
    // One help text for both quantiles: Prometheus requires it per name.
    static let stepHelp = "Time of a stage step or expert call, as a quantile over the last 1024."
    public static let stepP50 = MetricSpec(.gauge, "conclave_worker_step_latency_seconds", labels: [MetricLabel("quantile", "0.5")],
                                           help: stepHelp, status: "p50_ms", scale: 1000)
    public static let stepP99 = MetricSpec(.gauge, "conclave_worker_step_latency_seconds", labels: [MetricLabel("quantile", "0.99")],
                                           help: stepHelp, status: "p99_ms", scale: 1000)
    public static let offloadSlots = MetricSpec(.gauge, "conclave_offload_slots", help: "Slots of the expert offload cache.", status: "offload.slots")
    public static let offloadPaged = MetricSpec(.gauge, "conclave_offload_paged_experts", help: "Experts paged through the offload cache.", status: "offload.paged_experts")
    public static let offloadHits = MetricSpec(.counter, "conclave_offload_hits_total", help: "Uses of a paged expert found in a slot.", status: "offload.hits")
    public static let offloadMisses = MetricSpec(.counter, "conclave_offload_misses_total", help: "Uses of a paged expert read from disk first.", status: "offload.misses")
    public static let offloadReadBytes = MetricSpec(.counter, "conclave_offload_read_bytes_total", help: "Bytes the offload cache read from the model file.", status: "offload.bytes_read")
    public static let offloadReadSeconds = MetricSpec(.counter, "conclave_offload_read_seconds_total", help: "Time spent in those reads (summed over I/O threads).", status: "offload.read_seconds")
    public static let offloadPrefetchIssued = MetricSpec(.counter, "conclave_offload_prefetch_issued_total", help: "Experts read ahead for the next layer.", status: "offload.prefetch_issued")
    public static let offloadPrefetchUsed = MetricSpec(.counter, "conclave_offload_prefetch_used_total", help: "Experts read ahead that were used.", status: "offload.prefetch_used")
    public static let offloadPrefetchWasted = MetricSpec(.counter, "conclave_offload_prefetch_wasted_total", help: "Experts read ahead and evicted unused.", status: "offload.prefetch_wasted")
    public static let offloadStall = MetricSpec(.counter, "conclave_offload_stall_seconds_total", help: "Time computation waited for expert reads.", status: "offload.stall_ms", scale: 1000)

    public static let constrainedTokens = MetricSpec(.counter, "conclave_worker_constrained_tokens_total", help: "Tokens this worker's last stage sampled under a grammar (structured output, forced tool calls).", status: "constrained_tokens")
    public static let grammarSeconds = MetricSpec(.counter, "conclave_worker_grammar_seconds_total", help: "Time sampling those tokens, the grammar's checks and masks included (÷ constrained tokens: the time per token).", status: "grammar_seconds")
    public static let keptPrefixes = MetricSpec(.gauge, "conclave_worker_prefix_cache_entries", help: "Ended sequences this worker's stage keeps for reuse (the prefix cache).", status: "prefix_entries")
    public static let keptPositions = MetricSpec(.gauge, "conclave_worker_prefix_cache_tokens", help: "Positions of its own layers' KV those kept sequences hold.", status: "prefix_tokens")
    public static let kvRoom = MetricSpec(.gauge, "conclave_worker_kv_room_tokens", help: "Positions of KV this worker's --memory holds beside its weights and scratch: running sequences reserve their context, kept prefixes their length.", status: "kv_room_tokens")
    public static let expertPasses = MetricSpec(.counter, "conclave_worker_expert_layer_passes_total", help: "MoE layer passes this worker's stage routed (one per layer per step).", status: "expert_layer_passes")
    public static let expertReads = MetricSpec(.counter, "conclave_worker_expert_reads_total", help: "Distinct experts those passes chose, summed: each is read once for all the rows that chose it (÷ passes: experts a layer reads per step).", status: "expert_reads")
    public static let refusedPeers = MetricSpec(.counter, "conclave_worker_refused_peers_total", help: "Peers this worker's endpoint refused (an unlisted CurveZMQ key, or a host without CurveZMQ), each once however often it retries.", status: "refused_peers")

    /// Every entry, in the order status shows them.
    public static let all: [MetricSpec] = [
        tokens, expertCalls, forwardedBytes, forwardedRows, expertCallBytes,
        expertServeSeconds, remoteLayers, remoteCalls, remoteLocalSeconds, remoteWaitSeconds, rss, resident, stepP50, stepP99, refusedPeers,
        constrainedTokens, grammarSeconds, keptPrefixes, keptPositions, kvRoom, expertPasses, expertReads,
        offloadSlots, offloadPaged, offloadHits, offloadMisses, offloadReadBytes, offloadReadSeconds,
        offloadPrefetchIssued, offloadPrefetchUsed, offloadPrefetchWasted, offloadStall,
    ]

    /// Entries by series (name and labels), for checking what a worker reports.
    public static let bySeries: [String: MetricSpec] = Dictionary(uniqueKeysWithValues: all.map { ($0.description, $0) })
}

public extension Array where Element == MetricSample {
    /// The value of `spec`'s series in these samples (0 when absent: a counter not yet moved, an old worker).
    func value(_ spec: MetricSpec) -> Double {
        first { $0.name == spec.name && $0.labels == spec.labels }?.value ?? 0
    }
}

public extension MetricsRegistry {
    /// A stage's layer passes and the distinct experts they read (`ExpertHeat.reads`), as the worker catalog's
    /// counters: a worker's heartbeat carries them, and one process exports them itself.
    func record(expertReads r: (passes: UInt64, experts: UInt64)) {
        handle(WorkerMetric.expertPasses).advance(toTotal: Double(r.passes))
        handle(WorkerMetric.expertReads).advance(toTotal: Double(r.experts))
    }
}
