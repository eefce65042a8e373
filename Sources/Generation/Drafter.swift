import Model

/// The draft side of speculative decoding in a server: a small model in this process (same vocabulary as the
/// served one) that proposes the next tokens of each decoding sequence, so the scheduler can send the pending
/// token and the proposals as one step — one pass through the pipeline verifies them all (see `Step`). Each
/// sequence has a cache of its own here, kept in step with the accepted tokens; used by the scheduler's loop
/// thread only.
public final class Drafter: @unchecked Sendable {
    public let engine: Engine
    public let options: DraftOptions
    private var sequences: [UInt64: EngineSequence] = [:]

    public init(engine: Engine, options: DraftOptions) {
        self.engine = engine
        self.options = options
    }

    /// Proposals for several sequences (see `Engine.propose`), each drafted in a sequence of its own here, made
    /// with room for `capacity` positions when first seen.
    func propose(_ asks: [(sequence: UInt64, context: [Int32], count: Int)], capacity: Int) throws -> [[Int32]] {
        let jobs = asks.map { ask -> (sequence: EngineSequence, context: [Int32], count: Int) in
            let seq: EngineSequence
            if let s = sequences[ask.sequence] { seq = s } else {
                seq = engine.newSequence(capacity: capacity)
                sequences[ask.sequence] = seq
            }
            return (seq, ask.context, ask.count)
        }
        return try engine.propose(jobs, options: options)
    }

    /// Frees the caches of sequences that ended.
    func release(_ ids: [UInt64]) {
        for id in ids { sequences[id] = nil }
    }
}
