#if canImport(Glibc)
import Glibc
#endif
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Synchronization
import Testing
import TestSupport

/// Workers whose `--memory` is below their share of the model page experts from their GGUF: generation is
/// exactly what one process prints, the budget holds (peak RSS of the real processes), and the counters add up.
@Suite(.serialized) struct OffloadClusterTests {
    static let model = Fixtures.shippedModel
    /// Each worker's budget: below its share, so both page experts (the last stage's 13 MiB before any expert
    /// include the sampler's grammar caches; see `conclave plan`).
    static let budget = 27 << 19  // 13.5 MiB
    /// Peak RSS allowed above the budget: the Swift runtime, libzmq, code and thread stacks, the tokenizer.
    static let overhead = 64 << 20

    /// Peak resident set size (VmHWM) of a process, from /proc.
    static func peakRSS(_ pid: Int32) -> Int? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kb = Int(line.split(separator: " ").dropFirst().first ?? "") else { return nil }
        return kb * 1024
    }

    /// One process under `--memory`: the same text as without, and its own peak RSS (VmHWM) within the budget
    /// plus the runtime's overhead.
    @Test func oneProcessUnderABudget() async throws { try await onThread { [self] in try self.oneProcessUnderABudgetBlocking() } }
    func oneProcessUnderABudgetBlocking() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let args = ["run", "-m", Self.model, "--threads", "1", "-p", "Once upon a time", "-n", "48", "--temp", "0", "--repeat-penalty", "1.3", "--ctx", "256"]
        let (rc1, resident, err1) = try c.run(args)
        #expect(rc1 == 0, "\(err1)")
        let budget = 18 << 20
        let (rc2, paged, err2) = try c.run(args + ["--memory", String(budget)])
        #expect(rc2 == 0, "\(err2)")
        #expect(paged == resident, "offloaded text differs")
        #expect(err2.contains("misses"), "\(err2)")
        let peak = try #require(err2.split(separator: "\n").first { $0.hasPrefix("memory: peak RSS") }
            .flatMap { $0.split(separator: "(").dropFirst().first?.split(separator: " ").first }.flatMap { Int($0) }, "\(err2)")
        #expect(peak <= budget + Self.overhead, "peak RSS \(peak) bytes for a budget of \(budget)")
        // Too small a budget is refused with the figures, not attempted.
        let (rc3, _, err3) = try c.run(args + ["--memory", "4MiB"])
        #expect(rc3 != 0 && err3.contains("too small") && err3.contains("give at least"), "\(err3)")
    }

    /// `serve --ubatch 2048`: prompts go through the layers 2048 rows at a time, and the budget sets aside scratch
    /// for that many (one formula, `ShardBudget`): a `--memory` that holds 512-row micro-batches but not 2048-row
    /// ones is refused at start with the figures, and one that holds them stays within itself (plus the runtime's
    /// fixed overhead) through a 2100-token prompt. Measured on the model below: the process's own overhead (code,
    /// runtime, threads, tokenizer) is about 40 MiB; the budget's scratch for 2048 rows is 78.7 MiB against 20.1
    /// MiB for 512, so a budget that counted 512 would page fewer experts than fit and peak near 113 MiB on a
    /// 60 MiB budget.
    @Test func aLargeMicroBatchStaysWithinTheBudget() async throws { try await onThread { [self] in try self.aLargeMicroBatchStaysWithinTheBudgetBlocking() } }
    func aLargeMicroBatchStaysWithinTheBudgetBlocking() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let model = dir.appendingPathComponent("ubatch.gguf").path
        let (rc0, _, err0) = try c.run(["synth", "--layers", "2", "--embd", "512", "--heads", "8", "--kv-heads", "2", "--head-dim", "64", "--experts", "64",
                                        "--used", "2", "--expert-ff", "512", "--ctx", "4096", "--type", "Q4_0", "-o", model], timeout: 300)
        #expect(rc0 == 0, "\(err0)")
        let port = ProcessCluster.freePorts(1)
        let serve = ["serve", "-m", model, "--http", "127.0.0.1:\(port)", "--threads", "2", "--ctx", "2560", "--parallel", "1", "--ubatch", "2048"]
        let (rc1, _, err1) = try c.run(serve + ["--memory", "60MiB"], timeout: 120)
        #expect(rc1 != 0 && err1.contains("2048-row micro-batches") && err1.contains("give at least"), "\(err1)")
        let budget = 110 << 20, overhead = 48 << 20
        try c.start("serve", serve + ["--memory", String(budget)])
        try c.waitFor("serve", "OpenAI-compatible API on", timeout: 120)
        let prompt = (0..<2100).map { String(100 + ($0 * 37) % 31000) }.joined(separator: ",")
        let body = try Self.post("http://127.0.0.1:\(port)/v1/completions", #"{"prompt": [\#(prompt)], "max_tokens": 4, "temperature": 0}"#)
        #expect(body.contains(#""prompt_tokens":2100"#) || body.contains(#""prompt_tokens": 2100"#), "\(body.prefix(400))")
        let peak = try #require(Self.peakRSS(c.processes["serve"]!.processIdentifier))
        print("serve --ubatch 2048 --memory \(budget): peak RSS \(peak) bytes")
        #expect(peak <= budget + overhead, "peak RSS \(peak) bytes for a budget of \(budget) + overhead \(overhead)")
    }

    /// POSTs JSON to 127.0.0.1 and returns the body (URLSession, waited on: this suite runs its processes synchronously).
    static func post(_ url: String, _ body: String) throws -> String {
        var req = URLRequest(url: URL(string: url)!)
        req.httpMethod = "POST"
        req.httpBody = Data(body.utf8)
        req.setValue("application/json", forHTTPHeaderField: "Content-Type")
        req.timeoutInterval = 300
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<(Data?, Error?)>((nil, nil))
        URLSession.shared.dataTask(with: req) { d, _, e in result.withLock { $0 = (d, e) }; done.signal() }.resume()
        done.wait()
        let (d, e) = result.withLock { $0 }
        if let e { throw e }
        return String(decoding: d ?? Data(), as: UTF8.self)
    }

    /// `serve -m --memory`: the HTTP API from one process whose experts are paged, the same text as `run`,
    /// the cache's counters in /metrics, peak RSS within budget + overhead.
    @Test func servingOneProcessUnderABudget() async throws { try await onThread { [self] in try self.servingOneProcessUnderABudgetBlocking() } }
    func servingOneProcessUnderABudgetBlocking() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let (rc, resident, err) = try c.run(["run", "-m", Self.model, "--threads", "1", "-p", "Once upon a time", "-n", "24", "--temp", "0",
                                             "--repeat-penalty", "1.3", "--ctx", "256"])
        #expect(rc == 0, "\(err)")
        let port = ProcessCluster.freePorts(1)
        let budget = 20 << 20
        try c.start("serve", ["serve", "-m", Self.model, "--http", "127.0.0.1:\(port)", "--threads", "1", "--ctx", "256", "--parallel", "2",
                              "--memory", String(budget)])
        try c.waitFor("serve", "OpenAI-compatible API on", timeout: 120)
        let log = try String(contentsOf: c.log("serve"), encoding: .utf8)
        #expect(log.contains("offload:") && log.contains("× 2 sequences"), "\(log)")
        let body = try Self.post("http://127.0.0.1:\(port)/v1/completions",
                                 #"{"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "repeat_penalty": 1.3}"#)
        let text = try #require(try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]).flatMap { ($0["choices"] as? [[String: Any]])?.first?["text"] as? String }
        #expect(text.map { $0 + "\n" } == resident, "\(body)")
        let metrics = String(decoding: try Data(contentsOf: URL(string: "http://127.0.0.1:\(port)/metrics")!), as: UTF8.self)
        let misses = metrics.split(separator: "\n").first { $0.hasPrefix("conclave_offload_misses_total ") }.flatMap { Double($0.split(separator: " ")[1]) }
        #expect((misses ?? 0) > 0, "\(metrics)")
        let peak = try #require(Self.peakRSS(c.processes["serve"]!.processIdentifier))
        #expect(peak <= budget + Self.overhead, "peak RSS \(peak) bytes for a budget of \(budget)")
    }

    @Test func workersBelowTheirShardPageExpertsAndMatchOneProcess() async throws { try await onThread { [self] in try self.workersBelowTheirShardPageExpertsAndMatchOneProcessBlocking() } }
    func workersBelowTheirShardPageExpertsAndMatchOneProcessBlocking() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let base = ProcessCluster.freePorts(3)
        // The cluster file claims more than the workers have: the plan must use what they report.
        let yaml = """
        coordinator: tcp://127.0.0.1:\(base)
        workers:
          - name: a
            endpoint: tcp://127.0.0.1:\(base + 1)
            memory: 64MiB
          - name: b
            endpoint: tcp://127.0.0.1:\(base + 2)
            memory: 64MiB
        """
        let file = c.dir.appendingPathComponent("cluster.yaml").path
        try yaml.write(toFile: file, atomically: true, encoding: .utf8)
        for (i, n) in ["a", "b"].enumerated() {
            try c.start(n, ["worker", "--listen", "tcp://127.0.0.1:\(base + 1 + i)", "--name", n, "--threads", "1", "--model", Self.model,
                            "--memory", String(Self.budget)])
        }
        try c.start("coordinator", ["serve", "-m", Self.model, "--cluster", file, "--threads", "1", "--ctx", "256", "--join-timeout", "20", "--http", "off"])
        try c.waitFor("coordinator", "serving")
        let log = try String(contentsOf: c.log("coordinator"), encoding: .utf8)
        #expect(log.contains("smaller budgets"), "\(log)")
        #expect(log.contains("paged through"), "\(log)")

        let endpoint = "tcp://127.0.0.1:\(base)"
        let args = ["-p", "Once upon a time", "-n", "48", "--temp", "0", "--repeat-penalty", "1.3", "--ctx", "256"]
        let (rc1, single, err1) = try c.run(["run", "-m", Self.model, "--threads", "1"] + args)
        #expect(rc1 == 0, "run failed: \(err1)")
        let (rc2, distributed, err2) = try c.run(["generate", "--coordinator", endpoint] + args)
        #expect(rc2 == 0, "generate failed: \(err2)\n\(c.logs())")
        #expect(!single.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
        #expect(distributed == single, "offloaded cluster output differs from one process")

        usleep(1_300_000)  // one heartbeat carries the counters
        let (rc, out, err) = try c.run(["status", "--coordinator", endpoint, "--json"])
        #expect(rc == 0, "status failed: \(err)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        let workers = try #require(json["workers"] as? [[String: Any]])
        var pagers = 0
        for w in workers {
            #expect(w["memory_budget"] as? Int == Self.budget, "\(w)")
            // The plan's bytes for the worker: something, within its budget (what the dashboard shows beside RSS).
            let planned = w["planned_bytes"] as? Int ?? 0
            #expect(planned > 0 && planned <= Self.budget, "\(w)")
            let o = try #require(w["offload"] as? [String: Any])
            guard (o["slots"] as? Int ?? 0) > 0 else { continue }
            pagers += 1
            let hits = o["hits"] as? Int ?? 0, misses = o["misses"] as? Int ?? 0
            #expect(misses > 0 && hits + misses > 0, "\(o)")
            #expect((o["bytes_read"] as? Int ?? 0) >= misses * 100_000, "\(o)")
            #expect((o["paged_experts"] as? Int ?? 0) > (o["slots"] as? Int ?? 0))
        }
        #expect(pagers >= 1, "no worker paged experts: \(out)")
        // Many long conversations under the same budgets: the kept prefixes fill what the running sequences leave
        // and are evicted, least recently used first, and the KV a stage keeps never passes its room.
        let room = workers.compactMap { $0["kv_room_tokens"] as? Int }.filter { $0 > 0 }.min() ?? 0
        #expect(room > 0, "the stages report their KV room: \(out)")
        let perConversation = 200
        let conversations = min(60, room / perConversation + 3)
        for k in 0..<conversations {
            let text = "Conversation \(k) begins here. " + String(repeating: "word\(k % 10) and more text ", count: 30)
            let (rc, _, err) = try c.run(["generate", "--coordinator", endpoint, "-p", text, "-n", "8", "--temp", "0", "--ctx", "256"])
            #expect(rc == 0, "conversation \(k): \(err)")
        }
        usleep(1_300_000)
        let (_, after, _) = try c.run(["status", "--coordinator", endpoint, "--json"])
        let status = try #require(try JSONSerialization.jsonObject(with: Data(after.utf8)) as? [String: Any])
        let prefix = try #require(status["prefix_cache"] as? [String: Any], "\(after)")
        // The room holds one running sequence and little more: each conversation evicted the one kept before, or
        // (sharing its first token) took it over.
        let (evictions, hits) = (prefix["evictions"] as? Int ?? 0, prefix["hits"] as? Int ?? 0)
        if conversations * perConversation > room { #expect(evictions + hits >= conversations - 1, "\(prefix) with a room of \(room)") }
        #expect((prefix["tokens"] as? Int ?? .max) <= (prefix["capacity_tokens"] as? Int ?? 0), "\(prefix)")
        for w in try #require(status["workers"] as? [[String: Any]]) where (w["kv_room_tokens"] as? Int ?? 0) > 0 {
            #expect((w["prefix_tokens"] as? Int ?? .max) <= (w["kv_room_tokens"] as? Int ?? 0), "\(w)")
        }
        print("prefix cache under 13.5 MiB workers: room \(room) positions, \(conversations) conversations: \(prefix)")
        // The budget holds: each worker's peak RSS stays within its budget plus the runtime's overhead.
        for n in ["a", "b"] {
            let pid = try #require(c.processes[n]?.processIdentifier)
            let peak = try #require(Self.peakRSS(pid))
            #expect(peak <= Self.budget + Self.overhead, "worker \(n) peaked at \(peak) bytes; budget \(Self.budget) + overhead \(Self.overhead)")
            print("worker \(n): peak RSS \(peak) bytes (budget \(Self.budget))")
        }
    }
}
