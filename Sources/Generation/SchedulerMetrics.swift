import CoreMetrics

/// What the scheduler counts, made from any swift-metrics factory (the process's Prometheus registry in
/// `conclave serve`). One line per figure; the names follow Prometheus's conventions.
public struct SchedulerMetrics: Sendable {
    let promptTokens: Counter
    let generatedTokens: Counter
    let outcomes: [String: Counter]
    let timeToFirstToken: Timer
    let interToken: Timer
    let requestDuration: Timer
    let running: Meter
    let queued: Meter
    let kvCells: Meter
    let draftProposed: Counter
    let draftAccepted: Counter
    let draftPasses: Counter

    public init(factory: MetricsFactory) {
        promptTokens = Counter(label: "conclave_prompt_tokens_total", factory: factory)
        generatedTokens = Counter(label: "conclave_generation_tokens_total", factory: factory)
        outcomes = Dictionary(uniqueKeysWithValues: ["stop", "length", "error", "cancelled"].map {
            ($0, Counter(label: "conclave_requests_finished_total", dimensions: [("reason", $0)], factory: factory))
        })
        timeToFirstToken = Timer(label: "conclave_time_to_first_token_seconds", factory: factory)
        interToken = Timer(label: "conclave_inter_token_latency_seconds", factory: factory)
        requestDuration = Timer(label: "conclave_request_duration_seconds", factory: factory)
        running = Meter(label: "conclave_requests_running", factory: factory)
        queued = Meter(label: "conclave_requests_queued", factory: factory)
        kvCells = Meter(label: "conclave_kv_cells_used", factory: factory)
        draftProposed = Counter(label: "conclave_draft_tokens_proposed_total", factory: factory)
        draftAccepted = Counter(label: "conclave_draft_tokens_accepted_total", factory: factory)
        draftPasses = Counter(label: "conclave_draft_verify_passes_total", factory: factory)
    }

    func seconds(_ timer: Timer, _ s: Double) { timer.recordNanoseconds(Int64(max(0, s) * 1e9)) }
}
