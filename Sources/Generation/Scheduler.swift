import Foundation
import Model
import Runtime
import Synchronization
import Telemetry
import Tokenizer

/// Continuous batching as a state machine over domain types: requests in (`submit`), events out (an async
/// stream per request), `cancel` at any time. On a thread of its own it composes steps — a prefill chunk or one
/// decode token for each sequence — keeps up to the executor's pipeline depth of them in flight, and applies each
/// returned token through the request's `GenerationPolicy`. It knows nothing of sockets or HTTP: the executor is
/// a cluster or stages in this process, the front door is the ZeroMQ client API or the HTTP API.
public final class Scheduler: @unchecked Sendable {  // loop state is touched only by the loop thread
    public let executor: StepExecutor
    public let tokenizer: Tokenizer
    /// The context each sequence gets unless it asks for less.
    public let contextLength: Int
    /// Most rows in one step (llama.cpp's n_ubatch; a longer prompt goes in chunks).
    public let maxBatch: Int
    let log: @Sendable (String) -> Void
    /// Step timeouts, the loop's wake-ups and request latencies are measured on it.
    public let clock: any Clock

    final class Request: @unchecked Sendable {
        let id: UInt64
        let prompt: [Int32]
        let capacity: Int
        let sampling: SamplingParams
        let logprobs: Int
        var progress: GenerationProgress
        let continuation: AsyncThrowingStream<GenerationEvent, Error>.Continuation
        /// The prompt and every token sampled since that is still to be fed or was fed: what a replay rebuilds
        /// the caches from.
        var tokens: [Int32]
        var fed = 0  // tokens sent through the pipeline (the sequence's length)
        var samplerSent = false
        /// It may start from a cached prefix, and is kept for reuse when it ends.
        let cachePrompt: Bool
        /// Prompt positions a cached prefix gave it (not computed).
        var reused = 0
        /// A step holding it failed: what its caches hold is not known, so they are not kept.
        var failed = false
        /// It looked for a cached prefix (counted once, however often it waits for room).
        var looked = false
        /// A step holding this sequence's prompt end or last token is in flight: nothing to send until it returns.
        var awaiting = false
        var done = false
        let submitted: Double
        var firstToken: Double?
        var lastToken: Double?
        init(id: UInt64, prompt: [Int32], capacity: Int, sampling: SamplingParams, logprobs: Int, progress: GenerationProgress,
             continuation: AsyncThrowingStream<GenerationEvent, Error>.Continuation, submitted: Double, cachePrompt: Bool) {
            self.id = id
            self.cachePrompt = cachePrompt
            self.submitted = submitted
            self.logprobs = logprobs
            self.prompt = prompt
            self.capacity = capacity
            self.sampling = sampling
            self.progress = progress
            self.continuation = continuation
            tokens = prompt
        }

        /// Its caches are gone (the cluster was re-planned): everything known is fed again from position 0, and
        /// the step holding the last of it samples the next token — the same one, as sampling depends only on
        /// the seed, the position and the history.
        func rewind() {
            fed = 0
            reused = 0
            awaiting = false
            samplerSent = false
        }
    }

    /// The scheduler's figures, read back from its registry (the catalog's `ServingMetrics`).
    public struct Stats: Sendable, Equatable {
        public var running = 0, queued = 0
        public var tokens: UInt64 = 0
        public var failed = 0, cancelled = 0, completed = 0
        public var peakInFlight = 0
        /// Times the executor recovered from a failure, and the sequences replayed after them.
        public var recoveries = 0, replayed = 0
        /// Speculative decoding (with a drafter): decode steps that verified a sequence's proposals (one pass
        /// through the pipeline each), the draft's proposals in them, and those accepted.
        public var draft = DraftStats()
        /// The prefix cache: requests that started from a cached prefix, the prompt tokens that saved, and the
        /// kept prefixes evicted for room.
        public var prefixHits = 0, prefixReused = 0, prefixEvictions = 0
    }

    struct Shared {
        var incoming: [Request] = []
        /// Requests to stop, each with whether its client went away (counted as a disconnect when it ends).
        var cancelled: [UInt64: Bool] = [:]
        var completions: [(UInt64, Result<[UInt64: [SampledToken]], GenerationError>)] = []
        var running = false
        var nextID: UInt64 = 1
        /// Requests waiting for a sequence (incoming ones included), as the loop last counted them.
        var waiting = 0
    }
    private let shared = Mutex(Shared())
    private let wake = DispatchSemaphore(value: 0)
    private let stopped = DispatchSemaphore(value: 0)
    private var thread: Thread?
    private var nextStep: UInt64 = 0  // the loop thread's
    /// Recoveries since a step last produced a token (the loop thread's): a failure that recovery does not
    /// cure ends the requests instead of looping.
    private var fruitless = 0
    static let maxFruitlessRecoveries = 3

    /// Sequences generating at once (the KV room every stage has); the rest wait in order. Set before `start`.
    public var maxSequences = Int.max
    /// Requests that may wait for a sequence at once; one more is refused (`overloaded`: HTTP 429 with
    /// Retry-After) rather than queued without bound. Set before `start`.
    public var maxQueued = 256
    /// Where every figure is counted: the catalog's entries (`ServingMetrics`) through handles whose values
    /// `stats()` and status read, latencies through swift-metrics timers; `GET /metrics` is its exposition.
    public let figures: MetricsRegistry
    let timers: SchedulerTimers
    /// Proposes tokens for decoding sequences (speculative decoding; set before `start`): each decode step then
    /// carries a sequence's pending token and the proposals, verified in one pass.
    public var drafter: Drafter?
    /// Whether ended sequences are kept for reuse and requests start from them (`--no-prefix-cache`: false).
    /// Set before `start`.
    public var prefixCaching = true
    /// The kept prefixes (the loop thread's).
    private let prefixes = PrefixCache()

    public init(executor: StepExecutor, tokenizer: Tokenizer, contextLength: Int, maxBatch: Int = 512,
                clock: any Clock = MonotonicClock(), figures: MetricsRegistry = MetricsRegistry(),
                log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.executor = executor
        self.clock = clock
        self.figures = figures
        timers = SchedulerTimers(factory: figures.factory)
        // The scheduler's own series from the start, at zero (Prometheus's convention; status shows them all). The
        // entries without a status key are labelled where they are counted (per endpoint, per worker): made
        // here without labels, Prometheus would refuse their labelled series later.
        for spec in ServingMetrics.catalog.all where spec.statusKey != nil { _ = figures.handle(spec) }
        self.tokenizer = tokenizer
        self.contextLength = contextLength
        self.maxBatch = max(1, maxBatch)
        self.log = log
    }

    public func start() {
        shared.withLock { $0.running = true }
        let t = Thread { [self] in loop() }
        t.name = "conclave.scheduler"
        t.start()
        thread = t
    }

    /// Ends the loop; waits (at most 2 s) until it has answered every unfinished request with an error.
    public func stop() {
        shared.withLock { $0.running = false }
        wake.signal()
        // Real time, whatever the clock: a shutdown's grace is the machine's, and a manual clock never moves here.
        if thread != nil { _ = stopped.wait(timeout: .now() + 2) }
    }

    public var isRunning: Bool { shared.withLock { $0.running } }

    public func stats() -> Stats {
        let v = { (spec: KeyPath<ServingMetrics, MetricSpec>) in Int(self.figures.handle(ServingMetrics.catalog[keyPath: spec]).value) }
        var s = Stats()
        s.running = v(\.running)
        s.queued = v(\.queued)
        s.tokens = UInt64(v(\.generatedTokens))
        s.failed = v(\.failed)
        s.cancelled = v(\.cancelled)
        s.completed = v(\.stopped) + v(\.lengthLimited)
        s.peakInFlight = v(\.peakInFlight)
        s.recoveries = v(\.recoveries)
        s.replayed = v(\.replayed)
        s.draft = DraftStats(proposed: v(\.draftProposed), accepted: v(\.draftAccepted), passes: v(\.draftPasses))
        (s.prefixHits, s.prefixReused, s.prefixEvictions) = (v(\.prefixHits), v(\.prefixReused), v(\.prefixEvictions))
        return s
    }

    /// Counts `n` more of a catalog entry.
    func count(_ spec: KeyPath<ServingMetrics, MetricSpec>, _ n: Int = 1) {
        figures.handle(ServingMetrics.catalog[keyPath: spec]).increment(by: Double(n))
    }

    /// Sets a catalog gauge.
    func gauge(_ spec: KeyPath<ServingMetrics, MetricSpec>, _ value: Int) {
        figures.handle(ServingMetrics.catalog[keyPath: spec]).set(Double(value))
    }

    /// Validates and queues a request. A bad one gets a stream that fails at once; dropping the stream (a client
    /// that went away) cancels the request and frees its caches.
    public func submit(_ r: GenerationRequest) -> (id: UInt64, events: AsyncThrowingStream<GenerationEvent, Error>) {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: GenerationEvent.self, throwing: Error.self)
        let id = shared.withLock { s -> UInt64 in defer { s.nextID += 1 }; return s.nextID }
        if let e = refusal(for: r) {
            count(\.failed)
            log("request \(id) refused: \(e.message)")
            continuation.finish(throwing: e)
            return (id, stream)
        }
        let capacity = min(r.contextLength ?? contextLength, contextLength)
        let policy = GenerationPolicy(maxTokens: r.maxTokens, stop: r.stop, capacity: capacity, ignoreEOS: r.ignoreEOS)
        var sampling = r.sampling
        // A grammar matches what is generated: from the end of the prompt on, also when a recovery replays it.
        if sampling.grammar != nil { sampling.grammarStart = r.prompt.count }
        let request = Request(id: id, prompt: r.prompt, capacity: capacity, sampling: sampling, logprobs: r.logprobs ?? -1,
                              progress: policy.start(tokenizer: tokenizer),
                              continuation: continuation, submitted: clock.now(), cachePrompt: r.cachePrompt)
        continuation.onTermination = { [weak self] reason in
            if case .cancelled = reason { self?.cancel(id, clientGone: true) }
        }
        shared.withLock { $0.incoming.append(request) }
        wake.signal()
        return (id, stream)
    }

    /// Why `submit` would refuse this request at once, or nil. A front door that must answer before it streams
    /// (HTTP's status line) asks first.
    public func refusal(for r: GenerationRequest) -> GenerationError? {
        let capacity = min(r.contextLength ?? contextLength, contextLength)
        if r.prompt.isEmpty { return GenerationError(.invalidRequest, "the prompt is empty") }
        if r.prompt.count > capacity {
            return GenerationError(.contextExceeded, "the prompt has \(r.prompt.count) tokens but the context holds \(capacity); use a shorter prompt or a larger context")
        }
        if let bad = r.prompt.first(where: { $0 < 0 || Int($0) >= tokenizer.vocab.count }) {
            return GenerationError(.invalidRequest, "token id \(bad) is outside the vocabulary of \(tokenizer.vocab.count)")
        }
        if r.maxTokens < 0 { return GenerationError(.invalidRequest, "max tokens must not be negative") }
        if let problem = r.sampling.problem ?? r.sampling.grammarProblem(tokenizer: tokenizer) { return GenerationError(.invalidRequest, problem) }
        if let n = r.logprobs, n < 0 || n > SampledToken.maxTop {
            return GenerationError(.invalidRequest, "top logprobs must be between 0 and \(SampledToken.maxTop), not \(n)")
        }
        guard isRunning else { return GenerationError(.unavailable, "the server is not serving yet (workers are still joining or loading), or is shutting down") }
        let waiting = shared.withLock { $0.waiting + $0.incoming.count }
        if waiting >= maxQueued {
            return GenerationError(.overloaded, "\(waiting) requests are already waiting for a sequence (at most \(maxQueued)); retry in a moment")
        }
        return executor.unavailable()
    }

    /// Stops a request: its stream ends, its caches are freed (once a step holding it has returned). `clientGone`:
    /// its client hung up (a dropped stream or a failed write), counted once as a disconnect when the request ends,
    /// whichever of the two noticed first.
    public func cancel(_ id: UInt64, clientGone: Bool = false) {
        shared.withLock { s in s.cancelled[id] = (s.cancelled[id] ?? false) || clientGone }
        wake.signal()
    }

    // MARK: The loop

    /// A step on its way through the executor.
    struct InFlight {
        let handle: UInt64
        /// Each request in the step, the row its next token is sampled from (nil: a prompt chunk before the end),
        /// and the draft's proposals sent after that row.
        let entries: [(request: Request, sampleRow: Int?, proposals: [Int32])]
        let sent: Double
    }

    /// Keeps up to `pipelineDepth` steps in flight: whenever one returns, its sequences' next rows go out at once
    /// while the others are still travelling, so with S stages and S steps every stage has work. A sequence is in
    /// one step at a time while it decodes (its next token needs the last one), but a long prompt's chunks follow
    /// each other down the pipeline: each stage takes its inputs in order, so a chunk finds the cache of the ones
    /// before it.
    private func loop() {
        var active: [Request] = []
        var waiting: [Request] = []
        var inFlight: [InFlight] = []
        let depth = max(1, executor.pipelineDepth)
        while shared.withLock({ $0.running }) {
            let (incoming, cancelled, completions) = shared.withLock { s in
                defer { s.incoming.removeAll(); s.cancelled.removeAll(); s.completions.removeAll() }
                return (s.incoming, s.cancelled, s.completions)
            }
            waiting += incoming
            var finished: [UInt64] = []
            if !cancelled.isEmpty {
                for r in waiting where cancelled[r.id] != nil { end(r, clientGone: cancelled[r.id]!) }
                waiting.removeAll { $0.done }
                for r in active where cancelled[r.id] != nil && !r.done {
                    end(r, clientGone: cancelled[r.id]!)
                    // A step holding it returns later; its caches are freed then, after that step.
                    if !r.awaiting { finished.append(r.id) }
                }
            }
            var cachesLost = false
            // A step the executor could not run (a worker restarted, or of a plan now gone: code unavailable), a
            // step lost, or a part of the executor down calls for a recovery; other failures are their requests'.
            var lost: GenerationError?
            for (handle, result) in completions {
                guard let i = inFlight.firstIndex(where: { $0.handle == handle }) else { continue }
                if case .failure(let e) = result, e.code == .unavailable {
                    lost = lost ?? e
                    continue
                }
                finished += complete(inFlight.remove(at: i), result)
            }
            if let timeout = executor.stepTimeout {
                let now = clock.now()
                if inFlight.contains(where: { now - $0.sent > timeout }) {
                    lost = lost ?? GenerationError(.unavailable, "a generation step got no answer within \(Int(timeout)) s")
                }
            }
            if let e = lost ?? executor.unavailable() ?? executor.replanWanted(), !inFlight.isEmpty || active.contains(where: { !$0.done }) {
                // Nothing in the pipeline can finish. The executor recovers if it can (re-plan, re-assign); every
                // running sequence is then replayed and goes on, else each fails with the reason.
                for f in inFlight { executor.cancel(f.handle) }
                inFlight.removeAll()
                let live = active.filter { !$0.done }
                log("generation stopped: \(e.message); recovering \(live.count) sequence\(live.count == 1 ? "" : "s")")
                fruitless += 1
                let outcome = fruitless > Self.maxFruitlessRecoveries
                    ? .failed(GenerationError(.unavailable, "\(e.message) (\(Self.maxFruitlessRecoveries) recoveries in a row produced no token)"))
                    : executor.recover(after: e, sequences: live.count)
                if case .recovered(let room) = outcome { maxSequences = room }
                // Every stage's caches are gone with the old placement (or some of them, when it failed).
                cachesLost = true
                if case .failed(let failure) = outcome {
                    for r in live { fail(r, failure); finished.append(r.id) }
                    // The count guards these requests from looping; later ones (a worker may be back) try afresh.
                    fruitless = 0
                } else {
                    for r in live { r.rewind() }
                    count(\.recoveries)
                    count(\.replayed, live.count)
                }
                // Cancelled sequences that were waiting for a lost step have no caches left to free.
                for r in active where r.done { r.awaiting = false }
            }
            let ended = Set(finished)
            let endedRequests = active.filter { ended.contains($0.id) }
            active.removeAll { $0.done && !$0.awaiting }
            // Idle and unable to run (a worker down, a recovery that failed): the executor may try again now.
            if inFlight.isEmpty && active.isEmpty, let outcome = executor.heal() {
                if case .recovered(let room) = outcome {
                    maxSequences = room
                    cachesLost = true
                    count(\.recoveries)
                }
            }
            if cachesLost { _ = prefixes.removeAll() }
            // Ended sequences are kept for reuse or freed; both travel behind every step already sent.
            var ops = CacheOps()
            for r in endedRequests { keepOrFree(r, cachesLost: cachesLost, into: &ops) }
            for id in ended where !endedRequests.contains(where: { $0.id == id }) { ops.release.append(id) }
            if !finished.isEmpty { drafter?.release(finished) }

            // Admit only as many sequences as every stage has KV room for; the rest wait their turn in order. Each
            // starts from the longest cached prefix of its prompt, kept prefixes evicted as its context needs.
            while active.count < maxSequences, let r = waiting.first {
                guard admit(r, running: active, into: &ops) else { break }
                waiting.removeFirst()
                active.append(r)
            }
            if !ops.isEmpty { executor.apply(ops) }
            figurePrefixes(running: active.count)
            while inFlight.count < depth, let step = compose(active) {
                inFlight.append(step)
            }
            gauge(\.running, active.count)
            gauge(\.queued, waiting.count)
            shared.withLock { $0.waiting = waiting.count }
            gauge(\.kvCells, active.reduce(0) { $0 + $1.fed })
            if Double(inFlight.count) > figures.handle(ServingMetrics.catalog.peakInFlight).value { gauge(\.peakInFlight, inFlight.count) }
            _ = clock.wait(wake, seconds: inFlight.isEmpty ? 0.5 : 0.2)
        }
        // Stopped (SIGTERM): whatever is still running or queued gets an answer, not silence.
        active += waiting + shared.withLock { s -> [Request] in defer { s.incoming.removeAll() }; return s.incoming }
        for f in inFlight { executor.cancel(f.handle) }
        let stopping = GenerationError(.unavailable, "the server is shutting down; the request was not finished")
        for r in active where !r.done { fail(r, stopping) }
        gauge(\.running, 0)
        gauge(\.queued, 0)
        stopped.signal()
    }

    // MARK: The prefix cache

    /// An ended request's caches: kept for reuse (the positions it computed, with the tokens they were computed
    /// from) when it may be and everything it sent came back, else freed.
    private func keepOrFree(_ r: Request, cachesLost: Bool, into ops: inout CacheOps) {
        guard prefixCaching, r.cachePrompt, !r.failed, !cachesLost, r.fed >= 1, executor.kvRoom != nil else {
            ops.release.append(r.id)
            return
        }
        let (kept, redundant) = prefixes.insert(id: r.id, tokens: Array(r.tokens.prefix(r.fed)))
        if kept { ops.retain.append((r.id, r.fed)) } else { ops.release.append(r.id) }
        ops.release += redundant
    }

    /// Makes room for `r` beside the `running` requests — evicting kept prefixes, least recently used first — and
    /// starts it from the longest cached prefix of its prompt. False when the room cannot be made (it waits).
    private func admit(_ r: Request, running: [Request], into ops: inout CacheOps) -> Bool {
        guard let room = executor.kvRoom, prefixCaching else { return true }
        var match: PrefixCache.Match?
        if r.cachePrompt {
            if !r.looked { count(\.prefixLookups) }
            r.looked = true
            let sources = running.filter { !$0.done && !$0.failed && $0.fed > 0 }.map { (id: $0.id, tokens: $0.tokens.prefix($0.fed)) }
            match = prefixes.match(r.prompt, running: sources)
        }
        let used = running.count * room.perSequence + prefixes.cost(in: room)
        // Taking a kept prefix over frees its charge; copying from one must not evict it first.
        func evictions(for m: PrefixCache.Match?) -> [UInt64]? {
            let taken = m.flatMap { $0.kept && !$0.keepSource ? prefixes.entries[$0.source] : nil }
            let needed = room.perSequence - (taken.map { room.cost(length: $0.tokens.count) } ?? 0)
            return prefixes.evict(toFree: needed, used: used, room: room, sparing: m?.kept == true ? m?.source : nil)
        }
        var evicted = evictions(for: match)
        if evicted == nil, var m = match, m.kept, m.keepSource {
            // No room beside the prefix it copies from: it takes the prefix over instead (its tail is lost).
            m.keepSource = false
            match = m
            evicted = evictions(for: m)
        }
        guard let evicted else { return false }
        ops.release += evicted
        count(\.prefixEvictions, evicted.count)
        if let m = match {
            prefixes.use(m)
            ops.starts.append(CacheOps.Start(sequence: r.id, source: m.source, length: m.length, keepSource: m.keepSource))
            r.fed = m.length
            r.reused = m.length
            count(\.prefixHits)
            count(\.prefixReused, m.length)
        }
        return true
    }

    /// The prefix cache's gauges.
    private func figurePrefixes(running: Int) {
        gauge(\.prefixEntries, prefixes.entries.count)
        gauge(\.prefixTokens, prefixes.positions)
        gauge(\.prefixCapacity, prefixCaching ? executor.kvRoom.map { max(0, $0.positions - $0.overhead) } ?? 0 : 0)
    }

    /// The next step from the requests that have rows to send, or nil when none has. Decoding sequences are spread
    /// over the pipeline's steps (at most ⌈decoding / depth⌉ in one), prefill chunks fill the rest up to `maxBatch`.
    private func compose(_ active: [Request]) -> InFlight? {
        var step = Step()
        var entries: [(request: Request, sampleRow: Int?, proposals: [Int32])] = []
        var sampling: [SamplingParams] = [], logprobs: [Int] = []
        var budget = maxBatch
        let depth = max(1, executor.pipelineDepth)
        let decoding = active.filter { !$0.done && $0.fed >= $0.prompt.count }.count
        var decodeSlots = max(1, (decoding + depth - 1) / depth)
        let drafted = draft(active, slots: decodeSlots)
        var anyNewSampler = false
        for r in active where budget > 0 && !r.done && !r.awaiting {
            let pending = r.tokens.count - r.fed
            guard pending > 0 else { continue }
            var tokens: [Int32]
            var proposals: [Int32] = []
            if r.fed >= r.prompt.count && pending == 1 {
                guard decodeSlots > 0 else { continue }
                tokens = [r.tokens[r.fed]]
                decodeSlots -= 1
                proposals = Array((drafted[r.id] ?? []).prefix(budget - 1))
                tokens += proposals
            } else {
                // A prompt, or a sequence replayed after a recovery, goes in chunks.
                tokens = Array(r.tokens[r.fed..<min(r.tokens.count, r.fed + budget)])
            }
            for (i, t) in tokens.enumerated() { step.rows.append(StepRow(sequence: r.id, position: r.fed + i, token: t)) }
            var sampleRow: Int?
            let known = r.fed + tokens.count - proposals.count
            if known == r.tokens.count {
                // The last chunk of what is known, or a decode row (and the proposals after it, each sampled to
                // verify it): the sequence waits for this step's tokens.
                sampleRow = step.rows.count - 1 - proposals.count
                for i in 0...proposals.count {
                    step.sampleRows.append(sampleRow! + i)
                    sampling.append(r.sampling)
                    logprobs.append(r.logprobs)
                }
                r.awaiting = true
                if !r.samplerSent { anyNewSampler = true }
            }
            // Only what is known counts as fed: accepted proposals are added as their tokens come back.
            r.fed = known
            budget -= tokens.count
            entries.append((r, sampleRow, proposals))
        }
        guard !entries.isEmpty else { return nil }
        if anyNewSampler {
            step.sampling = sampling
            for (r, s, _) in entries where s != nil { r.samplerSent = true }
        }
        if logprobs.contains(where: { $0 >= 0 }) { step.logprobs = logprobs }
        nextStep += 1
        let handle = nextStep
        executor.start(step, id: handle) { [weak self] result in
            guard let self else { return }
            self.shared.withLock { $0.completions.append((handle, result)) }
            self.wake.signal()
        }
        return InFlight(handle: handle, entries: entries, sent: clock.now())
    }

    /// The draft's proposals for the sequences the next step will decode (the first `slots` ready ones, as
    /// `compose` takes them), made in one batch per position. Proposals past the context, the step's rows or the
    /// tokens still wanted would be wasted, so each asks for no more than those leave room for.
    private func draft(_ active: [Request], slots: Int) -> [UInt64: [Int32]] {
        guard let drafter else { return [:] }
        let ready = active.filter { !$0.done && !$0.awaiting && $0.fed >= $0.prompt.count && $0.tokens.count - $0.fed == 1 }.prefix(slots)
        guard !ready.isEmpty else { return [:] }
        let perRow = maxBatch / ready.count - 1
        let asks = ready.map { r in
            (sequence: r.id, context: r.tokens, count: min(perRow, r.capacity - r.fed - 1, r.progress.policy.maxTokens - r.progress.generated - 1))
        }
        do {
            let out = try drafter.propose(asks, capacity: contextLength)
            return Dictionary(uniqueKeysWithValues: zip(asks.map(\.sequence), out))
        } catch {
            log("the draft proposed nothing: \(error)")
            return [:]
        }
    }

    /// Applies a returned step to its requests; returns the sequences that ended (to release on every stage).
    private func complete(_ f: InFlight, _ outcome: Result<[UInt64: [SampledToken]], GenerationError>) -> [UInt64] {
        var finished: [UInt64] = []
        switch outcome {
        case .failure(let e):
            for (r, _, _) in f.entries {
                r.awaiting = false
                r.failed = true
                if !r.done { fail(r, e) }
                finished.append(r.id)
            }
        case .success(let tokens):
            if !tokens.isEmpty { fruitless = 0 }
            for (r, sampleRow, proposals) in f.entries where sampleRow != nil {
                r.awaiting = false
                if r.done { finished.append(r.id); continue }  // cancelled while the step was out
                let now = clock.now()
                if r.firstToken == nil {
                    r.firstToken = now
                    timers.seconds(timers.timeToFirstToken, now - r.submitted)
                    count(\.promptTokens, r.prompt.count)
                } else if let last = r.lastToken {
                    let n = max(1, tokens[r.id]?.count ?? 1)
                    for _ in 0..<n { timers.seconds(timers.interToken, (now - last) / Double(n)) }
                }
                r.lastToken = now
                // One token, or for proposals the ones verified: each equal to its proposal but the last.
                guard let list = tokens[r.id], !list.isEmpty, list.count <= proposals.count + 1,
                      zip(list.dropLast(), proposals).allSatisfy({ $0.token == $1 }) else {
                    fail(r, GenerationError(.internal, "the last stage returned no token, or tokens that do not verify its \(proposals.count) proposals, for sequence \(r.id)"))
                    finished.append(r.id)
                    continue
                }
                if drafter != nil {
                    count(\.draftPasses)
                    count(\.draftProposed, proposals.count)
                    count(\.draftAccepted, list.count - 1)
                }
                for (i, token) in list.enumerated() {
                    // An accepted proposal's position has been through the pipeline: it counts as fed.
                    if i > 0 { r.fed += 1 }
                    if !advance(r, token.token, token.logprob == nil ? nil : token) { finished.append(r.id); break }
                }
            }
        }
        return finished
    }

    /// Applies a sampled token through the request's policy; false when the request is complete.
    private func advance(_ r: Request, _ token: Int32, _ logprobs: SampledToken?) -> Bool {
        let step = r.progress.accept(token, fed: r.fed)
        if step.counted { count(\.generatedTokens) }
        if step.counted || !step.text.isEmpty {
            r.continuation.yield(.token(step.counted ? token : nil, step.text, step.counted ? logprobs : nil))
        }
        if let reason = step.finish {
            r.done = true
            var u = GenerationUsage()
            u.promptTokens = r.prompt.count
            u.cachedTokens = r.reused
            u.completionTokens = r.progress.generated
            u.stopSequence = r.progress.matchedStop
            let now = clock.now()
            u.timeToFirstToken = (r.firstToken ?? now) - r.submitted
            u.decodeSeconds = now - (r.firstToken ?? now)
            count(reason == .stop ? \.stopped : \.lengthLimited)  // before the stream ends, so a reader of stats sees it
            timers.seconds(timers.requestDuration, now - r.submitted)
            r.continuation.yield(.finished(reason, u))
            r.continuation.finish()
            return false
        }
        r.tokens.append(token)
        return true
    }

    private func fail(_ r: Request, _ e: GenerationError) {
        r.done = true
        r.failed = true
        count(\.failed)  // before the stream ends
        log("request \(r.id) failed: \(e.message)")
        r.continuation.finish(throwing: e)
    }

    private func end(_ r: Request, clientGone: Bool) {
        r.done = true
        if clientGone { count(\.disconnected) }  // before `cancelled`, which is what watchers wait on
        count(\.cancelled)
        r.continuation.finish(throwing: CancellationError())
    }
}
