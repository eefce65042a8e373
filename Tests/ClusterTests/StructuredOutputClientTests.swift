import Foundation
import TestSupport
import Testing

/// Structured output and forced tool calls with the official openai and anthropic clients, every answer checked
/// by the jsonschema package (Tests/Python/structured_output_check.py): one process, and a three-worker local
/// cluster, where the grammar lives with the sampler on the last worker.
@Suite(.serialized) struct StructuredOutputClientTests {
    @Test func oneProcess() async throws {
        try await onThread {
            let c = try ProcessCluster()
            defer { c.stop() }
            let port = ProcessCluster.freePorts(1)
            try c.start("serve", ["serve", "--http", "127.0.0.1:\(port)", "--threads", "2"])
            try c.waitFor("serve", "OpenAI-compatible API on", timeout: 120)
            let out = try OpenAIClientTests.runCheck("structured_output_check.py", ["http://127.0.0.1:\(port)"], cluster: c)
            #expect(out.contains(#""ok": true, "schemas": 20"#), "\(out)")
        }
    }

    @Test func localCluster() async throws {
        try await onThread {
            let c = try ProcessCluster()
            defer { c.stop() }
            let base = ProcessCluster.freePorts(5)
            try c.start("serve", ["serve", "--local", "3", "--port", String(base), "--http", "127.0.0.1:\(base + 4)", "--threads", "1"])
            try c.waitFor("serve", "[coordinator] serving", timeout: 180)
            let out = try OpenAIClientTests.runCheck("structured_output_check.py", ["http://127.0.0.1:\(base + 4)"], cluster: c)
            #expect(out.contains(#""ok": true, "schemas": 20"#), "\(out)")
        }
    }
}
