#if canImport(Glibc)
import Glibc
#endif
import Grammar
import Kernels
import Tokenizer

/// Sampling parameters with llama.cpp's defaults.
public struct SamplingParams: Sendable, Equatable {
    public var temperature: Float = 0.8
    public var topK: Int = 40
    public var topP: Float = 0.95
    public var minP: Float = 0.05
    public var repeatPenalty: Float = 1.0
    /// How many recent tokens the repetition, frequency and presence penalties look at.
    public var repeatLastN: Int = 64
    /// OpenAI's penalties as llama.cpp applies them: a token seen c times in the window loses c·frequency + presence.
    public var frequencyPenalty: Float = 0
    public var presencePenalty: Float = 0
    public var seed: UInt64 = 0
    /// Output constrained to this GBNF grammar (a JSON schema arrives compiled to one), from position
    /// `grammarStart` on: only tokens that keep the generated text a prefix of the grammar's language are drawn.
    public var grammar: String?
    /// The position of the first generated token (the prompt's length): the grammar matches from there.
    public var grammarStart = 0

    /// A grammar larger than this is refused at every door (a worker compiles what it is sent).
    public static let maxGrammarBytes = 1 << 20

    public init() {}

    /// What is wrong with these settings, naming the setting and its allowed range, or nil when they are usable.
    /// Every door checks with this one function: the CLI, the scheduler (HTTP and ZeroMQ clients), a worker's
    /// StageInput. (The HTTP API checks OpenAI's narrower ranges first, naming the JSON field.)
    public var problem: String? {
        func bad(_ name: String, _ v: Float, _ range: ClosedRange<Float>) -> String? {
            v.isFinite && range.contains(v) ? nil : "\(name) \(v) is outside \(range.lowerBound)...\(range.upperBound)"
        }
        if topK < 0 { return "top-k \(topK) is negative (0 keeps every token)" }
        if repeatLastN < 0 || repeatLastN > 1 << 20 { return "repeat-last-n \(repeatLastN) is outside 0...\(1 << 20)" }
        if let g = grammar, g.utf8.count > Self.maxGrammarBytes { return "grammar of \(g.utf8.count) bytes is above the \(Self.maxGrammarBytes) accepted" }
        if grammarStart < 0 { return "grammar start \(grammarStart) is negative" }
        return bad("temperature", temperature, 0...100) ?? bad("top-p", topP, 0...1) ?? bad("min-p", minP, 0...1)
            ?? bad("repeat penalty", repeatPenalty, 0.01...100) ?? bad("frequency penalty", frequencyPenalty, -2...2)
            ?? bad("presence penalty", presencePenalty, -2...2)
    }

    /// Why `grammar` cannot constrain this model's output (it does not parse, is left-recursive, or names a
    /// token the vocabulary lacks), or nil. The scheduler asks before queueing, so a worker never sees it fail.
    public func grammarProblem(tokenizer: Tokenizer) -> String? {
        guard let grammar else { return nil }
        do {
            let program = try GrammarProgram(parsing: grammar)
            for r in program.tokenReferences {
                switch r {
                case .id(let id) where id < 0 || Int(id) >= tokenizer.vocab.count: return "grammar: token <[\(id)]> is outside the vocabulary of \(tokenizer.vocab.count)"
                case .text(let t) where tokenizer.vocab.id(of: Array(t.utf8)) == nil: return "grammar: the vocabulary has no token \(t)"
                default: continue
                }
            }
            return nil
        } catch {
            return error.message
        }
    }

    /// Always the most likely token.
    public static var greedy: SamplingParams {
        var p = SamplingParams()
        p.temperature = 0
        return p
    }
}

/// Turns logits into a token: repetition penalty, top-k, top-p, min-p, temperature, then a seeded draw —
/// the order of llama.cpp's default chain. Temperature ≤ 0 is greedy. Same seed, same logits → same tokens.
///
/// The draw is a function of (seed, position) alone, the position being the history's length: no state carries
/// from one token to the next, so a sequence replayed onto new workers after a failure (or sampled by another
/// process) draws exactly what the first run drew.
public struct Sampler: Sendable {
    public let params: SamplingParams

    public init(_ params: SamplingParams) {
        self.params = params
    }

    /// Element `position` of the seed's SplitMix64 stream.
    func uniform(position: Int) -> Double {
        var z = params.seed &+ 0x9E37_79B9_7F4A_7C15 &* UInt64(position + 2)
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return Double(z >> 11) / Double(1 << 53)
    }

    /// The next token from `logits`; under `constraint`, only a token the grammar allows in its state.
    ///
    /// Constrained, the draw is the one the unconstrained chain would make on logits where every refused token
    /// is -∞ (llama.cpp's grammar sampler first in the chain), found cheaply when it can be: the few most likely
    /// tokens are checked one by one (a walk of their bytes through the grammar's cached transitions), and only
    /// when fewer of them pass than top-k keeps is the whole vocabulary masked.
    public mutating func sample(_ logits: UnsafePointer<Float>, count n: Int, history: [Int32], constraint: GrammarConstraint? = nil) -> Int32 {
        var l = Array(UnsafeBufferPointer(start: logits, count: n))
        if params.repeatPenalty != 1 || params.frequencyPenalty != 0 || params.presencePenalty != 0 {
            var counts: [Int32: Int] = [:]
            for t in history.suffix(params.repeatLastN) where t >= 0 && Int(t) < n { counts[t, default: 0] += 1 }
            for (t, c) in counts {
                let i = Int(t)
                if params.repeatPenalty != 1 { l[i] = l[i] > 0 ? l[i] / params.repeatPenalty : l[i] * params.repeatPenalty }
                l[i] -= Float(c) * params.frequencyPenalty + params.presencePenalty
            }
        }
        // The top k found under a constraint (sorted, every one allowed): the chain below need not look again.
        var fastCandidates: [Int]?
        if let constraint {
            // The most likely tokens first: when k of the top ones pass, they are the top k of the masked logits
            // (every token outside the list ranks below them); otherwise the top k of the mask's tokens. Either
            // way the chain below starts from these candidates, as it would from top-k of the masked logits.
            let k = params.temperature <= 0 ? 1 : params.topK > 0 ? min(params.topK, n) : n
            if k <= 64 {
                let top = l.withUnsafeBufferPointer { Ops.topK($0.baseAddress!, count: n, k: min(n, 64)) }
                var kept: [Int] = []
                for t in top where kept.count < k && constraint.allows(Int32(t)) { kept.append(t) }
                if kept.count == k { fastCandidates = kept }
            }
            if fastCandidates == nil {
                let mask = constraint.mask()
                var allowed: [Int] = []
                for (w, word) in mask.enumerated() where word != 0 {
                    var bits = word
                    while bits != 0 {
                        let i = w << 6 | bits.trailingZeroBitCount
                        if i < n { allowed.append(i) }
                        bits &= bits - 1
                    }
                }
                guard !allowed.isEmpty else { return constraint.fallback }
                // The top k of the allowed tokens (ties: lower id first, as top-k orders them): the masked top k.
                let values = allowed.map { l[$0] }
                let top = values.withUnsafeBufferPointer { Ops.topK($0.baseAddress!, count: values.count, k: min(k, values.count)) }
                fastCandidates = top.map { allowed[$0] }
            }
        }
        if params.temperature <= 0 {
            if let first = fastCandidates?.first { return Int32(first) }
            var best = 0
            for i in 1..<n where l[i] > l[best] { best = i }
            return Int32(best)
        }
        // Candidates sorted by logit (top-k first bounds the sort).
        let k = params.topK > 0 ? min(params.topK, n) : n
        var cand = fastCandidates ?? l.withUnsafeBufferPointer { Ops.topK($0.baseAddress!, count: n, k: k) }
        var probs = cand.map { l[$0] }
        probs.withUnsafeMutableBufferPointer { Ops.softmax($0.baseAddress!, count: $0.count) }
        if params.topP < 1 {
            var cum: Float = 0, keep = cand.count
            for (i, p) in probs.enumerated() {
                cum += p
                if cum >= params.topP { keep = i + 1; break }
            }
            cand = Array(cand.prefix(keep))
            probs = Array(probs.prefix(keep))
        }
        if params.minP > 0, let top = probs.first {
            let keep = probs.firstIndex { $0 < params.minP * top } ?? probs.count
            cand = Array(cand.prefix(max(1, keep)))
        }
        var final = cand.map { l[$0] / params.temperature }
        final.withUnsafeMutableBufferPointer { Ops.softmax($0.baseAddress!, count: $0.count) }
        let u = uniform(position: history.count)
        var acc = 0.0
        for (i, p) in final.enumerated() {
            acc += Double(p)
            if u < acc { return Int32(cand[i]) }
        }
        return Int32(cand.last!)
    }
}
