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
