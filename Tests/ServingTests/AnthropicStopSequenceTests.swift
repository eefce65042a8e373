import HTTPTypes
import Hummingbird
import HummingbirdTesting
import JSON
import Testing

/// Anthropic's `stop_sequences`: an answer ended by one says `stop_reason: "stop_sequence"` and which, whole or
/// streamed (in `message_delta`); one ended by its length still says `max_tokens`. (This model, prompted through
/// chatml, answers with newlines: a newline is the stop string it surely writes.)
@Suite(.serialized) struct AnthropicStopSequenceTests {
    @Test func aStopStringIsReportedAsTheStopSequence() async throws {
        let server = HTTPAPITests.Server(context: 256)
        try await server.app.test(.router) { client in
            let body = #"{"model": "m", "max_tokens": 64, "temperature": 0, "stop_sequences": ["zzzz", "\n"], "messages": [{"role": "user", "content": "Once upon a time"}]"#
            let (status, text) = try await HTTPAPITests.post(client, "/v1/messages", body + "}")
            #expect(status == .ok, "\(text)")
            let v = try JSONValue.parse(text)
            #expect(v["stop_reason"]?.stringValue == "stop_sequence" && v["stop_sequence"]?.stringValue == "\n", "\(text)")
            let (_, sse) = try await HTTPAPITests.post(client, "/v1/messages", body + #", "stream": true}"#)
            let delta = sse.components(separatedBy: "\n").first { $0.hasPrefix("data: ") && $0.contains(#""message_delta""#) }
            let d = try JSONValue.parse(String(try #require(delta, "\(sse)").dropFirst(6)))["delta"]
            #expect(d?["stop_reason"]?.stringValue == "stop_sequence" && d?["stop_sequence"]?.stringValue == "\n", "\(sse)")
            let (_, long) = try await HTTPAPITests.post(client, "/v1/messages", #"{"model": "m", "max_tokens": 3, "temperature": 0, "stop_sequences": ["zzzz"], "messages": [{"role": "user", "content": "Once upon a time"}]}"#)
            let l = try JSONValue.parse(long)
            #expect(l["stop_reason"]?.stringValue == "max_tokens" && l["stop_sequence"]?.isNull == true, "\(long)")
        }
    }
}
