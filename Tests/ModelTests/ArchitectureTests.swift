import Foundation
import Runtime
import Testing
import TestSupport
import GGUF
import Kernels
@testable import Model

/// Architectures with no shared model: a seeded random model written by `ModelSynthesizer`, against the logits
/// llama.cpp computed for the very same file (Tests/Fixtures/synth/*.llamacpp.jsonl, from
/// `../shared/tools/llama-ref logits FILE text.txt 64` when the fixtures were made).
@Suite final class ArchitectureTests {
    let dir = Fixtures.temporaryDirectory()
    deinit { try? FileManager.default.removeItem(at: dir) }

    /// gpt-oss with a sliding window of 8 over the 64 positions (every other layer slides; without the window
    /// top-1 agreement falls to 13 of 63), and again with YaRN scaling as the real model has it (factor 32 over
    /// 4 096 positions, base 150 000). deepseek2 three ways: V3's form (sigmoid routing with a selection bias over
    /// groups, renormalised and scaled, two dense layers first), V2's (Q through its low-rank pair, softmax, one
    /// dense layer), V2-Lite's plain Q with YaRN and its log multiplier (which scales the attention scores), and
    /// V2's form in a file converted before llama.cpp split attn_kv_b (K and V decompressed per head and cached).
    /// Each file is what `conclave synth --arch A --layers 3 --expert-ff 128 --type F16 --seed 7` plus the
    /// case's options writes. Two quantized files too: gpt-oss with MXFP4 experts, as it ships (`--expert-type
    /// MXFP4`), and deepseek2 at Q8_0 (`--type Q8_0`); their bound is looser because the reference is: this
    /// llama-cpp-python build's logits of the shared Q8_0 model differ from llama.cpp's own golden ones by 0.2.
    @Test(arguments: ["qwen3moe", "qwen2moe", "olmoe", "llama", "gpt-oss", "gpt-oss-yarn", "deepseek2", "deepseek2-v3", "deepseek2-lite-yarn",
                          "deepseek2-kvb", "gpt-oss-mxfp4", "deepseek2-q8_0"])
    func matchesLlamaCpp(name: String) throws {
        let arch = String(name.prefix { $0 != "-" }) == "gpt" ? "gpt-oss" : String(name.prefix { $0 != "-" })
        var shape = ModelSynthesizer.Shape()
        shape.architecture = arch
        shape.layers = 3
        shape.kvHeads = arch == "olmoe" ? 8 : 2  // llama.cpp's olmoe has no grouped-query attention
        shape.expertFF = 128
        shape.slidingWindow = 8
        switch name {
        case "gpt-oss-yarn":
            shape.yarn = (32, 4096)
            shape.ropeBase = 150_000
            shape.context = 131_072
        case "deepseek2-v3":  // --layers 4 --dense-layers 2 --experts 16 --used 4 --gating sigmoid --norm-weights true --weights-scale 2.5 --groups 4 --groups-used 2
            shape.layers = 4
            shape.leadingDense = 2
            shape.experts = 16
            shape.used = 4
            shape.gating = .sigmoid
            shape.normalizeWeights = true
            shape.weightsScale = 2.5
            shape.groups = (4, 2)
        case "deepseek2-lite-yarn":  // --q-lora-rank 0 --yarn-factor 40 --yarn-original-ctx 4096 --yarn-log-multiplier 0.0707 --rope-base 10000 --ctx 163840
            shape.latent.queryRank = 0
            shape.yarn = (40, 4096)
            shape.yarnLogMultiplier = 0.0707
            shape.ropeBase = 10_000
            shape.context = 163_840
        case "gpt-oss-mxfp4":
            shape.expertType = .mxfp4
        case "deepseek2-kvb":  // --unsplit-kv-b
            shape.latent.cachesLatent = false
        default: break
        }
        let path = dir.appendingPathComponent("\(name).gguf").path
        let vocab = try GGUFFile(path: Fixtures.shippedModel)
        let quantized = name.hasSuffix("q8_0")
        _ = try ModelSynthesizer(shape: shape, fileType: quantized ? .q8_0 : .f16, seed: 7, vocabulary: vocab).write(to: path, pool: ThreadPool(threads: 2))

        let engine = try Engine(path: path, threads: 2)
        #expect(engine.config.architecture == arch)
        #expect(engine.config.yarn != nil || !name.hasSuffix("yarn"))
        #expect((engine.config.latent != nil) == (arch == "deepseek2"))
        let golden = try LlamaCppLogits(fixture: quantized ? "synth/\(arch)-Q8_0-seed7.llamacpp.jsonl" : "synth/\(name)-F16-seed7.llamacpp.jsonl")
        let text = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("synth/text.txt")))
        let ids = Array(engine.tokenizer.encode(bytes: Array(text)).prefix(64))
        #expect(ids == golden.tokens)
        let logits = try engine.evaluate(ids, in: engine.newSequence(capacity: 64), all: true)
        let r = golden.compare(logits, vocab: engine.config.vocabSize)
        // A quantized file's activations are quantized per matmul, and the instruction set's summation order
        // (AVX2 against AVX-512 VNNI, here and in llama.cpp) can tip a router's near-tie either way: one position
        // then takes another expert and every later one sees it through attention (deepseek2 Q8_0 on an AVX2-only
        // CPU: close through position 16, then within 0.25, 62/63 top-1). The logit bound below still holds.
        let agreement = quantized ? 0.95 : 0.99
        #expect(Double(r.agreed) >= agreement * Double(r.counted), "\(arch): top-1 agrees at \(r.agreed)/\(r.counted)")
        #expect(r.maxDiff < (quantized || name.hasSuffix("mxfp4") ? 0.3 : 0.05), "\(name): a top-10 logit differs from llama.cpp's by \(r.maxDiff)")
    }

    /// A deepseek2 position caches its latent and rope key once for all heads and no values (llama.cpp's MLA
    /// cache): 80 f16 values per layer here where standard attention over the same 8 heads of 48 would cache
    /// 768; the sequence's cache counts that (and so the placement footprint: PlannerTests). Its first layer is dense.
    @Test func latentAttentionCachesTheLatentOnly() throws {
        var shape = ModelSynthesizer.Shape()
        shape.architecture = "deepseek2"
        shape.layers = 3
        let path = dir.appendingPathComponent("ds-cache.gguf").path
        _ = try ModelSynthesizer(shape: shape, fileType: .q8_0, seed: 1, vocabulary: try GGUFFile(path: Fixtures.shippedModel))
            .write(to: path, pool: ThreadPool(threads: 2))
        let file = try GGUFFile(path: path)
        let config = try ModelConfig(file: file)
        let m = try #require(config.latent)
        #expect(m == shape.latent)
        #expect(config.cacheKeyWidth == 64 + 16 && config.cacheValueWidth == 0)
        #expect(KVCache(layers: 0..<3, capacity: 100, config: config).bytes == 3 * 100 * 80 * 2)
        #expect(!config.hasExperts(layer: 0) && config.hasExperts(layer: 1))
        #expect(WeightLayout(file: file, config: config).bytesPerExpert(layer: 0) == 0)
        let engine = try Engine(path: path, threads: 2)
        #expect(engine.stages[0].weights[0]!.ffn.experts == nil && engine.stages[0].weights[1]!.ffn.experts != nil)
        // The unsplit form caches K (32 + 16) and V (32) for each of the 8 heads, as llama.cpp does for it.
        shape.latent.cachesLatent = false
        let old = dir.appendingPathComponent("ds-kvb.gguf").path
        _ = try ModelSynthesizer(shape: shape, fileType: .q8_0, seed: 1, vocabulary: try GGUFFile(path: Fixtures.shippedModel))
            .write(to: old, pool: ThreadPool(threads: 2))
        let unsplit = try ModelConfig(file: GGUFFile(path: old))
        #expect(unsplit.cacheKeyWidth == 8 * 48 && unsplit.cacheValueWidth == 8 * 32)
    }

    /// A DeepSeek file with the unsplit attn_kv_b caches K and V per head, so it must have a KV head per head:
    /// one that claims otherwise is refused with the keys named.
    @Test func inconsistentDeepSeekFileIsAClearError() throws {
        let path = dir.appendingPathComponent("old-ds.gguf").path
        let w = GGUFWriter(path: path)
        try w.set("general.architecture", .string("deepseek2"))
        for (k, v) in [(ModelKey.blockCount, 2), (.embeddingLength, 64), (.headCount, 4), (.headCountKV, 1), (.contextLength, 128), (.expertCount, 4),
                       (.expertUsedCount, 2), (.expertFeedForwardLength, 32), (.expertSharedCount, 1), (.keyValueLoraRank, 32),
                       (.ropeDimensionCount, 16), (.keyLength, 48), (.valueLength, 32), (.vocabSize, 100)] {
            try w.set(k.name("deepseek2"), .uint32(UInt32(v)))
        }
        try w.write { _, _ in }
        do {
            _ = try ModelConfig(file: GGUFFile(path: path))
            Issue.record("accepted a DeepSeek file whose KV heads cannot hold its per-head K and V")
        } catch {
            #expect("\(error)".contains("attn_kv_b") && "\(error)".contains("deepseek2.attention.head_count_kv"))
        }
    }

    @Test func unsupportedArchitectureIsAClearError() throws {
        let path = dir.appendingPathComponent("x.gguf").path
        let w = GGUFWriter(path: path)
        try w.set("general.architecture", .string("mamba"))
        try w.write { _, _ in }
        do {
            _ = try ModelConfig(file: GGUFFile(path: path))
            Issue.record("accepted an unknown architecture")
        } catch {
            #expect("\(error)".contains("mamba") && "\(error)".contains("qwen3moe"))
        }
    }
}
