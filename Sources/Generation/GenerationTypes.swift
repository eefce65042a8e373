import Model

/// What a front door (the HTTP API, the ZeroMQ client API, `conclave run`) asks of the scheduler, in domain
/// terms: tokens in, a stream of events out. No transport types cross this line.
public struct GenerationRequest: Sendable {
    public var prompt: [Int32]
    public var maxTokens: Int
    public var stop: [String]
    public var sampling: SamplingParams
    /// Positions this sequence may use; nil or larger than the served context: the served context.
    public var contextLength: Int?
    /// nil: no log-probabilities; 0: each token's; N: also the N most likely alternatives (≤ 20).
    public var logprobs: Int?
    /// End-of-generation tokens do not end it (see `GenerationPolicy.ignoreEOS`).
    public var ignoreEOS: Bool
    /// It may start from a cached prefix of its tokens, and its own KV is kept for reuse when it ends
    /// (llama-server's `cache_prompt`); false: computed from position 0, nothing kept.
    public var cachePrompt: Bool

    public init(prompt: [Int32], maxTokens: Int, stop: [String] = [], sampling: SamplingParams = SamplingParams(), contextLength: Int? = nil,
                logprobs: Int? = nil, ignoreEOS: Bool = false, cachePrompt: Bool = true) {
        self.cachePrompt = cachePrompt
        self.logprobs = logprobs
        self.ignoreEOS = ignoreEOS
        self.prompt = prompt
        self.maxTokens = maxTokens
        self.stop = stop
        self.sampling = sampling
        self.contextLength = contextLength
    }
}

public struct GenerationUsage: Sendable, Equatable {
    public var promptTokens = 0
    /// Prompt tokens a cached prefix held (not computed for this request).
    public var cachedTokens = 0
    public var completionTokens = 0
    /// From submission to the first token (queueing and prefill).
    public var timeToFirstToken = 0.0
    public var decodeSeconds = 0.0
    /// The stop string that ended the generation (nil: an end token, the length, or none given).
    public var stopSequence: String?
    public init() {}
    public var prefillTokensPerSecond: Double { timeToFirstToken > 0 ? Double(promptTokens) / timeToFirstToken : 0 }
    public var decodeTokensPerSecond: Double { decodeSeconds > 0 ? Double(max(0, completionTokens - 1)) / decodeSeconds : 0 }
}

public enum GenerationEvent: Sendable, Equatable {
    /// A generated token (nil for text released at the end without a token), the text it releases, and its
    /// log-probabilities when the request asked for them.
    case token(Int32?, String, SampledToken?)
    case finished(FinishReason, GenerationUsage)
}

/// A failed generation, with the code every boundary maps: HTTP 400 / 503 / 500, the wire's Error codes.
public struct GenerationError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Code: String, Sendable {
        /// The request itself is wrong (bad parameters, a token outside the vocabulary): retrying will not help.
        case invalidRequest = "invalid_request"
        /// The prompt (and what is asked to generate) does not fit the context.
        case contextExceeded = "context_length_exceeded"
        /// The server cannot serve now (not ready, a worker down, shutting down): the same request may succeed later.
        case unavailable
        /// Too many requests are waiting already (`Scheduler.maxQueued`): retry in a moment (HTTP 429).
        case overloaded
        case `internal`
    }
    public let code: Code
    public let message: String
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { message }
}

/// One row of a step: the token at `position` of `sequence`.
public struct StepRow: Sendable, Equatable {
    public var sequence: UInt64
    public var position: Int
    public var token: Int32
}

/// A micro-batch for the stages: rows of several sequences (prompt chunks and decode tokens), the rows whose
/// next token is to be sampled, and the sampling of each (one per sample row when any sequence is new, else none:
/// a sequence keeps the first it is given). A sequence with several sample rows (its pending token and a draft's
/// proposals after it) is verified: the executor answers the tokens plain decoding would make at those rows, up to
/// and including the first that differs from the proposal after it.
public struct Step: Sendable, Equatable {
    public var rows: [StepRow] = []
    public var sampleRows: [Int] = []
    public var sampling: [SamplingParams] = []
    /// Empty, or one per sample row: -1 none, 0 the sampled token's log-probability, N also the top N.
    public var logprobs: [Int] = []
}

/// Whatever computes steps: a cluster's pipeline, or stages in this process. Several steps may be in flight at
/// once (up to `pipelineDepth`); each one's `done` is called exactly once, from any thread, with the sampled tokens
/// (and log-probabilities, when the step asked) of every sequence that had a sample row — one, or the verified
/// ones in order for a sequence with proposals — unless the step was cancelled first.
public protocol StepExecutor: AnyObject, Sendable {
    var pipelineDepth: Int { get }
    /// How long a step may take before it counts as lost (nil: no limit).
    var stepTimeout: Double? { get }
    /// Starts `step` (ids are the scheduler's, unique per step).
    func start(_ step: Step, id: UInt64, done: @escaping @Sendable (Result<[UInt64: [SampledToken]], GenerationError>) -> Void)
    /// Forgets step `id`: its `done` may still run, and is ignored.
    func cancel(_ id: UInt64)
    /// Changes the sequences' caches on every stage (after every step already started): keeps ended ones for
    /// reuse, frees ended ones and evicted prefixes, starts sequences from prefixes (see `CacheOps`).
    func apply(_ ops: CacheOps)
    /// The KV every stage has room for (nil: unknown — no prefix is kept).
    var kvRoom: KVRoom? { get }
    /// Why nothing can be computed now (a worker is down); nil when steps can run.
    func unavailable() -> GenerationError?
    /// Why the scheduler should recover now although steps can still run (a worker asked to leave): new requests
    /// are not refused for it, running ones are replayed on the new placement.
    func replanWanted() -> GenerationError?
    /// After `cause` (a worker down, a step lost), makes the executor able to run steps again — a cluster
    /// re-plans onto the workers it has left and re-assigns them; every sequence's caches are gone after it, and
    /// the scheduler replays the `sequences` it has. Blocks until done. Says whether steps can run again (and how
    /// many sequences the new placement has KV room for), or why they cannot (the cluster can no longer hold the
    /// model); the scheduler applies the outcome itself.
    func recover(after cause: GenerationError, sequences: Int) -> RecoveryOutcome
    /// Called by the scheduler while nothing runs: if the executor cannot run steps (a worker down, the last
    /// recovery failed) and it is time to try again, tries to recover (with no sequences to replay) and says how
    /// it went; nil when there was nothing to do or it is not time yet. How often to try is the executor's
    /// business (a cluster backs off); the scheduler only gives it the chance, so a refusal is never final.
    func heal() -> RecoveryOutcome?
}

/// What a recovery made of the executor.
public enum RecoveryOutcome: Sendable, Equatable {
    /// Steps can run again; every stage of the new placement has KV room for `maxSequences` sequences (Int.max:
    /// none reported a limit).
    case recovered(maxSequences: Int)
    case failed(GenerationError)
}

public extension StepExecutor {
    /// Nothing asks for a re-plan by default.
    func replanWanted() -> GenerationError? { nil }
    /// Without a way to recover, the cause stands.
    func recover(after cause: GenerationError, sequences: Int) -> RecoveryOutcome { .failed(cause) }
    /// Nothing to heal without a way to recover.
    func heal() -> RecoveryOutcome? { nil }
}
