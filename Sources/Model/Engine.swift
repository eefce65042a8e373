import Grammar
#if canImport(Glibc)
import Glibc
#endif
import GGUF
import Runtime
import Kernels
import Tokenizer

/// One sequence being generated: its tokens so far and its caches, one per stage.
public final class EngineSequence: @unchecked Sendable {
    public let id: Int
    public var tokens: [Int32] = []
    public let caches: [KVCache]
    public init(id: Int, caches: [KVCache]) {
        self.id = id
        self.caches = caches
    }
    public var length: Int { caches.first?.length ?? 0 }
    public func reset() { for c in caches { c.truncate(to: 0) }; tokens = [] }
}

/// A model running in this process: stages composed in order, a tokenizer, a thread pool.
public final class Engine: @unchecked Sendable {
    public let file: GGUFFile
    public let config: ModelConfig
    public let tokenizer: Tokenizer
    public let stages: [Stage]
    public let pool: ThreadPool
    /// What each sequence's KV cache stores its keys and values in.
    public let cacheTypes: CacheTypes
    /// Most rows pushed through the layers at once during prefill (llama.cpp's n_ubatch).
    public var maxBatch = 512
    private var nextSequence = 0

    /// `split` cuts the layers into stages (e.g. [2] makes 0..<2 and 2..<n); empty for one stage.
    public convenience init(path: String, threads: Int, split: [Int] = [], cacheTypes: CacheTypes = .f16, selection: ExpertSelection = .file) throws {
        try self.init(file: try GGUFFile(path: path), threads: threads, split: split, cacheTypes: cacheTypes, selection: selection)
    }

    /// The same over a file already open (stages of several engines may share one mapping). `experts`, when
    /// given, makes the provider every stage computes its routed experts with (the offload cache under a
    /// memory budget); the stages then fault in none of the expert tensors themselves.
    /// `selection`: fewer experts per token than the file routes to (`ExpertSelection`; off by default).
    public init(file: GGUFFile, threads: Int, split: [Int] = [], cacheTypes: CacheTypes = .f16, selection: ExpertSelection = .file,
                experts: ((ThreadPool) throws -> ExpertProvider)? = nil) throws {
        self.file = file
        config = try ModelConfig(file: file).selecting(selection)
        try cacheTypes.check(config)
        self.cacheTypes = cacheTypes
        tokenizer = try Tokenizer(file: file)
        pool = ThreadPool(threads: threads)
        let bounds = [0] + split + [config.layerCount]
        guard zip(bounds, bounds.dropFirst()).allSatisfy({ $0 < $1 }) else {
            throw ModelError("stage split \(split) must be increasing layer numbers inside 1..<\(config.layerCount)")
        }
        let (f, c, p) = (file, config, pool)
        let provider = try experts?(pool)
        stages = try zip(bounds, bounds.dropFirst()).map {
            try Stage(file: f, config: c, layers: $0..<$1, pool: p, experts: provider, heldExperts: provider == nil ? .all : .none)
        }
    }

    /// A fresh sequence with caches for `capacity` positions (default: the model's context length).
    public func newSequence(capacity: Int? = nil) -> EngineSequence {
        let cap = capacity ?? config.contextLength
        defer { nextSequence += 1 }
        return EngineSequence(id: nextSequence, caches: stages.map { KVCache(layers: $0.layers, capacity: cap, config: config, types: cacheTypes) })
    }

    /// Runs `tokens` at positions `seq.length...` and returns logits: for every token when `all`, else the last.
    public func evaluate(_ tokens: [Int32], in seq: EngineSequence, all: Bool = false) throws -> [Float] {
        guard !tokens.isEmpty else { return [] }
        let capacity = seq.caches.first?.capacity ?? 0
        guard seq.length + tokens.count <= capacity else {
            throw ModelError("the prompt and generation need \(seq.length + tokens.count) positions but the context holds \(capacity); use a shorter prompt or a larger --ctx")
        }
        let e = config.embeddingLength, v = config.vocabSize
        var logits = [Float](repeating: 0, count: (all ? tokens.count : 1) * v)
        var start = 0
        while start < tokens.count {
            let chunk = Array(tokens[start..<min(tokens.count, start + maxBatch)])
            let base = seq.length
            let rows = chunk.indices.map { BatchRow(sequence: seq.id, position: base + $0) }
            let hidden = UnsafeMutablePointer<Float>.allocate(capacity: chunk.count * e)
            defer { hidden.deallocate() }
            try stages[0].embed(chunk, into: hidden)
            for (s, stage) in stages.enumerated() {
                try stage.forward(hidden, rows: rows, caches: [seq.id: seq.caches[s]])
            }
            let last = stages[stages.count - 1]
            if all {
                try logits.withUnsafeMutableBufferPointer { try last.logits(hidden, rows: Array(0..<chunk.count), into: $0.baseAddress! + start * v) }
            } else if start + chunk.count == tokens.count {
                try logits.withUnsafeMutableBufferPointer { try last.logits(hidden, rows: [chunk.count - 1], into: $0.baseAddress!) }
            }
            seq.tokens += chunk
            start += chunk.count
        }
        return logits
    }

    public struct GenerationStats: Sendable {
        public var promptTokens = 0, generatedTokens = 0
        public var prefillSeconds = 0.0, decodeSeconds = 0.0
        public var finishReason: FinishReason?
        public var prefillTokensPerSecond: Double { prefillSeconds > 0 ? Double(promptTokens) / prefillSeconds : 0 }
        public var decodeTokensPerSecond: Double { decodeSeconds > 0 ? Double(generatedTokens) / decodeSeconds : 0 }
    }

    /// Generates after `prompt` until `policy` ends it, calling `onToken` with each generated token and the text it
    /// releases (whole characters; text that may begin a stop string waits), and at the end with nil and any text
    /// still held. Stops early when `onToken` returns false.
    @discardableResult
    public func generate(prompt: [Int32], policy: GenerationPolicy, params: SamplingParams, in seq: EngineSequence,
                         onToken: (Int32?, String) -> Bool) throws -> GenerationStats {
        var stats = GenerationStats()
        var sampler = Sampler(params)
        var progress = policy.start(tokenizer: tokenizer)
        // Output under a grammar, matched from the first generated token, as the last stage of a cluster does.
        var trail: GrammarTrail?
        if let grammar = params.grammar {
            do {
                let matcher = try GrammarMatcher(program: GrammarProgram(parsing: grammar), vocabulary: GrammarVocabulary(tokenizer: tokenizer))
                trail = GrammarTrail(matcher: matcher, start: seq.tokens.count + prompt.count)
            } catch {
                throw ModelError(error.message)
            }
        }
        let t0 = MonotonicClock.seconds()
        var logits = try evaluate(prompt, in: seq)
        stats.promptTokens = prompt.count
        stats.prefillSeconds = MonotonicClock.seconds() - t0
        let t1 = MonotonicClock.seconds()
        while true {
            var constraint: GrammarConstraint?
            if trail != nil { constraint = GrammarConstraint(matcher: trail!.matcher, state: trail!.state(after: seq.tokens)) }
            let next = logits.withUnsafeBufferPointer { sampler.sample($0.baseAddress!, count: config.vocabSize, history: seq.tokens, constraint: constraint) }
            let step = progress.accept(next, fed: seq.length)
            if step.counted { stats.generatedTokens += 1 }
            if step.counted || !step.text.isEmpty {
                if !onToken(step.counted ? next : nil, step.text) { break }
            }
            if let f = step.finish { stats.finishReason = f; break }
            logits = try evaluate([next], in: seq)
        }
        stats.decodeSeconds = MonotonicClock.seconds() - t1
        return stats
    }

    /// Up to `maxTokens` tokens with no stop strings, within the sequence's cache.
    @discardableResult
    public func generate(prompt: [Int32], maxTokens: Int, params: SamplingParams, in seq: EngineSequence,
                         onToken: (Int32?, String) -> Bool) throws -> GenerationStats {
        try generate(prompt: prompt, policy: GenerationPolicy(maxTokens: maxTokens, capacity: seq.caches.first?.capacity ?? 0),
                     params: params, in: seq, onToken: onToken)
    }

    /// Perplexity as llama-perplexity computes it: chunks of `ctx` tokens, each evaluated from a fresh cache with
    /// BOS in place of its first token, scoring the second half of each chunk.
    public func perplexity(_ tokens: [Int32], ctx: Int, progress: (Int, Int, Double) -> Void = { _, _, _ in }) throws -> (ppl: Double, chunks: Int) {
        guard ctx >= 4 else { throw ModelError("--ctx \(ctx) is too small") }
        let chunks = tokens.count / ctx
        guard chunks > 0 else { throw ModelError("the text has \(tokens.count) tokens, fewer than one chunk of \(ctx)") }
        let v = config.vocabSize
        let seq = newSequence(capacity: ctx)
        var nll = 0.0, count = 0
        for c in 0..<chunks {
            var chunk = Array(tokens[(c * ctx)..<((c + 1) * ctx)])
            if let bos = tokenizer.bos { chunk[0] = bos }
            seq.reset()
            let logits = try evaluate(chunk, in: seq, all: true)
            for j in (ctx / 2)..<(ctx - 1) {
                let row = logits[(j * v)..<((j + 1) * v)]
                let m = row.max()!
                var z = 0.0
                for x in row { z += Double(expf(x - m)) }
                nll += Double(m) + log(z) - Double(row[row.startIndex + Int(chunk[j + 1])])
                count += 1
            }
            progress(c + 1, chunks, exp(nll / Double(count)))
        }
        return (exp(nll / Double(count)), chunks)
    }
}
