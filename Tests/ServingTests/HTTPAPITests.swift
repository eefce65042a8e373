import Foundation
import Generation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import JSON
import Model
import NIOCore
import Serving
import Telemetry
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The HTTP API over the shipped model in this process: the same text as `conclave run` for the same prompt,
/// seed and settings, OpenAI's shapes for bodies, chunks and errors.
@Suite(.serialized) struct HTTPAPITests {
    static let engine = try! Engine(path: Fixtures.shippedModel, threads: 2)

    final class Server: Sendable {
        let executor: LocalExecutor
        let scheduler: Scheduler
        let api: HTTPAPI
        let metrics = MetricsRegistry()
        init(apiKey: String? = nil, context: Int = 256, template: String? = nil, sequences: Int = 4, queued: Int = 256) {
            executor = LocalExecutor(engine: HTTPAPITests.engine, capacity: context, maxSequences: sequences)
            scheduler = Scheduler(executor: executor, tokenizer: HTTPAPITests.engine.tokenizer, contextLength: context, figures: metrics)
            scheduler.maxSequences = sequences
            scheduler.maxQueued = queued
            scheduler.start()
            let model = ServedModel(id: "tiny", contextLength: context, tokenizer: HTTPAPITests.engine.tokenizer, templateSource: template, templateOrigin: "test template")
            api = HTTPAPI(scheduler: scheduler, model: model, apiKey: apiKey, metrics: metrics)
        }
        deinit {
            scheduler.stop()
            executor.close()
        }
        var app: some ApplicationProtocol { Application(router: api.router(), configuration: .init(address: .hostname("127.0.0.1", port: 0))) }
    }

    static func post(_ client: some TestClientProtocol, _ path: String, _ body: String, headers: HTTPFields = [:]) async throws -> (HTTPResponse.Status, String) {
        try await client.execute(uri: path, method: .post, headers: headers, body: ByteBuffer(string: body)) { r in
            (r.status, String(buffer: r.body))
        }
    }

    /// What `conclave run` gives for these tokens with this sampling.
    static func alone(_ tokens: [Int32], maxTokens: Int, _ p: SamplingParams, stop: [String] = []) throws -> String {
        var text = ""
        try engine.generate(prompt: tokens, policy: GenerationPolicy(maxTokens: maxTokens, stop: stop, capacity: 256), params: p,
                            in: engine.newSequence(capacity: 256)) { _, s in text += s; return true }
        return text
    }

    /// The text of an SSE stream's chunks, its finish reason, the usage chunk, and whether it ended with [DONE].
    static func parseSSE(_ body: String, chat: Bool) throws -> (text: String, finish: String?, usage: JSONValue?, done: Bool, chunks: Int) {
        var text = "", finish: String?, usage: JSONValue?, done = false, chunks = 0
        for event in body.components(separatedBy: "\n\n") where !event.isEmpty {
            #expect(event.hasPrefix("data: "), "every event is one data line: \(event)")
            let payload = String(event.dropFirst(6))
            if payload == "[DONE]" { done = true; continue }
            #expect(!done, "nothing after [DONE]")
            let v = try JSONValue.parse(payload)
            chunks += 1
            #expect(v["object"]?.stringValue == (chat ? "chat.completion.chunk" : "text_completion"))
            if let u = v["usage"], !u.isNull { usage = u }
            guard let choice = v["choices"]?.arrayValue?.first else { continue }
            text += (chat ? choice["delta"]?["content"]?.stringValue : choice["text"]?.stringValue) ?? ""
            if let f = choice["finish_reason"]?.stringValue { finish = f }
        }
        return (text, finish, usage, done, chunks)
    }

    @Test func chatGivesWhatRunGivesStreamingOrNot() async throws {
        let server = Server()
        let model = server.api.model
        let chat = #"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about caches"}], "max_tokens": 24, "seed": 5, "temperature": 0.9"#
        let prompt = try model.render(chat: try JSONValue.parse(chat + "}"))
        var p = SamplingParams()
        p.seed = 5
        p.temperature = 0.9
        let want = try Self.alone(try model.tokens(ofPrompt: prompt), maxTokens: 24, p)
        try await server.app.test(.router) { client in
            let (status, body) = try await Self.post(client, "/v1/chat/completions", chat + "}")
            #expect(status == .ok)
            let v = try JSONValue.parse(body)
            #expect(v["object"]?.stringValue == "chat.completion")
            let choice = v["choices"]?.arrayValue?.first
            #expect(choice?["message"]?["role"]?.stringValue == "assistant")
            #expect(choice?["message"]?["content"]?.stringValue == want)
            #expect(choice?["finish_reason"]?.stringValue == "length")
            #expect(v["usage"]?["completion_tokens"]?.intValue == 24)
            #expect(v["usage"]?["prompt_tokens"]?.intValue == (try model.tokens(ofPrompt: prompt)).count)

            let (s2, sse) = try await Self.post(client, "/v1/chat/completions", chat + #", "stream": true, "stream_options": {"include_usage": true}}"#)
            #expect(s2 == .ok)
            let parsed = try Self.parseSSE(sse, chat: true)
            #expect(parsed.text == want && parsed.finish == "length" && parsed.done)
            #expect(parsed.usage?["total_tokens"]?.intValue == (try model.tokens(ofPrompt: prompt)).count + 24)
        }
    }

    @Test func completionsTakeTextOrTokensAndStopStrings() async throws {
        let server = Server()
        let tokens = try server.api.model.tokens(ofPrompt: "Once upon a time")
        let greedy = try Self.alone(tokens, maxTokens: 16, .greedy)
        try await server.app.test(.router) { client in
            let (_, body) = try await Self.post(client, "/v1/completions", #"{"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}"#)
            #expect(try JSONValue.parse(body)["choices"]?.arrayValue?.first?["text"]?.stringValue == greedy)
            let ids = tokens.map(String.init).joined(separator: ",")
            let (_, byIDs) = try await Self.post(client, "/v1/completions", #"{"prompt": [\#(ids)], "max_tokens": 16, "temperature": 0, "stream": true}"#)
            #expect(try Self.parseSSE(byIDs, chat: false).text == greedy)
            // A stop string that spans pieces: the text ends just before it, finish_reason stop.
            let scalars = Array(greedy.unicodeScalars)
            guard scalars.count >= 6 else { return }
            let stop = String(String.UnicodeScalarView(scalars[3..<6]))
            let cut = greedy.range(of: stop).map { String(greedy[..<$0.lowerBound]) } ?? greedy
            let (_, stopped) = try await Self.post(client, "/v1/completions", #"{"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0, "stop": \#(JSONValue.string(stop).render())}"#)
            let choice = try JSONValue.parse(stopped)["choices"]?.arrayValue?.first
            #expect(choice?["text"]?.stringValue == cut)
            #expect(choice?["finish_reason"]?.stringValue == "stop")
        }
    }

    @Test func badRequestsGetOpenAIErrorsAndServingGoesOn() async throws {
        let server = Server(context: 64)
        try await server.app.test(.router) { client in
            let cases: [(String, String, String?)] = [
                ("/v1/chat/completions", "{not json", nil),
                ("/v1/chat/completions", #"{"messages": []}"#, "messages"),
                ("/v1/chat/completions", #"{"messages": [{"content": "no role"}]}"#, "messages"),
                ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "temperature": 9}"#, "temperature"),
                ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "n": 2}"#, "n"),
                ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "model": "gpt-4"}"#, "model"),
                ("/v1/completions", #"{"prompt": "x", "max_tokens": -1}"#, "max_tokens"),
                ("/v1/completions", #"{"prompt": "x", "stop": [1]}"#, "stop"),
                ("/v1/completions", #"{"prompt": "x", "ignore_eos": "yes"}"#, "ignore_eos"),
                ("/v1/completions", #"{"prompt": [999999]}"#, nil),
                ("/v1/completions", #"{"prompt": "\#(String(repeating: "word ", count: 100))"}"#, "prompt"),
                ("/detokenize", #"{"tokens": [-1]}"#, "tokens"),
                // Fields that would change the answer and that we do not implement: named, never ignored.
                ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "logit_bias": {"15": 100}}"#, "logit_bias"),
                ("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}}"#, "response_format.type"),
                ("/v1/completions", #"{"prompt": "x", "best_of": 3}"#, "best_of"),
                ("/v1/completions", #"{"prompt": "x", "echo": true}"#, "echo"),
            ]
            for (path, body, param) in cases {
                let (status, text) = try await Self.post(client, path, body)
                #expect(status == .badRequest, "\(path) \(body.prefix(60)): \(text)")
                let e = try JSONValue.parse(text)["error"]
                #expect(e?["type"]?.stringValue == "invalid_request_error" && !(e?["message"]?.stringValue ?? "").isEmpty)
                if let param { #expect(e?["param"]?.stringValue == param, "\(text)") }
            }
            let (_, long) = try await Self.post(client, "/v1/completions", #"{"prompt": "\#(String(repeating: "word ", count: 100))"}"#)
            #expect(try JSONValue.parse(long)["error"]?["code"]?.stringValue == "context_length_exceeded")
            // Megabytes of prompt are refused by their length alone, before seconds of tokenizing.
            let (hugeStatus, huge) = try await Self.post(client, "/v1/completions", #"{"prompt": "\#(String(repeating: "word ", count: 1_600_000))"}"#)
            let hugeError = try JSONValue.parse(huge)["error"]
            #expect(hugeStatus == .badRequest && hugeError?["code"]?.stringValue == "context_length_exceeded"
                    && (hugeError?["message"]?.stringValue ?? "").contains("8000000 bytes"), "\(huge)")
            let (plain, _) = try await Self.post(client, "/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "response_format": {"type": "text"}, "logit_bias": {}}"#)
            #expect(plain == .ok)
            let (ok, _) = try await Self.post(client, "/v1/completions", #"{"prompt": "Hi", "max_tokens": 2}"#)
            #expect(ok == .ok)
            // Asked for more than the context holds: it ends at the context's end with finish_reason length.
            let (_, full) = try await Self.post(client, "/v1/completions", #"{"prompt": "Hi", "max_tokens": 1000, "temperature": 0}"#)
            let v = try JSONValue.parse(full)
            #expect(v["choices"]?.arrayValue?.first?["finish_reason"]?.stringValue == "length")
            #expect(v["usage"]?["total_tokens"]?.intValue == 65)
            // ignore_eos (llama-server's): exactly max_tokens, whatever the model would have ended with.
            let (_, all) = try await Self.post(client, "/v1/completions", #"{"prompt": "Hi", "max_tokens": 40, "temperature": 1, "seed": 3, "ignore_eos": true}"#)
            let w = try JSONValue.parse(all)
            #expect(w["usage"]?["completion_tokens"]?.intValue == 40 && w["choices"]?.arrayValue?.first?["finish_reason"]?.stringValue == "length", "\(all)")
        }
    }

    @Test func modelsHealthTokensAndTemplate() async throws {
        let server = Server()
        try await server.app.test(.router) { client in
            let models = try await client.execute(uri: "/v1/models", method: .get) { try JSONValue.parse(String(buffer: $0.body)) }
            #expect(models["data"]?.arrayValue?.first?["id"]?.stringValue == "tiny")
            #expect(models["data"]?.arrayValue?.first?["max_model_len"]?.intValue == 256)
            let health = try await client.execute(uri: "/health", method: .get) { ($0.status, String(buffer: $0.body)) }
            #expect(health.0 == .ok && health.1 == #"{"status":"ok"}"#)
            let (_, tok) = try await Self.post(client, "/tokenize", #"{"content": "Hello world"}"#)
            let ids = HTTPAPITests.engine.tokenizer.encode("Hello world", addSpecial: false, parseSpecial: true)
            #expect(tok == #"{"tokens":["# + ids.map(String.init).joined(separator: ",") + "]}")
            let (_, detok) = try await Self.post(client, "/detokenize", #"{"tokens": ["# + ids.map(String.init).joined(separator: ",") + "]}")
            #expect(try JSONValue.parse(detok)["content"]?.stringValue == " Hello world")
            let (_, tpl) = try await Self.post(client, "/apply-template", #"{"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}"#)
            #expect(tpl == #"{"prompt":"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"}"#)
        }
    }

    /// Log-probabilities are the model's (log-softmax of its logits), the sampled token's and the top N.
    @Test func logprobsAreTheModels() async throws {
        let server = Server()
        let model = server.api.model
        let chat = #"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0, "logprobs": true, "top_logprobs": 3}"#
        let prompt = try model.tokens(ofPrompt: try model.render(chat: try JSONValue.parse(chat)))
        let logits = try Self.engine.evaluate(prompt, in: Self.engine.newSequence(capacity: 64))
        let m = logits.max()!
        let lse = m + Float(log(logits.reduce(0.0) { $0 + Double(expf($1 - m)) }))
        let best = logits.indices.max { logits[$0] < logits[$1] }!
        try await server.app.test(.router) { client in
            let (status, body) = try await Self.post(client, "/v1/chat/completions", chat)
            #expect(status == .ok, "\(body)")
            let content = try #require(JSONValue.parse(body)["choices"]?.arrayValue?.first?["logprobs"]?["content"]?.arrayValue)
            #expect(content.count == 4)
            let first = content[0]
            #expect(abs((first["logprob"]?.numberValue ?? 0) - Double(logits[best] - lse)) < 1e-4)
            let top = first["top_logprobs"]?.arrayValue ?? []
            #expect(top.count == 3)
            #expect(top.first?["token"]?.stringValue == first["token"]?.stringValue, "greedy takes the most likely token")
            #expect(zip(top, top.dropFirst()).allSatisfy { ($0["logprob"]?.numberValue ?? 0) >= ($1["logprob"]?.numberValue ?? 0) })
            #expect(first["bytes"]?.arrayValue?.isEmpty == false)

            let (_, sse) = try await Self.post(client, "/v1/completions", #"{"prompt": "Hi", "max_tokens": 3, "temperature": 0, "logprobs": 2, "stream": true}"#)
            var streamed: [JSONValue] = []
            for event in sse.components(separatedBy: "\n\n") where event.hasPrefix("data: {") {
                if let lp = try JSONValue.parse(String(event.dropFirst(6)))["choices"]?.arrayValue?.first?["logprobs"], !lp.isNull { streamed.append(lp) }
            }
            #expect(streamed.count == 3 && streamed.allSatisfy { $0["token_logprobs"]?.arrayValue?.count == 1 && $0["top_logprobs"]?.arrayValue?.first?.render().hasPrefix("{") == true })
            let (bad, _) = try await Self.post(client, "/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}"#)
            #expect(bad == .badRequest, "top_logprobs without logprobs")
        }
    }

    /// GET /metrics: the Prometheus text format, and the counters move with a request.
    @Test func metricsCountRequestsAndTokens() async throws {
        let server = Server()
        try await server.app.test(.router) { client in
            func scrape() async throws -> [String: Double] {
                let text = try await client.execute(uri: "/metrics", method: .get) { r in
                    #expect(r.headers[.contentType]?.hasPrefix("text/plain; version=0.0.4") == true)
                    return String(buffer: r.body)
                }
                var samples: [String: Double] = [:]
                for line in text.split(separator: "\n") where !line.hasPrefix("#") {
                    let parts = line.split(separator: " ")
                    #expect(parts.count == 2, "a sample line is 'name{labels} value': \(line)")
                    samples[String(parts[0])] = Double(parts[1])
                }
                return samples
            }
            _ = try await scrape()
            let (_, body) = try await Self.post(client, "/v1/completions", #"{"prompt": "Hi there", "max_tokens": 5, "temperature": 0}"#)
            let usage = try JSONValue.parse(body)["usage"]
            let after = try await scrape()
            #expect(after["conclave_generation_tokens_total"] == 5)
            #expect(after["conclave_prompt_tokens_total"] == Double(usage?["prompt_tokens"]?.intValue ?? -1))
            #expect(after[#"conclave_requests_finished_total{reason="length"}"#] == 1)
            #expect(after[#"conclave_http_requests_total{endpoint="/v1/completions",status="200"}"#] == 1)
            #expect(after[#"conclave_time_to_first_token_seconds_count"#] == 1)
            #expect(after[#"conclave_inter_token_latency_seconds_count"#] == 4)
            #expect(after[#"conclave_http_requests_total{endpoint="/metrics",status="200"}"#] == 1, "the first scrape is counted")
        }
    }

    @Test func apiKeyIsRequiredButNotForHealth() async throws {
        let server = Server(apiKey: "sekrit")
        try await server.app.test(.router) { client in
            let (none, body) = try await Self.post(client, "/v1/completions", #"{"prompt": "Hi", "max_tokens": 1}"#)
            #expect(try none == .unauthorized && JSONValue.parse(body)["error"]?["code"]?.stringValue == "invalid_api_key")
            let (wrong, _) = try await Self.post(client, "/v1/completions", #"{"prompt": "Hi", "max_tokens": 1}"#, headers: [.authorization: "Bearer sekrix"])
            #expect(wrong == .unauthorized)
            let (right, _) = try await Self.post(client, "/v1/completions", #"{"prompt": "Hi", "max_tokens": 1}"#, headers: [.authorization: "Bearer sekrit"])
            #expect(right == .ok)
            // The scheme is case-insensitive (RFC 9110), the key is not; another scheme is refused.
            let (lower, _) = try await Self.post(client, "/v1/completions", #"{"prompt": "Hi", "max_tokens": 1}"#, headers: [.authorization: "bearer sekrit"])
            #expect(lower == .ok)
            let (upperKey, _) = try await Self.post(client, "/v1/completions", #"{"prompt": "Hi", "max_tokens": 1}"#, headers: [.authorization: "Bearer SEKRIT"])
            #expect(upperKey == .unauthorized)
            let (basic, _) = try await Self.post(client, "/v1/completions", #"{"prompt": "Hi", "max_tokens": 1}"#, headers: [.authorization: "Basic sekrit"])
            #expect(basic == .unauthorized)
            let health = try await client.execute(uri: "/health", method: .get) { $0.status }
            #expect(health == .ok)
        }
    }

    /// A bounded queue: with one sequence busy and one request waiting (the most allowed), the next is refused
    /// at once with 429 and Retry-After, as OpenAI's rate limits are; the waiting one is then served.
    @Test func aFullQueueAnswers429WithRetryAfter() async throws {
        let server = Server(context: 4096, sequences: 1, queued: 1)
        try await server.app.test(.router) { client in
            let long = Task { try await Self.post(client, "/v1/completions", #"{"prompt": "The", "max_tokens": 3000, "temperature": 0, "ignore_eos": true}"#) }
            let waiting = Task { () -> HTTPResponse.Status in
                // Submitted once the long one runs, so it is the one that waits.
                while server.metrics.handle(ServingMetrics.catalog.running).value < 1 { try await Task.sleep(nanoseconds: 5_000_000) }
                return try await Self.post(client, "/v1/completions", #"{"prompt": "Hi", "max_tokens": 2}"#).0
            }
            for _ in 0..<12000 where server.metrics.handle(ServingMetrics.catalog.queued).value < 1 { try await Task.sleep(nanoseconds: 5_000_000) }
            #expect(server.metrics.handle(ServingMetrics.catalog.queued).value == 1)
            let (status, headers, body) = try await client.execute(uri: "/v1/completions", method: .post, body: ByteBuffer(string: #"{"prompt": "Hi", "max_tokens": 2}"#)) { r in
                (r.status, r.headers, String(buffer: r.body))
            }
            #expect(status == .tooManyRequests && headers[.retryAfter] == "1", "\(status) \(body)")
            #expect(try JSONValue.parse(body)["error"]?["code"]?.stringValue == "rate_limit_exceeded")
            long.cancel()
            server.scheduler.stop()
            _ = try? await long.value
            _ = try? await waiting.value
        }
    }

    /// A client that hangs up mid-stream: its sequence is cancelled and its caches freed while the server goes on.
    @Test func disconnectMidStreamFreesTheSequence() async throws {
        // Long enough that only the hang-up can end it early, however loaded the machine.
        let server = Server(context: 4096)
        try await server.app.test(.live) { client in
            let port = client.port!
            // The blocking client runs on a thread of its own, so the server's tasks are never waiting for a
            // cooperative thread this test holds.
            try await onThread {
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                var addr = sockaddr_in()
                addr.sin_family = sa_family_t(AF_INET)
                addr.sin_port = in_port_t(UInt16(port).bigEndian)
                addr.sin_addr.s_addr = inet_addr("127.0.0.1")
                let connected = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
                #expect(connected == 0)
                let body = #"{"prompt": "The", "max_tokens": 4000, "temperature": 0, "stream": true}"#
                let request = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
                _ = request.withCString { send(fd, $0, strlen($0), 0) }
                // Read until a couple of chunks have arrived, then hang up.
                var got = [UInt8](repeating: 0, count: 4096)
                var seen = ""
                while seen.components(separatedBy: "data: ").count < 4 {
                    let n = recv(fd, &got, got.count, 0)
                    guard n > 0 else { break }
                    seen += String(decoding: got[0..<n], as: UTF8.self)
                }
                // Hang up with a reset (linger 0), as a killed client does: the server's next write fails at once,
                // however its writes are buffered.
                var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
                setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
                close(fd)
            }
            var live = server.executor.liveSequences()
            for _ in 0..<3000 where live > 0 || server.scheduler.stats().cancelled == 0 {
                try await Task.sleep(nanoseconds: 20_000_000)
                live = server.executor.liveSequences()
            }
            #expect(live == 0, "the hung-up sequence's caches are freed")
            #expect(server.scheduler.stats().cancelled == 1 && server.scheduler.stats().tokens < 4000, "\(server.scheduler.stats())")
            #expect(server.metrics.handle(ServingMetrics.catalog.disconnected).value == 1, "the hang-up is counted as a disconnect")
            let (ok, _) = try await Self.post(client, "/v1/completions", #"{"prompt": "Hi", "max_tokens": 2}"#)
            #expect(ok == .ok)
        }
    }

    /// A template that would loop 10¹⁰ times (templates come from model files) is stopped by its budget: the
    /// request gets a 500 that says so, `/health` answers while it renders (the render is off the cooperative
    /// threads), and the server goes on serving.
    @Test func aRunawayTemplateIsStoppedAndTheServerServes() async throws {
        let looping = "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}"
        let server = Server(template: looping)
        try await server.app.test(.live) { client in
            async let stuck = Self.post(client, "/v1/chat/completions", #"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}"#)
            let health = try await client.execute(uri: "/health", method: .get) { r in r.status }
            #expect(health == .ok)
            let (status, body) = try await stuck
            #expect(status == .internalServerError, "\(body)")
            let error = try JSONValue.parse(body)["error"]
            #expect(error?["code"]?.stringValue == "template_budget_exceeded", "\(body)")
            #expect(error?["message"]?.stringValue?.contains("steps") == true, "\(body)")
            let (ok, _) = try await Self.post(client, "/v1/completions", #"{"prompt": "Hi", "max_tokens": 2}"#)
            #expect(ok == .ok)
        }
    }

    /// Tools offered to a model whose template teaches Hermes calls: an answer without a call is the same text
    /// as without tools, `finish_reason` as before; a history with the assistant's calls (content null, arguments
    /// as JSON text, as OpenAI clients send them) and the tool's result renders; what cannot work is a 400.
    @Test func toolsAreOfferedAndTheHistoryOfCallsRenders() async throws {
        let qwen = try String(contentsOfFile: Fixtures.path("chat-templates/Qwen-Qwen2.5-7B-Instruct.jinja"), encoding: .utf8)
        let server = Server(context: 1024, template: qwen)
        #expect(server.api.model.outputFormat.name == "hermes")
        let tools = #""tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]"#
        let plain = #"{"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 12, "temperature": 0}"#
        try await server.app.test(.router) { client in
            let (_, without) = try await Self.post(client, "/v1/chat/completions", plain)
            let (status, with) = try await Self.post(client, "/v1/chat/completions", String(plain.dropLast()) + ", " + tools + "}")
            #expect(status == .ok, "\(with)")
            let a = try JSONValue.parse(without)["choices"]?.arrayValue?.first, b = try JSONValue.parse(with)["choices"]?.arrayValue?.first
            // The tools are in the prompt, so the text may differ; its shape does not: content, no calls.
            #expect(b?["message"]?["content"]?.stringValue != nil && b?["message"]?["tool_calls"] == nil, "\(with)")
            #expect(a?["finish_reason"]?.stringValue == "length" && b?["finish_reason"]?.stringValue == "length")

            let history = #"{"messages": [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}, {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}], "#
            let (s2, rendered) = try await Self.post(client, "/apply-template", history + tools + "}")
            #expect(s2 == .ok, "\(rendered)")
            let prompt = try JSONValue.parse(rendered)["prompt"]?.stringValue ?? ""
            #expect(prompt.contains(#"<tool_call>\#n{"name": "get_weather", "arguments": {"city": "Paris"}}\#n</tool_call>"#) && prompt.contains("sunny"), "\(prompt)")
            let (s3, answered) = try await Self.post(client, "/v1/chat/completions", history + tools + #", "max_tokens": 4}"#)
            #expect(s3 == .ok, "\(answered)")

            let bad: [(String, String)] = [
                (#""tool_choice": {"type": "function", "function": {"name": "nope"}}"#, "not among 'tools'"),
                (#""tool_choice": "required", "response_format": {"type": "json_object"}"#, "both constrain the answer"),
                (#""tool_choice": "sometimes""#, "'tool_choice' must be"),
                (#""reasoning_format": "loud""#, "'reasoning_format' must be"),
            ]
            for (field, message) in bad {
                let (s, body) = try await Self.post(client, "/v1/chat/completions", String(plain.dropLast()) + ", " + tools + ", " + field + "}")
                #expect(s == .badRequest && body.contains(message), "\(field): \(body)")
            }
            let (s4, body4) = try await Self.post(client, "/v1/chat/completions", String(plain.dropLast()) + #", "tools": [{"type": "function"}]}"#)
            #expect(s4 == .badRequest && body4.contains("tools[0]"), "\(body4)")
            let (s5, body5) = try await Self.post(client, "/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "not json"}}]}]}"#)
            #expect(s5 == .badRequest && body5.contains("arguments must be a JSON object"), "\(body5)")
        }
    }

    /// `add_generation_prompt` is the template's switch on /apply-template and chat; a conversation ending with
    /// an assistant message is continued from its text (the model goes on from it), unless the request says
    /// `"continue_final_message": false`.
    @Test func generationPromptAndContinuingTheAssistant() async throws {
        let qwen = try String(contentsOfFile: Fixtures.path("chat-templates/Qwen-Qwen2.5-7B-Instruct.jinja"), encoding: .utf8)
        let server = Server(context: 1024, template: qwen)
        let user = #"{"role": "user", "content": "Tell me a story"}"#
        try await server.app.test(.router) { client in
            func prompt(_ body: String) async throws -> String {
                let (status, text) = try await Self.post(client, "/apply-template", body)
                #expect(status == .ok, "\(text)")
                return try JSONValue.parse(text)["prompt"]?.stringValue ?? ""
            }
            let with = try await prompt(#"{"messages": ["# + user + "]}")
            let without = try await prompt(#"{"messages": ["# + user + #"], "add_generation_prompt": false}"#)
            #expect(with == without + "<|im_start|>assistant\n", "\(with.debugDescription) vs \(without.debugDescription)")

            let partial = #"{"role": "assistant", "content": "Once upon a time, a little"}"#
            let continued = try await prompt(#"{"messages": ["# + user + ", " + partial + "]}")
            #expect(continued == with + "Once upon a time, a little", "\(continued.debugDescription)")
            let closed = try await prompt(#"{"messages": ["# + user + ", " + partial + #"], "continue_final_message": false, "add_generation_prompt": false}"#)
            #expect(closed == without + "<|im_start|>assistant\nOnce upon a time, a little<|im_end|>\n", "\(closed.debugDescription)")

            // The chat answer goes on from the partial text: the tokens generated are those after it.
            let body = #"{"messages": ["# + user + ", " + partial + #"], "max_tokens": 8, "temperature": 0}"#
            let (status, answer) = try await Self.post(client, "/v1/chat/completions", body)
            #expect(status == .ok, "\(answer)")
            let want = try Self.alone(try server.api.model.tokens(ofPrompt: continued), maxTokens: 8, .greedy)
            #expect(try JSONValue.parse(answer)["choices"]?.arrayValue?.first?["message"]?["content"]?.stringValue == want)
            let (bad, text) = try await Self.post(client, "/apply-template", #"{"messages": ["# + user + #"], "add_generation_prompt": "yes"}"#)
            #expect(bad == .badRequest && text.contains("add_generation_prompt"), "\(text)")
        }
    }

    /// /v1/responses with a family whose answers are read (Qwen3: reasoning): the stream's events come in
    /// OpenAI's order and carry the same text as the response object; what cannot be served is a 400 naming it.
    @Test func responsesEventsAndErrors() async throws {
        let qwen3 = try String(contentsOfFile: Fixtures.path("chat-templates/Qwen-Qwen3-0.6B.jinja"), encoding: .utf8)
        let server = Server(context: 1024, template: qwen3)
        let body = #"{"input": [{"role": "user", "content": "Tell me a story"}, {"role": "assistant", "content": "Once upon a time"}], "max_output_tokens": 8, "temperature": 0"#
        try await server.app.test(.router) { client in
            let (status, plain) = try await Self.post(client, "/v1/responses", body + "}")
            #expect(status == .ok, "\(plain)")
            let response = try JSONValue.parse(plain)
            #expect(response["object"]?.stringValue == "response" && response["status"]?.stringValue == "incomplete", "\(plain)")
            let text = response["output"]?.arrayValue?.last?["content"]?.arrayValue?.first?["text"]?.stringValue
            #expect(text != nil, "\(plain)")
            let (s2, sse) = try await Self.post(client, "/v1/responses", body + #", "stream": true}"#)
            #expect(s2 == .ok)
            let events = sse.components(separatedBy: "\n\n").compactMap { block -> (String, JSONValue)? in
                guard let line = block.split(separator: "\n").first(where: { $0.hasPrefix("data: ") }), let v = try? JSONValue.parse(String(line.dropFirst(6))) else { return nil }
                return (v["type"]?.stringValue ?? "", v)
            }
            let types = events.map(\.0)
            #expect(Array(types.prefix(2)) == ["response.created", "response.in_progress"], "\(types)")
            #expect(types.last == "response.incomplete", "\(types)")
            #expect(events.map { $0.1["sequence_number"]?.intValue ?? -1 } == Array(0..<events.count))
            let deltas = events.filter { $0.0 == "response.output_text.delta" }.compactMap { $0.1["delta"]?.stringValue }.joined()
            #expect(deltas == text, "\(deltas.debugDescription) vs \(String(describing: text))")
            for (field, message) in [(#""text": {"format": {"type": "json_schema"}}"#, "text.format"), (#""input": [{"type": "image"}]"#, "not supported"),
                                     (#""previous_response_id": "resp_gone""#, "previous_response_id")] {
                let (s, b) = try await Self.post(client, "/v1/responses", #"{"input": "x", "#.replacingOccurrences(of: #""input": "x", "#, with: field.hasPrefix(#""input""#) ? "" : #""input": "x", "#) + field + "}")
                #expect(s == .badRequest && b.contains(message), "\(field): \(b)")
            }
        }
    }
}
