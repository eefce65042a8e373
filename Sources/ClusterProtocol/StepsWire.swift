import Foundation
import Generation
import Model
import Wire

// Steps and the tokens they sample, as the pipeline carries them: the scheduler's Step becomes the first stage's
// StageInput; the last stage's sampled tokens travel back as a TokenOut, which the coordinator reads back into
// the scheduler's terms. A client's generation events go out as TokenOuts too.

public extension Conclave_V1_StageInput {
    /// A step's rows, tokens, sample rows, sampling and log-probability requests.
    init(step: Step) {
        self.init()
        for r in step.rows {
            var row = Conclave_V1_BatchRow()
            row.sequence = r.sequence
            row.position = UInt32(r.position)
            rows.append(row)
            tokens.append(r.token)
        }
        sampleRows = step.sampleRows.map(UInt32.init)
        sampling = step.sampling.map(\.wire)
        logprobs = step.logprobs.map { Int32(clamping: $0) }
    }
}

public extension Conclave_V1_StageInput {
    /// The prefix cache's changes, as a StageInput without rows.
    init(cacheOps ops: CacheOps) {
        self.init()
        release = ops.release
        retain = ops.retain.map { r in
            var k = Conclave_V1_KeptSequence()
            k.sequence = r.sequence
            k.length = UInt32(clamping: r.length)
            return k
        }
        starts = ops.starts.map { s in
            var p = Conclave_V1_PrefixStart()
            p.sequence = s.sequence
            p.source = s.source
            p.length = UInt32(clamping: s.length)
            p.keepSource = s.keepSource
            return p
        }
    }

    /// The cache changes it carries, every id and length checked: ids name sequences as Int (at most Int.max),
    /// a kept or started prefix has at least one position.
    func cacheOps() throws(WireError) -> CacheOps {
        let ids = release + retain.map(\.sequence) + starts.flatMap { [$0.sequence, $0.source] }
        if let bad = ids.first(where: { $0 > UInt64(Int.max) }) { throw WireError(.malformed, "sequence id \(bad) is out of range (at most \(Int.max))") }
        guard retain.allSatisfy({ $0.length >= 1 }), starts.allSatisfy({ $0.length >= 1 }) else {
            throw WireError(.malformed, "a kept or started prefix of 0 positions")
        }
        return CacheOps(retain: retain.map { ($0.sequence, Int($0.length)) }, release: release,
                        starts: starts.map { CacheOps.Start(sequence: $0.sequence, source: $0.source, length: Int($0.length), keepSource: $0.keepSource) })
    }

    /// Whether it asks anything of a stage: rows to run or caches to change.
    var hasWork: Bool { !rows.isEmpty || !release.isEmpty || !retain.isEmpty || !starts.isEmpty }
}

public extension Conclave_V1_Ready {
    /// The KV room a stage reported (nil: no layers, or a worker that does not say).
    func kvRoom(context: Int) -> KVRoom? {
        guard kvPositions > 0 else { return nil }
        return KVRoom(positions: Int(clamping: kvPositions), overhead: Int(kvOverhead), context: context)
    }
}

public extension Conclave_V1_TopLogprobs {
    init(_ top: [TokenLogprob]) {
        self.init()
        tokens = top.map(\.token)
        logprobs = top.map(\.logprob)
    }
}

public extension Conclave_V1_TokenOut {
    /// The last stage's answer to a step: each sample row's token in order, with log-probabilities when any has
    /// them (NaN for a row without).
    init(sampled: [(sequence: UInt64, token: SampledToken)]) {
        self.init()
        sequences = sampled.map(\.sequence)
        tokens = sampled.map(\.token.token)
        if sampled.contains(where: { $0.token.logprob != nil }) {
            logprobs = sampled.map { $0.token.logprob ?? .nan }
            top = sampled.map { Conclave_V1_TopLogprobs($0.token.top) }
        }
    }

    /// A step's answer read back: each sequence's tokens in order (several for a sequence whose proposals were
    /// verified). Every list is checked against the others before use: a peer's lengths are not trusted.
    func sampledTokens() throws(GenerationError) -> [UInt64: [SampledToken]] {
        guard sequences.count == tokens.count, logprobs.isEmpty || logprobs.count == tokens.count, top.isEmpty || top.count == tokens.count,
              top.allSatisfy({ $0.tokens.count == $0.logprobs.count && $0.tokens.count <= SampledToken.maxTop }) else {
            throw GenerationError(.internal, "the last stage answered a step with mismatched lists")
        }
        var out: [UInt64: [SampledToken]] = [:]
        for (i, (s, t)) in zip(sequences, tokens).enumerated() {
            var sampled = SampledToken(token: t)
            if !logprobs.isEmpty, !logprobs[i].isNaN {
                sampled.logprob = logprobs[i]
                if !top.isEmpty { sampled.top = zip(top[i].tokens, top[i].logprobs).map { TokenLogprob(token: $0, logprob: $1) } }
            }
            out[s, default: []].append(sampled)
        }
        return out
    }

    /// A client's generation event: a token with the text it releases (and its log-probabilities), or the end
    /// with the finish reason, usage and speeds.
    init(event: GenerationEvent, sequence: UInt64) {
        self.init()
        sequences = [sequence]
        switch event {
        case .token(let t, let text, let lp):
            if let t { tokens = [t] }
            self.text = Data(text.utf8)
            if let lp, let l = lp.logprob {
                logprobs = [l]
                top = [Conclave_V1_TopLogprobs(lp.top)]
            }
        case .finished(let reason, let u):
            done = true
            finishReason = reason.rawValue
            promptTokens = UInt32(u.promptTokens)
            generatedTokens = UInt32(u.completionTokens)
            prefillTokS = u.prefillTokensPerSecond
            decodeTokS = u.decodeTokensPerSecond
        }
    }
}

public extension GenerationRequest {
    /// A client's Generate, its prompt tokenized by the caller.
    init(_ g: Conclave_V1_Generate, prompt: [Int32]) {
        self.init(prompt: prompt, maxTokens: Int(g.maxTokens), stop: g.stop,
                  sampling: g.hasSampling ? SamplingParams(g.sampling) : SamplingParams(),
                  contextLength: g.contextLength > 0 ? Int(g.contextLength) : nil)
    }
}
