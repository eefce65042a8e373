/// SentencePiece-style tokenization (`tokenizer.ggml.model = llama`), as llama.cpp's `llm_tokenizer_spm`:
/// start from UTF-8 characters, repeatedly merge the adjacent pair whose merged text is the highest-scoring
/// vocabulary entry (ties to the left), then spell anything left outside the vocabulary as byte tokens.
struct SPMTokenizer {
    let vocab: Vocabulary

    private struct Symbol {
        var start: Int
        var length: Int
        var prev: Int
        var next: Int
    }

    private struct Bigram: Comparable {
        let left: Int, right: Int
        let score: Float
        let size: Int
        // Max-heap order: higher score first, then the leftmost pair.
        static func < (a: Bigram, b: Bigram) -> Bool {
            a.score != b.score ? a.score < b.score : a.left > b.left
        }
    }

    func encode(_ text: [UInt8], into out: inout [Int32]) {
        if text.isEmpty { return }
        var symbols: [Symbol] = []
        var offset = 0
        while offset < text.count {
            let n = min(utf8Length(text[offset]), text.count - offset)
            symbols.append(Symbol(start: offset, length: n, prev: symbols.count - 1, next: offset + n < text.count ? symbols.count + 1 : -1))
            offset += n
        }
        var heap = Heap<Bigram>()
        var revMerge: [[UInt8]: (Int, Int)] = [:]

        func tryAdd(_ left: Int, _ right: Int) {
            guard left >= 0, right >= 0 else { return }
            let l = symbols[left], r = symbols[right]
            let piece = Array(text[l.start..<(l.start + l.length + r.length)])
            guard let id = vocab.id(of: piece) else { return }
            heap.push(Bigram(left: left, right: right, score: vocab.scores[Int(id)], size: piece.count))
            revMerge[piece] = (left, right)
        }

        for i in 1..<symbols.count { tryAdd(i - 1, i) }
        while let b = heap.pop() {
            let l = symbols[b.left], r = symbols[b.right]
            // Skip pairs whose symbols have changed since the pair was queued.
            if l.length == 0 || r.length == 0 || l.length + r.length != b.size { continue }
            symbols[b.left].length += r.length
            symbols[b.right].length = 0
            symbols[b.left].next = r.next
            if r.next >= 0 { symbols[r.next].prev = b.left }
            tryAdd(symbols[b.left].prev, b.left)
            tryAdd(b.left, symbols[b.left].next)
        }

        func resegment(_ s: Symbol) {
            let piece = Array(text[s.start..<(s.start + s.length)])
            if let id = vocab.id(of: piece) {
                out.append(id)
                return
            }
            if let (a, b) = revMerge[piece] {
                resegment(symbols[a])
                resegment(symbols[b])
                return
            }
            for byte in piece { out.append(byteToken(byte)) }
        }
        var i = 0
        while i != -1 {
            resegment(symbols[i])
            i = symbols[i].next
        }
    }

    /// `<0xAB>`, or the unknown token for a vocabulary without byte tokens.
    func byteToken(_ byte: UInt8) -> Int32 {
        let hex = Array("0123456789ABCDEF".utf8)
        let name: [UInt8] = Array("<0x".utf8) + [hex[Int(byte >> 4)], hex[Int(byte & 15)]] + [UInt8(ascii: ">")]
        return vocab.id(of: name) ?? vocab.unknown ?? 0
    }
}

/// Bytes in a UTF-8 sequence, from its first byte (llama.cpp's `unicode_len_utf8`).
func utf8Length(_ first: UInt8) -> Int {
    let lookup = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4]
    return lookup[Int(first >> 4)]
}

/// A binary max-heap.
struct Heap<T: Comparable> {
    private var items: [T] = []

    mutating func push(_ x: T) {
        items.append(x)
        var i = items.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if !(items[p] < items[i]) { break }
            items.swapAt(p, i)
            i = p
        }
    }

    mutating func pop() -> T? {
        guard !items.isEmpty else { return nil }
        items.swapAt(0, items.count - 1)
        let top = items.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < items.count && items[m] < items[l] { m = l }
            if r < items.count && items[m] < items[r] { m = r }
            if m == i { break }
            items.swapAt(i, m)
            i = m
        }
        return top
    }
}
