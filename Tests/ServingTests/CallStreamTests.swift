import ChatTemplate
import JSON
@testable import Serving
import Testing
import TestSupport

/// Calls streamed as they are written give what the whole answer parses to: the text of each template's own
/// rendering (Qwen 2.5's Hermes, Qwen3 with reasoning) fed one character at a time, then in uneven pieces.
@Suite struct CallStreamTests {
    struct Streamed: Equatable {
        var content = "", reasoning = "", calls: [(name: String, arguments: String)] = []
        static func == (a: Streamed, b: Streamed) -> Bool {
            a.content == b.content && a.reasoning == b.reasoning && a.calls.map(\.name) == b.calls.map(\.name) && a.calls.map(\.arguments) == b.calls.map(\.arguments)
        }
    }

    static func stream(_ pieces: [String], format: OutputFormat, parallel: Bool = true) -> Streamed {
        guard case .tagged(let open, let close, let key) = format.calls else { return Streamed() }
        var reasoning = format.reasoning.map { ReasoningStream(open: $0.open, close: $0.close, reasoningOpen: false) }
        var calls = CallStream(open: open, close: close, argumentsKey: key, parallel: parallel)
        var out = Streamed()
        func take(_ events: [CallStream.Event]) {
            for e in events {
                switch e {
                case .content(let t): out.content += t
                case .callStart(let i, let name): #expect(i == out.calls.count); out.calls.append((name, ""))
                case .arguments(let i, let f): out.calls[i].arguments += f
                }
            }
        }
        for piece in pieces + [nil as String?] {
            let parts = piece.map { reasoning?.feed($0) ?? [(.content, $0)] } ?? (reasoning?.finish() ?? [])
            for (kind, text) in parts { if kind == .reasoning { out.reasoning += text } else { take(calls.feed(text)) } }
            if piece == nil { take(calls.finish()) }
        }
        return out
    }

    @Test(arguments: ["Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B"])
    func streamedCallsAreTheParsedCalls(file: String) throws {
        let source = try String(contentsOfFile: Fixtures.path("chat-templates/\(file).jinja"), encoding: .utf8)
        let format = OutputFormat.of(template: source)
        let template = try ChatTemplate(source)
        let user = JSONValue.object([("role", .string("user")), ("content", .string("Weather in Paris and Rome?"))])
        let rome = JSONValue.object([("city", .string("Rome")), ("units", .object([("temp", .string("C}\"{"))])), ("hours", .array([.int(9), .int(18)]))])
        let answer = JSONValue.object([("role", .string("assistant")), ("content", .string("Let me check.")), ("reasoning_content", .string("Two cities.")),
                                       ("tool_calls", .array([OutputFormatTests.call("c1", "get_weather", .object([("city", .string("Paris"))])),
                                                              OutputFormatTests.call("c2", "get_weather", rome)]))])
        let text = try OutputFormatTests.generated(template, [user, answer])
        let parsed = format.parse(text)
        #expect(parsed.toolCalls.count == 2, "\(text)")
        var pieces: [[String]] = [text.map(String.init)]
        var uneven: [String] = [], rest = Substring(text), n = 1
        while !rest.isEmpty { uneven.append(String(rest.prefix(n))); rest = rest.dropFirst(n); n = n % 7 + 1 }
        pieces.append(uneven)
        for p in pieces {
            let s = Self.stream(p, format: format)
            #expect(s.content == parsed.content && s.calls.map(\.name) == parsed.toolCalls.map(\.name), "\(s) vs \(parsed)")
            #expect(try s.calls.map { try JSONValue.parse($0.arguments) } == parsed.toolCalls.map(\.arguments), "\(s)")
            if let r = parsed.reasoning { #expect(s.reasoning.trimmingCharacters(in: .whitespacesAndNewlines) == r, "\(s)") }
        }
        // One call asked for: the second is not sent.
        #expect(Self.stream(pieces[1], format: format, parallel: false).calls.count == 1)
    }

    /// What is not a call goes out as content, whole.
    @Test func notACallIsContent() {
        let hermes = OutputFormat.all.first { $0.name == "hermes" }!
        for text in ["Use <tool_call> tags like this.", "<tool_call>{\"arguments\": {}}</tool_call> after", "plain <tool_c"] {
            let s = Self.stream(text.map(String.init), format: hermes)
            #expect(s.calls.isEmpty && s.content == text.trimmingCharacters(in: .whitespacesAndNewlines), "\(text) → \(s)")
        }
    }
}
