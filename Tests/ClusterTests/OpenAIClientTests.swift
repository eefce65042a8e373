import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import TestSupport
import Testing

/// The official openai Python client against real `conclave serve` processes: one process, and a three-worker
/// local cluster. scripts/test makes the venv (CONCLAVE_TEST_PYTHON); the check is Tests/Python/openai_client_check.py.
@Suite(.serialized) struct OpenAIClientTests {
    static var python: String? {
        if let p = ProcessInfo.processInfo.environment["CONCLAVE_TEST_PYTHON"], FileManager.default.isExecutableFile(atPath: p) { return p }
        let venv = Fixtures.root.appendingPathComponent(".build-venv/bin/python").path
        return FileManager.default.isExecutableFile(atPath: venv) ? venv : nil
    }

    /// Runs the client check against `base`; returns its JSON line.
    func check(_ base: String, cluster c: ProcessCluster) throws -> String {
        guard let python = Self.python else {
            Issue.record("no Python with the openai client: run scripts/test, which makes .build-venv")
            return ""
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = [Fixtures.root.appendingPathComponent("Tests/Python/openai_client_check.py").path, base, "--concurrency", "8"]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let stdout = String(decoding: o, as: UTF8.self), stderr = String(decoding: e, as: UTF8.self)
        #expect(p.terminationStatus == 0, "openai client check: \(stderr)\n\(c.logs())")
        return stdout
    }

    @Test func oneProcess() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let port = ProcessCluster.freePorts(1)
        try c.start("serve", ["serve", "--http", "127.0.0.1:\(port)", "--threads", "2", "--parallel", "8"])
        try c.waitFor("serve", "OpenAI-compatible API on", timeout: 120)
        let out = try check("http://127.0.0.1:\(port)", cluster: c)
        #expect(out.contains(#""ok": true"#))
    }

    @Test func localCluster() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let base = ProcessCluster.freePorts(5)
        try c.start("serve", ["serve", "--local", "3", "--port", String(base), "--http", "127.0.0.1:\(base + 4)", "--threads", "1"])
        try c.waitFor("serve", "OpenAI-compatible API on", timeout: 180)
        let out = try check("http://127.0.0.1:\(base + 4)", cluster: c)
        #expect(out.contains(#""ok": true"#))
        // The cluster's status over HTTP is the same JSON as `conclave status --json`.
        let http = String(decoding: try Data(contentsOf: URL(string: "http://127.0.0.1:\(base + 4)/v1/cluster")!), as: UTF8.self)
        let (code, status, _) = try c.run(["status", "--coordinator", "tcp://127.0.0.1:\(base)", "--json"])
        #expect(code == 0)
        for name in ["local-1", "local-2", "local-3"] {
            #expect(http.contains(#""name":"\#(name)""#) && status.contains(#""name":"\#(name)""#), "\(http)")
        }
        #expect(http.hasPrefix(#"{"model":"#) && status.hasPrefix(#"{"model":"#))
    }
}
