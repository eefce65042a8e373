import Foundation
import TestSupport
import Testing

/// The official anthropic Python client against a real `conclave serve` with an API key (sent as `x-api-key`)
/// and Qwen3's chat template (a family that reasons, so answers are read back and streamed split): create,
/// stream, count_tokens, tool_use / tool_result history, errors. The check is Tests/Python/anthropic_client_check.py.
@Suite(.serialized) struct AnthropicClientTests {
    @Test func messagesCreateStreamAndCountTokens() async throws {
        try await onThread {
            let c = try ProcessCluster()
            defer { c.stop() }
            let keyFile = c.dir.appendingPathComponent("key").path
            try "sk-test-anthropic\n".write(toFile: keyFile, atomically: true, encoding: .utf8)
            let port = ProcessCluster.freePorts(1)
            try c.start("serve", ["serve", "--http", "127.0.0.1:\(port)", "--threads", "2", "--api-key-file", keyFile,
                                  "--chat-template", Fixtures.path("chat-templates/Qwen-Qwen3-0.6B.jinja")])
            try c.waitFor("serve", "OpenAI-compatible API on", timeout: 120)
            let out = try OpenAIClientTests.runCheck("anthropic_client_check.py", ["http://127.0.0.1:\(port)", "sk-test-anthropic"], cluster: c)
            #expect(out.contains(#""ok": true"#))
        }
    }
}
