import Foundation
import Testing
import TestSupport
import GGUF
@testable import Tokenizer

/// llama.cpp's tokenizer test vectors: every text of `.inp` must give exactly the ids of `.out`
/// (tokenized without BOS, as llama.cpp's test-tokenizer-0 does).
struct VocabVectorTests {
    static func cases(_ vocab: String) throws -> [(String, [Int32])] {
        let inp = try String(contentsOfFile: Fixtures.path("vocab/ggml-vocab-\(vocab).gguf.inp"), encoding: .utf8)
        let out = try String(contentsOfFile: Fixtures.path("vocab/ggml-vocab-\(vocab).gguf.out"), encoding: .utf8)
        var texts = inp.components(separatedBy: "\n__ggml_vocab_test__\n")
        if texts.last == "" { texts.removeLast() }
        var lines = out.components(separatedBy: "\n")
        if lines.last == "" { lines.removeLast() }
        let ids = lines.map { $0.split(separator: " ").map { Int32($0)! } }
        return Array(zip(texts, ids))
    }

    @Test(arguments: ["llama-spm", "gpt-2", "llama-bpe", "qwen2", "falcon", "mpt", "refact", "gemma-4"])
    func vectors(vocab: String) throws {
        let tok = try Tokenizer(file: GGUFFile(path: Fixtures.path("vocab/ggml-vocab-\(vocab).gguf")))
        let cases = try Self.cases(vocab)
        #expect(cases.count == 46)
        var passed = 0
        for (text, want) in cases {
            let got = tok.encode(text, addSpecial: false, parseSpecial: true)
            #expect(got == want, "\(vocab): \(text.debugDescription)")
            if got == want { passed += 1 }
        }
        #expect(passed == cases.count)
    }

    @Test func spmRoundTripAndSpecials() throws {
        let tok = try Tokenizer(file: GGUFFile(path: Fixtures.path("vocab/ggml-vocab-llama-spm.gguf")))
        let text = "Hello world, ½ of 🦙 llamas\n\tare here"
        let ids = tok.encode(text)
        #expect(ids.first == 1)  // BOS
        // The space prefix SentencePiece adds is part of the first piece; llama.cpp strips it the same way.
        #expect(tok.decode(ids) == " " + text)
        #expect(tok.encode("<s>", addSpecial: false, parseSpecial: true) == [1])
        #expect(tok.encode("<s>", addSpecial: false, parseSpecial: false) != [1])
        #expect(tok.encode("", addSpecial: true) == [1])
        #expect(tok.encode("", addSpecial: false).isEmpty)
    }
}

extension VocabVectorTests {
    @Test func bpeRoundTrip() throws {
        for vocab in ["gpt-2", "llama-bpe", "qwen2", "gemma-4"] {
            let tok = try Tokenizer(file: GGUFFile(path: Fixtures.path("vocab/ggml-vocab-\(vocab).gguf")))
            let text = "Hello world, ½ of 🦙 llamas\n\tare here 3333 it's"
            #expect(tok.decode(tok.encode(text, addSpecial: false)) == text, "\(vocab)")
        }
    }
}

/// Every registered pre-tokenizer compiles and splits text into pieces that put back together give the text.
struct PreTokenizerTests {
    @Test(arguments: BPETokenizer.preTokenizers.keys.sorted())
    func splitsLosslessly(pre: String) throws {
        let tok = try Tokenizer(file: GGUFFile(path: Fixtures.path("vocab/ggml-vocab-gpt-2.gguf")))
        let bpe = try BPETokenizer(vocab: tok.vocab, pre: pre)
        for text in ["Hello world, 3333 it's  ok\n\n\tdone", "½ 🦙 中文字符 한국어 Ελληνικά déjà-vu", "", "   ", "a\r\nb"] {
            let words = bpe.words(text)
            #expect(words.joined() == text, "\(pre): \(text.debugDescription)")
            #expect(!words.contains { $0.isEmpty })
        }
    }
}

/// The o200k (gpt-oss) and deepseek-v3 pre-tokenizers against llama.cpp: GPT-2's vocabulary relabelled with
/// that `tokenizer.ggml.pre` (llama.cpp then splits with that family's expressions and merges with GPT-2's
/// ranks), on texts with contractions, numbers, code, CJK, emoji, marks and odd whitespace. The expected ids
/// are `llama-ref tokenize` on the same relabelled file (pretokenizer-cases.json).
struct PreTokenizerReferenceTests {
    struct Cases: Decodable {
        let texts: [String]
        let gpt4o: [[Int32]]
        let deepseekV3: [[Int32]]
        enum CodingKeys: String, CodingKey { case texts, gpt4o = "gpt-4o", deepseekV3 = "deepseek-v3" }
    }

    /// GPT-2's vocabulary with `tokenizer.ggml.pre` = `pre`, written next to the test.
    static func relabelled(_ pre: String) throws -> Tokenizer {
        let source = try GGUFFile(path: Fixtures.path("vocab/ggml-vocab-gpt-2.gguf"))
        let path = Fixtures.temporaryDirectory().appendingPathComponent("vocab-\(pre).gguf").path
        let w = GGUFWriter(path: path)
        for (key, value) in source.metadata where key != "general.alignment" {
            try w.set(key, key == "tokenizer.ggml.pre" ? .string(pre) : value)
        }
        try w.write { _, _ in }
        return try Tokenizer(file: GGUFFile(path: path))
    }

    @Test func matchLlamaCpp() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("vocab/pretokenizer-cases.json")))
        let cases = try JSONDecoder().decode(Cases.self, from: data)
        #expect(cases.texts.count == 18)
        for (pre, want) in [("gpt-4o", cases.gpt4o), ("deepseek-v3", cases.deepseekV3)] {
            let tok = try Self.relabelled(pre)
            #expect(tok.vocab.pre == pre)
            for (text, ids) in zip(cases.texts, want) {
                #expect(tok.encode(text, addSpecial: false) == ids, "\(pre): \(text.debugDescription)")
            }
        }
        // The two really split differently (camel-cased words GPT-2 holds whole: " YouTube", " iPhone"), so a
        // pre-tokenizer ignored would be noticed.
        #expect(cases.gpt4o != cases.deepseekV3)
    }
}

/// What ends a generation, as llama.cpp decides it from the vocabulary (special_eog_ids).
struct EndOfGenerationTests {
    @Test func llamaCppTextsEndGeneration() throws {
        let gpt2 = try Tokenizer(file: GGUFFile(path: Fixtures.path("vocab/ggml-vocab-gpt-2.gguf")))
        let endoftext = try #require(gpt2.vocab.id(of: Array("<|endoftext|>".utf8)))
        #expect(gpt2.isEndOfGeneration(endoftext))
        #expect(!gpt2.isEndOfGeneration(try #require(gpt2.vocab.id(of: Array("hello".utf8)))))
        let qwen = try Tokenizer(file: GGUFFile(path: Fixtures.path("vocab/ggml-vocab-qwen2.gguf")))
        #expect(qwen.isEndOfGeneration(try #require(qwen.vocab.id(of: Array("<|im_end|>".utf8)))))
        #expect(!qwen.isEndOfGeneration(try #require(qwen.vocab.id(of: Array("<|im_start|>".utf8)))))
    }

    /// A harmony vocabulary (gpt-oss): <|return|> and <|call|> end a generation, <|end|> only a message, and the
    /// channel markers are always parsed and rendered, as llama.cpp treats them.
    @Test func harmonyMarkers() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("harmony.gguf").path
        let texts = ["a", "b", "<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>"]
        let w = GGUFWriter(path: path)
        try w.set("tokenizer.ggml.model", .string("gpt2"))
        try w.set("tokenizer.ggml.pre", .string("gpt-4o"))
        try w.set("tokenizer.ggml.tokens", .array(.strings(texts)))
        try w.set("tokenizer.ggml.token_type", .array(.int32s(texts.map { $0.count == 1 ? 1 : 3 })))
        try w.set("tokenizer.ggml.merges", .array(.strings(["a b"])))
        try w.set("tokenizer.ggml.eos_token_id", .uint32(6))
        try w.write { _, _ in }
        let tok = try Tokenizer(file: GGUFFile(path: path))
        #expect(tok.vocab.endOfGeneration == [6, 7])
        #expect(!tok.isEndOfGeneration(5))
        #expect(tok.encode("a<|channel|>b<|end|>", addSpecial: false, parseSpecial: false) == [0, 3, 1, 5])
        #expect(tok.decode([2, 0, 3, 1, 4, 5]) == "<|start|>a<|channel|>b<|message|><|end|>")
        #expect(tok.decode([6]) == "")
    }
}
