import Testing
import TestSupport
import GGUF
import JSON
import Tokenizer
@testable import Grammar

/// JSON Schemas compiled to grammars and matched over a real 151k vocabulary (Qwen2's): random walks through
/// the allowed tokens always end in JSON of the schema's shape, and the trie walk allows exactly the tokens a
/// token-by-token check allows.
struct JSONSchemaGrammarTests {
    static let tokenizer: Tokenizer = try! Tokenizer(file: GGUFFile(path: Fixtures.path("vocab/ggml-vocab-qwen2.gguf")))
    static let vocabulary = GrammarVocabulary(tokenizer: tokenizer)

    static let person: JSONValue = try! JSONValue.parse(##"""
    {"type": "object", "properties": {
       "name": {"type": "string", "maxLength": 12},
       "age": {"type": "integer", "minimum": 0, "maximum": 150},
       "role": {"enum": ["admin", "user", "guest"]},
       "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
       "active": {"type": "boolean"},
       "score": {"type": "number", "minimum": 0},
       "nick": {"type": ["string", "null"], "maxLength": 5},
       "address": {"$ref": "#/$defs/address"}},
     "required": ["name", "age", "role"],
     "$defs": {"address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"]}}}
    """##)

    /// Draws allowed tokens at random until the grammar is complete (or only the end is allowed).
    static func walk(_ m: GrammarMatcher, seed: UInt64, limit: Int = 3000) -> String? {
        var rng = SplitMix(state: seed)
        var s = m.initial
        var ids: [Int32] = []
        for _ in 0..<limit {
            let mask = m.mask(s)
            var allowed: [Int32] = []
            for (w, word) in mask.enumerated() where word != 0 {
                for b in 0..<64 where word & (1 << UInt64(b)) != 0 {
                    let t = Int32(w * 64 + b)
                    if !m.vocabulary.endOfGeneration.contains(t) { allowed.append(t) }
                }
            }
            if allowed.isEmpty || (m.isAccepting(s) && rng.next() % 4 == 0) { return m.isAccepting(s) ? tokenizer.decode(ids) : nil }
            // Prefer short tokens now and then, so the walk also ends strings and arrays.
            let t = allowed[Int(rng.next() % UInt64(allowed.count))]
            ids.append(t)
            s = m.next(s, token: t)
            if s < 0 { return nil }
        }
        return nil
    }

    @Test func randomWalksGiveJSONOfTheSchema() throws {
        let m = try GrammarMatcher(program: GrammarProgram(parsing: JSONSchemaGrammar.compile(Self.person)), vocabulary: Self.vocabulary)
        var done = 0
        for seed in 1...30 as ClosedRange<UInt64> {
            guard let text = Self.walk(m, seed: seed) else { continue }
            done += 1
            let v = try JSONValue.parse(text)
            #expect(v["name"]?.stringValue.map { $0.unicodeScalars.count <= 12 } == true, "\(text)")
            #expect(v["age"]?.intValue.map { (0...150).contains($0) } == true, "\(text)")
            #expect(["admin", "user", "guest"].contains(v["role"]?.stringValue ?? ""), "\(text)")
            if let tags = v["tags"] { #expect((tags.arrayValue?.count ?? 9) <= 3, "\(text)") }
            if let score = v["score"] { #expect((score.numberValue ?? -1) >= 0, "\(text)") }
            if let a = v["address"] { #expect(a["city"]?.stringValue != nil, "\(text)") }
            guard case .object(let fields) = v else { Issue.record("not an object: \(text)"); continue }
            let known = ["name", "age", "role", "tags", "active", "score", "nick", "address"]
            #expect(fields.allSatisfy { known.contains($0.0) }, "\(text)")
        }
        // Walks end with probability; most of them must reach the end of the object.
        #expect(done >= 20)
    }

    /// The mask from the trie walk equals checking each of the 151k tokens on its own, at states along a text.
    @Test func trieWalkEqualsTokenByTokenCheck() throws {
        let m = try GrammarMatcher(program: GrammarProgram(parsing: JSONSchemaGrammar.compile(Self.person)), vocabulary: Self.vocabulary)
        let text = #"{"name": "Zoë \"Z\"", "age": 42, "role": "user", "tags": ["a", "b"]}"#
        var s = m.initial
        var checked = 0
        for (i, b) in Array(text.utf8).enumerated() {
            if i % 9 == 0 {
                let mask = m.mask(s)
                for t in 0..<Int32(Self.vocabulary.count) {
                    let bit = mask[Int(t) >> 6] & (1 << UInt64(t & 63)) != 0
                    let direct = m.next(s, token: t) >= 0
                    if bit != direct { Issue.record("state after \(i) bytes, token \(t) \(Self.tokenizer.decode([t]).debugDescription): mask \(bit), direct \(direct)"); break }
                }
                checked += 1
            }
            s = m.next(s, byte: b)
            #expect(s >= 0, "byte \(i) of the text refused")
        }
        #expect(checked >= 5)
        #expect(m.isAccepting(s))
    }

    @Test func unsupportedSchemasAreClearErrors() {
        let cases: [(String, String)] = [
            (#"{"type": "string", "pattern": "^a+$"}"#, "keyword 'pattern' is not supported"),
            (##"{"$ref": "#/$defs/missing"}"##, "does not name an entry"),
            (#"{"type": "strung"}"#, "unknown type 'strung'"),
            (#"{"type": "integer", "minimum": -5, "maximum": 100000}"#, "bounds are not supported"),
            (#"{"type": "array", "minItems": 3, "maxItems": 1}"#, "below minItems"),
            (#"{"enum": []}"#, "non-empty array"),
            (#"{"type": "object", "properties": {"a": {"not": {}}}}"#, "#/properties/a"),
            (#"{"type": "string", "format": "email"}"#, "'email' is not supported"),
            (#"{"allOf": [{"type": "string"}, {"maxLength": 3}]}"#, "single-element allOf"),
        ]
        for (schema, message) in cases {
            do {
                let g = try JSONSchemaGrammar.compile(try JSONValue.parse(schema))
                Issue.record("\(schema) compiled to \(g)")
            } catch let e as GrammarError {
                #expect(e.message.contains(message), "\(schema): \(e.message)")
            } catch { Issue.record("\(error)") }
        }
    }

    /// A schema that refers to itself is a recursive rule: a tree of any depth matches.
    @Test func recursiveReferences() throws {
        let schema = try JSONValue.parse(##"{"$ref": "#/$defs/node", "$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["v"]}}}"##)
        let m = try GrammarMatcher(program: GrammarProgram(parsing: JSONSchemaGrammar.compile(schema)), vocabulary: Self.vocabulary)
        var s = m.initial
        for b in Array(#"{"v": 1, "kids": [{"v": 2, "kids": [{"v": 3}]}, {"v": 4}]}"#.utf8) { s = m.next(s, byte: b) }
        #expect(m.isAccepting(s))
        var bad = m.initial
        for b in Array(#"{"kids": []}"#.utf8) { bad = m.next(bad, byte: b) }
        #expect(bad == GrammarMatcher.dead)  // "v" is required and comes first
    }
}
