import Foundation
import Testing
import TestSupport
@testable import GGUF

/// Reads the real files llama.cpp wrote and checks them against facts stated elsewhere
/// (../shared/models/README.md, and llama.cpp's gguf-py reading the same files).
struct ReadRealFilesTests {
    struct Vocab: Sendable, CustomStringConvertible {
        let file: String, architecture: String, model: String, pre: String
        let keys: Int, tokens: Int, merges: Int?, lastToken: String
        var description: String { file }
    }

    static let vocabs = [
        Vocab(file: "ggml-vocab-gpt-2.gguf", architecture: "gpt2", model: "gpt2", pre: "gpt-2",
              keys: 16, tokens: 50257, merges: 50000, lastToken: "<|endoftext|>"),
        Vocab(file: "ggml-vocab-llama-bpe.gguf", architecture: "llama", model: "gpt2", pre: "llama-bpe",
              keys: 20, tokens: 128256, merges: 280147, lastToken: "<|reserved_special_token_250|>"),
        Vocab(file: "ggml-vocab-llama-spm.gguf", architecture: "llama", model: "llama", pre: "default",
              keys: 22, tokens: 32000, merges: nil, lastToken: "给"),
        Vocab(file: "ggml-vocab-qwen2.gguf", architecture: "qwen2", model: "gpt2", pre: "qwen2",
              keys: 20, tokens: 151936, merges: 151387, lastToken: "[PAD151935]"),
    ]

    @Test(arguments: vocabs)
    func vocabularyFiles(v: Vocab) throws {
        let f = try GGUFFile(path: Fixtures.path("vocab/\(v.file)"))
        #expect(f.version == 3)
        #expect(f.tensorCount == 0)
        #expect(f.metadata.count == v.keys)
        #expect(f.architecture == v.architecture)
        #expect(f.string("tokenizer.ggml.model") == v.model)
        #expect(f.string("tokenizer.ggml.pre") == v.pre)
        let tokens = try #require(f.array("tokenizer.ggml.tokens"))
        #expect(tokens.elementType == .string)
        #expect(tokens.count == v.tokens)
        #expect(tokens[tokens.count - 1].stringValue == v.lastToken)
        #expect(f.array("tokenizer.ggml.merges")?.count == v.merges)
    }

    @Test func spmVocabularyValues() throws {
        let f = try GGUFFile(path: Fixtures.path("vocab/ggml-vocab-llama-spm.gguf"))
        let tokens = try #require(f.array("tokenizer.ggml.tokens"))
        #expect(tokens[0].stringValue == "<unk>")
        #expect(tokens[1].stringValue == "<s>")
        #expect(tokens[2].stringValue == "</s>")
        #expect(tokens.stringBytes(at: 13) == Array("<0x0A>".utf8))
        let types = try #require(f.array("tokenizer.ggml.token_type"))
        #expect(types.elementType == .int32)
        #expect(types[1].intValue == 3)  // control
        #expect(types[13].intValue == 6)  // byte
        #expect(f.int("tokenizer.ggml.bos_token_id") == 1)
        #expect(f.bool("tokenizer.ggml.add_bos_token") == true)
        #expect(f.double("llama.attention.layer_norm_rms_epsilon") == Double(Float(1e-5)))
    }

    struct ModelFacts: Sendable, CustomStringConvertible {
        let quant: String, bytes: Int, types: [String: Int]
        var file: String { "tiny-qwen3moe-4L-256d-8x2-\(quant).gguf" }
        var description: String { quant }
    }

    /// The table of ../shared/models/README.md.
    static let models = [
        ModelFacts(quant: "F16", bytes: 47_432_160, types: ["F16": 30, "F32": 21]),
        ModelFacts(quant: "Q4_0", bytes: 16_071_648, types: ["F32": 21, "Q4_0": 21, "Q6_K": 1, "Q8_0": 8]),
        ModelFacts(quant: "Q4_K_M", bytes: 16_374_752, types: ["F32": 21, "Q4_K": 15, "Q5_K": 4, "Q6_K": 3, "Q8_0": 8]),
        ModelFacts(quant: "Q6_K", bytes: 19_940_832, types: ["F32": 21, "Q6_K": 22, "Q8_0": 8]),
        ModelFacts(quant: "Q8_0", bytes: 25_559_520, types: ["F32": 21, "Q8_0": 30]),
    ]

    @Test func shippedModel() throws {
        try checkModel(path: Fixtures.shippedModel, m: Self.models[1])
    }

    /// The other quants live in ../shared/models (beside every developer checkout and CI's clone); a clone
    /// without it still checks the shipped Q4_0 above.
    @Test(.enabled(if: Fixtures.sharedModels != nil, "needs ../shared/models"), arguments: models)
    func sharedModels(m: ModelFacts) throws {
        try checkModel(path: Fixtures.sharedModels!.appendingPathComponent(m.file).path, m: m)
    }

    func checkModel(path: String, m: ModelFacts) throws {
        let f = try GGUFFile(path: path)
        #expect(f.fileSize == m.bytes)
        #expect(f.tensorCount == 51)
        var types = [String: Int]()
        for t in f.tensorInfos { types[t.type.name, default: 0] += 1 }
        #expect(types == m.types)
        #expect(f.architecture == "qwen3moe")
        #expect(f.string("general.name") == "tiny-qwen3moe-moe-4L-256d-8x2")
        #expect(f.int("qwen3moe.block_count") == 4)
        #expect(f.int("qwen3moe.embedding_length") == 256)
        #expect(f.int("qwen3moe.attention.head_count") == 8)
        #expect(f.int("qwen3moe.attention.head_count_kv") == 2)
        #expect(f.int("qwen3moe.expert_count") == 8)
        #expect(f.int("qwen3moe.expert_used_count") == 2)
        #expect(f.int("qwen3moe.context_length") == 512)
        #expect(f.double("qwen3moe.rope.freq_base") == 10000)
        #expect(f.double("qwen3moe.attention.layer_norm_rms_epsilon") == 9.999999974752427e-07)
        #expect(f.int("tokenizer.ggml.bos_token_id") == 1)

        let gate = try #require(f.tensorInfo(named: "blk.0.ffn_gate_exps.weight"))
        #expect(gate.shape == [256, 256, 8])
        let router = try #require(f.tensorInfo(named: "blk.3.ffn_gate_inp.weight"))
        #expect(router.type == .f32 && router.shape == [256, 8])
        let embd = try #require(f.tensor(named: "token_embd.weight"))
        #expect(embd.shape == [256, 32000])
        #expect(embd.bytes.count == embd.info.rowBytes * 32000)
        // Data sits where the table says, aligned, inside the file.
        for t in f.tensors {
            #expect(t.fileOffset % f.alignment == 0)
            #expect(t.fileOffset + t.info.byteCount <= f.fileSize)
        }
    }

    /// Offsets and sizes as llama.cpp's gguf-py reports them for the shipped Q4_0 file.
    @Test func tensorOffsetsMatchGGUFPy() throws {
        let f = try GGUFFile(path: Fixtures.shippedModel)
        let expected: [(String, GGMLType, [Int], Int, Int)] = [
            ("output.weight", .q6_K, [256, 32000], 6_720_000, 727_520),
            ("output_norm.weight", .f32, [256], 1024, 7_447_520),
            ("token_embd.weight", .q4_0, [256, 32000], 4_608_000, 7_448_544),
            ("blk.0.attn_k.weight", .q8_0, [256, 64], 17408, 12_056_544),
            ("blk.0.attn_k_norm.weight", .f32, [32], 128, 12_073_952),
        ]
        for (name, type, shape, bytes, offset) in expected {
            let t = try #require(f.tensor(named: name))
            #expect(t.type == type)
            #expect(t.shape == shape)
            #expect(t.info.byteCount == bytes)
            #expect(t.fileOffset == offset)
        }
        // The first F32 norm weights are ordinary floats near 1 in a trained model.
        let norm = try #require(f.tensor(named: "output_norm.weight"))
        let first = norm.bytes.loadUnaligned(as: Float.self)
        #expect(first.isFinite && first > 0)
    }

    @Test func typeTableMatchesGoldenIndex() throws {
        // Reference/INDEX.tsv lists ggml's own id, block size and bytes per block for the common types.
        let rows: [(String, UInt32, Int, Int)] = [
            ("f16", 1, 1, 2), ("bf16", 30, 1, 2), ("q4_0", 2, 32, 18), ("q4_1", 3, 32, 20), ("q5_0", 6, 32, 22),
            ("q5_1", 7, 32, 24), ("q8_0", 8, 32, 34), ("q2_K", 10, 256, 84), ("q3_K", 11, 256, 110),
            ("q4_K", 12, 256, 144), ("q5_K", 13, 256, 176), ("q6_K", 14, 256, 210), ("iq4_nl", 20, 32, 18),
            ("iq4_xs", 23, 256, 136), ("mxfp4", 39, 32, 17),
        ]
        for (name, id, block, size) in rows {
            let t = try #require(GGMLType(rawValue: id))
            #expect(GGMLType(name: name) == t)
            #expect(t.blockSize == block && t.bytesPerBlock == size, "\(name)")
        }
        for removed: UInt32 in [4, 5, 31, 32, 33, 36, 37, 38, 43] { #expect(GGMLType(rawValue: removed) == nil) }
    }
}
