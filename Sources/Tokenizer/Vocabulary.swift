import GGUF

/// A tokenizer's vocabulary and special tokens, read from the `tokenizer.ggml.*` keys of a GGUF file.
public struct Vocabulary: Sendable {
    /// llama.cpp's token types (`tokenizer.ggml.token_type`).
    public enum TokenType: Int32, Sendable {
        case undefined = 0, normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
    }

    public enum Model: String, Sendable {
        case spm = "llama"
        case bpe = "gpt2"
    }

    public let model: Model
    /// Pre-tokenizer name for BPE (`tokenizer.ggml.pre`).
    public let pre: String
    /// Spaces are written ▁ before tokenizing (SentencePiece, and the BPE of `tokenizer.ggml.model = gemma4`,
    /// whose tokens are raw UTF-8 rather than GPT-2's byte alphabet).
    public let escapesWhitespace: Bool
    /// Token texts as raw bytes (SPM uses ▁ for spaces; byte-level BPE uses the GPT-2 byte-to-unicode map).
    public let tokens: [[UInt8]]
    public let scores: [Float]
    /// Each token's type, adjusted as llama.cpp adjusts them on load: end-of-generation texts are control tokens,
    /// gpt-oss's harmony markers (`<|channel|>`, `<|message|>`, `<|start|>`, `<|constrain|>`) user-defined, so
    /// they are always parsed in text and always rendered.
    public let types: [TokenType]
    /// Tokens that end generation: the end-of-sequence and end-of-turn ids and the texts llama.cpp recognises
    /// (`<|im_end|>`, `<|eot_id|>`, `<|return|>`, …); in a harmony vocabulary (`<|return|>` and `<|call|>` both
    /// present) `<|end|>` only ends a message, not the generation.
    public let endOfGeneration: Set<Int32>
    let index: [[UInt8]: Int32]

    public let bos: Int32?
    public let eos: Int32?
    public let unknown: Int32?
    public let eot: Int32?
    public let addBOS: Bool
    public let addEOS: Bool
    public let addSpacePrefix: Bool

    /// BPE merges as rank by pair ("a b" → rank).
    let mergeRanks: [[UInt8]: Int]

    public var count: Int { tokens.count }

    public init(file: GGUFFile) throws(TokenizerError) {
        /// An array of strings the tokenizer cannot do without.
        func need(_ key: String) throws(TokenizerError) -> GGUFArray {
            guard let a = file.array(key) else { throw TokenizerError("\(file.path): missing '\(key)'; the file has no tokenizer") }
            guard a.elementType == .string else { throw TokenizerError("\(file.path): '\(key)' is an array of \(a.elementType.name), not of strings") }
            return a
        }
        guard let name = file.string("tokenizer.ggml.model") else {
            throw TokenizerError("\(file.path): missing 'tokenizer.ggml.model'; the file has no tokenizer")
        }
        // gemma4 is llama.cpp's "SPM-style BPE": merges over raw UTF-8 with ▁ for spaces, pre-tokenizer
        // 'gemma4' whatever the file says.
        guard let m = name == "gemma4" ? .bpe : Model(rawValue: name) else {
            throw TokenizerError("\(file.path): tokenizer model '\(name)' is not supported (supported: llama, gpt2, gemma4)")
        }
        model = m
        pre = name == "gemma4" ? "gemma4" : file.string("tokenizer.ggml.pre") ?? "default"
        escapesWhitespace = m == .spm || name == "gemma4"
        let t = try need("tokenizer.ggml.tokens")
        tokens = (0..<t.count).map { t.stringBytes(at: $0) }
        if let s = file.array("tokenizer.ggml.scores"), s.count == t.count, let d = s.doubles {
            scores = d.map(Float.init)
        } else {
            scores = [Float](repeating: 0, count: t.count)
        }
        var types: [TokenType]
        if let ty = file.array("tokenizer.ggml.token_type"), ty.count == t.count, let v = ty.ints {
            // Any integer type may hold them; a value no token type has (found by the fuzzer: past Int32) is normal.
            types = v.map { Int32(exactly: $0).flatMap(TokenType.init(rawValue:)) ?? .normal }
        } else {
            types = [TokenType](repeating: .normal, count: t.count)
        }
        var idx = [[UInt8]: Int32](minimumCapacity: t.count)
        for (i, tok) in tokens.enumerated() where idx[tok] == nil { idx[tok] = Int32(i) }
        index = idx

        func id(_ key: String) throws(TokenizerError) -> Int32? {
            guard let v = file.int(key) else { return nil }
            guard v >= 0 && v < t.count else { throw TokenizerError("\(file.path): '\(key)' = \(v) is outside the vocabulary of \(t.count)") }
            return Int32(v)
        }
        bos = try id("tokenizer.ggml.bos_token_id")
        eos = try id("tokenizer.ggml.eos_token_id")
        unknown = try id("tokenizer.ggml.unknown_token_id")
        eot = try id("tokenizer.ggml.eot_token_id")
        let eom = try id("tokenizer.ggml.eom_token_id")
        // llama.cpp's end-of-generation texts (llama-vocab.cpp, special_eog_ids), made control tokens.
        var eog = Set([eos, eot, eom].compactMap { $0 })
        for text in Self.endOfGenerationTexts {
            guard let i = idx[Array(text.utf8)] else { continue }
            eog.insert(i)
            types[Int(i)] = .control
        }
        for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let i = idx[Array(text.utf8)] { types[Int(i)] = .userDefined }
        }
        if let ret = idx[Array("<|return|>".utf8)], let call = idx[Array("<|call|>".utf8)], let end = idx[Array("<|end|>".utf8)],
           eog.contains(ret), eog.contains(call), eog.contains(end) {
            eog.remove(end)
            types[Int(end)] = .userDefined
        }
        self.types = types
        endOfGeneration = eog
        // llama.cpp's defaults: SPM adds BOS and a space prefix; BPE adds BOS unless told otherwise.
        addBOS = file.bool("tokenizer.ggml.add_bos_token") ?? (m == .spm || m == .bpe)
        addEOS = file.bool("tokenizer.ggml.add_eos_token") ?? false
        addSpacePrefix = file.bool("tokenizer.ggml.add_space_prefix") ?? (m == .spm)

        var ranks = [[UInt8]: Int]()
        if m == .bpe {
            let merges = try need("tokenizer.ggml.merges")
            ranks.reserveCapacity(merges.count)
            for i in 0..<merges.count { ranks[merges.stringBytes(at: i)] = i }
        }
        mergeRanks = ranks
    }

    public func id(of text: [UInt8]) -> Int32? { index[text] }

    static let endOfGenerationTexts = ["<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>", "<|endoftext|>",
                                       "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>"]

    /// Tokens parsed out of raw text as a whole (llama.cpp's special-token partition): control tokens only
    /// when the caller asks for special parsing, user-defined tokens always.
    func specialTokens(parseSpecial: Bool) -> [(Int32, [UInt8])] {
        var out: [(Int32, [UInt8])] = []
        for (i, t) in types.enumerated() where !tokens[i].isEmpty {
            let always = t == .userDefined
            let onRequest = t == .control || t == .unknown
            if always || (onRequest && parseSpecial) { out.append((Int32(i), tokens[i])) }
        }
        // Longest first, so "<|im_start|>" wins over a shorter token that is its prefix.
        return out.sorted { $0.1.count != $1.1.count ? $0.1.count > $1.1.count : $0.0 < $1.0 }
    }
}

public struct TokenizerError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
