import GGUF
import Grammar
import JSON
@testable import Serving
import Testing
import TestSupport
import Tokenizer

/// A forced call's grammar, per family with a call syntax: every text it lets a model write is read back by that
/// family's own parser as calls to the offered tools, with arguments of their schemas. Texts are drawn by random
/// walks over a byte vocabulary (each byte a token), so every path through the grammar can come up.
@Suite struct ForcedCallGrammarTests {
    static let tokenizer = try! Tokenizer(file: GGUFFile(path: Fixtures.shippedModel))
    /// Token i < 256 is byte i; the last token ends generation.
    static let bytes = GrammarVocabulary(pieces: (0..<256).map { [UInt8($0)] } + [nil], texts: (0..<256).map { "b\($0)" } + ["</s>"],
                                         endOfGeneration: [256])

    static let weather = try! JSONValue.parse(#"{"type": "object", "properties": {"city": {"type": "string", "maxLength": 6}, "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"]}"#)
    static let clock = try! JSONValue.parse(#"{"type": "object", "properties": {"zone": {"type": "string", "maxLength": 4}}, "required": ["zone"]}"#)

    static func walk(_ m: GrammarMatcher, seed: UInt64) -> String? {
        var rng = SplitMix(state: seed)
        var s = m.initial
        var out: [UInt8] = []
        for _ in 0..<2000 {
            let mask = m.mask(s)
            let allowed = (0..<256).filter { mask[$0 >> 6] & (1 << UInt64($0 & 63)) != 0 }
            if allowed.isEmpty || (m.isAccepting(s) && rng.next() % 3 == 0) { return m.isAccepting(s) ? String(decoding: out, as: UTF8.self) : nil }
            let b = allowed[Int(rng.next() % UInt64(allowed.count))]
            out.append(UInt8(b))
            s = m.next(s, token: Int32(b))
        }
        return nil
    }

    @Test(arguments: OutputFormat.all.filter(\.hasToolCalls).map(\.name))
    func forcedCallsParseBackAsCalls(family: String) throws {
        let format = try #require(OutputFormat.all.first { $0.name == family })
        let tools = [(name: "get_weather", parameters: Self.weather), (name: "get_time", parameters: Self.clock)]
        for parallel in [false, true] {
            let grammar = try format.callGrammar(tools: tools, parallel: parallel, tokenizer: Self.tokenizer)
            let m = try GrammarMatcher(program: GrammarProgram(parsing: grammar), vocabulary: Self.bytes)
            var walked = 0
            for seed in 1...12 as ClosedRange<UInt64> {
                guard let text = Self.walk(m, seed: seed) else { continue }
                walked += 1
                let parsed = format.forcedCallFormat.parse(text)
                #expect(!parsed.toolCalls.isEmpty && (parallel || parsed.toolCalls.count == 1), "\(family): \(text.debugDescription) → \(parsed)")
                #expect(parsed.content.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(family): \(text.debugDescription) → \(parsed)")
                for call in parsed.toolCalls {
                    if call.name == "get_weather" {
                        #expect(call.arguments["city"]?.stringValue != nil && ["c", "f"].contains(call.arguments["unit"]?.stringValue ?? ""), "\(text)")
                    } else {
                        #expect(call.name == "get_time" && (call.arguments["zone"]?.stringValue?.count ?? 9) <= 4, "\(text)")
                    }
                }
            }
            #expect(walked >= 6, "\(family): \(walked) walks ended")
        }
    }
}
