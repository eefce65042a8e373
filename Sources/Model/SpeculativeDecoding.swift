#if canImport(Glibc)
import Glibc
import Runtime
#endif
import Kernels
import Tokenizer

/// Speculative decoding in one process: a small draft model with the same vocabulary proposes the next few
/// tokens, greedily, while it is confident; the target evaluates the pending token and every proposal in one
/// batch (one pass through its layers for up to `maxTokens` + 1 positions) and keeps the longest prefix its own
/// sampler agrees with. The target samples each position exactly as plain decoding would — the same sampler, the
/// same history, one draw per emitted token, in order — so the text is the one `generate` makes without a draft,
/// greedy or seeded (llama-server's rule). Rejected positions are dropped from both caches.
public struct DraftOptions: Sendable {
    /// Most tokens proposed per pass (llama.cpp's --draft-max).
    public var maxTokens = 8
    /// Fewer confident proposals than this are not worth a batch: the pass verifies none (--draft-min).
    public var minTokens = 1
    /// The draft stops proposing when its best token's probability is below this (--draft-p-min).
    public var minProbability: Float = 0.75
    public init() {}

    public var problem: String? {
        guard maxTokens >= 1, maxTokens <= 64 else { return "--draft-max must be 1...64" }
        guard minTokens >= 0, minTokens <= maxTokens else { return "--draft-min must be 0...--draft-max" }
        guard minProbability >= 0, minProbability <= 1 else { return "--draft-p-min must be 0...1" }
        return nil
    }
}

/// What the draft did: its proposals, those accepted, and the target's verifying passes (each one batch, or one
/// pass through a cluster's pipeline). `conclave run`, the scheduler, status and bench serve all count with it.
public struct DraftStats: Sendable, Equatable {
    public var proposed = 0, accepted = 0
    public var passes = 0
    public init(proposed: Int = 0, accepted: Int = 0, passes: Int = 0) {
        self.proposed = proposed
        self.accepted = accepted
        self.passes = passes
    }
    public var acceptanceRate: Double { proposed > 0 ? Double(accepted) / Double(proposed) : 0 }
    /// Tokens each pass produced: its own sampled token and the accepted proposals.
    public var tokensPerPass: Double { passes > 0 ? Double(passes + accepted) / Double(passes) : 0 }
}

extension EngineSequence {
    /// Forgets every position from `n` on, in the caches and the token history (rejected proposals).
    public func truncate(to n: Int) {
        for c in caches { c.truncate(to: n) }
        if tokens.count > n { tokens.removeLast(tokens.count - n) }
    }
}

extension Engine {
    /// Refuses a draft whose vocabulary is not this model's (its proposals would be other tokens).
    public func checkDraft(_ draft: Engine) throws(ModelError) {
        try draft.checkDrafts(for: tokenizer, vocabSize: config.vocabSize)
    }

    /// Refuses this model as the draft of a model with `tokenizer` and `vocabSize` unless they share the vocabulary.
    public func checkDrafts(for tokenizer: Tokenizer, vocabSize: Int) throws(ModelError) {
        guard config.vocabSize == vocabSize, self.tokenizer.bos == tokenizer.bos,
              self.tokenizer.encode("Hello, world! 123") == tokenizer.encode("Hello, world! 123") else {
            throw ModelError("the draft model's vocabulary (\(config.vocabSize) tokens) is not the target's (\(vocabSize)); a draft must share the tokenizer")
        }
    }

    /// `generate` with `draft` proposing tokens (see `DraftOptions`); the same tokens, fewer passes.
    public func generate(prompt: [Int32], policy: GenerationPolicy, params: SamplingParams, in seq: EngineSequence,
                         draft: Engine, draftSequence dseq: EngineSequence, options: DraftOptions, draftStats: inout DraftStats,
                         onToken: (Int32?, String) -> Bool) throws -> GenerationStats {
        try checkDraft(draft)
        var stats = GenerationStats()
        var sampler = Sampler(params)
        var progress = policy.start(tokenizer: tokenizer)
        let v = config.vocabSize, capacity = seq.caches.first?.capacity ?? 0
        let t0 = MonotonicClock.seconds()
        var logits = try evaluate(prompt, in: seq)
        stats.promptTokens = prompt.count
        stats.prefillSeconds = MonotonicClock.seconds() - t0
        let t1 = MonotonicClock.seconds()
        var pending = logits.withUnsafeBufferPointer { sampler.sample($0.baseAddress!, count: v, history: seq.tokens) }
        var fed = seq.length
        generation: while true {
            // The pending token, sampled from the target's last logits.
            var step = progress.accept(pending, fed: fed)
            if step.counted { stats.generatedTokens += 1 }
            if step.counted || !step.text.isEmpty, !onToken(step.counted ? pending : nil, step.text) { break }
            if let f = step.finish { stats.finishReason = f; break }
            let base = seq.length  // the pending token's position
            let room = min(capacity - base - 1, dseq.caches.first.map { $0.capacity - base - 1 } ?? 0)
            let proposals = room > 0 ? try draft.propose([(dseq, seq.tokens + [pending], room)], options: options)[0] : []
            draftStats.proposed += proposals.count
            draftStats.passes += 1
            logits = try evaluate([pending] + proposals, in: seq, all: true)
            var accepted = 0
            for i in 0...proposals.count {
                let history = Array(seq.tokens.prefix(base + 1 + i))
                let t = logits.withUnsafeBufferPointer { sampler.sample($0.baseAddress! + i * v, count: v, history: history) }
                guard i < proposals.count, t == proposals[i] else {
                    pending = t
                    fed = base + 1 + i
                    break
                }
                accepted += 1
                draftStats.accepted += 1
                step = progress.accept(t, fed: base + 1 + i)
                if step.counted { stats.generatedTokens += 1 }
                if step.counted || !step.text.isEmpty, !onToken(step.counted ? t : nil, step.text) { break generation }
                if let f = step.finish { stats.finishReason = f; break generation }
            }
            // Positions past the pending token and the accepted proposals held rejected ones.
            seq.truncate(to: base + 1 + accepted)
        }
        stats.decodeSeconds = MonotonicClock.seconds() - t1
        return stats
    }

    /// This (draft) model's greedy proposals for several sequences at once, one batch per proposed position (a
    /// server drafts for all its decoding sequences together): for each (sequence, context — the accepted tokens,
    /// the pending one last — and room), up to min(room, `options.maxTokens`). Each sequence forgets what it holds
    /// past the part it shares with its context, takes the tokens it has not seen, then its own picks while its best
    /// is at least as likely as `options.minProbability`; fewer than `options.minTokens` picks are none.
    public func propose(_ jobs: [(sequence: EngineSequence, context: [Int32], count: Int)], options: DraftOptions) throws -> [[Int32]] {
        let jobs = jobs.map { (sequence: $0.sequence, context: $0.context, count: min($0.count, options.maxTokens)) }
        let minProbability = options.minProbability
        var out = [[Int32]](repeating: [], count: jobs.count)
        var next = [Int32?](repeating: nil, count: jobs.count)  // the token each sequence takes in the next batch
        for (i, job) in jobs.enumerated() where job.count > 0 && !job.context.isEmpty {
            let (dseq, context) = (job.sequence, job.context)
            var shared = 0
            while shared < min(dseq.tokens.count, dseq.length, context.count), dseq.tokens[shared] == context[shared] { shared += 1 }
            // The last context token is fed again when the sequence has it all: its logits are what the first pick needs.
            dseq.truncate(to: min(shared, context.count - 1))
            // What it has not seen but the last token goes on its own (in chunks), so the batches take one row each.
            if dseq.length < context.count - 1 { _ = try evaluate(Array(context[dseq.length..<(context.count - 1)]), in: dseq) }
            next[i] = context[context.count - 1]
        }
        let e = config.embeddingLength, v = config.vocabSize
        while true {
            let live = jobs.indices.filter { i in
                next[i] != nil && out[i].count < jobs[i].count && jobs[i].sequence.length < (jobs[i].sequence.caches.first?.capacity ?? 0)
            }
            guard !live.isEmpty else { break }
            let tokens = live.map { next[$0]! }
            let rows = live.map { BatchRow(sequence: jobs[$0].sequence.id, position: jobs[$0].sequence.length) }
            let hidden = UnsafeMutablePointer<Float>.allocate(capacity: live.count * e)
            defer { hidden.deallocate() }
            try stages[0].embed(tokens, into: hidden)
            for (s, stage) in stages.enumerated() {
                try stage.forward(hidden, rows: rows, caches: Dictionary(uniqueKeysWithValues: live.map { (jobs[$0].sequence.id, jobs[$0].sequence.caches[s]) }))
            }
            var logits = [Float](repeating: 0, count: live.count * v)
            try logits.withUnsafeMutableBufferPointer { try stages[stages.count - 1].logits(hidden, rows: Array(live.indices), into: $0.baseAddress!) }
            for (n, i) in live.enumerated() {
                jobs[i].sequence.tokens.append(tokens[n])
                let (best, p) = logits.withUnsafeBufferPointer { all -> (Int32, Float) in
                    let l = all.baseAddress! + n * v
                    var b = 0
                    for j in 1..<v where l[j] > l[b] { b = j }
                    // The probability is needed only against a threshold (a softmax over the vocabulary per token).
                    guard minProbability > 0 else { return (Int32(b), 1) }
                    var z: Float = 0
                    for j in 0..<v { z += expf(l[j] - l[b]) }
                    return (Int32(b), 1 / z)
                }
                if p < minProbability {
                    next[i] = nil
                } else {
                    out[i].append(best)
                    next[i] = best
                }
            }
        }
        return out.map { $0.count < options.minTokens ? [] : $0 }
    }
}
