import Testing
import TestSupport
import GGUF
import JSON
import Tokenizer
@testable import Grammar

/// The matcher on small vocabularies where every allowed token can be listed by hand.
struct GrammarMatcherTests {
    /// Tokens 0… as texts; the last one ends generation.
    static func vocabulary(_ texts: [String], eog: String = "</s>") -> GrammarVocabulary {
        let all = texts + [eog]
        return GrammarVocabulary(pieces: texts.map { Array($0.utf8) } + [nil], texts: all, endOfGeneration: [Int32(texts.count)])
    }

    static func allowed(_ m: GrammarMatcher, _ state: Int32) -> [Int32] {
        let mask = m.mask(state)
        return (0..<Int32(m.vocabulary.count)).filter { mask[Int($0) >> 6] & (1 << UInt64($0 & 63)) != 0 }
    }

    @Test func masksFollowTheGrammar() throws {
        let texts = ["a", "b", "ab", "ba", "abc", "c", "{", "}", "{\"", "é", "\u{00C3}"]
        let v = Self.vocabulary(texts)
        let m = try GrammarMatcher(program: GrammarProgram(parsing: #"root ::= "a" ("b" | "c")* "c""#), vocabulary: v)
        let eog = Int32(texts.count)
        var s = m.initial
        // "a", "ab", "abc" start a match; "abc" is complete but more can follow, so the end is not yet allowed.
        #expect(Self.allowed(m, s) == [0, 2, 4])
        s = m.next(s, token: 2)  // "ab"
        #expect(Self.allowed(m, s) == [1, 5])  // "b", "c" ("ba" would need another "a")
        s = m.next(s, token: 5)
        #expect(m.isAccepting(s))
        #expect(Self.allowed(m, s) == [1, 5, eog])
        #expect(m.next(s, token: 0) == GrammarMatcher.dead)
        #expect(Self.allowed(m, GrammarMatcher.dead) == [eog])
    }

    /// A class over code points matches a character split over two tokens, and not half of another.
    @Test func multiByteCharactersAcrossTokens() throws {
        // "é" is C3 A9; token 0 is its first byte alone, token 1 the second, token 2 all of it, token 3 "è" (C3 A8).
        let v = GrammarVocabulary(pieces: [[0xC3], [0xA9], [0xC3, 0xA9], [0xC3, 0xA8], Array("x".utf8), nil], texts: ["a", "b", "c", "d", "x", "</s>"],
                                  endOfGeneration: [5])
        let m = try GrammarMatcher(program: GrammarProgram(parsing: #"root ::= [é-é] "x""#), vocabulary: v)
        #expect(Self.allowed(m, m.initial) == [0, 2])
        let half = m.next(m.initial, token: 0)
        #expect(Self.allowed(m, half) == [1])
        #expect(Self.allowed(m, m.next(half, token: 1)) == [4])
        // A negated class: anything but a quote, in any script.
        let n = try GrammarMatcher(program: GrammarProgram(parsing: #"root ::= [^"]+"#), vocabulary: v)
        #expect(Self.allowed(n, n.initial) == [0, 2, 3, 4])
    }

    /// Special tokens match `<…>` references only, never text: a free-text class cannot swallow them.
    @Test func specialTokensOnlyByReference() throws {
        let v = GrammarVocabulary(pieces: [Array("hi".utf8), nil, nil], texts: ["hi", "<|call|>", "</s>"], endOfGeneration: [2])
        let free = try GrammarMatcher(program: GrammarProgram(parsing: "root ::= [^\\x00]*"), vocabulary: v)
        #expect(Self.allowed(free, free.initial) == [0, 2])
        let call = try GrammarMatcher(program: GrammarProgram(parsing: "root ::= \"hi\" <|call|>"), vocabulary: v)
        let s = call.next(call.initial, token: 0)
        #expect(Self.allowed(call, s) == [1])
        #expect(call.isComplete(call.next(s, token: 1)))
        let byID = try GrammarMatcher(program: GrammarProgram(parsing: "root ::= <[1]>"), vocabulary: v)
        #expect(Self.allowed(byID, byID.initial) == [1])
        #expect(throws: GrammarError.self) { _ = try GrammarMatcher(program: GrammarProgram(parsing: "root ::= <|nope|>"), vocabulary: v) }
    }

    @Test func repetitionBounds() throws {
        let v = Self.vocabulary(["x", "xx", "xxx", "y"])
        let m = try GrammarMatcher(program: GrammarProgram(parsing: #"root ::= "x"{2,3} "y""#), vocabulary: v)
        #expect(Self.allowed(m, m.initial) == [0, 1, 2])
        let s = m.next(m.initial, token: 1)
        #expect(Self.allowed(m, s) == [0, 3])
        #expect(m.next(m.next(m.initial, token: 2), token: 0) == GrammarMatcher.dead)
    }

    @Test func badGrammarsAreClearErrors() {
        let cases: [(String, String)] = [
            ("root ::= a\na ::= a \"x\" | \"y\"", "left-recursive"),
            ("root ::= missing", "'missing' is used but not defined"),
            ("start ::= \"x\"", "no 'root' rule"),
            ("root ::= \"x", "unterminated literal"),
            ("root ::= [z-a]", "backwards"),
            ("root ::= \"x\"{3,1}", "backwards"),
            ("root ::= \"a\"\nroot ::= \"b\"", "defined twice"),
            ("root ::= (\"a\" ", "expected ')'"),
        ]
        for (text, message) in cases {
            #expect(throws: GrammarError.self, "\(text)") { try GrammarProgram(parsing: text) }
            do { _ = try GrammarProgram(parsing: text) } catch { #expect(error.message.contains(message), "\(text): \(error.message)") }
        }
    }

    /// Comments, multi-line groups and escapes as llama.cpp's grammars write them.
    @Test func parsesLlamaCppStyle() throws {
        let text = """
        # a list of words
        root ::= word ("," ws word)*   # trailing comment
        word ::= [a-zA-Z\\u00e9]+ | "\\"" (
            [^"\\\\] |
            "\\\\" ["\\\\]
          )* "\\""
        ws ::= [ \\t\\n]?
        """
        let p = try GrammarProgram(parsing: text)
        let v = Self.vocabulary(["ab", ",", " ", "\"", "x\"", "é"])
        let m = try GrammarMatcher(program: p, vocabulary: v)
        var s = m.initial
        for t: Int32 in [0, 1, 2, 3, 4] { s = m.next(s, token: t) }
        #expect(m.isAccepting(s))
    }

    /// A grammar cache over its byte limit sheds masks, then whole caches, between steps, and what it finds again
    /// is what it found before: the limit costs time, never a different answer.
    @Test func theCacheKeepsToItsByteLimit() throws {
        var texts: [String] = ["\"", "{", "}", ":", ","]
        for i in 0..<600 { texts.append(String(Character(UnicodeScalar(UInt8(97 + i % 26)))) + String(i % 10)) }
        let v = Self.vocabulary(texts)
        let grammars = [#"root ::= "\"" [a-z0-9]{0,120} "\"""#, #"root ::= "{" ([a-m] [0-9] ","){0,40} "}""#, #"root ::= ([n-z] [0-9]){1,60} ":""#]
        /// 50 steps, each taking the allowed token at a seeded position: the allowed lists met on the way.
        func walk(_ cache: GrammarCache, _ g: String, check: Bool) throws -> [[Int32]] {
            let m = try cache.matcher(for: g)
            var s = m.initial, seen: [[Int32]] = []
            for step in 0..<50 {
                let allowed = Self.allowed(m, s).filter { $0 < Int32(texts.count) }
                seen.append(allowed)
                guard !allowed.isEmpty else { break }
                s = m.next(s, token: allowed[(step * 7) % allowed.count])
                if check {
                    let epoch = m.epoch
                    cache.trim()
                    // The state number is void once the caches were cleared: found again from the walk so far.
                    if m.epoch != epoch { return seen + (try walkAgain(m, seen: seen)) }
                }
            }
            return seen
        }
        /// After a full shed: replay the tokens taken so far, then go on.
        func walkAgain(_ m: GrammarMatcher, seen: [[Int32]]) throws -> [[Int32]] {
            var s = m.initial
            for (step, allowed) in seen.enumerated() { s = m.next(s, token: allowed[(step * 7) % allowed.count]) }
            var more: [[Int32]] = []
            for step in seen.count..<50 {
                let allowed = Self.allowed(m, s).filter { $0 < Int32(texts.count) }
                more.append(allowed)
                guard !allowed.isEmpty else { break }
                s = m.next(s, token: allowed[(step * 7) % allowed.count])
            }
            return more
        }
        let free = GrammarCache(vocabulary: { v })
        let expected = try grammars.map { try walk(free, $0, check: false) }
        let limit = free.bytes / 3
        let tight = GrammarCache(byteLimit: limit, vocabulary: { v })
        for round in 0..<2 {
            for (k, g) in grammars.enumerated() {
                #expect(try walk(tight, g, check: true) == expected[k], "round \(round), grammar \(k)")
                tight.trim()
                #expect(tight.bytes <= limit, "\(tight.bytes) bytes held against a limit of \(limit) (\(free.bytes) unbounded)")
            }
        }
        #expect(try grammars.contains { try tight.matcher(for: $0).epoch > 0 }, "the limit made a cache start again")
    }
}
