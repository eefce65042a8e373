import Foundation
import Testing
import TestSupport
import GGUF
import Tokenizer

/// A vocabulary whose arrays have the wrong element type is a TokenizerError naming the key, never a trap
/// (found by the GGUF fuzzer: BPE merges stored as integers).
struct MalformedVocabTests {
    @Test func nonStringTokensOrMergesAreErrors() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        for (key, bad) in [("tokenizer.ggml.merges", GGUFValue.array(.int32s([1, 2]))), ("tokenizer.ggml.tokens", .array(.float32s([0, 1, 2])))] {
            let path = dir.appendingPathComponent("bad.gguf").path
            let w = GGUFWriter(path: path)
            try w.set("general.architecture", .string("llama"))
            try w.set("tokenizer.ggml.model", .string("gpt2"))
            try w.set("tokenizer.ggml.tokens", key == "tokenizer.ggml.tokens" ? bad : .array(.strings(["a", "b", "ab"])))
            try w.set("tokenizer.ggml.merges", key == "tokenizer.ggml.merges" ? bad : .array(.strings(["a b"])))
            try w.write { _, _ in }
            #expect {
                _ = try Tokenizer(file: GGUFFile(path: path))
            } throws: { e in
                "\(e)".contains(key) && "\(e)".contains("not of strings")
            }
        }
    }

    /// Token types past Int32 (found by the fuzzer) are read as normal tokens, not a trap.
    @Test func tokenTypesOutOfRangeAreNormal() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("types.gguf").path
        let w = GGUFWriter(path: path)
        try w.set("general.architecture", .string("llama"))
        try w.set("tokenizer.ggml.model", .string("llama"))
        try w.set("tokenizer.ggml.tokens", .array(.strings(["<unk>", "a", "b"])))
        try w.set("tokenizer.ggml.token_type", .array(GGUFArray(.int64, [.int64(2), .int64(1 << 40), .int64(-(1 << 40))])))
        try w.write { _, _ in }
        let t = try Tokenizer(file: GGUFFile(path: path))
        #expect(t.vocab.count == 3)
    }
}
