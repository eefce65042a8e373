import Foundation
import Generation
import Hummingbird
import JSON
import Model
import NIOCore

/// Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`) over the same renderer, scheduler
/// and output reading as the chat API: a request becomes the chat body the template renders (system, turns,
/// `tool_use` / `tool_result` blocks as calls and tool messages, `thinking` as reasoning), the answer comes back
/// as content blocks (`thinking`, `text`, `tool_use`) with Anthropic's stop reasons, usage and events.
enum AnthropicMessages {
    /// The chat body (OpenAI's shape, which `ServedModel.render` and `CompletionParameters` read) of a Messages
    /// request. The model name is not checked: Anthropic clients send their own (Claude Code's, the SDK's).
    static func chatBody(_ body: JSONValue) throws(APIError) -> JSONValue {
        guard let maxTokens = body["max_tokens"]?.intValue, maxTokens >= 1 else {
            throw APIError.invalid("'max_tokens' is required: a positive integer", param: "max_tokens")
        }
        var messages: [JSONValue] = []
        switch body["system"] {
        case nil, .null?: break
        case .string(let s)?: messages.append(.object([("role", .string("system")), ("content", .string(s))]))
        case .array(let blocks)?: messages.append(.object([("role", .string("system")), ("content", .string(try text(of: blocks, at: "system")))]))
        default: throw APIError.invalid("'system' must be a string or a list of text blocks", param: "system")
        }
        guard case .array(let turns)? = body["messages"], !turns.isEmpty else {
            throw APIError.invalid("'messages' must be a non-empty list of {\"role\", \"content\"}", param: "messages")
        }
        for (i, turn) in turns.enumerated() {
            guard let role = turn["role"]?.stringValue, role == "user" || role == "assistant" else {
                throw APIError.invalid("messages[\(i)].role must be \"user\" or \"assistant\"", param: "messages")
            }
            let blocks: [JSONValue]
            switch turn["content"] {
            case .string(let s)?: blocks = [.object([("type", .string("text")), ("text", .string(s))])]
            case .array(let b)?: blocks = b
            default: throw APIError.invalid("messages[\(i)].content must be a string or a list of content blocks", param: "messages")
            }
            var texts: [String] = [], thinking: [String] = [], calls: [JSONValue] = []
            for (j, block) in blocks.enumerated() {
                let at = "messages[\(i)].content[\(j)]"
                switch block["type"]?.stringValue {
                case "text":
                    guard let t = block["text"]?.stringValue else { throw APIError.invalid("\(at) is a text block without 'text'", param: "messages") }
                    texts.append(t)
                case "thinking" where role == "assistant":
                    if let t = block["thinking"]?.stringValue { thinking.append(t) }
                case "redacted_thinking" where role == "assistant":
                    continue
                case "tool_use" where role == "assistant":
                    guard let id = block["id"]?.stringValue, let name = block["name"]?.stringValue, case .object? = block["input"] else {
                        throw APIError.invalid("\(at) is a tool_use block without 'id', 'name' and an object 'input'", param: "messages")
                    }
                    calls.append(.object([("id", .string(id)), ("type", .string("function")),
                                          ("function", .object([("name", .string(name)), ("arguments", block["input"]!)]))]))
                case "tool_result" where role == "user":
                    guard let id = block["tool_use_id"]?.stringValue else { throw APIError.invalid("\(at) is a tool_result without 'tool_use_id'", param: "messages") }
                    var result: String
                    switch block["content"] {
                    case nil, .null?: result = ""
                    case .string(let s)?: result = s
                    case .array(let parts)?: result = try text(of: parts, at: at + ".content")
                    default: throw APIError.invalid("\(at).content must be a string or text blocks", param: "messages")
                    }
                    if block["is_error"]?.boolValue == true { result = "Error: " + result }
                    // A tool's result is a message of its own, before the user's words, as templates expect.
                    messages.append(.object([("role", .string("tool")), ("tool_call_id", .string(id)), ("content", .string(result))]))
                case let type:
                    throw APIError.invalid("\(at): content blocks of type '\(type ?? "none")' are not supported in a \(role) message here (text\(role == "user" ? ", tool_result" : ", thinking, tool_use") only)", param: "messages")
                }
            }
            if role == "user" && texts.isEmpty && blocks.allSatisfy({ $0["type"]?.stringValue == "tool_result" }) { continue }
            var fields: [(String, JSONValue)] = [("role", .string(role)), ("content", .string(texts.joined(separator: "\n")))]
            if !calls.isEmpty { fields.append(("tool_calls", .array(calls))) }
            if !thinking.isEmpty { fields.append(("reasoning_content", .string(thinking.joined(separator: "\n")))) }
            messages.append(.object(fields))
        }
        var chat: [(String, JSONValue)] = [("messages", .array(messages)), ("max_tokens", .int(maxTokens))]
        for key in ["temperature", "top_p", "top_k", "stream"] { if let v = body[key], !v.isNull { chat.append((key, v)) } }
        if let stops = body["stop_sequences"], !stops.isNull { chat.append(("stop", stops)) }
        if case .array(let tools)? = body["tools"], !tools.isEmpty {
            chat.append(("tools", .array(try tools.enumerated().map { i, t throws(APIError) in
                guard let name = t["name"]?.stringValue, !name.isEmpty else { throw APIError.invalid("tools[\(i)] needs a 'name'", param: "tools") }
                var fn: [(String, JSONValue)] = [("name", .string(name))]
                if let d = t["description"]?.stringValue { fn.append(("description", .string(d))) }
                fn.append(("parameters", t["input_schema"] ?? .object([("type", .string("object"))])))
                return .object([("type", .string("function")), ("function", .object(fn))])
            })))
        }
        if let choice = body["tool_choice"], !choice.isNull {
            switch choice["type"]?.stringValue {
            case "auto": chat.append(("tool_choice", .string("auto")))
            case "none": chat.append(("tool_choice", .string("none")))
            case "any": chat.append(("tool_choice", .string("required")))
            case "tool":
                guard let name = choice["name"]?.stringValue else { throw APIError.invalid("tool_choice {\"type\": \"tool\"} needs a 'name'", param: "tool_choice") }
                chat.append(("tool_choice", .object([("type", .string("function")), ("function", .object([("name", .string(name))]))])))
            default: throw APIError.invalid("tool_choice.type must be \"auto\", \"any\", \"tool\" or \"none\"", param: "tool_choice")
            }
            if let d = choice["disable_parallel_tool_use"], !d.isNull {
                guard let b = d.boolValue else { throw APIError.invalid("tool_choice.disable_parallel_tool_use must be a boolean", param: "tool_choice") }
                chat.append(("parallel_tool_calls", .bool(!b)))
            }
        }
        return .object(chat)
    }

    static func text(of blocks: [JSONValue], at: String) throws(APIError) -> String {
        var out: [String] = []
        for (k, b) in blocks.enumerated() {
            guard b["type"]?.stringValue == "text", let t = b["text"]?.stringValue else {
                throw APIError.invalid("\(at)[\(k)] must be a text block: this server takes text only", param: "messages")
            }
            out.append(t)
        }
        return out.joined(separator: "\n")
    }

    /// Anthropic's stop reason for how a generation ended (a stop string: `stop_sequence`, and the string itself in
    /// the `stop_sequence` field).
    static func stopReason(_ finish: FinishReason, calls: Bool, usage: GenerationUsage) -> String {
        if calls { return "tool_use" }
        if usage.stopSequence != nil { return "stop_sequence" }
        return finish == .length ? "max_tokens" : "end_turn"
    }

    /// Anthropic's usage: `input_tokens` are the prompt tokens computed, those a cached prefix held are
    /// `cache_read_input_tokens` (the three input figures add up to the prompt).
    static func usage(input: Int, cached: Int, output: Int) -> JSONValue {
        .object([("input_tokens", .int(input - cached)), ("cache_creation_input_tokens", .int(0)), ("cache_read_input_tokens", .int(cached)),
                 ("output_tokens", .int(output))])
    }

    static func stopSequence(_ usage: GenerationUsage) -> JSONValue { usage.stopSequence.map { .string($0) } ?? .null }

    /// The answer's content blocks: thinking, text, then each call as `tool_use` (input an object).
    static func blocks(_ parsed: ParsedOutput, ids: () -> String) -> [JSONValue] {
        var out: [JSONValue] = []
        if let r = parsed.reasoning, !r.isEmpty {
            out.append(.object([("type", .string("thinking")), ("thinking", .string(r)), ("signature", .string(""))]))
        }
        if !parsed.content.isEmpty || parsed.toolCalls.isEmpty { out.append(.object([("type", .string("text")), ("text", .string(parsed.content))])) }
        for c in parsed.toolCalls {
            out.append(.object([("type", .string("tool_use")), ("id", .string("toolu_" + (c.id ?? ids()))), ("name", .string(c.name)), ("input", c.arguments)]))
        }
        return out
    }

    /// An error as Anthropic words it: `{"type": "error", "error": {"type", "message"}}`.
    static func errorJSON(_ e: APIError) -> JSONValue {
        let type: String
        switch e.status.code {
        case 400, 413, 422: type = "invalid_request_error"
        case 401: type = "authentication_error"
        case 403: type = "permission_error"
        case 404: type = "not_found_error"
        case 429: type = "rate_limit_error"
        case 503: type = "overloaded_error"
        default: type = "api_error"
        }
        return .object([("type", .string("error")), ("error", .object([("type", .string(type)), ("message", .string(e.message))]))])
    }
}

extension HTTPAPI {
    /// The prompt tokens of a Messages request, and how its answer is read.
    func anthropicPrompt(_ body: JSONValue) async throws(APIError) -> (chat: JSONValue, tokens: [Int32], reading: OutputReading, grammar: String?) {
        let chat = try AnthropicMessages.chatBody(body)
        let options = try ToolCallOptions(body: chat, format: model.outputFormat)
        let prompt = try await model.renderAside(chat: chat)
        return (chat, try model.tokens(ofPrompt: prompt, param: "messages"), outputReading(options, prompt: prompt, api: "messages"),
                try options.grammar(tokenizer: model.tokenizer))
    }

    func countTokens(_ body: JSONValue) async throws(APIError) -> Response {
        var b = body
        // count_tokens takes no max_tokens; the conversion wants one.
        if case .object(var pairs) = b, !pairs.contains(where: { $0.0 == "max_tokens" }) { pairs.append(("max_tokens", .int(1))); b = .object(pairs) }
        let (_, tokens, _, _) = try await anthropicPrompt(b)
        return json(.object([("input_tokens", .int(tokens.count))]))
    }

    func messages(_ body: JSONValue) async throws(APIError) -> Response {
        let (chat, tokens, reading, grammar) = try await anthropicPrompt(body)
        let p = try parameters(chat, chat: true, forced: grammar, reading: reading)
        if let why = health() { throw APIError.unavailable(why) }
        let request = GenerationRequest(prompt: tokens, maxTokens: p.maxTokens ?? max(0, model.contextLength - tokens.count), stop: p.stop, sampling: p.sampling,
                                        cachePrompt: p.cachePrompt)
        if let e = scheduler.refusal(for: request) { throw APIError(e, param: "messages") }
        let (sequence, events) = scheduler.submit(request)
        let id = "msg_" + ids.next()
        let callIDs: @Sendable () -> String = { [ids] in ids.next() }
        func message(content: [JSONValue], stop: JSONValue, output: Int, sequence: JSONValue = .null, cached: Int = 0) -> JSONValue {
            .object([("id", .string(id)), ("type", .string("message")), ("role", .string("assistant")), ("model", .string(model.id)),
                     ("content", .array(content)), ("stop_reason", stop), ("stop_sequence", sequence),
                     ("usage", AnthropicMessages.usage(input: tokens.count, cached: cached, output: output))])
        }
        if p.stream {
            return anthropicStream(events, sequence: sequence, start: message(content: [], stop: .null, output: 0), reading: reading, callIDs: callIDs)
        }
        let answer = try await collect(events)
        let parsed = reading.parse(answer.text)
        return json(message(content: AnthropicMessages.blocks(parsed, ids: callIDs),
                            stop: .string(AnthropicMessages.stopReason(answer.finish, calls: !parsed.toolCalls.isEmpty, usage: answer.usage)),
                            output: answer.usage.completionTokens, sequence: AnthropicMessages.stopSequence(answer.usage), cached: answer.usage.cachedTokens))
    }

    /// Anthropic's events: `message_start`, then per block `content_block_start` / `_delta`s / `_stop`, then
    /// `message_delta` (stop reason, output tokens) and `message_stop`. The answer is read as it comes
    /// (`AnswerStream`): a `thinking` block for the reasoning, `text` blocks for the content, a `tool_use` block per
    /// call (its input in `input_json_delta` fragments); an answer with neither text nor calls has an empty text block.
    func anthropicStream(_ events: AsyncThrowingStream<GenerationEvent, Error>, sequence: UInt64, start: JSONValue, reading: OutputReading,
                         callIDs: @escaping @Sendable () -> String) -> Response {
        let scheduler = self.scheduler
        let body = ResponseBody { writer in
            func send(_ event: String, _ v: JSONValue) async throws {
                try await writer.write(ByteBuffer(string: "event: \(event)\ndata: " + v.render() + "\n\n"))
            }
            func obj(_ pairs: [(String, JSONValue)]) -> JSONValue { .object(pairs) }
            do {
                try await send("message_start", obj([("type", .string("message_start")), ("message", start)]))
                enum Block { case thinking, text, tool }
                var index = 0, open: Block?, sawText = false
                var reader = reading.stream()
                func close() async throws {
                    guard open != nil else { return }
                    try await send("content_block_stop", obj([("type", .string("content_block_stop")), ("index", .int(index))]))
                    open = nil
                    index += 1
                }
                func begin(_ kind: Block, _ block: JSONValue) async throws {
                    try await close()
                    try await send("content_block_start", obj([("type", .string("content_block_start")), ("index", .int(index)), ("content_block", block)]))
                    open = kind
                }
                func delta(_ d: JSONValue) async throws {
                    try await send("content_block_delta", obj([("type", .string("content_block_delta")), ("index", .int(index)), ("delta", d)]))
                }
                func take(_ read: [AnswerStream.Event]) async throws {
                    for e in read {
                        switch e {
                        case .reasoning(let t):
                            if open != .thinking { try await begin(.thinking, obj([("type", .string("thinking")), ("thinking", .string(""))])) }
                            try await delta(obj([("type", .string("thinking_delta")), ("thinking", .string(t))]))
                        case .content(let t):
                            if open != .text { try await begin(.text, obj([("type", .string("text")), ("text", .string(""))])); sawText = true }
                            try await delta(obj([("type", .string("text_delta")), ("text", .string(t))]))
                        case .callStart(_, let name, let id):
                            try await begin(.tool, obj([("type", .string("tool_use")), ("id", .string("toolu_" + (id ?? callIDs()))), ("name", .string(name)),
                                                        ("input", .object([]))]))
                        case .arguments(_, let fragment):
                            if open == .tool { try await delta(obj([("type", .string("input_json_delta")), ("partial_json", .string(fragment))])) }
                        }
                    }
                }
                do {
                    for try await e in events {
                        switch e {
                        case .token(_, let piece, _):
                            try await take(reader.feed(piece))
                        case .finished(let reason, let usage):
                            try await take(reader.finish())
                            if let parsed = reader.parsed { reading.counted(parsed, reader.text) }
                            // Anthropic's answer always has a text block, if empty, unless it is calls.
                            if !sawText && !reader.sentCalls { try await begin(.text, obj([("type", .string("text")), ("text", .string(""))])) }
                            try await close()
                            try await send("message_delta", obj([("type", .string("message_delta")),
                                                                 ("delta", obj([("stop_reason", .string(AnthropicMessages.stopReason(reason, calls: reader.sentCalls, usage: usage))),
                                                                               ("stop_sequence", AnthropicMessages.stopSequence(usage))])),
                                                                 ("usage", AnthropicMessages.usage(input: usage.promptTokens, cached: usage.cachedTokens, output: usage.completionTokens))]))
                            try await send("message_stop", obj([("type", .string("message_stop"))]))
                        }
                    }
                } catch let e as GenerationError {
                    try await send("error", AnthropicMessages.errorJSON(APIError(e)))
                } catch is CancellationError {
                    try await send("error", AnthropicMessages.errorJSON(.internal("the generation was cancelled")))
                }
                try await writer.finish(nil)
            } catch {
                scheduler.cancel(sequence, clientGone: true)
                throw error
            }
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }
}
