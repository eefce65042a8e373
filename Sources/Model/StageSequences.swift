import Tokenizer
import GGUF
import Grammar
#if canImport(Glibc)
import Glibc
#endif
import Kernels
import Synchronization

/// A token's log-probability under the model (log-softmax of the raw logits, before any sampling setting).
public struct TokenLogprob: Sendable, Equatable {
    public var token: Int32
    public var logprob: Float
    public init(token: Int32, logprob: Float) {
        self.token = token
        self.logprob = logprob
    }
}

/// What the last stage answers for a sample row: the token, and when asked its log-probability and the top
/// alternatives (most likely first).
public struct SampledToken: Sendable, Equatable {
    public var token: Int32
    public var logprob: Float?
    public var top: [TokenLogprob]
    public init(token: Int32, logprob: Float? = nil, top: [TokenLogprob] = []) {
        self.token = token
        self.logprob = logprob
        self.top = top
    }

    /// Most alternatives a request may ask for (OpenAI's limit).
    public static let maxTop = 20

    /// `token` with its log-probability and the `top` most likely tokens of one row of logits.
    public static func with(_ token: Int32, logits p: UnsafePointer<Float>, count v: Int, top: Int) -> SampledToken {
        var m = -Float.infinity
        for i in 0..<v where p[i] > m { m = p[i] }
        var z = 0.0
        for i in 0..<v { z += Double(expf(p[i] - m)) }
        let lse = m + Float(log(z))
        let k = min(max(0, top), SampledToken.maxTop, v)
        let alternatives = k > 0 ? Ops.topK(p, count: v, k: k).map { TokenLogprob(token: Int32($0), logprob: p[$0] - lse) } : []
        return SampledToken(token: token, logprob: p[Int(token)] - lse, top: alternatives)
    }
}

/// The sequences one stage of this process is generating, and one step over them: a KV cache per sequence
/// (created at position 0, or from a prefix another cache holds), the tokens each has seen (for the repetition
/// penalty) and, on the last stage, each one's sampler. Ended sequences the scheduler keeps for reuse stay here
/// as prefixes (`apply`). Everything is counted in the stage's `KVRoom`: a running sequence reserves its context,
/// a kept prefix its length, and what would pass the room is refused. A worker's pipeline stage and the in-process
/// executor of `conclave serve -m` both step through this, so they compute and sample the same way.
public final class StageSequences: @unchecked Sendable {  // used from one thread at a time (the stage's queue)
    public let stage: Stage
    public let capacity: Int
    /// The KV this stage may hold, in positions.
    public let room: KVRoom
    /// Running sequences that fit with nothing kept.
    public var maxSequences: Int { room.sequences }
    /// What each sequence's cache stores keys and values in.
    public let cacheTypes: CacheTypes

    public struct StepError: Error, CustomStringConvertible, Sendable {
        public enum Kind: Sendable { case full, contextExceeded, malformed }
        public let kind: Kind
        public let description: String
    }

    struct State {
        var cache: KVCache
        var history: [Int32] = []
        var sampler: Sampler?
        /// Where a constrained sequence is in its grammar (derived from the history, so a replay rebuilds it).
        var trail: GrammarTrail?
    }
    private var states: [UInt64: State] = [:]
    /// Ended sequences kept for reuse: their caches and histories, trimmed to the length kept.
    private var kept: [UInt64: State] = [:]
    /// Positions charged to the room: every running sequence's context and every kept prefix's length, each
    /// with the room's overhead.
    private var charged = 0
    /// The grammars of constrained sequences, compiled once per text (the last stage only).
    public let grammars: GrammarCache

    /// `vocabulary` gives the model's vocabulary to a last stage the first time a request is constrained.
    public init(stage: Stage, room: KVRoom, cacheTypes: CacheTypes = .f16,
                vocabulary: @escaping () throws -> GrammarVocabulary = { throw GrammarError("no vocabulary was given to this stage") }) {
        grammars = GrammarCache(byteLimit: GrammarCache.byteLimit(vocabularySize: stage.config.vocabSize), vocabulary: vocabulary)
        self.cacheTypes = cacheTypes
        self.stage = stage
        self.capacity = room.context
        self.room = room
    }

    /// Room for exactly `maxSequences` running sequences of `capacity` positions and nothing kept.
    public convenience init(stage: Stage, capacity: Int, maxSequences: Int, cacheTypes: CacheTypes = .f16,
                            vocabulary: @escaping () throws -> GrammarVocabulary = { throw GrammarError("no vocabulary was given to this stage") }) {
        let one = KVRoom(bytes: 0, layers: stage.layers.count, context: capacity, config: stage.config, types: cacheTypes)
        self.init(stage: stage, room: KVRoom(positions: one.perSequence * maxSequences, overhead: one.overhead, context: capacity),
                  cacheTypes: cacheTypes, vocabulary: vocabulary)
    }

    /// Running sequences.
    public var count: Int { states.count }
    /// Kept prefixes and the positions they hold (readable from any thread: the heartbeat's).
    public var keptFigures: (entries: Int, positions: Int) { keptCount.withLock { $0 } }
    private let keptCount = Mutex((entries: 0, positions: 0))
    private func countKept() {
        let now = (kept.count, kept.values.reduce(0) { $0 + $1.history.count })
        keptCount.withLock { $0 = now }
    }

    private func full(_ what: String) -> StepError {
        StepError(kind: .full, description: "the memory budget holds \(room) of KV; \(what) would pass it (\(charged) in use); wait for a sequence to finish, or give more memory or a shorter context")
    }

    /// A fresh cache for a running sequence, charged to the room.
    private func newState(_ sequence: UInt64) throws -> State {
        guard charged + room.perSequence <= room.positions else { throw full("sequence \(sequence)'s context") }
        charged += room.perSequence
        return State(cache: KVCache(layers: stage.layers, capacity: capacity, config: stage.config, types: cacheTypes))
    }

    /// Applies the scheduler's changes to the caches (see `CacheOps`). Each change is checked on its own: one that
    /// names a sequence this stage does not hold, or more positions than it holds, or would pass the room, is
    /// skipped and reported in the error thrown after the rest are applied — the step that needs it then fails.
    public func apply(_ ops: CacheOps) throws {
        var problems: [String] = []
        for (id, length) in ops.retain {
            guard var s = states.removeValue(forKey: id) else { problems.append("sequence \(id) is not running here"); continue }
            charged -= room.perSequence
            guard length >= 1, length <= s.history.count else {
                problems.append("sequence \(id) holds \(s.history.count) positions, not \(length)")
                continue
            }
            s.history.removeLast(s.history.count - length)
            s.cache.truncate(to: length)
            s.cache.trim()
            s.sampler = nil
            s.trail = nil
            kept[id] = s
            charged += room.cost(length: length)
        }
        release(ops.release)
        for start in ops.starts {
            guard states[start.sequence] == nil, kept[start.sequence] == nil else { problems.append("sequence \(start.sequence) exists already"); continue }
            let source = kept[start.source] ?? states[start.source]
            guard let source, start.length >= 1, start.length <= source.history.count, start.length <= source.cache.length else {
                problems.append("sequence \(start.sequence) cannot start from \(start.length) positions of \(start.source)")
                continue
            }
            if !start.keepSource, kept[start.source] != nil {
                // Taken over: the prefix's charge becomes a running sequence's.
                let extra = room.perSequence - room.cost(length: source.history.count)
                guard charged + extra <= room.positions else { problems.append(full("sequence \(start.sequence)'s context").description); continue }
                charged += extra
                var s = kept.removeValue(forKey: start.source)!
                s.history.removeLast(s.history.count - start.length)
                s.cache.truncate(to: start.length)
                states[start.sequence] = s
            } else {
                do {
                    var s = try newState(start.sequence)
                    s.cache.copyPrefix(of: source.cache, count: start.length)
                    s.history = Array(source.history.prefix(start.length))
                    states[start.sequence] = s
                } catch {
                    problems.append("\(error)")
                }
            }
        }
        countKept()
        if !problems.isEmpty { throw StepError(kind: .malformed, description: "cache changes refused: " + problems.joined(separator: "; ")) }
    }

    /// Runs `rows` (sequence, position) through the stage. The first stage embeds `tokens` into `hidden`; others
    /// take `hidden` as given; it holds the stage's output after. The last stage samples the rows `sampleRows` with
    /// `sampling` (one entry per sample row; a sequence keeps the first it is given, greedy when none) and returns
    /// (sequence, token) for each; `logprobs` (empty, or one per sample row: -1 none, 0 the token's, N also the
    /// top N) adds log-probabilities. Several sample rows of one sequence verify proposals (see below), and a row
    /// at a position the sequence already holds forgets that position and every later one.
    public func step(rows: [(sequence: UInt64, position: Int)], tokens: [Int32], hidden: UnsafeMutablePointer<Float>,
                     sampleRows: [Int], sampling: [SamplingParams], logprobs: [Int] = []) throws -> [(sequence: UInt64, token: SampledToken)] {
        let n = rows.count
        guard n > 0 else { return [] }
        for r in rows where r.position >= capacity {
            throw StepError(kind: .contextExceeded, description: "sequence \(r.sequence) position \(r.position) is past the context length \(capacity)")
        }
        // Sequence ids name dictionary keys as Int: an id past Int.max is no sequence anyone opened.
        if let r = rows.first(where: { $0.sequence > UInt64(Int.max) }) {
            throw StepError(kind: .malformed, description: "sequence id \(r.sequence) is out of range (at most \(Int.max))")
        }
        guard tokens.count == n else { throw StepError(kind: .malformed, description: "\(n) rows but \(tokens.count) tokens") }
        guard sampleRows.allSatisfy({ $0 >= 0 && $0 < n }) else { throw StepError(kind: .malformed, description: "a sample row is outside the \(n) rows") }
        guard sampling.isEmpty || sampling.count == sampleRows.count else {
            throw StepError(kind: .malformed, description: "\(sampleRows.count) sample rows but \(sampling.count) sampling entries")
        }
        if let problem = sampling.lazy.compactMap(\.problem).first { throw StepError(kind: .malformed, description: problem) }
        // Grammars are compiled before anything changes, so a bad one fails the step cleanly.
        if stage.isLast {
            for g in Set(sampling.compactMap(\.grammar)) {
                do { _ = try grammars.matcher(for: g) } catch { throw StepError(kind: .malformed, description: error.message) }
            }
        }
        guard logprobs.isEmpty || logprobs.count == sampleRows.count, logprobs.allSatisfy({ $0 <= SampledToken.maxTop }) else {
            throw StepError(kind: .malformed, description: "\(sampleRows.count) sample rows but \(logprobs.count) logprobs entries (each at most \(SampledToken.maxTop))")
        }
        if stage.isFirst {
            do { try stage.embed(tokens, into: hidden) } catch { throw StepError(kind: .malformed, description: "\(error)") }
        }
        // A sequence this stage does not hold starts at position 0 (or from a prefix, by `apply`): a row further on
        // would attend to positions nobody computed.
        var seen = Set<UInt64>()
        if let r = rows.first(where: { seen.insert($0.sequence).inserted && states[$0.sequence] == nil && $0.position > 0 }) {
            throw StepError(kind: .malformed, description: "sequence \(r.sequence) has no cache on this stage, so it cannot go on at position \(r.position)")
        }
        var caches: [Int: KVCache] = [:]
        for r in rows {
            if r.position == 0 && caches[Int(r.sequence)] == nil {
                // Position 0 starts the sequence afresh (a reused id, or a replay).
                release([r.sequence])
                states[r.sequence] = try newState(r.sequence)
            } else if caches[Int(r.sequence)] == nil, r.position < states[r.sequence]!.history.count {
                // A sequence going back (speculative proposals its last step rejected): what it held from here on
                // is forgotten, so the history (repetition penalty) and the cache hold only accepted tokens.
                states[r.sequence]!.history.removeLast(states[r.sequence]!.history.count - r.position)
                states[r.sequence]!.cache.truncate(to: r.position)
            }
            caches[Int(r.sequence)] = states[r.sequence]!.cache
        }
        let batch = rows.map { BatchRow(sequence: Int($0.sequence), position: $0.position) }
        try stage.forward(hidden, rows: batch, caches: caches)
        for (r, t) in zip(rows, tokens) { states[r.sequence]!.history.append(t) }
        guard stage.isLast, !sampleRows.isEmpty else { return [] }
        let v = stage.config.vocabSize
        var logits = [Float](repeating: 0, count: sampleRows.count * v)
        try logits.withUnsafeMutableBufferPointer { try stage.logits(hidden, rows: sampleRows, into: $0.baseAddress!) }
        var out: [(sequence: UInt64, token: SampledToken)] = []
        // A sequence with several sample rows is being verified (speculative decoding): its rows after the first
        // are proposals. Each row samples as plain decoding would at its position (the history up to it); the
        // sequence's answer ends with the first token that differs from the next row's proposal, so every token
        // returned is one plain decoding makes, and the sampler draws once per token returned.
        var nextSample = [Int?](repeating: nil, count: sampleRows.count)
        var lastOf: [UInt64: Int] = [:]
        for (i, row) in sampleRows.enumerated().reversed() {
            nextSample[i] = lastOf[rows[row].sequence]
            lastOf[rows[row].sequence] = i
        }
        var verified: Set<UInt64> = []
        grammars.trim()
        for (i, row) in sampleRows.enumerated() {
            let seq = rows[row].sequence
            if verified.contains(seq) { continue }
            var state = states[seq]!
            var sampler = state.sampler ?? Sampler(sampling.isEmpty ? .greedy : sampling[i])
            let p = rows[row].position
            let history = state.history.count == p + 1 ? state.history : Array(state.history.prefix(p + 1))
            var constraint: GrammarConstraint?
            let started = sampler.params.grammar != nil ? ContinuousClock.now : nil
            if let g = sampler.params.grammar {
                if state.trail == nil {
                    do { state.trail = GrammarTrail(matcher: try grammars.matcher(for: g), start: sampler.params.grammarStart) } catch {
                        throw StepError(kind: .malformed, description: error.message)
                    }
                }
                constraint = GrammarConstraint(matcher: state.trail!.matcher, state: state.trail!.state(after: history))
            }
            let token = logits.withUnsafeBufferPointer { sampler.sample($0.baseAddress! + i * v, count: v, history: history, constraint: constraint) }
            if let started {
                let d = ContinuousClock.now - started
                grammars.record(seconds: Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18)
            }
            if let j = nextSample[i] {
                let proposal = sampleRows[j]
                if rows[proposal].position != p + 1 || tokens[proposal] != token { verified.insert(seq) }
            }
            state.sampler = sampler
            states[seq] = state
            let want = logprobs.isEmpty ? -1 : logprobs[i]
            out.append((seq, want < 0 ? SampledToken(token: token)
                            : logits.withUnsafeBufferPointer { SampledToken.with(token, logits: $0.baseAddress! + i * v, count: v, top: want) }))
        }
        return out
    }

    /// Frees running sequences and kept prefixes.
    public func release(_ ids: [UInt64]) {
        for id in ids {
            if states.removeValue(forKey: id) != nil { charged -= room.perSequence }
            if let s = kept.removeValue(forKey: id) { charged -= room.cost(length: s.history.count) }
        }
        countKept()
    }
}

extension StageSequences {
    /// How a stage reads the vocabulary for grammars: from the model file, when first needed.
    public static func vocabulary(of file: GGUFFile) -> () throws -> GrammarVocabulary {
        { GrammarVocabulary(tokenizer: try Tokenizer(file: file)) }
    }

    public static func vocabulary(of tokenizer: Tokenizer) -> () throws -> GrammarVocabulary {
        { GrammarVocabulary(tokenizer: tokenizer) }
    }
}
