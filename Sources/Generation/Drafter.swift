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

    /// Proposals for several sequences in one batch per position: for each (id, context — the accepted tokens,
    /// the pending one last — and how many at most), up to that many; none for a sequence with fewer than
    /// `options.minTokens` confident ones. `capacity` bounds each sequence's cache here.
    func propose(_ asks: [(sequence: UInt64, context: [Int32], count: Int)], capacity: Int) throws -> [[Int32]] {
        let jobs = asks.map { ask -> (sequence: Sequence, context: [Int32], count: Int) in
            let seq: Sequence
            if let s = sequences[ask.sequence] { seq = s } else {
                seq = engine.newSequence(capacity: capacity)
                sequences[ask.sequence] = seq
            }
            return (seq, ask.context, min(ask.count, options.maxTokens))
        }
        return try engine.propose(jobs, minProbability: options.minProbability).map { $0.count < options.minTokens ? [] : $0 }
    }

    /// Frees the caches of sequences that ended.
    func release(_ ids: [UInt64]) {
        for id in ids { sequences[id] = nil }
    }
}
