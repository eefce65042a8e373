import GGUF

/// Text ↔ token ids for a model, built from its GGUF `tokenizer.*` metadata, behaving as llama.cpp's
/// `llama_tokenize` / `llama_token_to_piece`.
public struct Tokenizer: Sendable {
    public let vocab: Vocabulary
    private let special: [(Int32, [UInt8])]
    private let specialWithControl: [(Int32, [UInt8])]
    private let bpe: BPETokenizer?

    public init(file: GGUFFile) throws(TokenizerError) {
        vocab = try Vocabulary(file: file)
        special = vocab.specialTokens(parseSpecial: false)
        specialWithControl = vocab.specialTokens(parseSpecial: true)
        do {
            bpe = vocab.model == .bpe ? try BPETokenizer(vocab: vocab) : nil
        } catch {
            throw TokenizerError("\(file.path): \(error)")
        }
    }

    public var bos: Int32? { vocab.bos }
    public var eos: Int32? { vocab.eos }

    /// Tokenizes `text`. `addSpecial` adds BOS (and EOS) as the model asks; `parseSpecial` turns control-token
    /// texts such as `<s>` in the input into those tokens instead of spelling them out.
    public func encode(_ text: String, addSpecial: Bool = true, parseSpecial: Bool = false) -> [Int32] {
        encode(bytes: Array(text.utf8), addSpecial: addSpecial, parseSpecial: parseSpecial)
    }

    public func encode(bytes: [UInt8], addSpecial: Bool = true, parseSpecial: Bool = false) -> [Int32] {
        var out: [Int32] = []
        if addSpecial, vocab.addBOS, let bos = vocab.bos { out.append(bos) }
        var prevSpecial = true  // a space is prefixed to the first text fragment
        for fragment in partition(bytes, parseSpecial: parseSpecial) {
            switch fragment {
            case .token(let id):
                out.append(id)
                prevSpecial = true
            case .text(let raw):
                if let bpe {
                    bpe.encode(vocab.escapesWhitespace ? escapeWhitespace(raw) : raw, into: &out)
                } else {
                    var t: [UInt8] = (vocab.addSpacePrefix && prevSpecial) ? [0x20] : []
                    t += raw
                    SPMTokenizer(vocab: vocab).encode(escapeWhitespace(t), into: &out)
                }
                prevSpecial = false
            }
        }
        if addSpecial, vocab.addEOS, let eos = vocab.eos { out.append(eos) }
        return out
    }

    enum Fragment { case text([UInt8]), token(Int32) }

    /// Splits raw text on special-token texts (llama.cpp's `tokenizer_st_partition`).
    func partition(_ text: [UInt8], parseSpecial: Bool) -> [Fragment] {
        var fragments: [Fragment] = text.isEmpty ? [] : [.text(text)]
        for (id, pattern) in (parseSpecial ? specialWithControl : special) {
            var next: [Fragment] = []
            for f in fragments {
                guard case .text(let t) = f, t.count >= pattern.count else {
                    next.append(f)
                    continue
                }
                var start = 0, i = 0
                while i + pattern.count <= t.count {
                    if t[i] == pattern[0] && t[i..<(i + pattern.count)].elementsEqual(pattern) {
                        if i > start { next.append(.text(Array(t[start..<i]))) }
                        next.append(.token(id))
                        i += pattern.count
                        start = i
                    } else {
                        i += 1
                    }
                }
                if start < t.count { next.append(.text(Array(t[start...]))) }
            }
            fragments = next
        }
        return fragments
    }

    /// SentencePiece writes spaces as U+2581 "▁".
    func escapeWhitespace(_ t: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(t.count + t.count / 4)
        for b in t {
            if b == 0x20 { out += [0xE2, 0x96, 0x81] } else { out.append(b) }
        }
        return out
    }

    /// The bytes a token stands for. Control tokens render as nothing unless `special`.
    public func piece(_ id: Int32, special: Bool = false) -> [UInt8] {
        guard id >= 0 && Int(id) < vocab.count else { return [] }
        let i = Int(id)
        switch vocab.types[i] {
        case .control, .unknown:
            return special ? vocab.tokens[i] : []
        case .byte:
            let t = vocab.tokens[i]
            // "<0xAB>"
            if t.count == 6, let v = UInt8(String(decoding: t[3..<5], as: UTF8.self), radix: 16) { return [v] }
            return t
        default:
            if let bpe, bpe.byteEncode { return BPETokenizer.decode(vocab.tokens[i]) }
            var out: [UInt8] = []
            var j = 0
            let t = vocab.tokens[i]
            while j < t.count {
                if j + 2 < t.count, t[j] == 0xE2, t[j + 1] == 0x96, t[j + 2] == 0x81 {
                    out.append(0x20)
                    j += 3
                } else {
                    out.append(t[j])
                    j += 1
                }
            }
            return out
        }
    }

    /// Text of a token sequence (byte tokens joined before decoding, so split UTF-8 characters come out whole).
    public func decode(_ ids: [Int32], special: Bool = false) -> String {
        String(decoding: ids.flatMap { piece($0, special: special) }, as: UTF8.self)
    }

    /// Whether generation should stop at this token (end of sequence or end of turn).
    public func isEndOfGeneration(_ id: Int32) -> Bool { vocab.endOfGeneration.contains(id) }
}
