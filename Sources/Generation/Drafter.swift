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
    /// Sequences of requests that ended, newest last: a new request's draft starts from the one sharing the longest
    /// prefix with its context (the draft's own prefix cache; `Engine.propose` keeps only what is shared).
    private var retired: [EngineSequence] = []
    static let retiredLimit = 16

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
                let shared = retired.map { PrefixCache.common($0.tokens.prefix($0.length), ask.context, limit: ask.context.count) }
                if let best = shared.indices.max(by: { shared[$0] < shared[$1] }), shared[best] > 0, retired[best].caches.first?.capacity == capacity {
                    seq = retired.remove(at: best)
                } else {
                    seq = engine.newSequence(capacity: capacity)
                }
                sequences[ask.sequence] = seq
            }
            return (seq, ask.context, ask.count)
        }
        return try engine.propose(jobs, options: options)
    }

    /// Sequences that ended: kept for a later request to start from (the oldest beyond the limit freed).
    func release(_ ids: [UInt64]) {
        for id in ids {
            guard let s = sequences.removeValue(forKey: id) else { continue }
            retired.append(s)
        }
        if retired.count > Self.retiredLimit { retired.removeFirst(retired.count - Self.retiredLimit) }
    }

    /// Ended sequences kept for reuse.
    var retiredCount: Int { retired.count }
}
