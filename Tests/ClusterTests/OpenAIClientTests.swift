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
        try Self.runCheck("openai_client_check.py", [base, "--concurrency", "8"], cluster: c)
    }

    /// Runs `Tests/Python/SCRIPT args…` with the test venv's Python; expects exit 0; returns its stdout.
    static func runCheck(_ script: String, _ args: [String], cluster c: ProcessCluster) throws -> String {
        guard let python = Self.python else {
            Issue.record("no Python with the official clients: run scripts/test, which makes .build-venv")
            return ""
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = [Fixtures.root.appendingPathComponent("Tests/Python/\(script)").path] + args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let stdout = String(decoding: o, as: UTF8.self), stderr = String(decoding: e, as: UTF8.self)
        #expect(p.terminationStatus == 0, "\(script): \(stderr)\n\(c.logs())")
        return stdout
    }

    @Test func oneProcess() async throws { try await onThread { [self] in try self.oneProcessBlocking() } }
    func oneProcessBlocking() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let port = ProcessCluster.freePorts(1)
        try c.start("serve", ["serve", "--http", "127.0.0.1:\(port)", "--threads", "2", "--parallel", "8"])
        try c.waitFor("serve", "OpenAI-compatible API on", timeout: 120)
        let out = try check("http://127.0.0.1:\(port)", cluster: c)
        #expect(out.contains(#""ok": true"#))
        try expectRoutedRowsInEveryLayer("http://127.0.0.1:\(port)", holders: ["local"])
        // `plan --trace` takes the live counts as it takes a trace; counts of another model are refused.
        let cluster = Fixtures.root.appendingPathComponent("cluster/local.yaml").path
        let (rc, planned, why) = try c.run(["plan", "--cluster", cluster, "--trace", "http://127.0.0.1:\(port)/v1/cluster/experts"])
        #expect(rc == 0 && planned.contains("routing from the trace"), "\(planned)\(why)")
        let other = c.dir.appendingPathComponent("other.json").path
        try Data(#"{"object":"cluster.experts","layers":[{"layer":0,"total":[1,2,3]}]}"#.utf8).write(to: URL(fileURLWithPath: other))
        let (bad, _, refused) = try c.run(["plan", "--cluster", cluster, "--trace", other])
        #expect(bad != 0 && refused.contains("counts 3 experts, but the model has 8"), "\(refused)")
    }

    /// `GET /v1/cluster/experts` after the client check's traffic: every layer counted the same rows (each row
    /// passes every layer — in a cluster, once every stage's heartbeat has brought its counts), the routers'
    /// choices add up to rows × experts used, and each expert has a holder of the plan.
    func expectRoutedRowsInEveryLayer(_ base: String, holders: Set<String>) throws {
        var layers: [[String: Any]] = []
        for _ in 0..<60 {
            let body = try Data(contentsOf: URL(string: "\(base)/v1/cluster/experts")!)
            let json = try #require(try JSONSerialization.jsonObject(with: body) as? [String: Any])
            #expect(json["object"] as? String == "cluster.experts")
            layers = json["layers"] as? [[String: Any]] ?? []
            let rows = Set(layers.map { $0["choices"] as? Int ?? 0 })
            if rows.count == 1, rows.first! > 0 { break }
            Thread.sleep(forTimeInterval: 0.5)
        }
        #expect(layers.count == 4)
        let rows = layers.map { $0["choices"] as? Int ?? 0 }
        #expect(Set(rows).count == 1 && rows[0] > 0, "\(rows)")
        for l in layers {
            let total = l["total"] as? [Int] ?? []
            #expect(total.count == 8 && total.reduce(0, +) == l["choices"] as? Int)
            let named = Set((l["holders"] as? [[String: Any]] ?? []).compactMap { $0["worker"] as? String })
            #expect(!named.isEmpty && named.isSubset(of: holders), "\(named)")
            #expect((l["imbalance"] as? Double ?? 0) > 0)
        }
    }

    @Test func localCluster() async throws { try await onThread { [self] in try self.localClusterBlocking() } }
    func localClusterBlocking() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let base = ProcessCluster.freePorts(5)
        try c.start("serve", ["serve", "--local", "3", "--port", String(base), "--http", "127.0.0.1:\(base + 4)", "--threads", "1"])
        try c.waitFor("serve", "OpenAI-compatible API on", timeout: 180)
        // HTTP answers (503, "starting") while the workers load; the cluster serves once the coordinator says so.
        try c.waitFor("serve", "[coordinator] serving", timeout: 180)
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
        try expectRoutedRowsInEveryLayer("http://127.0.0.1:\(base + 4)", holders: ["local-1", "local-2", "local-3"])
    }
}

/// `conclave bench serve` end to end (its figures are for the closing notes; here only that it measures what it
/// says: every stream's tokens, in the JSON shape documented).
@Suite struct BenchServeTests {
    @Test func benchServeReportsEveryRound() async throws { try await onThread { [self] in try self.benchServeReportsEveryRoundBlocking() } }
    func benchServeReportsEveryRoundBlocking() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let (code, out, err) = try c.run(["bench", "serve", "--threads", "1", "--concurrency", "1,3", "--prompt", "16", "--gen", "5", "--json"], timeout: 300)
        #expect(code == 0, "\(err)")
        let rounds = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])
        #expect(rounds.count == 2)
        #expect(rounds.map { $0["concurrency"] as? Int } == [1, 3])
        #expect(rounds.map { $0["tokens"] as? Int } == [5, 15], "every stream generated --gen tokens")
        for r in rounds {
            #expect((r["aggregate_tok_s"] as? Double ?? 0) > 0 && (r["ttft_p50_ms"] as? Double ?? 0) > 0)
            #expect(r["server"] as? String == "conclave")
        }
    }

    /// `bench serve --turns`: the multi-turn workload on a server with the prefix cache and one without. From
    /// the second turn on, the cached server reuses each conversation's context (the shared system prompt on the
    /// first), the other reuses nothing, and both generate every token asked.
    @Test func multiTurnReportsReuse() async throws { try await onThread { [self] in try self.multiTurnReportsReuseBlocking() } }
    func multiTurnReportsReuseBlocking() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let (code, out, err) = try c.run(["bench", "serve", "--threads", "1", "--turns", "3", "--conversations", "2", "--system", "40", "--user", "12",
                                          "--gen", "6", "--json"], timeout: 300)
        #expect(code == 0, "\(err)")
        let runs = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])
        #expect(runs.map { $0["server"] as? String } == ["conclave", "conclave (no cache)"])
        for r in runs {
            #expect(r["tokens"] as? Int == 2 * 3 * 6, "every turn generated --gen tokens")
            let turns = try #require(r["turns"] as? [[String: Any]])
            #expect(turns.count == 3)
            let reused = turns.map { $0["reused_tokens"] as? Int ?? -1 }
            if r["server"] as? String == "conclave" {
                // Turn 2 and 3: at least each conversation's whole previous prompt.
                #expect(reused[1] >= 2 * (40 + 12) && reused[2] >= 2 * (40 + 2 * 12), "\(reused)")
            } else {
                #expect(reused == [0, 0, 0])
            }
        }
    }
}
