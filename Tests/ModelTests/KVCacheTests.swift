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
        #expect(q4.kvBytesPerSequence * 64 == f16.kvBytesPerSequence * 18)
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
