import Foundation
import Runtime
import Testing
import TestSupport
import GGUF
import Kernels
@testable import Model

/// Quantized KV caches (`--cache-type-k` / `--cache-type-v`): the shipped model's logits with each cache type
/// against llama.cpp's with the same types (Tests/Fixtures/kv, from `CACHE_K=K CACHE_V=V scripts/dev/llama-ref-kv
/// logits MODEL text.txt 64`: llama.cpp computes a quantized V under flash attention), and the bytes they hold.
@Suite struct KVCacheTests {
    @Test(arguments: [("q8_0", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0")])
    func quantizedCacheMatchesLlamaCpp(key: String, value: String) throws {
        let types = try CacheTypes(key: key, value: value)
        let engine = try Engine(path: Fixtures.shippedModel, threads: 2, cacheTypes: types)
        let golden = try LlamaCppLogits(fixture: "kv/shipped-\(key)-\(value).llamacpp.jsonl")
        let text = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("synth/text.txt")))
        let ids = Array(engine.tokenizer.encode(bytes: Array(text)).prefix(64))
        #expect(ids == golden.tokens)
        let seq = engine.newSequence(capacity: 64)
        #expect(seq.caches.allSatisfy { $0.types == types })
        let logits = try engine.evaluate(ids, in: seq, all: true)
        let r = golden.compare(logits, vocab: engine.config.vocabSize)
        #expect(r.agreed == r.counted, "K \(key) V \(value): top-1 agrees at \(r.agreed)/\(r.counted)")
        #expect(r.maxDiff < 0.05, "K \(key) V \(value): a top-10 logit differs from llama.cpp's by \(r.maxDiff)")
        // The cache type matters: the f16 cache's logits differ (Q4_0 moves them by more than a tenth).
        if key == "q4_0" {
            let plain = try Engine(path: Fixtures.shippedModel, threads: 2)
            let f16 = try plain.evaluate(ids, in: plain.newSequence(capacity: 64), all: true)
            #expect(zip(f16, logits).map { abs($0 - $1) }.max()! > 0.1)
        }
    }

    /// A position's row in each type: 32-value blocks of 34 bytes (Q8_0) or 18 (Q4_0) instead of 64 (f16).
    @Test func bytesPerPosition() throws {
        let config = try ModelConfig(file: GGUFFile(path: Fixtures.shippedModel))
        let width = config.kvDim
        for (k, v, perRow) in [("f16", "f16", 4 * width), ("q8_0", "q8_0", 2 * width / 32 * 34), ("q4_0", "q4_0", 2 * width / 32 * 18),
                               ("q8_0", "f16", width / 32 * 34 + 2 * width)] {
            let types = try CacheTypes(key: k, value: v)
            #expect(KVCache.bytes(layers: config.layerCount, capacity: 100, config: config, types: types) == config.layerCount * 100 * perRow)
            #expect(KVCache(layers: 0..<config.layerCount, capacity: 100, config: config, types: types).bytes == config.layerCount * 100 * perRow)
        }
    }

    /// A budget holds more sequences with a smaller cache.
    @Test func budgetCountsTheSmallerCache() throws {
        let file = try GGUFFile(path: Fixtures.shippedModel)
        let config = try ModelConfig(file: file)
        let f16 = try MemoryBudget(file: file, config: config, layers: 0..<config.layerCount, context: 4096, sequences: 1, budget: 1 << 30)
        let q4 = try MemoryBudget(file: file, config: config, layers: 0..<config.layerCount, context: 4096, sequences: 1, budget: 1 << 30,
                                  cacheTypes: try CacheTypes(key: "q4_0", value: "q4_0"))
        let q4Types = try CacheTypes(key: "q4_0", value: "q4_0")
        let perPosition = (f16: KVRoom.bytesPerPosition(layers: config.layerCount, config: config, types: .f16),
                           q4: KVRoom.bytesPerPosition(layers: config.layerCount, config: config, types: q4Types))
        #expect(perPosition.q4 * 64 == perPosition.f16 * 18)
        // A sequence costs its context's rows and at most a page per layer for its keys and one for its values.
        let pages = 2 * config.layerCount * 4096
        for (budget, row) in [(f16, perPosition.f16), (q4, perPosition.q4)] {
            #expect(budget.kvBytesPerSequence >= 4096 * row && budget.kvBytesPerSequence <= 4096 * row + pages + row)
        }
    }

    @Test func badCacheTypesAreClearErrors() throws {
        #expect(throws: ModelError.self) { try CacheTypes(key: "q5_0", value: nil) }
        do {
            _ = try CacheTypes(key: nil, value: "bf16")
            Issue.record("accepted bf16")
        } catch {
            #expect("\(error)".contains("--cache-type-v bf16") && "\(error)".contains("q4_0"))
        }
        #expect(try CacheTypes(key: "Q8_0", value: "") == CacheTypes(key: .q8_0, value: .f16))
        // Latent attention reads values out of the key cache: f16 only.
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        var shape = ModelSynthesizer.Shape()
        shape.architecture = "deepseek2"
        shape.layers = 2
        let path = dir.appendingPathComponent("ds.gguf").path
        _ = try ModelSynthesizer(shape: shape, fileType: .q8_0, seed: 1, vocabulary: try GGUFFile(path: Fixtures.shippedModel))
            .write(to: path, pool: ThreadPool(threads: 2))
        #expect(throws: ModelError.self) { try Engine(path: path, threads: 1, cacheTypes: try CacheTypes(key: "q8_0", value: "f16")) }
    }
}

/// What a stage keeps for the prefix cache, and what it refuses: every change is counted in its `KVRoom` (a
/// running sequence its context, a kept prefix its length, each with the room's overhead), and a change that
/// names what the stage does not hold, or would pass the room, is refused while the others stand.
@Suite struct KeptPrefixTests {
    static let engine = try! Engine(path: Fixtures.shippedModel, threads: 1)

    func run(_ s: StageSequences, _ sequence: UInt64, _ tokens: [Int32], from start: Int = 0) throws {
        let e = Self.engine.config.embeddingLength
        let hidden = UnsafeMutablePointer<Float>.allocate(capacity: tokens.count * e)
        defer { hidden.deallocate() }
        _ = try s.step(rows: tokens.indices.map { (sequence, start + $0) }, tokens: tokens, hidden: hidden, sampleRows: [tokens.count - 1], sampling: [.greedy])
    }

    @Test func keptPrefixesAreCountedAndCheckedInTheRoom() throws {
        let stage = try #require(Self.engine.stages.first)
        let one = KVRoom(bytes: 0, layers: stage.layers.count, context: 64, config: Self.engine.config, types: .f16)
        let room = KVRoom(positions: one.perSequence + one.cost(length: 40), overhead: one.overhead, context: 64)
        let s = StageSequences(stage: stage, room: room)
        let prompt = Self.engine.tokenizer.encode(String(repeating: "a cache of words ", count: 12))
        #expect(prompt.count >= 30)
        try run(s, 1, Array(prompt.prefix(30)))
        try s.apply(CacheOps(retain: [(1, 30)]))
        #expect(s.count == 0 && s.keptFigures == (1, 30))
        // A copy of 20 positions runs beside the kept 30: one context and 30 kept fit the room.
        try s.apply(CacheOps(starts: [.init(sequence: 2, source: 1, length: 20, keepSource: true)]))
        try run(s, 2, Array(prompt[20..<25]), from: 20)
        // A second running sequence would pass the room: refused, the sequence is not made.
        #expect(throws: StageSequences.StepError.self) { try s.apply(CacheOps(starts: [.init(sequence: 3, source: 1, length: 10, keepSource: true)])) }
        #expect(s.count == 1)
        // A source nobody holds, or more positions than it has, is refused; so is a row past 0 for a sequence
        // this stage does not hold (it would attend to positions nobody computed).
        #expect(throws: StageSequences.StepError.self) { try s.apply(CacheOps(starts: [.init(sequence: 4, source: 99, length: 5, keepSource: true)])) }
        #expect(throws: StageSequences.StepError.self) { try s.apply(CacheOps(release: [2], starts: [.init(sequence: 4, source: 1, length: 31, keepSource: true)])) }
        #expect(throws: StageSequences.StepError.self) { try run(s, 5, [prompt[3]], from: 3) }
        // Taken over: the kept prefix becomes the running sequence (its 30 positions, cut to 25).
        try s.apply(CacheOps(starts: [.init(sequence: 6, source: 1, length: 25, keepSource: false)]))
        #expect(s.count == 1 && s.keptFigures == (0, 0))
        try run(s, 6, Array(prompt[25..<30]), from: 25)
        s.release([6])
        #expect(s.count == 0)
        // With nothing kept, the room holds its one running sequence again (and no more).
        try run(s, 7, Array(prompt.prefix(4)))
        #expect(throws: StageSequences.StepError.self) { try run(s, 8, Array(prompt.prefix(4))) }
    }

    /// A kept cache gives back the pages past its length: a cache of 4096 positions that kept 10 holds about
    /// 10 positions' bytes, not 4096.
    @Test func aKeptCacheHoldsItsLength() throws {
        let config = Self.engine.config
        let cache = KVCache(layers: 0..<config.layerCount, capacity: 4096, config: config)
        #expect(cache.mappedResidentBytes == 0, "nothing is written yet")
        let seq = EngineSequence(id: 1, caches: [cache])
        let ids = Self.engine.tokenizer.encode(String(repeating: "one two three ", count: 40))
        _ = try Self.engine.evaluate(Array(ids.prefix(100)), in: seq)
        #expect(cache.length == 100)
        let written = cache.mappedResidentBytes
        #expect(written >= cache.residentBytes && written > 0, "100 positions were written")
        cache.truncate(to: 10)
        cache.trim()
        let perPosition = KVRoom.bytesPerPosition(layers: config.layerCount, config: config, types: .f16)
        let room = KVRoom(bytes: 0, layers: config.layerCount, context: 4096, config: config, types: .f16)
        #expect(cache.mappedResidentBytes <= cache.residentBytes && cache.residentBytes <= room.cost(length: 10) * perPosition)
        #expect(cache.mappedResidentBytes < written && cache.mappedResidentBytes < cache.bytes / 100)
    }
}
