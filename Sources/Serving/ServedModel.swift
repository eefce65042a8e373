import ChatTemplate
import Foundation
import JSON
import Tokenizer

/// What the HTTP API says about the model it serves and how it turns a conversation into tokens: its name,
/// context, tokenizer and chat template (the GGUF's `tokenizer.chat_template`, a `--chat-template` file, or
/// llama-server's chatml fallback).
public struct ServedModel: Sendable {
    public let id: String
    public let contextLength: Int
    public let tokenizer: Tokenizer
    /// The template, or why it cannot be used (chat requests then fail with that reason; completions still work).
    public let template: Result<ChatTemplate, TemplateError>
    public let templateOrigin: String
    /// How the model writes reasoning and tool calls, as its template teaches it.
    public let outputFormat: OutputFormat
    public let created: Int
    public let clock: ChatTemplate.Clock
    /// Bytes of the longest token's text: no token covers more of a prompt, so a prompt longer than
    /// `(contextLength + 1) × maxTokenBytes` bytes cannot fit, and is refused before it is tokenized (which
    /// costs seconds and hundreds of MB for a prompt of megabytes).
    let maxTokenBytes: Int

    /// A conversation that ends with an assistant message is continued from that message (llama-server's
    /// default; `serve --no-prefill-assistant` or a request's `"continue_final_message": false` turn it off).
    public let prefillAssistant: Bool

    public init(id: String, contextLength: Int, tokenizer: Tokenizer, templateSource: String?, templateOrigin: String,
                clock: ChatTemplate.Clock = .system, prefillAssistant: Bool = true) {
        self.prefillAssistant = prefillAssistant
        self.id = id
        self.contextLength = contextLength
        self.tokenizer = tokenizer
        self.templateOrigin = templateSource == nil ? "chatml (the model has no chat template)" : templateOrigin
        do { template = .success(try ChatTemplate(templateSource ?? ChatTemplate.chatml)) } catch { template = .failure(error) }
        outputFormat = (try? template.get()).map { OutputFormat.of(template: $0.source) } ?? .plain
        created = Int(Date().timeIntervalSince1970)
        self.clock = clock
        maxTokenBytes = max(1, tokenizer.vocab.tokens.lazy.map(\.count).max() ?? 1)
    }

    func tokenText(_ id: Int32?) -> String {
        guard let id, Int(id) < tokenizer.vocab.count else { return "" }
        return String(decoding: tokenizer.vocab.tokens[Int(id)], as: UTF8.self)
    }

    /// The chat body's `messages` (and `tools`, `chat_template_kwargs`) rendered with the template.
    ///
    /// `add_generation_prompt` (default true) is the template's own switch. A last message from the assistant
    /// (text, no calls) is the start of the answer: the conversation before it is rendered with the generation
    /// prompt and its text follows, so the model goes on from it — unless `continue_final_message` is false.
    public func render(chat body: JSONValue) throws(APIError) -> String {
        let f = Fields(body)
        let addGenerationPrompt = try f.bool("add_generation_prompt") ?? true
        let continueFinal = try f.bool("continue_final_message") ?? prefillAssistant
        guard case .array(var raw)? = body["messages"], !raw.isEmpty else {
            throw APIError.invalid("'messages' must be a non-empty list of {\"role\", \"content\"} objects", param: "messages")
        }
        if continueFinal, let last = raw.last, last["role"]?.stringValue == "assistant", last["tool_calls"] == nil || last["tool_calls"]?.isNull == true,
           let text = Self.text(of: last["content"]) {
            raw.removeLast()
            guard !raw.isEmpty else { throw APIError.invalid("a conversation cannot be only an assistant message to continue", param: "messages") }
            var before = body
            if case .object(var pairs) = before, let i = pairs.firstIndex(where: { $0.0 == "messages" }) {
                pairs[i].1 = .array(raw)
                before = .object(pairs)
            }
            return try render(chat: before, addGenerationPrompt: true) + text
        }
        return try render(chat: body, addGenerationPrompt: addGenerationPrompt)
    }

    /// A message's text: a string, or its text parts joined (nil for anything else).
    static func text(of content: JSONValue?) -> String? {
        switch content {
        case .string(let s)?: return s
        case .array(let parts)?:
            let texts = parts.compactMap { $0["type"]?.stringValue == "text" ? $0["text"]?.stringValue : nil }
            return texts.count == parts.count ? texts.joined(separator: "\n") : nil
        default: return nil
        }
    }

    func render(chat body: JSONValue, addGenerationPrompt: Bool) throws(APIError) -> String {
        guard case .array(let raw)? = body["messages"], !raw.isEmpty else {
            throw APIError.invalid("'messages' must be a non-empty list of {\"role\", \"content\"} objects", param: "messages")
        }
        var messages: [JSONValue] = []
        // Ids of the calls the assistant made so far: a tool message answers one of them (as OpenAI checks).
        var calls: Set<String> = []
        for (i, m) in raw.enumerated() {
            guard case .object(var fields) = m, let role = m["role"]?.stringValue, !role.isEmpty else {
                throw APIError.invalid("messages[\(i)] must be an object with a string 'role'", param: "messages")
            }
            for call in m["tool_calls"]?.arrayValue ?? [] { if let id = call["id"]?.stringValue { calls.insert(id) } }
            if role == "tool" {
                guard let id = m["tool_call_id"]?.stringValue else {
                    throw APIError.invalid("messages[\(i)] (role tool) needs the 'tool_call_id' of the call it answers", param: "messages")
                }
                guard calls.contains(id) else {
                    throw APIError.invalid("messages[\(i)] answers the call '\(id)', which no earlier assistant message made (its tool_calls ids: \(calls.sorted().joined(separator: ", ")))", param: "messages")
                }
            }
            // Content as a list of parts: their text joined, as llama-server does for templates that take strings.
            if let idx = fields.firstIndex(where: { $0.0 == "content" }) {
                switch fields[idx].1 {
                case .string, .null: break
                case .array(let parts):
                    var texts: [String] = []
                    for p in parts {
                        guard p["type"]?.stringValue == "text", let t = p["text"]?.stringValue else {
                            throw APIError.invalid("messages[\(i)].content parts must be {\"type\": \"text\", \"text\": ...}; this server takes text only", param: "messages")
                        }
                        texts.append(t)
                    }
                    fields[idx].1 = .string(texts.joined(separator: "\n"))
                default:
                    throw APIError.invalid("messages[\(i)].content must be a string or a list of text parts", param: "messages")
                }
            } else if m["tool_calls"] == nil {
                throw APIError.invalid("messages[\(i)] has no 'content'", param: "messages")
            }
            // Calls in the history as templates read them: arguments an object (OpenAI clients send JSON text;
            // templates write `arguments | tojson` or walk its items), content "" rather than null next to calls.
            if let idx = fields.firstIndex(where: { $0.0 == "tool_calls" }), case .array(let calls) = fields[idx].1 {
                fields[idx].1 = .array(try calls.enumerated().map { j, call throws(APIError) in
                    guard case .object(var c) = call, let f = c.firstIndex(where: { $0.0 == "function" }), case .object(var fn) = c[f].1,
                          fn.contains(where: { $0.0 == "name" && $0.1.stringValue != nil }) else {
                        throw APIError.invalid("messages[\(i)].tool_calls[\(j)] must be {\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\"}}", param: "messages")
                    }
                    if let a = fn.firstIndex(where: { $0.0 == "arguments" }), case .string(let text) = fn[a].1 {
                        guard let parsed = try? JSONValue.parse(text), case .object = parsed else {
                            throw APIError.invalid("messages[\(i)].tool_calls[\(j)].function.arguments must be a JSON object (as text or as an object)", param: "messages")
                        }
                        fn[a].1 = parsed
                    }
                    c[f].1 = .object(fn)
                    return .object(c)
                })
                if let ci = fields.firstIndex(where: { $0.0 == "content" }), fields[ci].1.isNull { fields[ci].1 = .string("") }
            }
            messages.append(.object(fields))
        }
        var tools: [JSONValue]?
        if let t = body["tools"], !t.isNull {
            guard case .array(let list) = t else { throw APIError.invalid("'tools' must be a list", param: "tools") }
            if !list.isEmpty { tools = list }
        }
        var extra: [(String, JSONValue)] = []
        if let k = body["chat_template_kwargs"], !k.isNull {
            guard case .object(let pairs) = k else { throw APIError.invalid("'chat_template_kwargs' must be an object", param: "chat_template_kwargs") }
            extra = pairs
        }
        let template: ChatTemplate
        switch self.template {
        case .success(let t): template = t
        case .failure(let e):
            throw APIError.internal("the chat template (\(templateOrigin)) cannot be used: \(e); give one with --chat-template FILE, or use /v1/completions")
        }
        do {
            return try template.render(messages: messages, tools: tools, addGenerationPrompt: addGenerationPrompt,
                                       bosToken: tokenText(tokenizer.vocab.bos), eosToken: tokenText(tokenizer.vocab.eos),
                                       extra: extra, clock: clock)
        } catch .refused(let m) {
            throw APIError.invalid("the model's chat template refuses this conversation: \(m)", param: "messages")
        } catch .exceeded(let m) {
            throw APIError(status: .internalServerError, message: "the chat template (\(templateOrigin)) went past its budget: \(m); give another with --chat-template FILE, or use /v1/completions",
                           type: "server_error", code: "template_budget_exceeded")
        } catch .render(let m, let line) {
            throw APIError.invalid("the chat template could not render this conversation (template line \(line)): \(m)", param: "messages")
        } catch {
            throw APIError.internal("\(error)")
        }
    }

    /// `render(chat:)` on a thread of its own (GCD's, not Swift's few cooperative threads): a slow template can
    /// never hold the threads the HTTP server, `/health` and shutdown run on. Its budget bounds how long it takes.
    public func renderAside(chat body: JSONValue) async throws(APIError) -> String {
        let result: Result<String, APIError> = await withCheckedContinuation { c in
            DispatchQueue.global(qos: .userInitiated).async {
                c.resume(returning: Result { () throws(APIError) in try self.render(chat: body) })
            }
        }
        return try result.get()
    }

    /// Tokens of a rendered prompt: special tokens in the text are parsed as such, and the BOS the tokenizer adds
    /// is not doubled when the template already wrote one.
    public func tokens(ofPrompt text: String, param: String = "prompt") throws(APIError) -> [Int32] {
        let bytes = text.utf8.count
        if bytes > (contextLength + 1) * maxTokenBytes {
            throw APIError.invalid("the prompt is \(bytes) bytes, at least \(bytes / maxTokenBytes) tokens, but the context holds \(contextLength); use a shorter prompt or a larger context",
                                   param: param, code: "context_length_exceeded")
        }
        var ids = tokenizer.encode(text, addSpecial: true, parseSpecial: true)
        if let bos = tokenizer.vocab.bos, ids.count >= 2, ids[0] == bos, ids[1] == bos { ids.removeFirst() }
        return ids
    }
}
