import JSON

/// A tool call as the model wrote it: the function's name and its arguments (a JSON object).
public struct ToolCall: Equatable, Sendable {
    public var name: String
    public var arguments: JSONValue
    /// The id the model wrote (Mistral does); nil when the server makes one up.
    public var id: String?
    public init(name: String, arguments: JSONValue, id: String? = nil) {
        self.name = name
        self.arguments = arguments
        self.id = id
    }
}

/// A finished answer split the way the APIs report it: the text for the user, the reasoning before it, the calls.
public struct ParsedOutput: Equatable, Sendable {
    public var content: String
    public var reasoning: String?
    public var toolCalls: [ToolCall]
    public init(content: String, reasoning: String? = nil, toolCalls: [ToolCall] = []) {
        self.content = content
        self.reasoning = reasoning
        self.toolCalls = toolCalls
    }
}

/// How one family of models writes its reasoning and its tool calls. The family is recognised by what its chat
/// template contains, as llama.cpp's common/chat.cpp recognises it: the template is what teaches the model the
/// syntax, so it is also the best evidence of which syntax the model will use.
public struct OutputFormat: Sendable {
    public let name: String
    /// Substrings the chat template contains, every one of them.
    let markers: [String]
    /// Where reasoning opens and closes (nil: the family does not think in text, or does it in `calls`' syntax).
    let reasoning: (open: String, close: String)?
    let calls: CallSyntax

    /// How tool calls are written.
    enum CallSyntax: Sendable {
        /// Each call a JSON object `{"name", argumentsKey}` between `open` and `close` (Hermes, Qwen 2.5 and 3).
        case tagged(open: String, close: String, argumentsKey: String)
        /// After `prefix`, a JSON list of `{"name", "arguments", "id"}` (Mistral).
        case prefixedList(prefix: String)
        /// The whole answer one JSON object `{"name", argumentsKey}` (Llama 3.x).
        case bareObject(argumentsKey: String)
        /// Between `begin` and `end`, each call `callBegin NAME separator JSON callEnd` (DeepSeek V3.1; Kimi-K2,
        /// whose NAME is `functions.NAME:INDEX`, also the call's id).
        case delimited(begin: String, end: String, callBegin: String, separator: String, callEnd: String)
        /// Calls whose arguments are written as named text values, not JSON (Qwen3-Coder, GLM-4.5/4.6, MiniMax-M2).
        case parameters(ParameterSyntax)
        /// gpt-oss's harmony: messages on channels; `analysis` is reasoning, `final` the answer, and a
        /// `commentary` message `to=functions.NAME` a call.
        case harmony
        /// No tool calls: the text is the answer.
        case none
    }

    /// Calls written as a name and `key = value` text parameters inside a block:
    /// `blockOpen [invokeOpen] NAME nameEnd (keyOpen KEY keyClose [valueOpen] VALUE valueClose)* [invokeClose] blockClose`.
    /// An empty `invokeOpen` means the name follows the block's open tag directly (GLM), one call per block.
    struct ParameterSyntax: Sendable {
        let blockOpen: String, blockClose: String
        let invokeOpen: String, nameEnd: String, invokeClose: String
        let keyOpen: String, keyClose: String
        let valueOpen: String, valueClose: String
    }

    /// The families, most specific first: the first whose markers the template has is the one.
    public static let all: [OutputFormat] = [
        OutputFormat(name: "gpt-oss", markers: ["<|channel|>", "<|message|>"], reasoning: nil, calls: .harmony),
        OutputFormat(name: "deepseek-v3.1", markers: ["<｜tool▁calls▁begin｜>", "<｜tool▁sep｜>"], reasoning: ("<think>", "</think>"),
                     calls: .delimited(begin: "<｜tool▁calls▁begin｜>", end: "<｜tool▁calls▁end｜>", callBegin: "<｜tool▁call▁begin｜>",
                                       separator: "<｜tool▁sep｜>", callEnd: "<｜tool▁call▁end｜>")),
        OutputFormat(name: "kimi-k2", markers: ["<|tool_calls_section_begin|>"], reasoning: ("<think>", "</think>"),
                     calls: .delimited(begin: "<|tool_calls_section_begin|>", end: "<|tool_calls_section_end|>", callBegin: "<|tool_call_begin|>",
                                       separator: "<|tool_call_argument_begin|>", callEnd: "<|tool_call_end|>")),
        OutputFormat(name: "minimax-m2", markers: ["<minimax:tool_call>"], reasoning: ("<think>", "</think>"),
                     calls: .parameters(ParameterSyntax(blockOpen: "<minimax:tool_call>", blockClose: "</minimax:tool_call>",
                                                        invokeOpen: "<invoke name=\"", nameEnd: "\">", invokeClose: "</invoke>",
                                                        keyOpen: "<parameter name=\"", keyClose: "\">", valueOpen: "", valueClose: "</parameter>"))),
        OutputFormat(name: "glm-4.5", markers: ["<arg_key>", "<arg_value>"], reasoning: ("<think>", "</think>"),
                     calls: .parameters(ParameterSyntax(blockOpen: "<tool_call>", blockClose: "</tool_call>",
                                                        invokeOpen: "", nameEnd: "\n", invokeClose: "",
                                                        keyOpen: "<arg_key>", keyClose: "</arg_key>", valueOpen: "<arg_value>", valueClose: "</arg_value>"))),
        OutputFormat(name: "qwen3-coder", markers: ["<tool_call>", "<function=", "<parameter="], reasoning: nil,
                     calls: .parameters(ParameterSyntax(blockOpen: "<tool_call>", blockClose: "</tool_call>",
                                                        invokeOpen: "<function=", nameEnd: ">", invokeClose: "</function>",
                                                        keyOpen: "<parameter=", keyClose: ">", valueOpen: "", valueClose: "</parameter>"))),
        OutputFormat(name: "qwen3", markers: ["<tool_call>", "<think>"], reasoning: ("<think>", "</think>"),
                     calls: .tagged(open: "<tool_call>", close: "</tool_call>", argumentsKey: "arguments")),
        OutputFormat(name: "hermes", markers: ["<tool_call>"], reasoning: nil,
                     calls: .tagged(open: "<tool_call>", close: "</tool_call>", argumentsKey: "arguments")),
        OutputFormat(name: "mistral", markers: ["[TOOL_CALLS]"], reasoning: nil, calls: .prefixedList(prefix: "[TOOL_CALLS]")),
        OutputFormat(name: "llama3", markers: ["<|start_header_id|>", "\"parameters\""], reasoning: nil, calls: .bareObject(argumentsKey: "parameters")),
    ]

    /// Text only: what a template that teaches no syntax gets.
    public static let plain = OutputFormat(name: "plain", markers: [], reasoning: nil, calls: .none)

    /// The family of a chat template's source.
    public static func of(template source: String) -> OutputFormat {
        all.first { f in f.markers.allSatisfy { source.contains($0) } } ?? plain
    }

    public var hasToolCalls: Bool { if case .none = calls { return false } else { return true } }

    /// Whether `text` begins a call in this family's syntax (for counting answers whose calls did not parse).
    func opensCall(_ text: String) -> Bool {
        switch calls {
        case .tagged(let open, _, _): return text.contains(open)
        case .prefixedList(let prefix): return text.contains(prefix)
        case .delimited(let begin, _, _, _, _): return text.contains(begin)
        case .parameters(let p): return text.contains(p.blockOpen)
        case .harmony: return text.contains("to=functions.")
        case .bareObject: return text.trimmingWhitespace.hasPrefix("{\"name\"")
        case .none: return false
        }
    }
}
