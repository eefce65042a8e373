import Foundation
import Runtime
import Testing
import TestSupport
import GGUF
import Kernels
@testable import Model

/// The engine against llama.cpp on the shared trained model (../shared/models/README.md).
struct EngineTests {
    struct Reference: Sendable, CustomStringConvertible {
        let quant: String
        let perplexity: Double  // llama-perplexity -c 512 on heldout.txt
        var description: String { quant }
        var path: String? {
            quant == "Q4_0" ? Fixtures.shippedModel
                : Fixtures.sharedModels?.appendingPathComponent("tiny-qwen3moe-4L-256d-8x2-\(quant).gguf").path
        }
    }

    static let references = [
        Reference(quant: "Q4_0", perplexity: 359.679), Reference(quant: "F16", perplexity: 359.58),
        Reference(quant: "Q4_K_M", perplexity: 359.783), Reference(quant: "Q6_K", perplexity: 359.565),
        Reference(quant: "Q8_0", perplexity: 359.582),
    ]
    static let available = references.filter { $0.path.map { FileManager.default.fileExists(atPath: $0) } ?? false }

    static func heldout() throws -> [UInt8] {
        Array(try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("heldout.txt"))))
    }

    /// Top-1 token agrees with llama.cpp's golden logits wherever its top-2 gap exceeds 0.01 (≥ 99% required).
    @Test(arguments: available)
    func goldenLogits(ref: Reference) throws {
        let engine = try Engine(path: ref.path!, threads: 2)
        let golden = try LlamaCppLogits(fixture: "golden/tiny-qwen3moe-\(ref.quant).heldout256.top10.jsonl")
        let ids = Array(engine.tokenizer.encode(bytes: try Self.heldout()).prefix(256))
        #expect(ids == golden.tokens, "tokenization of heldout.txt differs from llama.cpp's")
        let logits = try engine.evaluate(ids, in: engine.newSequence(capacity: 256), all: true)
        let r = golden.compare(logits, vocab: engine.config.vocabSize)
        #expect(Double(r.agreed) >= 0.99 * Double(r.counted), "\(ref.quant): top-1 agrees at \(r.agreed) of \(r.counted)")
        #expect(r.maxDiff < 0.5, "\(ref.quant): a top-10 logit differs by \(r.maxDiff)")
    }

    /// llama-perplexity's method, within 0.5% of its figure.
    @Test(arguments: available)
    func perplexity(ref: Reference) throws {
        let engine = try Engine(path: ref.path!, threads: 2)
        let r = try engine.perplexity(engine.tokenizer.encode(bytes: try Self.heldout()), ctx: 512)
        #expect(r.chunks == 93)
        #expect(abs(r.ppl - ref.perplexity) / ref.perplexity < 0.005, "\(ref.quant): \(r.ppl) vs llama.cpp \(ref.perplexity)")
    }

    /// Layers 0..<k then k..<n as two stages compute exactly what one stage computes.
    @Test func stagesCompose() throws {
        let ids = Array(try Engine(path: Fixtures.shippedModel, threads: 1).tokenizer.encode(bytes: try Self.heldout()).prefix(40))
        let whole = try Engine(path: Fixtures.shippedModel, threads: 2)
        let want = try whole.evaluate(ids, in: whole.newSequence(capacity: 64), all: true)
        for k in 1..<4 {
            let split = try Engine(path: Fixtures.shippedModel, threads: 2, split: [k])
            #expect(split.stages.map(\.layers) == [0..<k, k..<4])
            let seq = split.newSequence(capacity: 64)
            // Prefill then one decode step, so cached positions from both stages are exercised.
            var got = try split.evaluate(Array(ids.dropLast()), in: seq, all: true)
            got += try split.evaluate([ids.last!], in: seq, all: true)
            #expect(got == want, "split at \(k)")
        }
    }

    /// Q4_0 (and, with VNNI, Q8_0) matrices are packed in this process's copy of the pages, only what the stage computes (of the
    /// routed experts, the held ones), and only once however many stages share the mapping.
    @Test func packingTouchesWhatIsComputedOnce() throws {
        guard ISA.active != .scalar else { return }  // nothing is packed without the packed kernel
        let path = Fixtures.shippedModel
        let file = try GGUFFile(path: path)
        let disk = try Data(contentsOf: URL(fileURLWithPath: path))
        func unchanged(_ name: String, expert: Int? = nil) throws -> Bool {
            let t = try #require(file.tensor(named: name))
            let per = t.info.byteCount / (expert == nil ? 1 : 8)
            let offset = t.fileOffset + (expert ?? 0) * per
            return Data(bytes: file.mapping.base! + offset, count: per) == disk[offset..<(offset + per)]
        }
        _ = try Stage(file: file, config: try ModelConfig(file: file), layers: 0..<4, pool: ThreadPool(threads: 1), heldExperts: ExpertSet([0: [1]]))
        #expect(try !unchanged("blk.0.attn_q.weight"), "Q4_0 attention is packed")
        #expect(try unchanged("blk.0.ffn_gate_inp.weight"), "an F32 router is left as it is")
        #expect(try unchanged("token_embd.weight"), "the embedding (rows looked up, not multiplied) is left as it is")
        #expect(try !unchanged("blk.0.ffn_gate_exps.weight", expert: 1), "a held expert is packed")
        #expect(try unchanged("blk.0.ffn_gate_exps.weight", expert: 0), "an expert held elsewhere is not touched")
        #expect(try unchanged("blk.1.ffn_down_exps.weight", expert: 3))
        // Two engines over the same mapping (the second finds everything packed) compute what a fresh file does.
        let ids = Array(try Engine(path: path, threads: 1).tokenizer.encode("Once upon a time there was").prefix(8))
        var got: [[Float]] = []
        for engine in [try Engine(file: file, threads: 2), try Engine(file: file, threads: 2), try Engine(path: path, threads: 2)] {
            got.append(try engine.evaluate(ids, in: engine.newSequence(capacity: 16), all: true))
        }
        #expect(got[0] == got[2] && got[1] == got[2])
    }

    /// Incremental decoding gives the logits a full batch gives (the KV cache is right).
    @Test func decodeMatchesBatch() throws {
        let engine = try Engine(path: Fixtures.shippedModel, threads: 2)
        let ids = Array(engine.tokenizer.encode("The configuration file sets the default options").prefix(12))
        let all = try engine.evaluate(ids, in: engine.newSequence(capacity: 32), all: true)
        let seq = engine.newSequence(capacity: 32)
        let v = engine.config.vocabSize
        for (i, t) in ids.enumerated() {
            let step = try engine.evaluate([t], in: seq)
            let want = Array(all[(i * v)..<((i + 1) * v)])
            #expect(zip(step, want).allSatisfy { abs($0 - $1) < 1e-3 }, "position \(i)")
        }
    }

    @Test func promptLongerThanContextIsAnError() throws {
        let engine = try Engine(path: Fixtures.shippedModel, threads: 1)
        let seq = engine.newSequence(capacity: 8)
        do {
            _ = try engine.evaluate(Array(repeating: 100, count: 9), in: seq)
            Issue.record("accepted a prompt longer than the context")
        } catch let e as ModelError {
            #expect(e.description.contains("context"))
        }
        // The engine still serves afterwards.
        #expect(try engine.evaluate([1, 100], in: engine.newSequence(capacity: 8)).count == engine.config.vocabSize)
    }

    @Test func seededSamplingIsReproducible() throws {
        let engine = try Engine(path: Fixtures.shippedModel, threads: 2)
        let prompt = engine.tokenizer.encode("The build system")
        func run(_ p: SamplingParams) throws -> [Int32] {
            var out: [Int32] = []
            try engine.generate(prompt: prompt, maxTokens: 16, params: p, in: engine.newSequence(capacity: 64)) { t, _ in if let t { out.append(t) }; return true }
            return out
        }
        var p = SamplingParams()
        p.seed = 7
        p.temperature = 1.0
        #expect(try run(p) == run(p))
        var q = p
        q.seed = 8
        #expect(try run(p) != run(q))
        // Greedy picks the argmax of the prompt's logits first.
        let logits = try engine.evaluate(prompt, in: engine.newSequence(capacity: 64))
        let argmax = Int32(logits.indices.max { logits[$0] < logits[$1] }!)
        #expect(try run(.greedy).first == argmax)
    }
}
