import JSON
import Tokenizer

/// What a chat request asks about tool calls and reasoning (OpenAI's `tools`, `tool_choice`,
/// `parallel_tool_calls`; llama-server's `reasoning_format`), checked, and how the answer is read back.
struct ToolCallOptions {
    /// The functions the request offers, by name.
    var functions: [String] = []
    /// Each function's `parameters` schema (an object of any shape when it gives none).
    var parameters: [JSONValue] = []
    /// `tool_choice` "required" (any of the functions) or one function by name: the answer must be calls.
    var forced: [String]?
    /// The syntax the answer is read in: the model family's, or Hermes' for forced calls in a family without one.
    var format: OutputFormat
    /// Parse calls out of the answer (tools given, `tool_choice` not "none", and the family has a syntax).
    var parseCalls = false
    /// Split reasoning from the answer (`reasoning_format` other than "none").
    var parseReasoning = true
    var parallel = true

    init(body: JSONValue, format: OutputFormat) throws(APIError) {
        self.format = format
        if let t = body["tools"], !t.isNull {
            guard case .array(let list) = t else { throw APIError.invalid("'tools' must be a list", param: "tools") }
            for (i, tool) in list.enumerated() {
                guard tool["type"]?.stringValue == "function", let name = tool["function"]?["name"]?.stringValue, !name.isEmpty else {
                    throw APIError.invalid("tools[\(i)] must be {\"type\": \"function\", \"function\": {\"name\": …, \"parameters\": …}}", param: "tools")
                }
                functions.append(name)
                let p = tool["function"]?["parameters"] ?? .null
                parameters.append(p.isNull ? .object([("type", .string("object"))]) : p)
            }
        }
        var choice = "auto"
        if let c = body["tool_choice"], !c.isNull {
            if let s = c.stringValue, ["auto", "none", "required"].contains(s) {
                choice = s
            } else if c["type"]?.stringValue == "function", let name = c["function"]?["name"]?.stringValue {
                guard functions.contains(name) else {
                    throw APIError.invalid("tool_choice names the function '\(name)', which is not among 'tools' (\(functions.joined(separator: ", ")))", param: "tool_choice")
                }
                choice = "function"
                forced = [name]
            } else {
                throw APIError.invalid("'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}", param: "tool_choice")
            }
        }
        if choice != "auto" && choice != "none" && functions.isEmpty {
            throw APIError.invalid("tool_choice '\(choice)' needs 'tools'", param: "tool_choice")
        }
        if choice == "required" { forced = functions }
        if forced != nil {
            self.format = format.forcedCallFormat(tools: zip(functions, parameters).filter { forced!.contains($0.0) }.map { (name: $0.0, parameters: $0.1) })
            for key in ["response_format", "json_schema", "grammar"] where body[key].map({ !$0.isNull && $0["type"]?.stringValue != "text" }) ?? false {
                throw APIError.invalid("a forced tool call (tool_choice '\(choice)') and '\(key)' both constrain the answer; send one", param: key)
            }
        }
        parseCalls = !functions.isEmpty && choice != "none" && self.format.hasToolCalls
        if let p = body["parallel_tool_calls"], !p.isNull {
            guard let b = p.boolValue else { throw APIError.invalid("'parallel_tool_calls' must be a boolean", param: "parallel_tool_calls") }
            parallel = b
        }
        if let r = body["reasoning_format"], !r.isNull {
            guard let s = r.stringValue, ["none", "auto", "deepseek", "deepseek-legacy"].contains(s) else {
                throw APIError.invalid("'reasoning_format' must be \"none\" (reasoning stays in the content), \"auto\" or \"deepseek\"", param: "reasoning_format")
            }
            parseReasoning = s != "none"
        }
    }

    /// Per function, the parameters its schema declares strings: the text-parameter families write them unquoted,
    /// so "02139" or "true" must stay text.
    var textParameters: [String: Set<String>] { OutputFormat.textParameters(Array(zip(functions, parameters))) }

    /// Whether the answer is read back at all (else its text is the content, as generated).
    var parses: Bool { parseCalls || (parseReasoning && format.thinks) }

    /// The grammar of a forced call (nil when calls are not forced); a parameters schema that cannot be
    /// enforced is a 400 naming the tool.
    func grammar(tokenizer: Tokenizer) throws(APIError) -> String? {
        guard let forced else { return nil }
        let tools = zip(functions, parameters).filter { forced.contains($0.0) }.map { (name: $0.0, parameters: $0.1) }
        do {
            return try format.callGrammar(tools: tools, parallel: parallel, tokenizer: tokenizer)
        } catch {
            throw APIError.invalid("tools: \(error.message)", param: "tools")
        }
    }
}

extension OutputFormat {
    /// Whether the family writes reasoning apart from its answer.
    var thinks: Bool {
        if reasoning != nil { return true }
        if case .harmony = calls { return true }
        return false
    }

    /// The same family without its call syntax (the request offered no tools, or said "none"): calls it might
    /// write anyway stay text. Harmony keeps its channels (reasoning and answer are channels too).
    func withoutCalls() -> OutputFormat {
        if case .harmony = calls { return self }
        return OutputFormat(name: name, markers: markers, reasoning: reasoning, calls: .none)
    }

    func withoutReasoning() -> OutputFormat { OutputFormat(name: name, markers: markers, reasoning: nil, calls: calls) }
}

extension ParsedOutput {
    /// OpenAI's `message` (and a stream's last deltas): content null when only calls came, `reasoning_content`
    /// when there was reasoning, calls with fresh ids and their arguments as JSON text.
    func toolCallsJSON(ids: () -> String, indexed: Bool) -> [JSONValue] {
        toolCalls.enumerated().map { i, c in
            let fields: [(String, JSONValue)] = [("id", .string(c.id ?? ids())), ("type", .string("function")),
                                                 ("function", .object([("name", .string(c.name)), ("arguments", .string(c.arguments.render()))]))]
            return .object(indexed ? [("index", .int(i))] + fields : fields)
        }
    }

    /// The fields of OpenAI's chat `message` (or of one stream delta carrying all of it).
    func messageFields(ids: () -> String, indexed: Bool) -> [(String, JSONValue)] {
        var fields: [(String, JSONValue)] = [("content", content.isEmpty && !toolCalls.isEmpty ? .null : .string(content))]
        if let reasoning, !reasoning.isEmpty { fields.append(("reasoning_content", .string(reasoning))) }
        if !toolCalls.isEmpty { fields.append(("tool_calls", .array(toolCallsJSON(ids: ids, indexed: indexed)))) }
        return fields
    }
}
