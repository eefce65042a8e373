import Foundation
import Grammar
import JSON
import Kernels
import Model

/// `bench decode --schema FILE`: decode speed with sampling under a JSON schema against the same sampling free,
/// in one sitting, and what the grammar costs to make (schema → grammar, the vocabulary's trie, the first masks).
///
/// Both runs draw `gen` tokens with the same sampler (llama.cpp's defaults and a fixed seed) from the same
/// prompt. The constrained run starts its grammar again whenever an answer completes (the model ending it, or
/// the grammar allowing nothing more), so every token it times is a constrained one.
struct ConstrainedDecodeBench {
    let engine: Engine
    let schema: JSONValue
    let gen: Int
    let prompt: [Int32]
    var rounds = 2

    struct Figures {
        var schemaSeconds = 0.0, vocabularySeconds = 0.0, grammarRules = 0, vocabularyNodes = 0
        var freeTokS = 0.0, constrainedTokS = 0.0
        var answers = 0, masksComputed = 0, maskHits = 0
        /// The matcher's states and cache bytes at the end, against what a sampling stage sets aside for them.
        var states = 0, cacheBytes = 0, cacheLimit = 0
        /// Time in the sampler per token, free and constrained (the grammar's share is the difference).
        var freeSampleSeconds = 0.0, constrainedSampleSeconds = 0.0
        var firstAnswer = ""
        var ratio: Double { freeTokS > 0 ? constrainedTokS / freeTokS : 0 }
    }

    func run() throws -> Figures {
        var f = Figures()
        var t = KernelBench.now()
        let text = try JSONSchemaGrammar.compile(schema)
        let program = try GrammarProgram(parsing: text)
        f.schemaSeconds = KernelBench.now() - t
        f.grammarRules = program.ruleCount
        t = KernelBench.now()
        let vocabulary = GrammarVocabulary(tokenizer: engine.tokenizer)
        f.vocabularySeconds = KernelBench.now() - t
        f.vocabularyNodes = vocabulary.nodeCount
        let matcher = try GrammarMatcher(program: program, vocabulary: vocabulary)

        var params = SamplingParams()
        params.seed = 42
        let ctx = prompt.count + gen + 8
        // Warm-up: the weights paged in and the caches of both paths filled before anything is timed.
        _ = try decode(matcher: nil, params: params, ctx: ctx, count: min(gen, 16))
        _ = try decode(matcher: matcher, params: params, ctx: ctx, count: min(gen, 16))
        // Free and constrained alternately, `rounds` times each: a drift of the machine hits both alike.
        var free: [Run] = [], constrained: [Run] = []
        for _ in 0..<rounds {
            free.append(try decode(matcher: nil, params: params, ctx: ctx, count: gen))
            constrained.append(try decode(matcher: matcher, params: params, ctx: ctx, count: gen))
        }
        f.freeTokS = Double(gen * rounds) / free.reduce(0) { $0 + $1.seconds }
        f.constrainedTokS = Double(gen * rounds) / constrained.reduce(0) { $0 + $1.seconds }
        f.freeSampleSeconds = free.reduce(0) { $0 + $1.sampleSeconds } / Double(rounds)
        f.constrainedSampleSeconds = constrained.reduce(0) { $0 + $1.sampleSeconds } / Double(rounds)
        f.answers = constrained[0].answers
        f.firstAnswer = constrained[0].firstAnswer
        f.masksComputed = matcher.masksComputed
        f.maskHits = matcher.maskHits
        f.states = matcher.stateCount
        f.cacheBytes = matcher.bytes
        f.cacheLimit = GrammarCache.byteLimit(vocabularySize: vocabulary.count)
        return f
    }

    struct Run {
        var seconds = 0.0, sampleSeconds = 0.0, answers = 0, firstAnswer = ""
    }

    /// `count` tokens decoded after the prompt, sampled freely or under `matcher`'s grammar (started again after
    /// each completed answer).
    func decode(matcher: GrammarMatcher?, params: SamplingParams, ctx: Int, count: Int) throws -> Run {
        var run = Run()
        let seq = engine.newSequence(capacity: ctx)
        var sampler = Sampler(params)
        var logits = try engine.evaluate(prompt, in: seq)
        var trail = matcher.map { GrammarTrail(matcher: $0, start: seq.tokens.count) }
        var answer: [Int32] = []
        let t = KernelBench.now()
        for _ in 0..<count {
            let s0 = KernelBench.now()
            var constraint: GrammarConstraint?
            if let matcher, trail != nil { constraint = GrammarConstraint(matcher: matcher, state: trail!.state(after: seq.tokens)) }
            let next = logits.withUnsafeBufferPointer {
                sampler.sample($0.baseAddress!, count: engine.config.vocabSize, history: seq.tokens, constraint: constraint)
            }
            run.sampleSeconds += KernelBench.now() - s0
            logits = try engine.evaluate([next], in: seq)
            guard let matcher, let c = constraint else { continue }
            answer.append(next)
            let after = matcher.next(c.state, token: next)
            if engine.tokenizer.isEndOfGeneration(next) || matcher.isComplete(after) || after < 0 {
                if run.answers == 0 { run.firstAnswer = engine.tokenizer.decode(answer) }
                run.answers += 1
                answer = []
                trail = GrammarTrail(matcher: matcher, start: seq.tokens.count)
            }
        }
        run.seconds = KernelBench.now() - t
        if run.answers == 0 { run.firstAnswer = engine.tokenizer.decode(answer) }
        return run
    }
}
