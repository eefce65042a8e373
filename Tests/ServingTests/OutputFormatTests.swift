import ChatTemplate
import Foundation
import JSON
@testable import Serving
import Testing
import TestSupport

/// Each family's tool calls and reasoning, read back from what its own chat template writes: an assistant turn
/// with calls rendered through our renderer (as the model was trained to write it) and parsed by the family the
/// template was recognised as gives back exactly the calls, their order, names and arguments.
@Suite struct OutputFormatTests {
    static let tools: [JSONValue] = [
        .object([("type", .string("function")), ("function", .object([
            ("name", .string("get_weather")), ("description", .string("The weather in a city")),
            ("parameters", .object([("type", .string("object")), ("properties", .object([
                ("city", .object([("type", .string("string"))])), ("days", .object([("type", .string("integer"))])),
            ])), ("required", .array([.string("city")]))])),
        ]))]),
    ]

    static func call(_ id: String, _ name: String, _ args: JSONValue) -> JSONValue {
        .object([("id", .string(id)), ("type", .string("function")), ("function", .object([("name", .string(name)), ("arguments", args)]))])
    }

    /// The template files and the family each must be recognised as.
    static let families: [(String, String)] = [
        ("Qwen-Qwen2.5-7B-Instruct", "hermes"), ("Qwen-Qwen3-0.6B", "qwen3"), ("deepseek-ai-DeepSeek-V3.1", "deepseek-v3.1"),
        ("mistralai-Mistral-Nemo-Instruct-2407", "mistral"), ("meta-llama-Llama-3.1-8B-Instruct", "llama3"), ("openai-gpt-oss-120b", "gpt-oss"),
        ("google-gemma-2-2b-it", "plain"), ("microsoft-Phi-3.5-mini-instruct", "plain"),
    ]

    /// What the model writes after the generation prompt: the full rendering minus the prompt's, without the
    /// end-of-turn tokens (which stop generation and are not in its text).
    static func generated(_ template: ChatTemplate, _ messages: [JSONValue]) throws -> String {
        let prompt = try template.render(messages: Array(messages.dropLast()), tools: tools, addGenerationPrompt: true, bosToken: "<s>", eosToken: "</s>")
        let full = try template.render(messages: messages, tools: tools, addGenerationPrompt: false, bosToken: "<s>", eosToken: "</s>")
        #expect(full.hasPrefix(prompt), "the rendering with the answer extends the prompt")
        var text = String(full.dropFirst(prompt.count))
        for end in ["<|im_end|>\n", "<|im_end|>", "<|eot_id|>", "</s>", "<｜end▁of▁sentence｜>", "<|call|>", "<|return|>", "<|end|>"] where text.hasSuffix(end) {
            text = String(text.dropLast(end.count))
        }
        return text
    }

    @Test(arguments: families) func toolCallsComeBackFromTheTemplatesOwnRendering(file: String, family: String) throws {
        let source = try String(contentsOfFile: Fixtures.path("chat-templates/\(file).jinja"), encoding: .utf8)
        let format = OutputFormat.of(template: source)
        #expect(format.name == family)
        guard format.hasToolCalls else { return }
        let template = try ChatTemplate(source)
        let user = JSONValue.object([("role", .string("user")), ("content", .string("What is the weather in Paris and Rome?"))])
        let paris = JSONValue.object([("city", .string("Paris")), ("days", .int(3))])
        let rome = JSONValue.object([("city", .string("Rome")), ("units", .object([("temp", .string("C"))])), ("hours", .array([.int(9), .int(18)]))])
        // Llama 3.1 and gpt-oss's templates take one call per message.
        let single = family == "llama3" || family == "gpt-oss"
        let calls = single ? [Self.call("abcdefgh1", "get_weather", paris)] : [Self.call("abcdefgh1", "get_weather", paris), Self.call("abcdefgh2", "get_weather", rome)]
        var fields: [(String, JSONValue)] = [("role", .string("assistant")), ("content", .string(family == "llama3" ? "" : "Let me check.")), ("tool_calls", .array(calls))]
        if family == "gpt-oss" { fields[1].1 = .string("") }
        let text = try Self.generated(template, [user, .object(fields)])
        let parsed = format.parse(text)
        #expect(parsed.toolCalls.map(\.name) == calls.map { _ in "get_weather" }, "\(text)")
        #expect(parsed.toolCalls.map(\.arguments) == (single ? [paris] : [paris, rome]), "\(text)")
        if text.contains("Let me check.") { #expect(parsed.content == "Let me check.", "\(text)") } else { #expect(parsed.content == "", "\(text)") }
        if family == "mistral" { #expect(parsed.toolCalls.map(\.id) == ["abcdefgh1", "abcdefgh2"]) }
    }

    /// Reasoning in the history, as the templates that keep it write it, comes back as reasoning.
    @Test func reasoningComesBack() throws {
        let source = try String(contentsOfFile: Fixtures.path("chat-templates/Qwen-Qwen3-0.6B.jinja"), encoding: .utf8)
        let template = try ChatTemplate(source)
        let user = JSONValue.object([("role", .string("user")), ("content", .string("Weather?"))])
        let answer = JSONValue.object([("role", .string("assistant")), ("content", .string("Let me check.")), ("reasoning_content", .string("The user wants the weather.")),
                                       ("tool_calls", .array([Self.call("c1", "get_weather", .object([("city", .string("Oslo"))]))]))])
        let text = try Self.generated(template, [user, answer])
        let parsed = OutputFormat.of(template: source).parse(text)
        #expect(parsed.reasoning == "The user wants the weather." && parsed.content == "Let me check." && parsed.toolCalls.count == 1, "\(text)")
        // A prompt that opened the block: only the close tag shows in the answer.
        let open = OutputFormat.of(template: source).parse("still thinking</think>\n\nThe answer.", reasoningOpen: true)
        #expect(open == ParsedOutput(content: "The answer.", reasoning: "still thinking"))
        // Cut off while thinking: all reasoning, no content.
        #expect(OutputFormat.of(template: source).parse("<think>halfway", reasoningOpen: false) == ParsedOutput(content: "", reasoning: "halfway"))
        // gpt-oss: the analysis channel is reasoning, the final channel the answer.
        let harmony = OutputFormat.all.first { $0.name == "gpt-oss" }!
        #expect(harmony.parse("<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Done.") == ParsedOutput(content: "Done.", reasoning: "Think."))
    }

    /// Text that only looks like a call stays text, whole.
    @Test func whatDoesNotParseStaysContent() {
        let hermes = OutputFormat.all.first { $0.name == "hermes" }!
        for text in ["Use <tool_call> tags like this.", "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}", "<tool_call>{\"arguments\": {}}</tool_call>",
                     "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>"] {
            let p = hermes.parse(text)
            #expect(p.toolCalls.isEmpty && p.content == text.trimmingCharacters(in: .whitespacesAndNewlines), "\(text) → \(p)")
        }
        let ok = hermes.parse("A <tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call> B")
        #expect(ok.toolCalls == [ToolCall(name: "f", arguments: .object([("a", .int(1))]))] && ok.content == "A  B", "arguments as a JSON string: \(ok)")
        let llama = OutputFormat.all.first { $0.name == "llama3" }!
        #expect(llama.parse("{\"name\": \"f\", \"parameters\": {}} and more").toolCalls.isEmpty)
    }

    /// OpenAI's message for a parsed answer: content null when only calls came, reasoning apart, arguments as
    /// JSON text (what the `openai` client hands to `json.loads`).
    @Test func theMessageIsOpenAIs() throws {
        let parsed = ParsedOutput(content: "", reasoning: "Think.", toolCalls: [ToolCall(name: "f", arguments: .object([("a", .int(1))]))])
        var n = 0
        let message = JSONValue.object(parsed.messageFields(ids: { n += 1; return "call_\(n)" }, indexed: false))
        #expect(message.render() == #"{"content":null,"reasoning_content":"Think.","tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]}"#)
        let delta = JSONValue.object(ParsedOutput(content: "Hi").messageFields(ids: { "x" }, indexed: true))
        #expect(delta.render() == #"{"content":"Hi"}"#)
    }

    /// Streamed piece by piece (one character at a time, or in the pieces given), reasoning and content come out
    /// as `parse` splits them, and nothing that could be a tag goes out before it is known not to be one.
    @Test(arguments: [
        ("<think>\nI should greet.\n</think>\n\nHello there.", false, "I should greet.", "Hello there."),
        ("I should greet.</think>Hello.", true, "I should greet.", "Hello."),
        ("Just an answer with a < sign.", false, nil, "Just an answer with a < sign."),
        ("<think>cut off while thi", false, "cut off while thi", ""),
        ("  <thin>not a tag", false, nil, "<thin>not a tag"),
    ] as [(String, Bool, String?, String)])
    func reasoningStreamsAsItComes(text: String, open: Bool, reasoning: String?, content: String) {
        let qwen3 = OutputFormat.all.first { $0.name == "qwen3" }!
        let parsed = qwen3.withoutCalls().parse(text, reasoningOpen: open)
        #expect(parsed.reasoning?.trimmingCharacters(in: .whitespacesAndNewlines) == reasoning && parsed.content == content, "\(parsed)")
        for step in [1, 3, 7] {
            var s = ReasoningStream(open: "<think>", close: "</think>", reasoningOpen: open)
            var r = "", c = "", sawReasoning = false
            var chars = Array(text)
            while !chars.isEmpty {
                let piece = String(chars.prefix(step))
                chars.removeFirst(min(step, chars.count))
                for (kind, t) in s.feed(piece) {
                    #expect(!t.contains("<think>") && !t.contains("</think>"), "a tag went out: \(t)")
                    if kind == .reasoning { r += t; sawReasoning = true } else { c += t }
                }
            }
            for (kind, t) in s.finish() { if kind == .reasoning { r += t; sawReasoning = true } else { c += t } }
            #expect((sawReasoning ? r.trimmingCharacters(in: .whitespacesAndNewlines) : nil) == reasoning, "step \(step): \(r)")
            #expect(c.trimmingCharacters(in: .whitespacesAndNewlines) == content, "step \(step): \(c)")
        }
    }

    /// Calls read and answers whose call did not parse are counted by API, as /metrics shows them.
    @Test func callsAndParseFailuresAreCounted() throws {
        let qwen = try String(contentsOfFile: Fixtures.path("chat-templates/Qwen-Qwen2.5-7B-Instruct.jinja"), encoding: .utf8)
        let server = HTTPAPITests.Server(template: qwen)
        let body = try JSONValue.parse(#"{"messages": [], "tools": [{"type": "function", "function": {"name": "f"}}]}"#)
        let options = try ToolCallOptions(body: body, format: server.api.model.outputFormat)
        let reading = server.api.outputReading(options, prompt: "", api: "chat")
        _ = reading.parse(#"<tool_call>{"name": "f", "arguments": {}}</tool_call><tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>"#)
        _ = reading.parse("<tool_call>{\"name\": \"f\", broken")
        _ = reading.parse("no call at all")
        let exposition = server.metrics.exposition()
        #expect(exposition.contains(#"conclave_tool_calls_total{api="chat"} 2"#), "\(exposition)")
        #expect(exposition.contains(#"conclave_tool_call_parse_failures_total{api="chat"} 1"#), "\(exposition)")
    }
}
