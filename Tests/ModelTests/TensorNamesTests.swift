import Testing
import TestSupport
import GGUF
@testable import Model

struct TensorNamesTests {
    @Test func parseAndPrintRoundTrip() throws {
        let cases: [(String, Int?, TensorRole, String)] = [
            ("token_embd.weight", nil, .tokenEmbedding, "weight"),
            ("output.weight", nil, .output, "weight"),
            ("blk.0.attn_q.weight", 0, .attnQ, "weight"),
            ("blk.12.ffn_gate_exps.weight", 12, .expertGate, "weight"),
            ("blk.3.ffn_gate_inp_shexp.weight", 3, .sharedExpertRouter, "weight"),
            ("blk.1.attn_q.bias", 1, .attnQ, "bias"),
            ("blk.7.exp_probs_b.bias", 7, .expertProbBias, "bias"),
        ]
        for (name, layer, role, suffix) in cases {
            let n = try #require(TensorName(parsing: name), "\(name)")
            #expect(n.layer == layer && n.role == role && n.suffix == suffix)
            #expect(n.description == name)
        }
        #expect(TensorName.block(2, .expertDown).description == "blk.2.ffn_down_exps.weight")
        for bad in ["blk.x.attn_q.weight", "blk.0.token_embd.weight", "attn_q.weight", "mystery.weight", "blk.-1.attn_q.weight"] {
            #expect(TensorName(parsing: bad) == nil, "\(bad)")
        }
    }

    @Test func everyTensorOfTheShippedModelIsKnown() throws {
        let s = ModelSummary(file: try GGUFFile(path: Fixtures.shippedModel))
        #expect(s.unknownTensors.isEmpty)
        #expect(s.layers.count == 4)
        #expect(s.tensorCount == 51)
        #expect(s.hyperparameters.expertCount == 8)
        #expect(s.hyperparameters.vocabSize == 32000)
        #expect(s.tokenizerModel == "llama")
        // Experts are Q4_0 here: 3 stacked tensors of 8 × 256 × 256 at 18 bytes per 32 weights.
        for layer in s.layers {
            #expect(layer[.experts] == 3 * 8 * 256 * 256 / 32 * 18)
            #expect(layer[.router] == 256 * 8 * 4)  // F32
            #expect(layer[.sharedExpert] == 0)
            #expect(layer[.attention] > 0 && layer[.norm] > 0)
        }
        #expect(s.global[.embedding] == 256 * 32000 / 32 * 18)
        #expect(s.global[.head] == 256 * 32000 / 256 * 210)  // Q6_K output
        #expect(s.layers.map(\.total).reduce(s.global.total, +) == s.tensorBytes)
        #expect(s.parameters == 23_341_568)
    }
}
