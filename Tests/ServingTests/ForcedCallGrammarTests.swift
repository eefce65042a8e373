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
                let parsed = format.forcedCallFormat(tools: tools).parse(text, textParameters: OutputFormat.textParameters(tools))
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

    static let writeFile = try! JSONValue.parse(#"{"type": "object", "properties": {"path": {"type": "string", "maxLength": 12}, "content": {"type": "string"}, "lines": {"type": "integer"}, "mode": {"enum": ["w", "a"]}}, "required": ["path", "content"]}"#)

    static func accepts(_ m: GrammarMatcher, _ text: String) -> Bool {
        var s = m.initial
        for b in text.utf8 { s = m.next(s, token: Int32(b)); if s == GrammarMatcher.dead { return false } }
        return m.isAccepting(s)
    }

    /// The text-parameter families are forced in their own syntax: values unquoted, free text up to the closing
    /// tag (a `<` or a part of the tag inside is fine, the whole tag is not), and every walk reads back as a call
    /// whose strings stay strings.
    @Test(arguments: ["qwen3-coder", "glm-4.5", "minimax-m2"])
    func textParameterFamiliesAreForcedInTheirOwnSyntax(family: String) throws {
        let format = try #require(OutputFormat.all.first { $0.name == family })
        let tools = [(name: "write_file", parameters: Self.writeFile)]
        #expect(format.forcedCallFormat(tools: tools).name == family)
        let grammar = try format.callGrammar(tools: tools, parallel: false, tokenizer: Self.tokenizer)
        let m = try GrammarMatcher(program: GrammarProgram(parsing: grammar), vocabulary: Self.bytes)
        guard case .parameters(let p) = format.calls else { Issue.record("\(family) has no parameter syntax"); return }
        let nl = "\n"
        func param(_ k: String, _ v: String) -> String { p.keyOpen + k + p.keyClose + (p.valueOpen.isEmpty ? "" : "\n" + p.valueOpen) + nl + v + nl + p.valueClose + "\n" }
        func call(_ content: String) -> String {
            p.blockOpen + (p.invokeOpen.isEmpty ? "" : "\n" + p.invokeOpen) + "write_file" + p.nameEnd + (p.nameEnd.hasSuffix("\n") ? "" : "\n")
                + param("path", "0123") + param("content", content) + param("lines", "12") + (p.invokeClose.isEmpty ? "" : p.invokeClose + "\n") + p.blockClose
        }
        let code = "if a < b {\n  x = \"" + String(p.valueClose.dropLast(2)) + "\"\n}"
        #expect(Self.accepts(m, call(code)), "\(grammar)\n\(call(code))")
        let parsed = format.parse(call(code), textParameters: OutputFormat.textParameters(tools))
        #expect(parsed.toolCalls == [ToolCall(name: "write_file", arguments: .object([("path", .string("0123")), ("content", .string(code)), ("lines", .int(12))]))], "\(parsed)")
        #expect(!Self.accepts(m, call("a" + p.valueClose + "b")), "the closing tag cannot be inside a value")
        #expect(!Self.accepts(m, call("x").replacingOccurrences(of: "0123", with: "0123456789abc")), "path is at most 12 characters")
        // Random walks (bytes at random rarely spell a closing tag, so the content is bounded for them).
        let bounded = [(name: "write_file", parameters: try JSONValue.parse(Self.writeFile.render().replacingOccurrences(of: #""content":{"type":"string"}"#,
                                                                                                                     with: #""content":{"type":"string","maxLength":40}"#)))]
        #expect(bounded[0].parameters["properties"]?["content"]?["maxLength"] == .int(40))
        let walker = try GrammarMatcher(program: GrammarProgram(parsing: format.callGrammar(tools: bounded, parallel: false, tokenizer: Self.tokenizer)), vocabulary: Self.bytes)
        var walked = 0
        for seed in 1...12 as ClosedRange<UInt64> {
            guard let text = Self.walk(walker, seed: seed) else { continue }
            walked += 1
            let back = format.parse(text, textParameters: OutputFormat.textParameters(tools))
            let args = back.toolCalls.first?.arguments
            #expect(back.toolCalls.count == 1 && back.toolCalls[0].name == "write_file", "\(text.debugDescription) → \(back)")
            #expect((args?["path"]?.stringValue?.count ?? 99) <= 12 && args?["content"]?.stringValue != nil, "\(text.debugDescription) → \(back)")
            if let lines = args?["lines"] { #expect(lines.intValue != nil, "\(text.debugDescription)") }
            if let mode = args?["mode"] { #expect(["w", "a"].contains(mode.stringValue ?? ""), "\(text.debugDescription)") }
        }
        #expect(walked >= 6, "\(walked) walks ended")
        // A parameter whose text cannot be held to its schema: Hermes' syntax instead.
        let dated = try JSONValue.parse(#"{"type": "object", "properties": {"day": {"type": "string", "format": "date"}}}"#)
        #expect(format.forcedCallFormat(tools: [(name: "f", parameters: dated)]).name == "hermes")
    }

    /// A model that reasons in tags may think before a constrained answer: the block is optional (required to
    /// close when the prompt opened it), holds any text but its close tag, and the answer after it is still held
    /// to the grammar. The parse then splits reasoning from the answer.
    @Test func reasoningMayComeFirst() throws {
        let qwen3 = try #require(OutputFormat.all.first { $0.name == "qwen3" })
        let schema = try JSONSchemaGrammar.compile(JSONValue.parse(#"{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}"#))
        #expect(OutputFormat.hermes.reasoningFirst(schema, reasoningOpen: false) == schema)
        let free = try GrammarMatcher(program: GrammarProgram(parsing: qwen3.reasoningFirst(schema, reasoningOpen: false)), vocabulary: Self.bytes)
        let thought = "<think>is a < b? </thin no</think>\n\n{\"a\": 1}"
        #expect(Self.accepts(free, thought) && Self.accepts(free, #"{"a": 1}"#))
        #expect(!Self.accepts(free, #"<think>x</think>y{"a": 1}"#) && !Self.accepts(free, #"<think>x</think></think>{"a": 1}"#))
        let parsed = qwen3.parse(thought)
        #expect(parsed.reasoning == "is a < b? </thin no" && parsed.content == #"{"a": 1}"#, "\(parsed)")
        let opened = try GrammarMatcher(program: GrammarProgram(parsing: qwen3.reasoningFirst(schema, reasoningOpen: true)), vocabulary: Self.bytes)
        #expect(Self.accepts(opened, "still thinking</think>\n{\"a\": 2}") && !Self.accepts(opened, #"{"a": 2}"#))
        // A forced call too.
        let call = try qwen3.callGrammar(tools: [(name: "get_time", parameters: Self.clock)], parallel: false, tokenizer: Self.tokenizer)
        let m = try GrammarMatcher(program: GrammarProgram(parsing: qwen3.reasoningFirst(call, reasoningOpen: false)), vocabulary: Self.bytes)
        #expect(Self.accepts(m, "<think>time?</think>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}\n</tool_call>"))
    }
}
