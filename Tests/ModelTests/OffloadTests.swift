import Foundation
import Runtime
import Testing
import TestSupport
import GGUF
import Kernels
@testable import Model

/// The offload cache computes exactly what resident experts compute, at any budget and batch, and its counters
/// add up.
struct OffloadTests {
    static let file = try! GGUFFile(path: Fixtures.shippedModel)
    static let config = try! ModelConfig(file: file)
    static var totalExperts: Int { config.layerCount * config.expertCount }

    /// The first tokens of the held-out text: a prefill above the streaming threshold, then decode steps.
    static func tokens(_ n: Int) throws -> [Int32] {
        let engine = try Engine(file: file, threads: 1)
        let text = Array(try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("heldout.txt"))))
        return Array(engine.tokenizer.encode(bytes: text).prefix(n))
    }

    /// Logits of a 40-token prefill, a 3-token batch and 6 single-token steps.
    static func logits(_ engine: Engine, _ tokens: [Int32]) throws -> [Float] {
        let seq = engine.newSequence(capacity: 128)
        var out = try engine.evaluate(Array(tokens[0..<40]), in: seq, all: true)
        out += try engine.evaluate(Array(tokens[40..<43]), in: seq, all: true)
        for t in tokens[43..<49] { out += try engine.evaluate([t], in: seq, all: true) }
        return out
    }

    static func budgeted(slots: Int, resident: ExpertSet = .none, paged: ExpertSet? = nil, threads: Int = 2,
                         policy: String = EvictionPolicies.defaultName) throws -> (Engine, BudgetedExperts) {
        let all = ExpertSet(Dictionary(uniqueKeysWithValues: (0..<config.layerCount).map { ($0, Array(0..<config.expertCount)) }))
        var cache: BudgetedExperts?
        let engine = try Engine(file: file, threads: threads) { pool in
            let c = try BudgetedExperts(file: file, config: config, resident: resident, paged: paged ?? all, slots: slots,
                                          policy: EvictionPolicies.make(policy)!, pool: pool)
            cache = c
            return c
        }
        return (engine, cache!)
    }

    @Test(arguments: [1, 8, 16, 32])
    func offloadedLogitsEqualResidentBitForBit(slots: Int) throws {
        let tokens = try Self.tokens(49)
        let reference = try Self.logits(try Engine(file: Self.file, threads: 2), tokens)
        let (engine, cache) = try Self.budgeted(slots: slots)
        let offloaded = try Self.logits(engine, tokens)
        #expect(offloaded == reference, "\(slots) slots of \(Self.totalExperts) experts: logits differ from fully resident")
        cache.quiesce()
        let c = cache.snapshot
        #expect(c.misses > 0 && c.hits + c.misses > 0)
        // Every read is a miss or a prefetch, each one expert's bytes.
        let perExpert = WeightLayout(file: Self.file, config: Self.config).bytesPerExpert(layer: 0)
        #expect(c.bytesRead == (c.misses + c.prefetchIssued) * perExpert)
        #expect(c.prefetchUsed + c.prefetchWasted <= c.prefetchIssued)
        if slots >= Self.totalExperts {
            // Everything fits: each expert is read once, whatever the prefetcher guessed.
            #expect(c.misses + c.prefetchIssued <= Self.totalExperts)
        }
    }

    /// Some experts resident (mapped), the rest paged: the same bits, and resident uses are no cache events.
    @Test func residentAndPagedTogether() throws {
        let tokens = try Self.tokens(49)
        let reference = try Self.logits(try Engine(file: Self.file, threads: 2), tokens)
        let even = ExpertSet(Dictionary(uniqueKeysWithValues: (0..<Self.config.layerCount).map { ($0, stride(from: 0, to: Self.config.expertCount, by: 2).map { $0 }) }))
        let odd = ExpertSet(Dictionary(uniqueKeysWithValues: (0..<Self.config.layerCount).map { ($0, stride(from: 1, to: Self.config.expertCount, by: 2).map { $0 }) }))
        let (engine, cache) = try Self.budgeted(slots: 4, resident: even, paged: odd)
        #expect(try Self.logits(engine, tokens) == reference)
        #expect(cache.snapshot.residentUses > 0 && cache.snapshot.misses > 0)
    }

    @Test func anExpertBothResidentAndPagedIsRefused() throws {
        let set = ExpertSet([0: [1, 2]])
        #expect(throws: ModelError.self) {
            _ = try BudgetedExperts(file: Self.file, config: Self.config, resident: set, paged: set, slots: 2, pool: ThreadPool(threads: 1))
        }
        #expect(throws: ModelError.self) {
            _ = try BudgetedExperts(file: Self.file, config: Self.config, paged: set, slots: 0, pool: ThreadPool(threads: 1))
        }
    }

    /// A long prompt streams its experts through a few transient slots: the decode that follows hits about as
    /// often as the same decode without the prompt, under every policy (LRU would otherwise be flushed whole).
    @Test(arguments: EvictionPolicies.names)
    func prefillDoesNotFlushTheDecodeWorkingSet(policy: String) throws {
        let tokens = try Self.tokens(400)
        func decodeHits(withPrompt: Bool) throws -> Double {
            let (engine, cache) = try Self.budgeted(slots: 16, threads: 1, policy: policy)
            let seq = engine.newSequence(capacity: 512)
            _ = try engine.evaluate([tokens[0]], in: seq)
            for t in tokens[1..<48] { _ = try engine.evaluate([t], in: seq) }
            if withPrompt { _ = try engine.evaluate(Array(tokens[100..<400]), in: engine.newSequence(capacity: 512)) }
            let before = cache.snapshot
            for t in tokens[48..<88] { _ = try engine.evaluate([t], in: seq) }
            let after = cache.snapshot
            return Double(after.hits - before.hits) / Double(after.hits + after.misses - before.hits - before.misses)
        }
        // Forty decode tokens (320 expert uses): prefetch reads finish when they finish, which moves a use or two
        // between hit and miss from run to run; a flushed cache would lose far more than the margin.
        let clean = try decodeHits(withPrompt: false), afterPrompt = try decodeHits(withPrompt: true)
        #expect(afterPrompt >= clean - 0.05, "decode hit rate \(afterPrompt) after a long prompt, \(clean) without it")
    }
}

/// The offline simulator: Belady's MIN is the ceiling, and the default policy beats LRU where frequency matters.
struct CacheSimulatorTests {
    static func trace(_ groups: [[Int]], layer: Int = 0) -> RoutingTrace {
        RoutingTrace(events: groups.enumerated().map { RoutingTrace.Event(layer: layer, position: $0.offset, experts: $0.element) })
    }

    /// A trace's expert use: picks ÷ positions per layer, empty for layers it does not cover; refused when it
    /// names what the model lacks.
    @Test func expertUseIsPicksPerPosition() throws {
        let t = RoutingTrace(events: [.init(layer: 0, position: 0, experts: [0, 1]), .init(layer: 0, position: 1, experts: [0, 2]),
                                      .init(layer: 2, position: 0, experts: [3, 1])])
        let use = try t.expertUse(layers: 3, experts: 4)
        #expect(use == [[1, 0.5, 0.5, 0], [], [0, 1, 0, 1]])
        #expect(throws: ModelError.self) { try t.expertUse(layers: 2, experts: 4) }
        #expect(throws: ModelError.self) { try t.expertUse(layers: 3, experts: 3) }
    }

    @Test func minIsTheCeilingForEveryPolicyAndSize() throws {
        // A routing trace of the shipped model over the first tokens of the held-out text.
        let tokens = try OffloadTests.tokens(600)
        let t = try RoutingTrace.record(file: OffloadTests.file, threads: 2, tokens: tokens, chunk: 200)
        #expect(t.events.count == tokens.count * OffloadTests.config.layerCount)
        #expect(t.events.allSatisfy { $0.experts.count == OffloadTests.config.expertsUsed })
        for capacity in [2, 4, 8, 12, 16, 24, 32] {
            let min = CacheSimulator.optimal(t, capacity: capacity)
            #expect(min.hits + min.misses == t.events.count * OffloadTests.config.expertsUsed)
            for name in EvictionPolicies.names {
                let r = CacheSimulator.run(t, capacity: capacity, policy: EvictionPolicies.make(name)!)
                #expect(r.hits + r.misses == min.hits + min.misses)
                #expect(min.hits >= r.hits, "\(name) at \(capacity): \(r.hits) hits, more than MIN's \(min.hits)")
            }
        }
        // Half the experts cached: the default keeps more of what decode uses than LRU (on the whole held-out
        // text it is 5.2 points ahead; on these 600 tokens about 2).
        let lru = CacheSimulator.run(t, capacity: 16, policy: LRUPolicy())
        let ours = CacheSimulator.run(t, capacity: 16, policy: EvictionPolicies.make(EvictionPolicies.defaultName)!)
        #expect(ours.hits > lru.hits, "default \(ours.hitRate), LRU \(lru.hitRate) at 16 of 32")
        // Everything fits: only the first use of each expert misses, whatever the policy.
        let all = CacheSimulator.run(t, capacity: 32, policy: LRUPolicy())
        #expect(all.misses == t.keys.count)
    }

    /// Two favourites, then a burst of three one-off experts, over and over, in a cache of four: LRU evicts the
    /// favourites during every burst; decayed frequency keeps them.
    @Test func defaultBeatsLRUOnACraftedTrace() {
        var groups: [[Int]] = []
        for i in 0..<100 { groups += [[0], [1], [10 + 3 * i], [11 + 3 * i], [12 + 3 * i]] }
        let t = Self.trace(groups)
        let lru = CacheSimulator.run(t, capacity: 4, policy: LRUPolicy())
        let ours = CacheSimulator.run(t, capacity: 4, policy: EvictionPolicies.make(EvictionPolicies.defaultName)!)
        let min = CacheSimulator.optimal(t, capacity: 4)
        #expect(lru.hits == 0)
        #expect(ours.hits >= 190, "default \(ours.hits) hits, LRU \(lru.hits)")
        #expect(min.hits >= ours.hits)
    }

    @Test func minOnAKnownTrace() {
        // Capacity 2, accesses 1 2 3 1 2: MIN evicts 3's victim wisely — hits on the second 1 and 2 only if kept.
        let t = Self.trace([[1], [2], [3], [1], [2]])
        #expect(CacheSimulator.optimal(t, capacity: 2) == CacheSimulator.Result(hits: 1, misses: 4))
        #expect(CacheSimulator.run(t, capacity: 2, policy: LRUPolicy()) == CacheSimulator.Result(hits: 0, misses: 5))
    }
}

/// A read that fails (the file was cut short under us) is an error naming the file, and the cache goes on
/// serving the experts it can read.
struct OffloadReadFailureTests {
    @Test func aFailedReadIsAnErrorAndTheCacheKeepsServing() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("model.gguf").path
        try FileManager.default.copyItem(atPath: Fixtures.shippedModel, toPath: path)
        let file = try GGUFFile(path: path)
        let config = try ModelConfig(file: file)
        let layout = WeightLayout(file: file, config: config)
        let cache = try BudgetedExperts(file: file, config: config, paged: .every(layers: 0..<config.layerCount, expertCount: config.expertCount),
                                        slots: 2, pool: ThreadPool(threads: 1))
        // Cut the file inside the last expert of the last layer's down projection.
        let last = layout.expertRanges(layer: config.layerCount - 1, expert: config.expertCount - 1).last!
        try FileHandle(forWritingTo: URL(fileURLWithPath: path)).truncate(atOffset: UInt64(last.offset + last.count / 2))
        let e = config.embeddingLength
        let x = [Float](repeating: 0.01, count: e)
        var out = [Float](repeating: 0, count: e)
        func call(layer: Int, expert: Int) throws {
            try x.withUnsafeBufferPointer { xp in
                try out.withUnsafeMutableBufferPointer { op in
                    try cache.weightedOutputs(layer: layer, input: .floats(xp.baseAddress!), routes: [Route(experts: [expert], weights: [1])], slotsPerRow: 1, into: op.baseAddress!)
                }
            }
        }
        do {
            try call(layer: config.layerCount - 1, expert: config.expertCount - 1)
            Issue.record("read past the end of a truncated file without an error")
        } catch let error as ModelError {
            #expect(error.description.contains(path) && error.description.contains("ends early"), "\(error)")
        }
        try call(layer: 0, expert: 1)
        #expect(out.contains { $0 != 0 })
        try call(layer: 0, expert: 2)
        try call(layer: 0, expert: 1)
        #expect(cache.snapshot.hits >= 1)
    }
}

/// The default policy's two-state estimates: an expert used at every turn of its layer outlives one used once,
/// and one that was just used by a sticky layer outlives one that was idle.
struct MarkovPolicyTests {
    @Test func stickyAndFrequentExpertsAreKept() {
        let p = MarkovPolicy()
        let a = ExpertKey(layer: 0, expert: 0), b = ExpertKey(layer: 0, expert: 1), c = ExpertKey(layer: 0, expert: 2)
        // a at every turn, b at every fourth, c once at the start.
        for now in 0..<200 {
            p.accessed(a, now: now)
            if now % 4 == 0 { p.accessed(b, now: now) }
            if now == 0 { p.accessed(c, now: now) }
        }
        #expect(p.victim(among: [a, b, c], now: 200) == c)
        #expect(p.victim(among: [a, b], now: 200) == b)
        // Never seen: nothing says it will be used, so it goes first.
        #expect(p.victim(among: [a, ExpertKey(layer: 0, expert: 7)], now: 200) == ExpertKey(layer: 0, expert: 7))
    }
}
