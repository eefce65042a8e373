/// Byte-level BPE (`tokenizer.ggml.model = gpt2`), as llama.cpp's `llm_tokenizer_bpe`: split the text into
/// words with the pre-tokenizer's regular expressions, spell each word's bytes with GPT-2's byte-to-unicode
/// alphabet, then merge adjacent symbols lowest merge rank first (ties to the left).
struct BPETokenizer: @unchecked Sendable {
    let vocab: Vocabulary
    let regexes: [Regex<AnyRegexOutput>]
    /// llama3-style vocabularies take a word that is itself a token whole, without merging.
    let ignoreMerges: Bool
    /// Words are spelled in GPT-2's byte alphabet (byte-level BPE); false for raw UTF-8 symbols with `<0xXX>`
    /// byte tokens for what no symbol covers (gemma4).
    let byteEncode: Bool

    /// One `tokenizer.ggml.pre`'s settings in llama-vocab.cpp.
    struct PreTokenizer {
        /// Each expression applies to the pieces the previous one left, keeping unmatched text as pieces too.
        var patterns: [String]
        var ignoreMerges = false
        var byteEncode = true
        /// A word that is only newlines and is a token is taken whole (llama.cpp's fix for gemma4).
        var wholeNewlineRuns = false
    }

    /// Pre-tokenizers by `tokenizer.ggml.pre` (llama-vocab.cpp).
    static let preTokenizers: [String: PreTokenizer] = {
        let gpt2 = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"#
        let llama3 = #"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
        let qwen2 = #"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
        let qwen35 = #"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
        let cjk = "[一-龥ࠀ-一가-퟿]+"
        // llama.cpp spells deepseek-llm's letters as an explicit list of ranges — the cased letters (Lu, Ll, Lt);
        // some of its bounds are canonically equivalent to lower code points, which Swift's Regex rejects in a
        // range, so the class is written by category here.
        let deepseekLLM = ["[\r\n]", #"\s?[\p{Lu}\p{Ll}\p{Lt}]+"#, "\\s?[!-/:-~！-／：-～‘-‟　-。]+", "\\s+$", cjk, "\\p{N}+"]
        let deepseekCoder = ["[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", cjk, "\\p{N}"]
        let deepseekV3 = [#"\p{N}{1,3}"#, "[一-龥぀-ゟ゠-ヿ]+",
                          ##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##]
        let falcon = [#"[\p{P}\$\+<=>\^~\|`]+"#, gpt2, "[0-9][0-9][0-9]"]
        // o200k (gpt-oss, llama4): tiktoken's cased-word classes (\p{Lu}… and \p{Ll}…) as llama.cpp runs them,
        // which std::regex cannot: a "cased" run is letters other than a-z, then letters other than A-Z (so
        // every non-ASCII letter counts as both, and combining marks are not letters here).
        let contraction = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
        let upper = "(?:(?=\\p{L})[^a-z])", lower = "(?:(?=\\p{L})[^A-Z])"
        let o200k = #"[^\r\n\p{L}\p{N}]?"# + upper + "*" + lower + "+" + contraction + "?|"
            + #"[^\r\n\p{L}\p{N}]?"# + upper + "+" + lower + "*" + contraction + "?|"
            + #"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
        let tekken = #"[^\r\n\p{L}\p{N}]?"# + upper + "*" + lower + "+|" + #"[^\r\n\p{L}\p{N}]?"# + upper + "+" + lower + "*|"
            + #"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
        var table: [String: PreTokenizer] = [
            "deepseek-llm": PreTokenizer(patterns: deepseekLLM),
            "default": PreTokenizer(patterns: [#"[\p{P}\$\+<=>\^~\|]+"#, gpt2, #"\p{N}+"#, "[0-9][0-9][0-9]"]),
            "qwen35": PreTokenizer(patterns: [qwen35]),
            "deepseek-coder": PreTokenizer(patterns: deepseekCoder),
            "deepseek-v3": PreTokenizer(patterns: deepseekV3),
            "falcon": PreTokenizer(patterns: falcon),
            "tekken": PreTokenizer(patterns: [tekken], ignoreMerges: true),
            // Spaces are ▁ already (Vocabulary.escapesWhitespace); only newline runs are split off.
            "gemma4": PreTokenizer(patterns: [#"[^\n]+|[\n]+"#], byteEncode: false, wholeNewlineRuns: true),
        ]
        // Families that share one expression (llama-vocab.cpp's grouped cases).
        for name in ["gpt-2", "phi-2", "jina-es", "jina-de", "mpt", "olmo", "jais"] { table[name] = PreTokenizer(patterns: [gpt2]) }
        for name in ["llama3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe"] { table[name] = PreTokenizer(patterns: [llama3], ignoreMerges: true) }
        for name in ["qwen2", "deepseek-r1-qwen", "megrez"] { table[name] = PreTokenizer(patterns: [qwen2]) }
        for name in ["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone"] { table[name] = PreTokenizer(patterns: [#"\p{N}"#, gpt2]) }
        for name in ["gpt-4o", "llama4", "minimax-m2"] { table[name] = PreTokenizer(patterns: [o200k]) }
        return table
    }()

    init(vocab: Vocabulary, pre name: String? = nil) throws(TokenizerError) {
        let key = name ?? vocab.pre
        guard let pre = Self.preTokenizers[key] else {
            let known = Self.preTokenizers.keys.sorted().joined(separator: ", ")
            throw TokenizerError("BPE pre-tokenizer '\(key)' is not supported yet (supported: \(known))")
        }
        self.vocab = vocab
        do {
            // Unicode-scalar semantics: \p{L} and \s apply to code points, as in llama.cpp, not to graphemes.
            regexes = try pre.patterns.map { try Regex(Self.escapingNonASCII($0)).matchingSemantics(.unicodeScalar) }
        } catch {
            throw TokenizerError("pre-tokenizer '\(key)': \(error)")
        }
        ignoreMerges = pre.ignoreMerges
        byteEncode = pre.byteEncode
        wholeNewlines = pre.wholeNewlineRuns
    }

    /// gemma4 takes a run of newlines that is itself a token whole (llama.cpp's fix for it).
    let wholeNewlines: Bool

    /// Writes every non-ASCII character of a pattern as `\u{…}`. Swift checks a class range's bounds by
    /// canonical equivalence, under which `ώ` (U+1F7D) equals `ώ` (U+03CE), so a range such as `Ὗ-ώ` is
    /// rejected as reversed; such a range is spelled out scalar by scalar instead (they are short).
    static func escapingNonASCII(_ pattern: String) -> String {
        let scalars = Array(pattern.unicodeScalars)
        func escape(_ s: Unicode.Scalar) -> String { s.isASCII ? String(s) : "\\u{\(String(s.value, radix: 16))}" }
        var out = ""
        var i = 0
        while i < scalars.count {
            let s = scalars[i]
            if i + 2 < scalars.count, scalars[i + 1] == "-", !s.isASCII, !scalars[i + 2].isASCII,
               s.value <= scalars[i + 2].value, Character(s) > Character(scalars[i + 2]) {
                for v in s.value...scalars[i + 2].value { if let u = Unicode.Scalar(v) { out += escape(u) } }
                i += 3
                continue
            }
            out += escape(s)
            i += 1
        }
        return out
    }

    /// GPT-2's reversible map from bytes to printable characters.
    static let byteToUnicode: [[UInt8]] = {
        var visible = Array(33...126) + Array(161...172) + Array(174...255)
        var chars = visible
        var n = 0
        for b in 0..<256 where !visible.contains(b) {
            visible.append(b)
            chars.append(256 + n)
            n += 1
        }
        var table = [[UInt8]](repeating: [], count: 256)
        for (b, c) in zip(visible, chars) { table[b] = Array(String(Character(Unicode.Scalar(UInt32(c))!)).utf8) }
        return table
    }()

    static let unicodeToByte: [UInt32: UInt8] = {
        var m: [UInt32: UInt8] = [:]
        for (b, s) in byteToUnicode.enumerated() { m[String(decoding: s, as: UTF8.self).unicodeScalars.first!.value] = UInt8(b) }
        return m
    }()

    /// The words of `text` (llama.cpp's `unicode_regex_split`).
    func words(_ text: String) -> [Substring] {
        var pieces: [Substring] = [Substring(text)]
        for re in regexes {
            var next: [Substring] = []
            for piece in pieces {
                var start = piece.startIndex
                for m in piece.matches(of: re) where !m.range.isEmpty {
                    if m.range.lowerBound > start { next.append(piece[start..<m.range.lowerBound]) }
                    next.append(piece[m.range])
                    start = m.range.upperBound
                }
                if start < piece.endIndex { next.append(piece[start...]) }
            }
            pieces = next
        }
        return pieces
    }

    private struct Bigram: Comparable {
        let left: Int, right: Int
        let rank: Int
        let text: [UInt8]
        // Max-heap order that pops the lowest rank, then the leftmost pair.
        static func < (a: Bigram, b: Bigram) -> Bool { a.rank != b.rank ? a.rank > b.rank : a.left > b.left }
    }

    func encode(_ text: [UInt8], into out: inout [Int32]) {
        let s = String(decoding: text, as: UTF8.self)
        for word in words(s) {
            let encoded = byteEncode ? Array(word.utf8).flatMap { Self.byteToUnicode[Int($0)] } : Array(word.utf8)
            if ignoreMerges || (wholeNewlines && encoded.allSatisfy { $0 == 0x0A }), let id = vocab.id(of: encoded) {
                out.append(id)
                continue
            }
            merge(encoded, into: &out)
        }
    }

    private func merge(_ word: [UInt8], into out: inout [Int32]) {
        // Symbols: UTF-8 characters of the byte-level spelling, in a linked list.
        var starts: [Int] = [], lengths: [Int] = [], prev: [Int] = [], next: [Int] = []
        var o = 0
        while o < word.count {
            let n = min(utf8Length(word[o]), word.count - o)
            starts.append(o)
            lengths.append(n)
            prev.append(starts.count - 2)
            next.append(o + n < word.count ? starts.count : -1)
            o += n
        }
        func text(_ i: Int) -> ArraySlice<UInt8> { word[starts[i]..<(starts[i] + lengths[i])] }
        var heap = Heap<Bigram>()
        func add(_ l: Int, _ r: Int) {
            guard l >= 0, r >= 0 else { return }
            let key = Array(text(l)) + [0x20] + Array(text(r))
            guard let rank = vocab.mergeRanks[key] else { return }
            heap.push(Bigram(left: l, right: r, rank: rank, text: Array(text(l)) + Array(text(r))))
        }
        for i in 1..<max(1, starts.count) { add(i - 1, i) }
        while let b = heap.pop() {
            guard lengths[b.left] > 0, lengths[b.right] > 0, Array(text(b.left)) + Array(text(b.right)) == b.text else { continue }
            lengths[b.left] += lengths[b.right]
            lengths[b.right] = 0
            next[b.left] = next[b.right]
            if next[b.right] >= 0 { prev[next[b.right]] = b.left }
            add(prev[b.left], b.left)
            add(b.left, next[b.left])
        }
        var i = starts.isEmpty ? -1 : 0
        while i != -1 {
            let piece = Array(text(i))
            if let id = vocab.id(of: piece) {
                out.append(id)
            } else {
                // Bytes no token covers: their byte-level letters, or `<0xXX>` tokens where symbols are raw UTF-8.
                for byte in piece {
                    let spelled = byteEncode ? [byte] : Array("<0x\(byte < 16 ? "0" : "")\(String(byte, radix: 16, uppercase: true))>".utf8)
                    if let id = vocab.id(of: spelled) { out.append(id) }
                }
            }
            i = next[i]
        }
    }

    /// The bytes a byte-level token stands for.
    static func decode(_ token: [UInt8]) -> [UInt8] {
        String(decoding: token, as: UTF8.self).unicodeScalars.map { unicodeToByte[$0.value] ?? 0x3F }
    }
}
