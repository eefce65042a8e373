import Foundation
import Generation
import HTTPTypes
import Hummingbird
import JSON
import Model
import NIOCore
import Telemetry
import Tokenizer

/// The OpenAI-compatible HTTP API over a scheduler (a cluster's or this process's): chat and text completions
/// with SSE streaming, models, health, tokenize/detokenize/apply-template as llama-server has them, the cluster's
/// status. Every failure is an OpenAI error body; the server keeps serving.
public struct HTTPAPI: Sendable {
    public let scheduler: Scheduler
    public let model: ServedModel
    /// nil when every worker is ready, else why the server cannot serve (GET /health answers 503 with it).
    public let health: @Sendable () -> String?
    /// The cluster's status as `conclave status --json` prints it (GET /v1/cluster); nil in one process.
    public let cluster: @Sendable () -> JSONValue?
    /// `GET /v1/cluster/experts`: the routers' choices per layer and expert (nil for a dense model).
    public let experts: @Sendable () -> JSONValue?
    public let apiKey: String?
    /// The registry GET /metrics exposes; `beforeScrape` mirrors other processes' figures into it first.
    public let metrics: MetricsRegistry?
    public let beforeScrape: @Sendable () -> Void
    let ids = IDSource()
    /// Responses that `previous_response_id` can continue.
    let responseStore = ResponseStore()
    /// Largest request body read (a hostile client cannot make the server buffer more).
    public static let maxBody = 16 << 20

    public init(scheduler: Scheduler, model: ServedModel, apiKey: String? = nil, metrics: MetricsRegistry? = nil,
                health: @escaping @Sendable () -> String? = { nil }, cluster: @escaping @Sendable () -> JSONValue? = { nil },
                experts: @escaping @Sendable () -> JSONValue? = { nil }, beforeScrape: @escaping @Sendable () -> Void = {}) {
        self.experts = experts
        self.scheduler = scheduler
        self.metrics = metrics
        self.beforeScrape = beforeScrape
        self.model = model
        self.apiKey = apiKey
        self.health = health
        self.cluster = cluster
    }

    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        if let metrics { router.add(middleware: RequestCounter(metrics: metrics)) }
        if let apiKey { router.add(middleware: APIKeyMiddleware(key: apiKey)) }
        let api = self
        if let metrics {
            router.get("/metrics") { _, _ in
                api.beforeScrape()
                return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                                body: ResponseBody(byteBuffer: ByteBuffer(string: metrics.exposition())))
            }
        }
        // The dashboard: a page for people, polling the JSON and metrics routes below.
        for path in ["/", "/dashboard"] {
            router.get(RouterPath(path)) { _, _ in
                Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-cache"],
                         body: ResponseBody(byteBuffer: ByteBuffer(string: Dashboard.html)))
            }
        }
        router.get("/health") { _, _ in api.healthResponse() }
        router.get("/v1/health") { _, _ in api.healthResponse() }
        router.get("/v1/models") { _, _ in api.json(api.modelsBody()) }
        router.get("/models") { _, _ in api.json(api.modelsBody()) }
        router.get("/v1/cluster") { _, _ in
            guard let c = api.cluster() else { return api.error(.invalid("this server runs the model in one process; there is no cluster to report", code: "no_cluster")) }
            return api.json(c)
        }
        router.get("/v1/cluster/experts") { _, _ in
            guard let x = api.experts() else { return api.error(.invalid("the model has no routed experts to count", code: "no_experts")) }
            return api.json(x)
        }
        router.post("/v1/chat/completions") { req, _ in await api.handle(req) { body throws(APIError) in try await api.chat(body) } }
        router.post("/chat/completions") { req, _ in await api.handle(req) { body throws(APIError) in try await api.chat(body) } }
        router.post("/v1/completions") { req, _ in await api.handle(req) { body throws(APIError) in try await api.completion(body) } }
        router.post("/completions") { req, _ in await api.handle(req) { body throws(APIError) in try await api.completion(body) } }
        router.post("/apply-template") { req, _ in
            await api.handle(req) { body throws(APIError) in api.json(.object([("prompt", .string(try await api.model.renderAside(chat: body)))])) }
        }
        router.post("/v1/responses") { req, _ in await api.handle(req) { body throws(APIError) in try await api.responses(body) } }
        router.post("/v1/messages") { req, _ in await api.handle(req, shape: AnthropicMessages.errorJSON) { body throws(APIError) in try await api.messages(body) } }
        router.post("/v1/messages/count_tokens") { req, _ in
            await api.handle(req, shape: AnthropicMessages.errorJSON) { body throws(APIError) in try await api.countTokens(body) }
        }
        router.post("/tokenize") { req, _ in await api.handle(req) { body throws(APIError) in try api.tokenize(body) } }
        router.post("/detokenize") { req, _ in await api.handle(req) { body throws(APIError) in try api.detokenize(body) } }
        return router
    }

    // MARK: Plumbing

    func json(_ v: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(string: v.render())))
    }

    func error(_ e: APIError) -> Response {
        var r = json(e.json, status: e.status)
        if let s = e.retryAfter { r.headers[.retryAfter] = String(s) }
        return r
    }

    func error(_ e: APIError, shape: (APIError) -> JSONValue) -> Response {
        var r = json(shape(e), status: e.status)
        if let s = e.retryAfter { r.headers[.retryAfter] = String(s) }
        return r
    }

    /// Reads and parses the body, runs `work`, and turns any failure into its error body (OpenAI's unless
    /// `shape` says otherwise).
    func handle(_ request: Request, shape: (APIError) -> JSONValue = { $0.json }, _ work: (JSONValue) async throws(APIError) -> Response) async -> Response {
        let bytes: ByteBuffer
        do {
            bytes = try await request.body.collect(upTo: Self.maxBody)
        } catch {
            return self.error(APIError(status: .contentTooLarge, message: "the request body is larger than \(Self.maxBody >> 20) MiB", type: "invalid_request_error"), shape: shape)
        }
        let body: JSONValue
        do {
            body = try JSONValue.parse(Array(bytes.readableBytesView))
        } catch {
            return self.error(.invalid("the body is not valid JSON: \(error)"), shape: shape)
        }
        guard case .object = body else { return self.error(.invalid("the body must be a JSON object"), shape: shape) }
        do { return try await work(body) } catch { return self.error(error, shape: shape) }
    }

    func healthResponse() -> Response {
        if let why = health() { return error(.unavailable(why)) }
        if !scheduler.isRunning { return error(.unavailable("the server is starting or shutting down")) }
        return json(.object([("status", .string("ok"))]))
    }

    func modelsBody() -> JSONValue {
        .object([("object", .string("list")), ("data", .array([.object([
            ("id", .string(model.id)), ("object", .string("model")), ("created", .int(model.created)), ("owned_by", .string("conclave")),
            ("max_model_len", .int(model.contextLength)),
            ("meta", .object([("n_ctx", .int(model.contextLength)), ("n_vocab", .int(model.tokenizer.vocab.count)),
                              ("chat_template", .string(model.templateOrigin))])),
        ])]))])
    }

    func checkModel(_ body: JSONValue) throws(APIError) {
        guard let name = try Fields(body).string("model") else { return }
        guard name == model.id || name.isEmpty else {
            throw APIError.invalid("the model '\(name)' is not served here; this server serves '\(model.id)' (GET /v1/models)", param: "model", code: "model_not_found")
        }
    }

    // MARK: Completions

    enum Kind { case chat, text }

    func chat(_ body: JSONValue) async throws(APIError) -> Response {
        try checkModel(body)
        let options = try ToolCallOptions(body: body, format: model.outputFormat)
        let prompt = try await model.renderAside(chat: body)
        let reading = options.parses ? outputReading(options, prompt: prompt, api: "chat") : nil
        return try await run(kind: .chat, tokens: model.tokens(ofPrompt: prompt, param: "messages"), body: body, reading: reading,
                             grammar: options.grammar(tokenizer: model.tokenizer))
    }

    func completion(_ body: JSONValue) async throws(APIError) -> Response {
        try checkModel(body)
        let tokens: [Int32]
        switch body["prompt"] {
        case .string(let s)?:
            tokens = try model.tokens(ofPrompt: s)
        case .array(let items)? where !items.isEmpty:
            if items.allSatisfy({ $0.intValue != nil }) {
                tokens = items.map { Int32(clamping: $0.intValue!) }
            } else if items.count == 1, let s = items[0].stringValue {
                tokens = try model.tokens(ofPrompt: s)
            } else {
                throw APIError.invalid("'prompt' must be a string, a list of token ids, or a list of one string (one prompt per request)", param: "prompt")
            }
        default:
            throw APIError.invalid("'prompt' must be a string or a list of token ids", param: "prompt")
        }
        return try await run(kind: .text, tokens: tokens, body: body)
    }

    /// How the answer to `prompt` is read, by what the request asked (`options`) and the model's family.
    /// `api` labels what it counts (`conclave_tool_calls_total`, `conclave_tool_call_parse_failures_total`).
    func outputReading(_ options: ToolCallOptions, prompt: String, api: String) -> OutputReading {
        var format = options.parseCalls ? options.format : options.format.withoutCalls()
        if !options.parseReasoning { format = format.withoutReasoning() }
        // A template that opens the reasoning block in its generation prompt: the answer starts inside it.
        let open = format.reasoning.map { prompt.trimmingWhitespace.hasSuffix($0.open) } ?? false
        let metrics = self.metrics
        return OutputReading(format: format, reasoningOpen: open, parallel: options.parallel, textParameters: options.textParameters) { [format] parsed, text in
            guard let metrics, format.hasToolCalls else { return }
            let label = [MetricLabel("api", api)]
            if !parsed.toolCalls.isEmpty {
                metrics.handle(ServingMetrics.catalog.toolCalls, label).increment(by: Double(parsed.toolCalls.count))
            } else if format.opensCall(text) {
                metrics.handle(ServingMetrics.catalog.toolCallFailures, label).increment()
            }
        }
    }

    /// How a chat answer is read back into reasoning, content and calls (nil: its text is the content).
    struct OutputReading {
        var format: OutputFormat
        var reasoningOpen: Bool
        var parallel: Bool
        /// Per tool, the parameters declared strings (read as written in the text-parameter families).
        var textParameters: [String: Set<String>] = [:]
        /// Told each answer read and its text (the metrics of calls read and of calls that did not parse).
        var counted: @Sendable (ParsedOutput, String) -> Void = { _, _ in }
        /// The answer read as it is generated.
        func stream() -> AnswerStream { AnswerStream(reading: self) }

        /// `counting`: told to `counted` (an answer is counted once, where it is complete).
        func parse(_ text: String, counting: Bool = true) -> ParsedOutput {
            var p = format.parse(text, reasoningOpen: reasoningOpen, textParameters: textParameters)
            // One call asked for: the first is it, the rest are dropped (as llama-server does).
            if !parallel && p.toolCalls.count > 1 { p.toolCalls = [p.toolCalls[0]] }
            if counting { counted(p, text) }
            return p
        }
    }

    /// The sampling and stopping fields of a body; `forced`, a forced call's grammar, constrains the answer in
    /// place of any the body asks for. Counts a constrained request by its kind.
    /// With `reading`, a model that reasons in tags may think before the constrained answer (a schema's JSON, a
    /// forced call), as it would unconstrained; a `grammar` of the client's own is left as it is.
    func parameters(_ body: JSONValue, chat: Bool, forced: String?, reading: OutputReading? = nil) throws(APIError) -> CompletionParameters {
        var p = try CompletionParameters(body: body, chat: chat, randomSeed: { UInt64.random(in: 0...UInt64.max) })
        if let forced {
            p.sampling.grammar = forced
            p.constraint = "tool_call"
        }
        if let reading, let g = p.sampling.grammar, p.constraint != "grammar" {
            p.sampling.grammar = reading.format.reasoningFirst(g, reasoningOpen: reading.reasoningOpen)
        }
        if let kind = p.constraint { metrics?.handle(ServingMetrics.catalog.constrainedRequests, [MetricLabel("kind", kind)]).increment() }
        return p
    }

    /// `grammar`: a forced call's, which constrains the answer in place of any the body asks for.
    func run(kind: Kind, tokens: [Int32], body: JSONValue, reading: OutputReading? = nil, grammar: String? = nil) async throws(APIError) -> Response {
        let p = try parameters(body, chat: kind == .chat, forced: grammar, reading: reading)
        if let why = health() { throw APIError.unavailable(why) }
        let request = GenerationRequest(prompt: tokens, maxTokens: p.maxTokens ?? max(0, model.contextLength - tokens.count), stop: p.stop, sampling: p.sampling,
                                        logprobs: p.logprobs, ignoreEOS: p.ignoreEOS, cachePrompt: p.cachePrompt)
        // The scheduler's own checks, asked before the status line goes out (a stream cannot turn into a 400).
        if let e = scheduler.refusal(for: request) { throw APIError(e, param: kind == .chat ? "messages" : "prompt") }
        let (sequence, events) = scheduler.submit(request)
        let id = (kind == .chat ? "chatcmpl-" : "cmpl-") + ids.next()
        let created = Int(Date().timeIntervalSince1970)
        let head = ResponseHead(id: id, object: kind == .chat ? "chat.completion" : "text_completion", created: created, model: model.id, kind: kind,
                                tokenizer: model.tokenizer)
        if p.stream { return stream(head, events, sequence: sequence, includeUsage: p.includeUsage, reading: reading) }
        let answer = try await collect(events)
        return json(head.complete(text: answer.text, finish: answer.finish, usage: answer.usage, logprobs: p.logprobs == nil ? nil : answer.logprobs,
                                  parsed: reading?.parse(answer.text), ids: { "call_" + ids.next() }))
    }

    /// A whole answer: its text, log-probabilities, how it ended and what it used.
    func collect(_ events: AsyncThrowingStream<GenerationEvent, Error>) async throws(APIError)
        -> (text: String, logprobs: [SampledToken], finish: FinishReason, usage: GenerationUsage) {
        var text = ""
        var logprobs: [SampledToken] = []
        do {
            for try await e in events {
                switch e {
                case .token(_, let piece, let lp):
                    text += piece
                    if let lp { logprobs.append(lp) }
                case .finished(let reason, let usage):
                    return (text, logprobs, reason, usage)
                }
            }
            throw APIError.internal("the generation ended without finishing")
        } catch let e as GenerationError {
            throw APIError(e)
        } catch let e as APIError {
            throw e
        } catch {
            throw APIError.internal("the generation was cancelled")
        }
    }

    /// Server-sent events as OpenAI sends them: a first chunk with the role, one per piece of text, a last one with
    /// the finish reason, the usage chunk when asked, then `[DONE]`. A failure after the first byte is an `error`
    /// event (the status line has gone); a client that goes away cancels the sequence at the next write.
    /// With `reading`: the answer is read as it comes (`AnswerStream`): `reasoning_content` and `content` deltas,
    /// and each call as OpenAI streams it — a first `tool_calls[i]` delta with its id and name, then its arguments.
    func stream(_ head: ResponseHead, _ events: AsyncThrowingStream<GenerationEvent, Error>, sequence: UInt64, includeUsage: Bool,
                reading: OutputReading? = nil) -> Response {
        let (scheduler, ids) = (self.scheduler, self.ids)
        let body = ResponseBody { writer in
            func send(_ v: JSONValue) async throws { try await writer.write(ByteBuffer(string: "data: " + v.render() + "\n\n")) }
            do {
                if head.kind == .chat { try await send(head.chunk(delta: .object([("role", .string("assistant")), ("content", .string(""))]), includeUsage: includeUsage)) }
                do {
                    var reader = reading?.stream()
                    func sendRead(_ events: [AnswerStream.Event]) async throws {
                        for e in events { try await send(head.chunk(delta: Self.chatDelta(e, ids: ids), includeUsage: includeUsage)) }
                    }
                    for try await e in events {
                        switch e {
                        case .token(_, let piece, let lp):
                            if reader != nil { try await sendRead(reader!.feed(piece)); continue }
                            guard !piece.isEmpty || lp != nil else { continue }
                            try await send(head.chunk(delta: head.kind == .chat ? .object([("content", .string(piece))]) : .string(piece),
                                                      logprobs: lp.map { [$0] }, includeUsage: includeUsage))
                        case .finished(let reason, let usage):
                            var finish = reason.rawValue
                            if reader != nil {
                                try await sendRead(reader!.finish())
                                if let parsed = reader!.parsed { reading?.counted(parsed, reader!.text) }
                                if reader!.sentCalls { finish = "tool_calls" }
                            }
                            try await send(head.chunk(delta: head.kind == .chat ? .object([]) : .string(""), finishReason: finish, includeUsage: includeUsage))
                            if includeUsage { try await send(head.usageChunk(usage)) }
                        }
                    }
                } catch let e as GenerationError {
                    try await send(APIError(e).json)
                } catch is CancellationError {
                    try await send(APIError.internal("the generation was cancelled").json)
                }
                try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
                try await writer.finish(nil)
            } catch {
                // The client went away (or the write failed): stop generating for it and free its caches now.
                scheduler.cancel(sequence, clientGone: true)
                throw error
            }
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }

    /// A chat chunk's delta for one piece of a read answer.
    static func chatDelta(_ e: AnswerStream.Event, ids: IDSource) -> JSONValue {
        switch e {
        case .reasoning(let t): return .object([("reasoning_content", .string(t))])
        case .content(let t): return .object([("content", .string(t))])
        case .callStart(let i, let name, let id):
            return .object([("tool_calls", .array([.object([("index", .int(i)), ("id", .string(id ?? "call_" + ids.next())), ("type", .string("function")),
                                                            ("function", .object([("name", .string(name)), ("arguments", .string(""))]))])]))])
        case .arguments(let i, let fragment):
            return .object([("tool_calls", .array([.object([("index", .int(i)), ("function", .object([("arguments", .string(fragment))]))])]))])
        }
    }

    // MARK: Tokens

    func tokenize(_ body: JSONValue) throws(APIError) -> Response {
        let f = Fields(body)
        guard let content = try f.string("content") else { throw APIError.invalid("'content' must be a string", param: "content") }
        let addSpecial = try f.bool("add_special") ?? false
        let parseSpecial = try f.bool("parse_special") ?? true
        let withPieces = try f.bool("with_pieces") ?? false
        let ids = model.tokenizer.encode(content, addSpecial: addSpecial, parseSpecial: parseSpecial)
        let tokens: [JSONValue] = ids.map { id in
            guard withPieces else { return .int(Int(id)) }
            let bytes = model.tokenizer.piece(id)
            let piece: JSONValue = String(validating: bytes, as: UTF8.self).map(JSONValue.string) ?? .array(bytes.map { .int(Int($0)) })
            return .object([("id", .int(Int(id))), ("piece", piece)])
        }
        return json(.object([("tokens", .array(tokens))]))
    }

    func detokenize(_ body: JSONValue) throws(APIError) -> Response {
        guard case .array(let items)? = body["tokens"] else { throw APIError.invalid("'tokens' must be a list of token ids", param: "tokens") }
        var bytes: [UInt8] = []
        for v in items {
            guard let i = v.intValue, i >= 0, i < model.tokenizer.vocab.count else {
                throw APIError.invalid("'tokens' holds \(v.render()), which is not a token id of this model (0..<\(model.tokenizer.vocab.count))", param: "tokens")
            }
            bytes += model.tokenizer.piece(Int32(i))
        }
        return json(.object([("content", .string(String(decoding: bytes, as: UTF8.self)))]))
    }
}

/// The fields every chunk and response of one completion share, and their shapes.
struct ResponseHead: Sendable {
    let id: String
    let object: String
    let created: Int
    let model: String
    let kind: HTTPAPI.Kind
    let tokenizer: Tokenizer

    func piece(_ t: Int32) -> (String, [UInt8]) {
        let bytes = Int(t) < tokenizer.vocab.count ? tokenizer.piece(t) : []
        return (String(decoding: bytes, as: UTF8.self), bytes)
    }

    /// OpenAI's log-probability object: chat's `{"content": [{token, logprob, bytes, top_logprobs}]}`, or the text
    /// completion's `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`.
    func logprobsJSON(_ tokens: [SampledToken]?, textOffset: Int = 0) -> JSONValue {
        guard let tokens else { return .null }
        if kind == .chat {
            func entry(_ t: Int32, _ lp: Float) -> [(String, JSONValue)] {
                let (text, bytes) = piece(t)
                return [("token", .string(text)), ("logprob", .double(Double(lp))), ("bytes", .array(bytes.map { .int(Int($0)) }))]
            }
            return .object([("content", .array(tokens.map { s in
                .object(entry(s.token, s.logprob ?? 0) + [("top_logprobs", .array(s.top.map { .object(entry($0.token, $0.logprob)) }))])
            }))])
        }
        var offsets: [JSONValue] = []
        var at = textOffset
        for s in tokens {
            offsets.append(.int(at))
            at += piece(s.token).0.unicodeScalars.count
        }
        return .object([
            ("tokens", .array(tokens.map { .string(piece($0.token).0) })),
            ("token_logprobs", .array(tokens.map { .double(Double($0.logprob ?? 0)) })),
            ("top_logprobs", .array(tokens.map { s in .object(s.top.map { (piece($0.token).0, JSONValue.double(Double($0.logprob))) }) })),
            ("text_offset", .array(offsets)),
        ])
    }

    func usage(_ u: GenerationUsage) -> JSONValue {
        .object([("prompt_tokens", .int(u.promptTokens)), ("completion_tokens", .int(u.completionTokens)),
                 ("total_tokens", .int(u.promptTokens + u.completionTokens)),
                 ("prompt_tokens_details", .object([("cached_tokens", .int(u.cachedTokens))]))])
    }

    func complete(text: String, finish: FinishReason, usage u: GenerationUsage, logprobs: [SampledToken]? = nil,
                  parsed: ParsedOutput? = nil, ids: () -> String = { "" }) -> JSONValue {
        let message = parsed?.messageFields(ids: ids, indexed: false) ?? [("content", .string(text))]
        let reason = parsed.map { $0.toolCalls.isEmpty ? finish.rawValue : "tool_calls" } ?? finish.rawValue
        let choice: JSONValue = kind == .chat
            ? .object([("index", .int(0)), ("message", .object([("role", .string("assistant"))] + message)),
                       ("logprobs", logprobsJSON(logprobs)), ("finish_reason", .string(reason))])
            : .object([("index", .int(0)), ("text", .string(text)), ("logprobs", logprobsJSON(logprobs)), ("finish_reason", .string(finish.rawValue))])
        return .object([("id", .string(id)), ("object", .string(object)), ("created", .int(created)), ("model", .string(model)),
                        ("choices", .array([choice])), ("usage", usage(u))])
    }

    func chunk(delta: JSONValue, finish: FinishReason? = nil, finishReason: String? = nil, logprobs: [SampledToken]? = nil, includeUsage: Bool) -> JSONValue {
        let reason: JSONValue = (finishReason ?? finish?.rawValue).map { .string($0) } ?? .null
        let choice: JSONValue = kind == .chat
            ? .object([("index", .int(0)), ("delta", delta), ("logprobs", logprobsJSON(logprobs)), ("finish_reason", reason)])
            : .object([("index", .int(0)), ("text", delta), ("logprobs", logprobsJSON(logprobs)), ("finish_reason", reason)])
        var fields: [(String, JSONValue)] = [("id", .string(id)), ("object", .string(kind == .chat ? "chat.completion.chunk" : "text_completion")),
                                             ("created", .int(created)), ("model", .string(model)), ("choices", .array([choice]))]
        if includeUsage { fields.append(("usage", .null)) }
        return .object(fields)
    }

    func usageChunk(_ u: GenerationUsage) -> JSONValue {
        .object([("id", .string(id)), ("object", .string(kind == .chat ? "chat.completion.chunk" : "text_completion")),
                 ("created", .int(created)), ("model", .string(model)), ("choices", .array([])), ("usage", usage(u))])
    }
}

/// Completion ids: unique per process, not guessable from one another.
final class IDSource: Sendable {
    func next() -> String {
        (0..<24).map { _ in String("0123456789abcdefghijklmnopqrstuvwxyz".randomElement()!) }.joined()
    }
}

/// `conclave_http_requests_total{endpoint, status}`: every request, by route (unknown paths as "other", so a
/// scanner cannot grow the label set) and status code.
struct RequestCounter<Context: RequestContext>: RouterMiddleware {
    let metrics: MetricsRegistry
    static var endpoints: Set<String> {
        ["/v1/chat/completions", "/chat/completions", "/v1/completions", "/completions", "/v1/models", "/models", "/health", "/v1/health",
         "/v1/cluster", "/v1/cluster/experts", "/metrics", "/", "/dashboard", "/tokenize", "/detokenize", "/apply-template", "/v1/messages", "/v1/messages/count_tokens", "/v1/responses"]
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        let endpoint = Self.endpoints.contains(path) ? path : "other"
        do {
            let response = try await next(request, context)
            count(endpoint, response.status.code)
            return response
        } catch {
            let status = (error as? HTTPResponseError)?.status.code ?? 500
            count(endpoint, status)
            throw error
        }
    }

    func count(_ endpoint: String, _ status: Int) {
        metrics.handle(ServingMetrics.catalog.httpRequests, [MetricLabel("endpoint", endpoint), MetricLabel("status", String(status))]).increment()
    }
}

/// `--api-key`: every request but the health check needs `Authorization: Bearer KEY`, compared in constant time.
struct APIKeyMiddleware<Context: RequestContext>: RouterMiddleware {
    let key: String

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        if path == "/health" || path == "/v1/health" { return try await next(request, context) }
        // The scheme is case-insensitive (RFC 9110 § 11.1: "bearer" and "BEARER" are "Bearer"); the key is not.
        let header = (request.headers[.authorization] ?? "").trimmingCharacters(in: .whitespaces)
        let space = header.firstIndex(of: " ") ?? header.endIndex
        let scheme = header[..<space].lowercased()
        // Anthropic's clients send the key as `x-api-key` instead.
        let anthropic = HTTPField.Name("x-api-key").flatMap { request.headers[$0] }
        // A browser (the dashboard) sends it as HTTP Basic's password, which it asks for once and then sends
        // with every request of the page.
        var basic: String?
        if scheme == "basic", let raw = Data(base64Encoded: header[space...].trimmingCharacters(in: .whitespaces)) {
            let pair = String(decoding: raw, as: UTF8.self)
            basic = pair.firstIndex(of: ":").map { String(pair[pair.index(after: $0)...]) } ?? ""
        }
        let given = Array((scheme == "bearer" ? header[space...].trimmingCharacters(in: .whitespaces) : basic ?? anthropic ?? "").utf8)
        let want = Array(key.utf8)
        var diff = given.count ^ want.count
        for i in 0..<want.count { diff |= Int(want[i] ^ (i < given.count ? given[i] : 0)) }
        guard diff == 0 else {
            // The dashboard's pages ask the browser for the key (Basic); the API says Bearer.
            let challenge = path == "/" || path == "/dashboard" ? #"Basic realm="conclave", charset="UTF-8""# : "Bearer"
            return Response(status: .unauthorized, headers: [.contentType: "application/json", .wwwAuthenticate: challenge],
                            body: ResponseBody(byteBuffer: ByteBuffer(string: APIError.unauthorized.json.render())))
        }
        return try await next(request, context)
    }
}
