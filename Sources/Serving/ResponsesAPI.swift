import Foundation
import Generation
import Hummingbird
import JSON
import Model
import NIOCore
import Synchronization

/// OpenAI's Responses API (`POST /v1/responses`) over the chat path: `instructions` and `input` (a string, or
/// message, `function_call` and `function_call_output` items) become the chat messages the template renders;
/// the answer comes back as `reasoning`, `message` and `function_call` output items, or as the stream of
/// `response.*` events. `previous_response_id` continues a conversation kept in memory (see `ResponseStore`).
enum ResponsesAPI {
    /// The chat body of a Responses request, after the conversation `previous` (its messages so far).
    static func chatBody(_ body: JSONValue, previous: [JSONValue]) throws(APIError) -> JSONValue {
        var messages = previous
        if let i = body["instructions"], !i.isNull {
            guard let text = i.stringValue else { throw APIError.invalid("'instructions' must be a string", param: "instructions") }
            // Instructions belong to this request only: they replace any system message carried over.
            messages.removeAll { $0["role"]?.stringValue == "system" }
            messages.insert(.object([("role", .string("system")), ("content", .string(text))]), at: 0)
        }
        switch body["input"] {
        case .string(let s)?:
            messages.append(.object([("role", .string("user")), ("content", .string(s))]))
        case .array(let items)?:
            for (i, item) in items.enumerated() { try append(item, at: i, to: &messages) }
        default:
            throw APIError.invalid("'input' must be a string or a list of items", param: "input")
        }
        var chat: [(String, JSONValue)] = [("messages", .array(messages))]
        if let m = body["max_output_tokens"], !m.isNull {
            guard let n = m.intValue, n >= 1 else { throw APIError.invalid("'max_output_tokens' must be a positive integer", param: "max_output_tokens") }
            chat.append(("max_tokens", .int(n)))
        }
        for key in ["temperature", "top_p", "stream", "parallel_tool_calls", "seed"] { if let v = body[key], !v.isNull { chat.append((key, v)) } }
        // Structured output: Responses' flat `text.format` as chat's `response_format`.
        if let format = body["text"]?["format"], !format.isNull {
            switch format["type"]?.stringValue {
            case "text"?: break
            case "json_object"?: chat.append(("response_format", .object([("type", .string("json_object"))])))
            case "json_schema"?:
                guard let schema = format["schema"], !schema.isNull else { throw APIError.invalid("'text.format.schema' is missing", param: "text.format.schema") }
                chat.append(("response_format", .object([("type", .string("json_schema")),
                                                         ("json_schema", .object([("name", format["name"] ?? .string("output")), ("schema", schema)]))])))
            default:
                throw APIError.invalid("'text.format.type' must be text, json_object or json_schema", param: "text.format.type")
            }
        }
        if case .array(let tools)? = body["tools"], !tools.isEmpty {
            chat.append(("tools", .array(try tools.enumerated().map { i, t throws(APIError) in
                guard t["type"]?.stringValue == "function", let name = t["name"]?.stringValue, !name.isEmpty else {
                    throw APIError.invalid("tools[\(i)] must be {\"type\": \"function\", \"name\": …, \"parameters\": …} (only function tools are served)", param: "tools")
                }
                var fn: [(String, JSONValue)] = [("name", .string(name))]
                if let d = t["description"]?.stringValue { fn.append(("description", .string(d))) }
                fn.append(("parameters", t["parameters"] ?? .object([("type", .string("object"))])))
                return .object([("type", .string("function")), ("function", .object(fn))])
            })))
        }
        if let c = body["tool_choice"], !c.isNull {
            if let s = c.stringValue {
                chat.append(("tool_choice", .string(s)))
            } else if c["type"]?.stringValue == "function", let name = c["name"]?.stringValue {
                chat.append(("tool_choice", .object([("type", .string("function")), ("function", .object([("name", .string(name))]))])))
            } else {
                throw APIError.invalid("'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"name\": …}", param: "tool_choice")
            }
        }
        return .object(chat)
    }

    /// One input item as chat messages: a message, a call the model made (merged into the assistant turn before
    /// it), or a call's output (a tool message).
    static func append(_ item: JSONValue, at i: Int, to messages: inout [JSONValue]) throws(APIError) {
        let at = "input[\(i)]"
        switch item["type"]?.stringValue ?? "message" {
        case "message":
            guard let role = item["role"]?.stringValue, ["user", "assistant", "system", "developer"].contains(role) else {
                throw APIError.invalid("\(at).role must be user, assistant, system or developer", param: "input")
            }
            let text: String
            switch item["content"] {
            case .string(let s)?: text = s
            case .array(let parts)?:
                var texts: [String] = []
                for (k, p) in parts.enumerated() {
                    guard let t = p["text"]?.stringValue, ["input_text", "output_text", "text"].contains(p["type"]?.stringValue ?? "") else {
                        throw APIError.invalid("\(at).content[\(k)] must be an input_text or output_text part: this server takes text only", param: "input")
                    }
                    texts.append(t)
                }
                text = texts.joined(separator: "\n")
            default: throw APIError.invalid("\(at).content must be a string or a list of text parts", param: "input")
            }
            messages.append(.object([("role", .string(role == "developer" ? "system" : role)), ("content", .string(text))]))
        case "function_call":
            guard let callID = item["call_id"]?.stringValue, let name = item["name"]?.stringValue, let args = item["arguments"]?.stringValue else {
                throw APIError.invalid("\(at) is a function_call without 'call_id', 'name' and 'arguments' (JSON text)", param: "input")
            }
            let call = JSONValue.object([("id", .string(callID)), ("type", .string("function")),
                                         ("function", .object([("name", .string(name)), ("arguments", .string(args))]))])
            // Calls right after an assistant message (or after other calls) belong to that turn.
            if case .object(var last)? = messages.last, last.contains(where: { $0.0 == "role" && $0.1.stringValue == "assistant" }) {
                if let k = last.firstIndex(where: { $0.0 == "tool_calls" }), case .array(let calls) = last[k].1 {
                    last[k].1 = .array(calls + [call])
                } else {
                    last.append(("tool_calls", .array([call])))
                }
                messages[messages.count - 1] = .object(last)
            } else {
                messages.append(.object([("role", .string("assistant")), ("content", .null), ("tool_calls", .array([call]))]))
            }
        case "function_call_output":
            guard let callID = item["call_id"]?.stringValue else { throw APIError.invalid("\(at) is a function_call_output without 'call_id'", param: "input") }
            let output = item["output"]?.stringValue ?? (item["output"]?.render() ?? "")
            messages.append(.object([("role", .string("tool")), ("tool_call_id", .string(callID)), ("content", .string(output))]))
        case "reasoning":
            break  // the model's earlier reasoning: templates drop it from the history
        case let type:
            throw APIError.invalid("\(at): items of type '\(type)' are not supported (message, function_call, function_call_output)", param: "input")
        }
    }

    /// The output items of an answer: reasoning, the message, each call.
    static func output(_ parsed: ParsedOutput, ids: () -> String) -> [JSONValue] {
        var items: [JSONValue] = []
        if let r = parsed.reasoning, !r.isEmpty { items.append(reasoning(r, id: "rs_" + ids())) }
        if !parsed.content.isEmpty || parsed.toolCalls.isEmpty { items.append(message(parsed.content, id: "msg_" + ids(), status: "completed")) }
        for c in parsed.toolCalls { items.append(call(c, id: "fc_" + ids(), callID: c.id ?? "call_" + ids(), status: "completed")) }
        return items
    }

    static func message(_ text: String, id: String, status: String) -> JSONValue {
        .object([("type", .string("message")), ("id", .string(id)), ("status", .string(status)), ("role", .string("assistant")),
                 ("content", .array(status == "in_progress" ? [] : [textPart(text)]))])
    }

    static func textPart(_ text: String) -> JSONValue {
        .object([("type", .string("output_text")), ("text", .string(text)), ("annotations", .array([]))])
    }

    static func call(_ c: ToolCall, id: String, callID: String, status: String) -> JSONValue {
        callItem(name: c.name, arguments: status == "in_progress" ? "" : c.arguments.render(), id: id, callID: callID, status: status)
    }

    static func callItem(name: String, arguments: String, id: String, callID: String, status: String) -> JSONValue {
        .object([("type", .string("function_call")), ("id", .string(id)), ("call_id", .string(callID)), ("name", .string(name)),
                 ("arguments", .string(arguments)), ("status", .string(status))])
    }

    static func reasoning(_ text: String, id: String) -> JSONValue {
        .object([("type", .string("reasoning")), ("id", .string(id)), ("summary", .array([])),
                 ("content", .array([.object([("type", .string("reasoning_text")), ("text", .string(text))])]))])
    }

    /// The chat messages an answer adds to the conversation (for `previous_response_id`).
    static func assistantMessage(_ parsed: ParsedOutput, output: [JSONValue]) -> JSONValue {
        var fields: [(String, JSONValue)] = [("role", .string("assistant")), ("content", .string(parsed.content))]
        let calls: [JSONValue] = output.compactMap { item in
            guard item["type"]?.stringValue == "function_call", let callID = item["call_id"], let name = item["name"], let args = item["arguments"] else { return nil }
            return .object([("id", callID), ("type", .string("function")), ("function", .object([("name", name), ("arguments", args)]))])
        }
        if !calls.isEmpty { fields.append(("tool_calls", .array(calls))) }
        return .object(fields)
    }
}

/// The conversations `previous_response_id` can continue: each stored response's chat messages (its input and
/// answer), the most recent `capacity` of them (a process-local cache: a restart forgets them, and a request
/// naming one that is gone gets a 400 saying so).
final class ResponseStore: Sendable {
    let capacity: Int
    private let entries = Mutex<(order: [String], messages: [String: [JSONValue]])>(([], [:]))

    init(capacity: Int = 1024) { self.capacity = capacity }

    func messages(of id: String) -> [JSONValue]? { entries.withLock { $0.messages[id] } }

    func keep(_ id: String, _ messages: [JSONValue]) {
        entries.withLock { e in
            e.messages[id] = messages
            e.order.append(id)
            while e.order.count > capacity { e.messages[e.order.removeFirst()] = nil }
        }
    }
}

extension HTTPAPI {
    func responses(_ body: JSONValue) async throws(APIError) -> Response {
        var previous: [JSONValue] = []
        if let p = body["previous_response_id"], !p.isNull {
            guard let id = p.stringValue, let kept = responseStore.messages(of: id) else {
                throw APIError.invalid("previous_response_id '\(body["previous_response_id"]?.stringValue ?? "?")' is not known here (this server keeps the last \(responseStore.capacity) responses, in memory)",
                                       param: "previous_response_id")
            }
            previous = kept
        }
        let chat = try ResponsesAPI.chatBody(body, previous: previous)
        let options = try ToolCallOptions(body: chat, format: model.outputFormat)
        let prompt = try await model.renderAside(chat: chat)
        let reading = outputReading(options, prompt: prompt, api: "responses")
        // As chat: a model with no calls to read and no reasoning gives its text as it is.
        let reads = options.parses
        let tokens = try model.tokens(ofPrompt: prompt, param: "input")
        let p = try parameters(chat, chat: true, forced: options.grammar(tokenizer: model.tokenizer), reading: reads ? reading : nil)
        if let why = health() { throw APIError.unavailable(why) }
        let request = GenerationRequest(prompt: tokens, maxTokens: p.maxTokens ?? max(0, model.contextLength - tokens.count), stop: p.stop, sampling: p.sampling,
                                        cachePrompt: p.cachePrompt)
        if let e = scheduler.refusal(for: request) { throw APIError(e, param: "input") }
        let (sequence, events) = scheduler.submit(request)
        let id = "resp_" + ids.next()
        let created = Int(Date().timeIntervalSince1970)
        let store = body["store"]?.boolValue ?? true
        let conversation = (chat["messages"]?.arrayValue ?? [])
        let (ids, responseStore) = (self.ids, self.responseStore)
        let modelID = model.id
        /// The response object: `status` in_progress (no output yet) or completed / incomplete.
        let response: @Sendable (String, [JSONValue], FinishReason?, GenerationUsage?) -> JSONValue = { status, output, finish, usage in
            var fields: [(String, JSONValue)] = [
                ("id", .string(id)), ("object", .string("response")), ("created_at", .int(created)), ("status", .string(status)),
                ("model", .string(modelID)), ("output", .array(output)), ("error", .null),
                ("incomplete_details", finish == .length ? .object([("reason", .string("max_output_tokens"))]) : .null),
                ("instructions", body["instructions"] ?? .null), ("previous_response_id", body["previous_response_id"] ?? .null),
                ("tools", body["tools"] ?? .array([])), ("tool_choice", body["tool_choice"] ?? .string("auto")),
                ("parallel_tool_calls", body["parallel_tool_calls"] ?? .bool(true)), ("temperature", body["temperature"] ?? .null),
                ("top_p", body["top_p"] ?? .null), ("max_output_tokens", body["max_output_tokens"] ?? .null),
                ("text", body["text"] ?? .object([("format", .object([("type", .string("text"))]))])), ("store", .bool(store)),
            ]
            if let usage {
                fields.append(("usage", .object([("input_tokens", .int(usage.promptTokens)), ("input_tokens_details", .object([("cached_tokens", .int(usage.cachedTokens))])),
                                                 ("output_tokens", .int(usage.completionTokens)), ("output_tokens_details", .object([("reasoning_tokens", .int(0))])),
                                                 ("total_tokens", .int(usage.promptTokens + usage.completionTokens))])))
            } else {
                fields.append(("usage", .null))
            }
            return .object(fields)
        }
        /// The answer's output items kept for `previous_response_id`, then the finished response.
        let finished: @Sendable (ParsedOutput, [JSONValue], FinishReason, GenerationUsage) -> JSONValue = { parsed, output, finish, usage in
            if store { responseStore.keep(id, conversation + [ResponsesAPI.assistantMessage(parsed, output: output)]) }
            return response(finish == .length ? "incomplete" : "completed", output, finish, usage)
        }
        if !p.stream {
            let answer = try await collect(events)
            let parsed = reads ? reading.parse(answer.text) : ParsedOutput(content: answer.text)
            return json(finished(parsed, ResponsesAPI.output(parsed, ids: { ids.next() }), answer.finish, answer.usage))
        }
        return responsesStream(events, sequence: sequence, start: response("in_progress", [], nil, nil), reading: reads ? reading : nil, finished: finished)
    }

    /// The `response.*` events: created, in_progress, then per output item added / deltas / done, then
    /// completed (or incomplete). The answer is read as it comes (`AnswerStream`, or its text as it is without a
    /// `reading`): a `reasoning` item (`response.reasoning_text.delta`), `message` items (`response.output_text.delta`)
    /// and a `function_call` item per call (`response.function_call_arguments.delta`); the final response holds the
    /// items as they were streamed.
    func responsesStream(_ events: AsyncThrowingStream<GenerationEvent, Error>, sequence: UInt64, start: JSONValue, reading: OutputReading?,
                         finished: @escaping @Sendable (ParsedOutput, [JSONValue], FinishReason, GenerationUsage) -> JSONValue) -> Response {
        let (scheduler, ids) = (self.scheduler, self.ids)
        let body = ResponseBody { writer in
            var number = 0
            func send(_ type: String, _ fields: [(String, JSONValue)]) async throws {
                let v = JSONValue.object([("type", .string(type)), ("sequence_number", .int(number))] + fields)
                number += 1
                try await writer.write(ByteBuffer(string: "event: \(type)\ndata: " + v.render() + "\n\n"))
            }
            do {
                try await send("response.created", [("response", start)])
                try await send("response.in_progress", [("response", start)])
                enum Kind { case reasoning, message, call }
                /// The item being written: its kind, id, call id and name (calls), and its text so far.
                var item: (kind: Kind, id: String, callID: String, name: String, text: String)?
                var output: [JSONValue] = []
                var reader = reading?.stream()
                var text = ""
                func place(_ fields: [(String, JSONValue)] = []) -> [(String, JSONValue)] {
                    [("item_id", .string(item!.id)), ("output_index", .int(output.count))] + fields
                }
                func finishItem() async throws {
                    guard let it = item else { return }
                    let done: JSONValue
                    switch it.kind {
                    case .reasoning:
                        try await send("response.reasoning_text.done", place([("content_index", .int(0)), ("text", .string(it.text))]))
                        done = ResponsesAPI.reasoning(it.text, id: it.id)
                    case .message:
                        try await send("response.output_text.done", place([("content_index", .int(0)), ("text", .string(it.text)), ("logprobs", .array([]))]))
                        try await send("response.content_part.done", place([("content_index", .int(0)), ("part", ResponsesAPI.textPart(it.text))]))
                        done = ResponsesAPI.message(it.text, id: it.id, status: "completed")
                    case .call:
                        try await send("response.function_call_arguments.done", place([("arguments", .string(it.text))]))
                        done = ResponsesAPI.callItem(name: it.name, arguments: it.text, id: it.id, callID: it.callID, status: "completed")
                    }
                    try await send("response.output_item.done", [("output_index", .int(output.count)), ("item", done)])
                    output.append(done)
                    item = nil
                }
                func begin(_ kind: Kind, name: String = "", callID: String? = nil) async throws {
                    try await finishItem()
                    let prefix = kind == .reasoning ? "rs_" : kind == .message ? "msg_" : "fc_"
                    item = (kind, prefix + ids.next(), callID ?? "call_" + ids.next(), name, "")
                    let added: JSONValue
                    switch kind {
                    case .reasoning: added = .object([("type", .string("reasoning")), ("id", .string(item!.id)), ("summary", .array([]))])
                    case .message: added = ResponsesAPI.message("", id: item!.id, status: "in_progress")
                    case .call: added = ResponsesAPI.callItem(name: name, arguments: "", id: item!.id, callID: item!.callID, status: "in_progress")
                    }
                    try await send("response.output_item.added", [("output_index", .int(output.count)), ("item", added)])
                    if kind == .message { try await send("response.content_part.added", place([("content_index", .int(0)), ("part", ResponsesAPI.textPart(""))])) }
                }
                func take(_ read: [AnswerStream.Event]) async throws {
                    for e in read {
                        switch e {
                        case .reasoning(let t):
                            if item?.kind != .reasoning { try await begin(.reasoning) }
                            item!.text += t
                            try await send("response.reasoning_text.delta", place([("content_index", .int(0)), ("delta", .string(t))]))
                        case .content(let t):
                            if item?.kind != .message { try await begin(.message) }
                            item!.text += t
                            try await send("response.output_text.delta", place([("content_index", .int(0)), ("delta", .string(t)), ("logprobs", .array([]))]))
                        case .callStart(_, let name, let id):
                            try await begin(.call, name: name, callID: id)
                        case .arguments(_, let fragment):
                            guard item?.kind == .call else { continue }
                            item!.text += fragment
                            try await send("response.function_call_arguments.delta", place([("delta", .string(fragment))]))
                        }
                    }
                }
                do {
                    for try await e in events {
                        switch e {
                        case .token(_, let piece, _):
                            text += piece
                            if reader != nil { try await take(reader!.feed(piece)) } else if !piece.isEmpty { try await take([.content(piece)]) }
                        case .finished(let reason, let usage):
                            var parsed = ParsedOutput(content: text)
                            if reader != nil {
                                try await take(reader!.finish())
                                parsed = reader!.parsed ?? parsed
                                reading?.counted(parsed, text)
                            }
                            // An answer with no text and no calls still has its (empty) message.
                            if !output.contains(where: { $0["type"]?.stringValue == "message" }) && item?.kind != .message && !(reader?.sentCalls ?? false) {
                                try await begin(.message)
                            }
                            try await finishItem()
                            let final = finished(parsed, output, reason, usage)
                            try await send(final["status"]?.stringValue == "incomplete" ? "response.incomplete" : "response.completed", [("response", final)])
                        }
                    }
                } catch let e as GenerationError {
                    try await send("error", [("code", .string(APIError(e).code ?? "error")), ("message", .string(e.message)), ("param", .null)])
                } catch is CancellationError {
                    try await send("error", [("code", .string("cancelled")), ("message", .string("the generation was cancelled")), ("param", .null)])
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
