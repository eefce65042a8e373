import Foundation
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
    /// 4 096 positions, base 150 000).
    @Test(arguments: ["qwen3moe", "qwen2moe", "olmoe", "llama", "gpt-oss", "gpt-oss-yarn"])
    func matchesLlamaCpp(name: String) throws {
        let arch = name == "gpt-oss-yarn" ? "gpt-oss" : name
        var shape = ModelSynthesizer.Shape()
        shape.architecture = arch
        shape.layers = 3
        shape.kvHeads = arch == "olmoe" ? 8 : 2  // llama.cpp's olmoe has no grouped-query attention
        shape.expertFF = 128
        shape.slidingWindow = 8
        if name == "gpt-oss-yarn" {
            shape.yarn = (32, 4096)
            shape.ropeBase = 150_000
            shape.context = 131_072
        }
        let path = dir.appendingPathComponent("\(name).gguf").path
        let vocab = try GGUFFile(path: Fixtures.shippedModel)
        _ = try ModelSynthesizer(shape: shape, fileType: .f16, seed: 7, vocabulary: vocab).write(to: path, pool: ThreadPool(threads: 2))

        let engine = try Engine(path: path, threads: 2)
        #expect(engine.config.architecture == arch)
        #expect(engine.config.yarn != nil || name != "gpt-oss-yarn")
        let golden = try LlamaCppLogits(fixture: "synth/\(name)-F16-seed7.llamacpp.jsonl")
        let text = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("synth/text.txt")))
        let ids = Array(engine.tokenizer.encode(bytes: Array(text)).prefix(64))
        #expect(ids == golden.tokens)
        let logits = try engine.evaluate(ids, in: engine.newSequence(capacity: 64), all: true)
        let r = golden.compare(logits, vocab: engine.config.vocabSize)
        #expect(Double(r.agreed) >= 0.99 * Double(r.counted), "\(arch): top-1 agrees at \(r.agreed)/\(r.counted)")
        #expect(r.maxDiff < 0.05, "\(arch): a top-10 logit differs from llama.cpp's by \(r.maxDiff)")
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
