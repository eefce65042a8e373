import ChatTemplate
import Foundation
import JSON
@testable import Serving
import Testing
import TestSupport

/// An answer read as it is generated adds up to what the whole answer parses to, in every family: the templates'
/// own renderings of answers with calls (and reasoning) and what the other families' models write, fed a character
/// at a time, in uneven pieces and whole. And it goes out early: calls as they close, reasoning as it is written.
@Suite struct AnswerStreamTests {
    /// What a client assembles from the events.
    struct Assembled: Equatable, CustomStringConvertible {
        var content = "", reasoning = "", calls: [ToolCall] = []
        var description: String { "content \(content.debugDescription), reasoning \(reasoning.debugDescription), calls \(calls)" }
    }

    static func reading(_ format: OutputFormat, parallel: Bool = true, open: Bool = false) -> HTTPAPI.OutputReading {
        HTTPAPI.OutputReading(format: format, reasoningOpen: open, parallel: parallel)
    }

    static func format(_ name: String) throws -> OutputFormat { try #require(OutputFormat.all.first { $0.name == name }) }

    /// The events of `pieces` (in order, then the end), assembled as a client does; the events' own order checked.
    static func stream(_ pieces: [String], _ reading: HTTPAPI.OutputReading) -> (Assembled, [AnswerStream.Event]) {
        var s = reading.stream()
        var events: [AnswerStream.Event] = []
        for p in pieces { events += s.feed(p) }
        events += s.finish()
        var out = Assembled()
        var arguments: [String] = []
        for e in events {
            switch e {
            case .reasoning(let t): out.reasoning += t
            case .content(let t): out.content += t
            case .callStart(let i, let name, let id):
                #expect(i == out.calls.count, "calls are numbered in order")
                out.calls.append(ToolCall(name: name, arguments: .null, id: id))
                arguments.append("")
            case .arguments(let i, let f):
                #expect(i == out.calls.count - 1, "arguments belong to the call last started")
                arguments[i] += f
            }
        }
        for i in out.calls.indices { out.calls[i].arguments = (try? JSONValue.parse(arguments[i])) ?? .string(arguments[i]) }
        return (out, events)
    }

    static func expected(_ text: String, _ reading: HTTPAPI.OutputReading) -> Assembled {
        let p = reading.parse(text, counting: false)
        return Assembled(content: p.content, reasoning: p.reasoning ?? "", calls: p.toolCalls)
    }

    /// One character at a time, uneven pieces of 1…7, and whole.
    static func splits(_ text: String) -> [[String]] {
        var uneven: [String] = [], rest = Substring(text), n = 1
        while !rest.isEmpty { uneven.append(String(rest.prefix(n))); rest = rest.dropFirst(n); n = n % 7 + 1 }
        return [text.map(String.init), uneven, [text]]
    }

    static func check(_ text: String, _ reading: HTTPAPI.OutputReading, calls: Int? = nil, sourceLocation: SourceLocation = #_sourceLocation) {
        let want = expected(text, reading)
        if let calls { #expect(want.calls.count == calls, "the parse itself: \(want) from \(text.debugDescription)", sourceLocation: sourceLocation) }
        for pieces in splits(text) {
            let (got, _) = stream(pieces, reading)
            #expect(got == want, "\(pieces.count) pieces of \(text.debugDescription)", sourceLocation: sourceLocation)
        }
    }

    static let templated = ["Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B", "deepseek-ai-DeepSeek-V3.1", "mistralai-Mistral-Nemo-Instruct-2407",
                            "meta-llama-Llama-3.1-8B-Instruct", "openai-gpt-oss-120b"]

    /// Every shared template that renders calls: its rendering of an answer with calls, streamed, is its parse.
    @Test(arguments: templated) func streamedRenderingsAreTheirParse(file: String) throws {
        let source = try String(contentsOfFile: Fixtures.path("chat-templates/\(file).jinja"), encoding: .utf8)
        let format = OutputFormat.of(template: source)
        let template = try ChatTemplate(source)
        let user = JSONValue.object([("role", .string("user")), ("content", .string("Weather in Paris and Rome?"))])
        let paris = JSONValue.object([("city", .string("Paris"))])
        let rome = JSONValue.object([("city", .string("Rome")), ("units", .object([("temp", .string("C}\"{"))])), ("hours", .array([.int(9), .int(18)]))])
        let single = format.name == "llama3" || format.name == "gpt-oss"
        let calls = single ? [OutputFormatTests.call("abcdefgh1", "get_weather", rome)]
                           : [OutputFormatTests.call("abcdefgh1", "get_weather", paris), OutputFormatTests.call("abcdefgh2", "get_weather", rome)]
        let content = format.name == "llama3" || format.name == "gpt-oss" ? "" : "Let me check."
        let answer = JSONValue.object([("role", .string("assistant")), ("content", .string(content)), ("reasoning_content", .string("Two cities.")),
                                       ("thinking", .string("Two cities.")), ("tool_calls", .array(calls))])
        let text = try OutputFormatTests.generated(template, [user, answer])
        Self.check(text, Self.reading(format), calls: calls.count)
        // One call asked for: only the first goes out.
        if !single {
            let (one, _) = Self.stream(Self.splits(text)[1], Self.reading(format, parallel: false))
            #expect(one.calls.map(\.arguments) == [paris], "\(one)")
        }
        // And an answer without calls.
        let plain = JSONValue.object([("role", .string("assistant")), ("content", .string("It is sunny in <b>Paris</b>.")), ("reasoning_content", .string("Easy."))])
        let plainText = try OutputFormatTests.generated(template, [user, plain])
        Self.check(plainText, Self.reading(format), calls: 0)
    }

    /// What the families without a shared template write (the texts OutputParameterSyntaxTests reads), and harmony's
    /// several messages, streamed, are their parse.
    @Test func writtenAnswersStreamAsTheyParse() throws {
        let cases: [(String, String, Int)] = [
            ("qwen3-coder", "I will look.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_time>\n<parameter=zone>\nEurope/Rome\n</parameter>\n</function>\n</tool_call>", 2),
            ("glm-4.5", "<think>The user wants weather.</think>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>units</arg_key>\n<arg_value>{\"temp\": \"C\"}</arg_value>\n</tool_call>", 1),
            ("minimax-m2", "<think>\nTwo cities.\n</think>\n\n<minimax:tool_call>\n<invoke name=\"get_weather\">\n<parameter name=\"city\">Paris</parameter>\n</invoke>\n<invoke name=\"get_weather\">\n<parameter name=\"city\">Rome</parameter>\n<parameter name=\"hours\">[9, 18]</parameter>\n</invoke>\n</minimax:tool_call>", 2),
            ("kimi-k2", "Checking.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\": \"Paris\"}<|tool_call_end|><|tool_call_begin|>functions.get_weather:1<|tool_call_argument_begin|>{\"city\": \"Rome\"}<|tool_call_end|><|tool_calls_section_end|>", 2),
            ("deepseek-v3.1", "<think>Hmm.</think>Sure.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>", 1),
            ("gpt-oss", "<|channel|>analysis<|message|>First.<|end|><|start|>assistant<|channel|>analysis<|message|>Second.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}<|call|>", 1),
            ("gpt-oss", "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Done, with a <b>tag</b>.", 0),
            ("gpt-oss", "<|channel|>commentary to=functions.f<|message|>not json<|call|><|start|>assistant<|channel|>final<|message|>After.<|return|>", 0),
            ("gpt-oss", "no harmony markup at all", 0),
            ("hermes", "A <tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call> B", 1),
        ]
        for (family, text, calls) in cases { Self.check(text, Self.reading(try Self.format(family)), calls: calls) }
        // A template that opened the reasoning block: the answer starts inside it.
        Self.check("still thinking</think>\n\n<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>", Self.reading(try Self.format("qwen3"), open: true), calls: 1)
    }

    /// Text that only looks like a call goes out as content, whole; a section whose later call does not read keeps
    /// the calls before it (sent as they closed) and the rest is text.
    @Test func whatIsNotACallIsContent() throws {
        let cases: [(String, String, Int)] = [
            ("hermes", "Use <tool_call> tags like this.", 0), ("hermes", "<tool_call>{\"arguments\": {}}</tool_call> after", 0), ("hermes", "plain <tool_c", 0),
            ("qwen3-coder", "<tool_call>\n<function=get_weather>\n<parameter=city>\nPar", 0), ("qwen3-coder", "See <tool_call> in the docs.", 0),
            ("glm-4.5", "<tool_call>\n<arg_key>city</arg_key><arg_value>x</arg_value></tool_call>", 0),
            ("minimax-m2", "<minimax:tool_call><invoke name=\"f\"><oops></invoke></minimax:tool_call>", 0),
            ("mistral", "[TOOL_CALLS][{\"name\": \"f\", \"argu", 0), ("mistral", "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {}}] and", 1),
            ("llama3", "{\"name\": \"f\", \"parameters\": {}} and more", 0), ("llama3", "  {\"name\": \"f\", \"parameters\": {\"x\": [1]}}\n", 1),
            ("kimi-k2", "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{\"a\": 1}<|tool_call_end|><|tool_call_begin|>functions.g:1<|tool_call_argument_begin|>{\"a\": ", 1),
            ("deepseek-v3.1", "Text with <｜tool▁calls▁begin｜> but nothing after", 0),
        ]
        for (family, text, calls) in cases { Self.check(text, Self.reading(try Self.format(family)), calls: calls) }
    }

    /// Calls go out as they close and reasoning as it is written, not at the end.
    @Test func piecesGoOutEarly() throws {
        func sent(_ family: String, _ pieces: [String]) throws -> [[AnswerStream.Event]] {
            var s = Self.reading(try Self.format(family)).stream()
            return pieces.map { s.feed($0) }
        }
        let kimi = try sent("kimi-k2", ["<|tool_calls_section_begin|>", "<|tool_call_begin|>", "functions.f:0", "<|tool_call_argument_begin|>", "{\"a\": 1}",
                                        "<|tool_call_end|>", "<|tool_call_begin|>"])
        #expect(kimi[5] == [.callStart(index: 0, name: "f", id: "functions.f:0"), .arguments(index: 0, #"{"a":1}"#)], "\(kimi)")
        #expect(kimi[..<5].allSatisfy { $0.isEmpty })
        let harmony = try sent("gpt-oss", ["<|channel|>", "analysis", "<|message|>", "I think", " more", "<|end|>", "<|start|>", "assistant<|channel|>final<|message|>", "Yes"])
        #expect(harmony[3] == [.reasoning("I think")] && harmony[4] == [.reasoning(" more")] && harmony[8] == [.content("Yes")], "\(harmony)")
        let hermes = try sent("hermes", ["Hi ", "<tool_call>", "{\"name\": \"f\", ", "\"arguments\": {\"a\"", ": 1}}", "</tool_call>"])
        #expect(hermes[0] == [.content("Hi")] && hermes[2] == [.callStart(index: 0, name: "f", id: nil)] && hermes[3] == [.arguments(index: 0, "{\"a\"")], "\(hermes)")
        let coder = try sent("qwen3-coder", ["<tool_call>\n<function=f>\n<parameter=x>\n1\n</parameter>\n</function>\n", "</tool_call>"])
        #expect(coder[0].isEmpty && coder[1] == [.callStart(index: 0, name: "f", id: nil), .arguments(index: 0, #"{"x":1}"#)], "\(coder)")
    }
}
