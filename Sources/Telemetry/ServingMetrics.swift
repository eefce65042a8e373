/// The figures the serving process counts — the scheduler's requests, tokens and outcomes, the recoveries, the
/// draft's proposals — as data, like `WorkerMetric`: each is one `let` here, counted through the process's
/// `MetricsRegistry` where it happens, and `status` (text and `--json`), `GET /v1/cluster` and `GET /metrics`
/// render every entry from this list. Adding a figure is one line here and one call where it happens.
///
/// Status keys with a dot are grouped in an object of their own (`draft.proposed` → `"draft": {"proposed": …}`).
public struct ServingMetrics: Sendable {
    static let finished = "Requests that ended, by reason: stop (an end token or a stop string), length (max tokens or the context), error, cancelled."

    public let running = MetricSpec(.gauge, "conclave_requests_running", help: "Requests generating now (holding KV caches).", status: "sequences")
    public let queued = MetricSpec(.gauge, "conclave_requests_queued", help: "Requests waiting for KV room.", status: "queued")
    public let kvCells = MetricSpec(.gauge, "conclave_kv_cells_used", help: "Positions held in the running requests' KV caches.", status: "kv_cells")
    public let promptTokens = MetricSpec(.counter, "conclave_prompt_tokens_total", help: "Prompt tokens of requests that produced a first token.", status: "prompt_tokens")
    public let generatedTokens = MetricSpec(.counter, "conclave_generation_tokens_total", help: "Tokens generated.", status: "tokens_generated")
    public let stopped = MetricSpec(.counter, "conclave_requests_finished_total", labels: [MetricLabel("reason", "stop")], help: finished, status: "requests.stop")
    public let lengthLimited = MetricSpec(.counter, "conclave_requests_finished_total", labels: [MetricLabel("reason", "length")], help: finished, status: "requests.length")
    public let failed = MetricSpec(.counter, "conclave_requests_finished_total", labels: [MetricLabel("reason", "error")], help: finished, status: "requests_failed")
    public let cancelled = MetricSpec(.counter, "conclave_requests_finished_total", labels: [MetricLabel("reason", "cancelled")], help: finished, status: "requests.cancelled")
    public let disconnected = MetricSpec(.counter, "conclave_requests_disconnected_total", help: "Requests cancelled because their client went away (its stream was dropped).", status: "requests.disconnected")
    public let peakInFlight = MetricSpec(.gauge, "conclave_steps_in_flight_peak", help: "Most steps in the pipeline at once since start.", status: "peak_in_flight")
    public let recoveries = MetricSpec(.counter, "conclave_recoveries_total", help: "Times the cluster was re-planned after a failure and generation went on.", status: "recovered")
    public let replayed = MetricSpec(.counter, "conclave_sequences_replayed_total", help: "Sequences fed again after recoveries.", status: "sequences_replayed")
    public let draftProposed = MetricSpec(.counter, "conclave_draft_tokens_proposed_total", help: "Tokens the draft model proposed.", status: "draft.proposed")
    public let draftAccepted = MetricSpec(.counter, "conclave_draft_tokens_accepted_total", help: "Proposed tokens the model accepted.", status: "draft.accepted")
    public let draftPasses = MetricSpec(.counter, "conclave_draft_verify_passes_total", help: "Pipeline passes that verified proposals.", status: "draft.passes")
    public let prefixCapacity = MetricSpec(.gauge, "conclave_prefix_cache_capacity_tokens", help: "Positions of KV every stage can keep for reuse while no request runs (the smallest stage's room beyond nothing).", status: "prefix_cache.capacity_tokens")
    public let prefixEntries = MetricSpec(.gauge, "conclave_prefix_cache_entries", help: "Ended sequences every stage keeps for reuse.", status: "prefix_cache.entries")
    public let prefixTokens = MetricSpec(.gauge, "conclave_prefix_cache_tokens", help: "Positions the kept sequences hold (on every stage, each its own layers).", status: "prefix_cache.tokens")
    public let prefixLookups = MetricSpec(.counter, "conclave_prefix_cache_lookups_total", help: "Requests that looked for a cached prefix.", status: "prefix_cache.lookups")
    public let prefixHits = MetricSpec(.counter, "conclave_prefix_cache_hits_total", help: "Requests that started from a cached prefix.", status: "prefix_cache.hits")
    public let prefixReused = MetricSpec(.counter, "conclave_prefix_cache_reused_tokens_total", help: "Prompt tokens not computed because a cached prefix held them.", status: "prefix_cache.reused_tokens")
    public let prefixEvictions = MetricSpec(.counter, "conclave_prefix_cache_evictions_total", help: "Kept sequences evicted to make room (least recently used first).", status: "prefix_cache.evictions")
    // Labelled per request or per worker where they are counted; status shows these from its own fields.
    public let httpRequests = MetricSpec(.counter, "conclave_http_requests_total", help: "HTTP requests by endpoint (unknown paths as \"other\") and status code.")
    public let refusedPeers = MetricSpec(.counter, "conclave_refused_peers_total", help: "Peers the coordinator's client endpoint refused (CurveZMQ: an unlisted key, or a host without it), each once however often it retries; each worker's are conclave_worker_refused_peers_total.")
    public let workerState = MetricSpec(.gauge, "conclave_worker_state", help: "1 for the worker's state as the coordinator sees it (joining, loading, ready, suspect, down, spare, draining, left).")
    public let workerBudget = MetricSpec(.gauge, "conclave_worker_memory_budget_bytes", help: "The worker's memory budget in force (the smaller of its own and the cluster file's).")
    public let workerHeartbeatAge = MetricSpec(.gauge, "conclave_worker_heartbeat_age_seconds", help: "Seconds since the worker's last heartbeat.")
    public let expertImbalance = MetricSpec(.gauge, "conclave_expert_layer_imbalance", help: "Per MoE layer, the busiest holder's share of the routers' recent choices (1/holders is even, 1 is one worker taking them all); 0 before any.")
    public let expertChoices = MetricSpec(.counter, "conclave_expert_choices_total", help: "Router choices (rows × experts used) of experts this worker computes, since start.")
    public let toolCalls = MetricSpec(.counter, "conclave_tool_calls_total", help: "Tool calls read from answers, by API (chat, messages, responses).")
    public let constrainedRequests = MetricSpec(.counter, "conclave_constrained_requests_total", help: "Requests whose answer was constrained while sampling, by kind (json_schema, json_object, grammar, tool_call).")
    public let constrainedTokens = MetricSpec(.counter, "conclave_constrained_tokens_total", help: "Tokens sampled under a grammar in this process (serve -m; a cluster's are conclave_worker_constrained_tokens_total).")
    public let grammarSeconds = MetricSpec(.counter, "conclave_grammar_seconds_total", help: "Time sampling those tokens, the grammar's checks and masks included (÷ constrained tokens: the time per token).")
    public let toolCallFailures = MetricSpec(.counter, "conclave_tool_call_parse_failures_total", help: "Answers that began a call in their model's syntax but held none that parses (the text was returned as content), by API.")

    /// Every entry, in declaration order: the catalog is this struct's own fields.
    public var all: [MetricSpec] { Mirror(reflecting: self).children.compactMap { $0.value as? MetricSpec } }
    /// Entries by series, for checking what a status reply carries.
    public var bySeries: [String: MetricSpec] { Dictionary(uniqueKeysWithValues: all.map { ($0.description, $0) }) }
}

public extension ServingMetrics {
    /// The catalog of the serving process's figures.
    static let catalog = ServingMetrics()
}
