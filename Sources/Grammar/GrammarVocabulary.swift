/// A model's vocabulary as the grammar sees it: the bytes each text token stands for, in a trie, so the tokens a
/// grammar state allows are found in one walk that abandons a prefix as soon as the grammar refuses it — on a
/// 150k vocabulary most of the trie is never visited for most states.
///
/// Special (control) tokens are not text: they match only a `<…>` reference in the grammar, never a literal or a
/// class, so a JSON string can never swallow `<|im_end|>`. End-of-generation tokens are allowed exactly where the
/// grammar is complete.
public final class GrammarVocabulary: @unchecked Sendable {  // immutable after init
    public let count: Int
    let endOfGeneration: [Int32]
    /// Every token's text (special ones included), for `<|channel|>`-style references.
    let idsByText: [String: Int32]
    // The trie, in compressed rows: node n's children are childByte/childNode[childStart[n]..<childStart[n+1]],
    // the tokens ending at n are tokenIDs[tokenStart[n]..<tokenStart[n+1]]. Node 0 is the root.
    // Kept as owned buffers: the mask walk reads them millions of times a second, without bounds or
    // exclusivity checks.
    let childStart: UnsafeMutableBufferPointer<Int32>
    let childByte: UnsafeMutableBufferPointer<UInt8>
    let childNode: UnsafeMutableBufferPointer<Int32>
    let tokenStart: UnsafeMutableBufferPointer<Int32>
    let tokenIDs: UnsafeMutableBufferPointer<Int32>
    public var nodeCount: Int { childStart.count - 1 }

    deinit {
        for b in [childStart, childNode, tokenStart, tokenIDs] { b.deallocate() }
        childByte.deallocate()
    }

    static func owned<T>(_ a: [T]) -> UnsafeMutableBufferPointer<T> {
        let b = UnsafeMutableBufferPointer<T>.allocate(capacity: max(1, a.count))
        _ = b.initialize(from: a)
        return UnsafeMutableBufferPointer(rebasing: b[0..<a.count])
    }

    /// `pieces[i]`: the bytes text token i stands for, nil for a token that is never text (control, unused,
    /// end of generation, empty); `texts[i]`: its text as written in the vocabulary.
    public init(pieces: [[UInt8]?], texts: [String], endOfGeneration: Set<Int32>) {
        count = pieces.count
        self.endOfGeneration = endOfGeneration.filter { $0 >= 0 && Int($0) < pieces.count }.sorted()
        var byText: [String: Int32] = [:]
        for (i, t) in texts.enumerated() where byText[t] == nil { byText[t] = Int32(i) }
        idsByText = byText
        // Sorted pieces share prefixes with their neighbours: the trie grows along a path that is cut back to
        // the common prefix with the previous piece.
        let order = pieces.indices.filter { pieces[$0].map { !$0.isEmpty } ?? false && !endOfGeneration.contains(Int32($0)) }
            .sorted { pieces[$0]!.lexicographicallyPrecedes(pieces[$1]!) }
        var children: [[(UInt8, Int32)]] = [[]]
        var tokens: [[Int32]] = [[]]
        var path: [Int32] = [0]
        var previous: [UInt8] = []
        for id in order {
            let p = pieces[id]!
            var common = 0
            while common < p.count, common < previous.count, p[common] == previous[common] { common += 1 }
            path.removeLast(path.count - 1 - common)
            for b in p[common...] {
                let n = Int32(children.count)
                children.append([])
                tokens.append([])
                children[Int(path.last!)].append((b, n))
                path.append(n)
            }
            tokens[Int(path.last!)].append(Int32(id))
            previous = p
        }
        var cs: [Int32] = [0], cb: [UInt8] = [], cn: [Int32] = [], ts: [Int32] = [0], ti: [Int32] = []
        cs.reserveCapacity(children.count + 1)
        for n in children.indices {
            for (b, c) in children[n] { cb.append(b); cn.append(c) }
            cs.append(Int32(cb.count))
            ti += tokens[n]
            ts.append(Int32(ti.count))
        }
        childStart = Self.owned(cs)
        childByte = Self.owned(cb)
        childNode = Self.owned(cn)
        tokenStart = Self.owned(ts)
        tokenIDs = Self.owned(ti)
    }

    /// The id of the token written `text` (a special token such as `<|channel|>`), if the vocabulary has one.
    public func id(ofText text: String) -> Int32? { idsByText[text] }
}

import Tokenizer

extension GrammarVocabulary {
    /// A tokenizer's vocabulary: text tokens by the bytes they decode to (byte tokens as their byte, SentencePiece's
    /// ▁ as a space), control and unused tokens as special.
    public convenience init(tokenizer: Tokenizer) {
        let v = tokenizer.vocab
        let pieces: [[UInt8]?] = (0..<v.count).map { i in
            switch v.types[i] {
            case .control, .unknown, .unused: return nil
            default: return tokenizer.piece(Int32(i))
            }
        }
        self.init(pieces: pieces, texts: v.tokens.map { String(decoding: $0, as: UTF8.self) }, endOfGeneration: v.endOfGeneration)
    }
}
