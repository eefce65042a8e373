import Model

/// The draft side of speculative decoding in a server: a small model in this process (same vocabulary as the
/// served one) that proposes the next tokens of each decoding sequence, so the scheduler can send the pending
/// token and the proposals as one step — one pass through the pipeline verifies them all (see `Step`). Each
/// sequence has a cache of its own here, kept in step with the accepted tokens; used by the scheduler's loop
/// thread only.
public final class Drafter: @unchecked Sendable {
    public let engine: Engine
    public let options: DraftOptions
    private var sequences: [UInt64: Sequence] = [:]

    public init(engine: Engine, options: DraftOptions) {
        self.engine = engine
        self.options = options
    }

    /// Up to `count` proposals to follow `context` (the sequence's accepted tokens, its pending one last); none
    /// when fewer than `options.minTokens` are confident. `capacity` bounds the sequence's cache here.
    func propose(sequence id: UInt64, context: [Int32], count: Int, capacity: Int) throws -> [Int32] {
        let n = min(count, options.maxTokens)
        guard n > 0 else { return [] }
        let seq: Sequence
        if let s = sequences[id] { seq = s } else {
            seq = engine.newSequence(capacity: capacity)
            sequences[id] = seq
        }
        let out = try engine.propose(in: seq, context: context, count: n, minProbability: options.minProbability)
        return out.count < options.minTokens ? [] : out
    }

    /// Frees the caches of sequences that ended.
    func release(_ ids: [UInt64]) {
        for id in ids { sequences[id] = nil }
    }
}
