import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import JSON
import TestSupport
import Testing

/// Output constrained while sampling, through the HTTP API over the shipped model (a story model that never
/// writes JSON by itself): `response_format` json_schema and json_object, llama-server's `json_schema` and
/// `grammar`, and forced tool calls, whose answers always parse; schemas that cannot be enforced are 400s.
@Suite(.serialized) struct StructuredOutputTests {
    typealias Server = HTTPAPITests.Server
    static func post(_ client: some TestClientProtocol, _ path: String, _ body: String, _ headers: HTTPFields) async throws -> (HTTPResponse.Status, String) {
        try await HTTPAPITests.post(client, path, body, headers: headers)
    }

    static func content(_ body: String) throws -> String? {
        try JSONValue.parse(body)["choices"]?.arrayValue?.first?["message"]?["content"]?.stringValue
    }

    @Test func answersFollowTheSchemaOrGrammar() async throws {
        let server = Server(context: 1024)
        let schema = #"{"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}, "age": {"type": "integer", "minimum": 0, "maximum": 120}, "pet": {"enum": ["cat", "dog"]}, "toys": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 2}}, "required": ["name", "age", "pet", "toys"], "additionalProperties": false}"#
        try await server.app.test(.router) { client in
            for seed in 1...3 {
                let body = #"{"messages": [{"role": "user", "content": "A person"}], "max_tokens": 400, "seed": \#(seed), "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": \#(schema)}}}"#
                let (status, text) = try await Self.post(client, "/v1/chat/completions", body, [:])
                #expect(status == .ok, "\(text)")
                let v = try JSONValue.parse(try #require(try Self.content(text)))
                #expect(v["name"]?.stringValue.map { $0.unicodeScalars.count <= 10 } == true, "\(text)")
                #expect(v["age"]?.intValue.map { (0...120).contains($0) } == true, "\(text)")
                #expect(["cat", "dog"].contains(v["pet"]?.stringValue ?? ""), "\(text)")
                #expect((v["toys"]?.arrayValue?.count ?? 9) <= 2, "\(text)")
                #expect(try JSONValue.parse(text)["choices"]?.arrayValue?.first?["finish_reason"]?.stringValue == "stop", "\(text)")
            }
            // llama-server's fields: a grammar, and a schema at the top level.
            let (s1, yesNo) = try await Self.post(client, "/v1/chat/completions", #"{"messages": [{"role": "user", "content": "Well?"}], "max_tokens": 20, "seed": 1, "grammar": "root ::= (\"yes\" | \"no\") \"!\""}"#, [:])
            let answer = try Self.content(yesNo) ?? ""
            #expect(s1 == .ok && ["yes!", "no!"].contains(answer), "\(yesNo)")
            let (s2, list) = try await Self.post(client, "/v1/completions", #"{"prompt": "Numbers:", "max_tokens": 300, "seed": 2, "json_schema": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2, "maxItems": 4}}"#, [:])
            #expect(s2 == .ok, "\(list)")
            let items = try JSONValue.parse(try JSONValue.parse(list)["choices"]?.arrayValue?.first?["text"]?.stringValue ?? "").arrayValue
            #expect(items.map { (2...4).contains($0.count) && $0.allSatisfy { ($0.intValue ?? -1) >= 0 && ($0.intValue ?? 10) <= 9 } } == true, "\(list)")
            // Streaming gives the same JSON as the whole answer.
            let body = #"{"messages": [{"role": "user", "content": "A person"}], "max_tokens": 400, "seed": 1, "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": \#(schema)}}"#
            let (_, whole) = try await Self.post(client, "/v1/chat/completions", body + "}", [:])
            let (_, sse) = try await Self.post(client, "/v1/chat/completions", body + #", "stream": true}"#, [:])
            let streamed = try HTTPAPITests.parseSSE(sse, chat: true).text, answered = try Self.content(whole)
            #expect(streamed == answered)
        }
    }

    @Test func schemasThatCannotBeEnforcedAre400s() async throws {
        let server = Server(context: 256)
        try await server.app.test(.router) { client in
            let cases: [(String, String, String)] = [
                (#""response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "^a+$"}}}"#, "response_format.json_schema.schema", "'pattern'"),
                (#""response_format": {"type": "json_schema", "json_schema": {"name": "x"}}"#, "response_format.json_schema.schema", "missing"),
                (##""response_format": {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/$defs/nope"}}}"##, "response_format.json_schema.schema", "does not name"),
                (#""grammar": "root ::= root \"x\"""#, "grammar", "left-recursive"),
                (#""grammar": "root ::= \"x""#, "grammar", "unterminated"),
                (#""grammar": "root ::= <|no-such-token|>""#, "messages", "no token"),
                (#""json_schema": {"type": "integer"}, "grammar": "root ::= \"1\"""#, "grammar", "not both"),
            ]
            for (field, param, message) in cases {
                let (s, body) = try await Self.post(client, "/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "# + field + "}", [:])
                #expect(s == .badRequest, "\(field): \(body)")
                let e = try JSONValue.parse(body)["error"]
                #expect(e?["param"]?.stringValue == param && (e?["message"]?.stringValue ?? "").contains(message), "\(field): \(body)")
            }
            let (ok, _) = try await Self.post(client, "/v1/chat/completions", #"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}"#, [:])
            #expect(ok == .ok)
        }
    }

    /// `tool_choice` required or named: the answer is a call, even from a model that never learnt to call; a
    /// template without a call syntax gets Hermes'.
    @Test func forcedCallsAreCallsThatValidate() async throws {
        let qwen = try String(contentsOfFile: Fixtures.path("chat-templates/Qwen-Qwen3-0.6B.jinja"), encoding: .utf8)
        for template in [nil, qwen] {
            let server = Server(context: 1024, template: template)
            let tools = #"[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"]}}}, {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}}, "required": ["zone"]}}}]"#
            try await server.app.test(.router) { client in
                for (choice, names) in [(#""required""#, ["get_weather", "get_time"]), (#"{"type": "function", "function": {"name": "get_time"}}"#, ["get_time"])] {
                    for stream in [false, true] {
                        let body = #"{"messages": [{"role": "user", "content": "Weather in Paris?"}], "max_tokens": 200, "seed": 5, "parallel_tool_calls": false, "tools": \#(tools), "tool_choice": \#(choice), "stream": \#(stream)}"#
                        let (status, text) = try await Self.post(client, "/v1/chat/completions", body, [:])
                        #expect(status == .ok, "\(text)")
                        var calls: [JSONValue] = [], finish: String?
                        if stream {
                            // As OpenAI streams calls: a first delta with index, id and name, then argument fragments.
                            var names: [Int: String] = [:], arguments: [Int: String] = [:]
                            for event in text.components(separatedBy: "\n\n") where event.hasPrefix("data: {") {
                                let c = try JSONValue.parse(String(event.dropFirst(6)))["choices"]?.arrayValue?.first
                                for d in c?["delta"]?["tool_calls"]?.arrayValue ?? [] {
                                    let i = d["index"]?.intValue ?? -1
                                    if let n = d["function"]?["name"]?.stringValue {
                                        #expect(names[i] == nil && d["id"]?.stringValue?.hasPrefix("call_") == true, "\(text)")
                                        names[i] = n
                                    }
                                    arguments[i, default: ""] += d["function"]?["arguments"]?.stringValue ?? ""
                                }
                                finish = c?["finish_reason"]?.stringValue ?? finish
                            }
                            calls = names.keys.sorted().map { i in
                                .object([("function", .object([("name", .string(names[i]!)), ("arguments", .string(arguments[i] ?? ""))]))])
                            }
                        } else {
                            let c = try JSONValue.parse(text)["choices"]?.arrayValue?.first
                            calls = c?["message"]?["tool_calls"]?.arrayValue ?? []
                            finish = c?["finish_reason"]?.stringValue
                        }
                        #expect(calls.count == 1 && finish == "tool_calls", "\(template == nil ? "chatml" : "qwen3") \(choice) stream \(stream): \(text)")
                        guard let call = calls.first, let name = call["function"]?["name"]?.stringValue else { continue }
                        #expect(names.contains(name), "\(text)")
                        let args = try JSONValue.parse(call["function"]?["arguments"]?.stringValue ?? "")
                        if name == "get_weather" {
                            #expect(args["city"]?.stringValue != nil && ["c", "f"].contains(args["unit"]?.stringValue ?? ""), "\(text)")
                        } else {
                            #expect(args["zone"]?.stringValue.map { $0.unicodeScalars.count <= 8 } == true, "\(text)")
                        }
                    }
                }
            }
        }
    }
}
