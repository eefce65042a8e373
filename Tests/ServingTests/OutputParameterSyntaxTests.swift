import JSON
@testable import Serving
import Testing

/// The families whose templates are not among the fixtures, read from what their models write (as their model
/// cards and vLLM's parsers show it): Qwen3-Coder's XML parameters, GLM-4.5/4.6's key/value pairs, MiniMax-M2's
/// invokes, Kimi-K2's sections. Each is recognised by its template's markers; text that only looks like a call
/// stays content.
@Suite struct OutputParameterSyntaxTests {
    static func format(_ name: String) throws -> OutputFormat { try #require(OutputFormat.all.first { $0.name == name }) }

    @Test func familiesAreRecognisedByTheirTemplatesMarkers() {
        let cases: [(String, String)] = [
            ("{% for t in tools %}<tool_call>\n<function={{ t.name }}>\n<parameter=x>{% endfor %}", "qwen3-coder"),
            ("<tool_call>{{ name }}\n<arg_key>{{ k }}</arg_key>\n<arg_value>{{ v }}</arg_value></tool_call><think>", "glm-4.5"),
            ("<minimax:tool_call>\n<invoke name=\"{{ n }}\">", "minimax-m2"),
            ("<|tool_calls_section_begin|><|tool_call_begin|>{{ id }}<|tool_call_argument_begin|>", "kimi-k2"),
        ]
        for (source, name) in cases { #expect(OutputFormat.of(template: source).name == name, "\(source)") }
    }

    @Test func qwen3CoderCalls() throws {
        let text = "I will look.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_time>\n<parameter=zone>\nEurope/Rome\n</parameter>\n</function>\n</tool_call>"
        let out = try Self.format("qwen3-coder").parse(text)
        #expect(out.content.trimmingCharacters(in: .whitespacesAndNewlines) == "I will look.")
        #expect(out.toolCalls == [ToolCall(name: "get_weather", arguments: .object([("city", .string("Paris")), ("days", .int(3))])),
                                  ToolCall(name: "get_time", arguments: .object([("zone", .string("Europe/Rome"))]))])
    }

    @Test func glmCalls() throws {
        let text = "<think>The user wants weather.</think>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>units</arg_key>\n<arg_value>{\"temp\": \"C\"}</arg_value>\n</tool_call>"
        let out = try Self.format("glm-4.5").parse(text)
        #expect(out.reasoning == "The user wants weather.")
        #expect(out.toolCalls == [ToolCall(name: "get_weather", arguments: .object([("city", .string("Paris")), ("units", .object([("temp", .string("C"))]))]))])
        #expect(out.content.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
    }

    @Test func minimaxCalls() throws {
        let text = "<think>\nTwo cities.\n</think>\n\n<minimax:tool_call>\n<invoke name=\"get_weather\">\n<parameter name=\"city\">Paris</parameter>\n</invoke>\n<invoke name=\"get_weather\">\n<parameter name=\"city\">Rome</parameter>\n<parameter name=\"hours\">[9, 18]</parameter>\n</invoke>\n</minimax:tool_call>"
        let out = try Self.format("minimax-m2").parse(text)
        #expect(out.reasoning == "Two cities.")
        #expect(out.toolCalls == [ToolCall(name: "get_weather", arguments: .object([("city", .string("Paris"))])),
                                  ToolCall(name: "get_weather", arguments: .object([("city", .string("Rome")), ("hours", .array([.int(9), .int(18)]))]))])
    }

    @Test func kimiCallsCarryTheirIDs() throws {
        let text = "Checking.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\": \"Paris\"}<|tool_call_end|><|tool_call_begin|>functions.get_weather:1<|tool_call_argument_begin|>{\"city\": \"Rome\"}<|tool_call_end|><|tool_calls_section_end|>"
        let out = try Self.format("kimi-k2").parse(text)
        #expect(out.content == "Checking.")
        #expect(out.toolCalls == [ToolCall(name: "get_weather", arguments: .object([("city", .string("Paris"))]), id: "functions.get_weather:0"),
                                  ToolCall(name: "get_weather", arguments: .object([("city", .string("Rome"))]), id: "functions.get_weather:1")])
    }

    /// A block cut off, or without a name, or with a stray tag, is text: nothing the model wrote is lost.
    @Test func whatDoesNotReadAsACallStaysText() throws {
        let cases: [(String, String)] = [
            ("qwen3-coder", "<tool_call>\n<function=get_weather>\n<parameter=city>\nPar"),
            ("qwen3-coder", "See <tool_call> in the docs."),
            ("glm-4.5", "<tool_call>\n<arg_key>city</arg_key><arg_value>x</arg_value></tool_call>"),
            ("minimax-m2", "<minimax:tool_call><invoke name=\"f\"><oops></invoke></minimax:tool_call>"),
        ]
        for (family, text) in cases {
            let out = try Self.format(family).parse(text)
            #expect(out.toolCalls.isEmpty && out.content == text, "\(family): \(text) → \(out)")
        }
    }

    /// A parameter the tool declares a string stays the text written, though it spells a number or a boolean;
    /// the same text for an undeclared one is the JSON it spells. Streamed, the same.
    @Test func declaredStringsStayText() throws {
        let body = try JSONValue.parse(#"{"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"zip": {"type": "string"}, "flag": {"enum": ["true", "false"]}, "count": {"type": "integer"}}}}}]}"#)
        let options = try ToolCallOptions(body: body, format: try Self.format("qwen3-coder"))
        #expect(options.textParameters == ["lookup": ["zip", "flag"]])
        let text = "<tool_call>\n<function=lookup>\n<parameter=zip>\n02139\n</parameter>\n<parameter=flag>\ntrue\n</parameter>\n<parameter=count>\n3\n</parameter>\n<parameter=other>\n07\n</parameter>\n</function>\n</tool_call>"
        let want = ToolCall(name: "lookup", arguments: .object([("zip", .string("02139")), ("flag", .string("true")), ("count", .int(3)), ("other", .string("07"))]))
        #expect(try Self.format("qwen3-coder").parse(text, textParameters: options.textParameters).toolCalls == [want])
        #expect(try Self.format("qwen3-coder").parse(text).toolCalls.first?.arguments["flag"] == .bool(true))
        let reading = HTTPAPI.OutputReading(format: try Self.format("qwen3-coder"), reasoningOpen: false, parallel: true, textParameters: options.textParameters)
        let (streamed, _) = AnswerStreamTests.stream(text.map(String.init), reading)
        #expect(streamed.calls == [want], "\(streamed)")
    }
}
