import Foundation
import Runtime
import Testing
import TestSupport
import GGUF
import Kernels
@testable import Model

@Suite final class QuantizeModelTests {
    let dir = Fixtures.temporaryDirectory()
    deinit { try? FileManager.default.removeItem(at: dir) }

    static func shared(_ quant: String) -> String {
        Fixtures.sharedModels!.appendingPathComponent("tiny-qwen3moe-4L-256d-8x2-\(quant).gguf").path
    }

    /// From the F16 model, the same type for every tensor as the files llama-quantize made, and each tensor's
    /// bytes exactly ggml's reference quantizer applied to that tensor's F16 values.
    @Test(.enabled(if: Fixtures.sharedModels != nil, "needs ../shared/models"), arguments: ["Q8_0", "Q4_0", "Q4_K_M"])
    func matchesLlamaQuantize(quant: String) throws {
        let f16 = try GGUFFile(path: Self.shared("F16"))
        let reference = try GGUFFile(path: Self.shared(quant))
        let recipe = QuantizationRecipe(fileType: FileType(name: quant)!, file: f16)
        let out = dir.appendingPathComponent("\(quant).gguf").path
        _ = try ModelQuantizer.quantize(f16, to: out, recipe: recipe, pool: ThreadPool(threads: 2))
        let ours = try GGUFFile(path: out)

        #expect(ours.tensorInfos.map(\.name) == reference.tensorInfos.map(\.name))
        for (a, b) in zip(ours.tensorInfos, reference.tensorInfos) {
            #expect(a.type == b.type, "\(a.name): \(a.type.name), llama-quantize chose \(b.type.name)")
            #expect(a.shape == b.shape)
        }
        #expect(ours.int("general.file_type") == reference.int("general.file_type"))
        for (key, value) in f16.metadata where key != "general.file_type" && key != "general.quantization_version" {
            #expect(ours[key] == value, "\(key)")
        }

        for t in ours.tensors {
            let src = f16.tensor(named: t.name)!
            let floats = try Dequantize.toFloats(src.type, src.bytes, count: src.info.elementCount)
            var expected = [UInt8](repeating: 0, count: t.info.byteCount)
            if src.type == t.type {
                expected = Array(src.bytes)
            } else {
                try floats.withUnsafeBufferPointer { fp in
                    try expected.withUnsafeMutableBytes { try Quantize.row(fp.baseAddress!, count: floats.count, to: t.type, $0.baseAddress!) }
                }
            }
            #expect(t.bytes.elementsEqual(expected), "\(t.name) (\(t.type.name)) differs from the reference quantizer")
        }
    }

    /// A fresh clone has no F16 model: requantize the shipped Q4_0 to Q8_0 and check what can be checked.
    @Test func requantizeShippedModel() throws {
        let src = try GGUFFile(path: Fixtures.shippedModel)
        let out = dir.appendingPathComponent("q8.gguf").path
        var reports = 0
        let summary = try ModelQuantizer.quantize(src, to: out, recipe: QuantizationRecipe(fileType: .q8_0, file: src),
                                                  pool: ThreadPool(threads: 3)) { _ in reports += 1 }
        #expect(reports == 51)
        let q8 = try GGUFFile(path: out)
        #expect(summary.typeCounts == ["F32": 21, "Q8_0": 30])
        #expect(q8.int("general.file_type") == 7)
        // Q4_0 values have at most 16 levels per block; Q8_0 holds them to within half a step of 1/127 of the max.
        let a = try Dequantize.toFloats(.q4_0, src.tensor(named: "blk.1.ffn_up_exps.weight")!.bytes, count: 256 * 256 * 8)
        let b = try Dequantize.toFloats(.q8_0, q8.tensor(named: "blk.1.ffn_up_exps.weight")!.bytes, count: 256 * 256 * 8)
        let maxAbs = a.map(abs).max()!
        #expect(zip(a, b).allSatisfy { abs($0 - $1) <= maxAbs / 127 })
    }

    @Test func overridesAndKeepF32() throws {
        let src = try GGUFFile(path: Fixtures.shippedModel)
        let recipe = QuantizationRecipe(fileType: .q8_0, overrides: [("ffn_.*_exps", .q4_K)], keepF32: "^output\\.weight$", file: src)
        let types = Dictionary(uniqueKeysWithValues: zip(src.tensorInfos.map(\.name), try recipe.plan(src.tensorInfos)))
        #expect(types["blk.0.ffn_up_exps.weight"] == .q4_K)
        #expect(types["blk.0.attn_q.weight"] == .q8_0)
        #expect(types["output.weight"] == .f32)
        #expect(types["blk.0.ffn_gate_inp.weight"] == .f32)  // routers are never quantized
        #expect(types["blk.0.attn_norm.weight"] == .f32)
    }

    @Test func unsupportedTargetIsAClearError() throws {
        let src = try GGUFFile(path: Fixtures.shippedModel)
        let recipe = QuantizationRecipe(fileType: .q8_0, overrides: [("attn_q", .iq4_XS)], file: src)
        do {
            _ = try ModelQuantizer.quantize(src, to: dir.appendingPathComponent("x.gguf").path, recipe: recipe, pool: ThreadPool(threads: 1))
            Issue.record("quantized to an unsupported type")
        } catch let e as ModelError {
            #expect(e.description.contains("blk.0.attn_q.weight") && e.description.contains("IQ4_XS"))
        }
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("x.gguf").path))
    }
}
