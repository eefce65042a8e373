import Foundation
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
            for t in tokens[48..<56] { _ = try engine.evaluate([t], in: seq) }
            let after = cache.snapshot
            return Double(after.hits - before.hits) / Double(after.hits + after.misses - before.hits - before.misses)
        }
        let clean = try decodeHits(withPrompt: false), afterPrompt = try decodeHits(withPrompt: true)
        #expect(afterPrompt >= clean - 0.05, "decode hit rate \(afterPrompt) after a long prompt, \(clean) without it")
    }
}
