#if canImport(Glibc)
import Glibc
#endif
import Foundation
import GGUF
import Model
import Testing
import TestSupport
import Wire
import Worker

/// Three workers and a coordinator as real processes on 127.0.0.1: two pipeline stages holding layers only and
/// one worker holding every expert, so every MoE layer of every step calls experts in another process.
@Suite(.serialized) struct LoopbackClusterTests {
    static let model = Fixtures.shippedModel

    /// Starts the cluster; returns it with the coordinator endpoint.
    /// With `fetch`, no worker has a model file: each fetches its shard from the coordinator into its own cache
    /// (`cache-NAME`), as workers on separate hosts do.
    /// `model`: writes the model the cluster serves into the cluster's directory (default: the shipped model).
    static func startCluster(fetch: Bool = false, serve extra: [String] = [], workerFlags: [String: [String]] = [:],
                             model makeModel: ((ProcessCluster) throws -> String)? = nil) throws -> (ProcessCluster, String) {
        let c = try ProcessCluster()
        let model = try makeModel?(c) ?? Self.model
        let base = ProcessCluster.freePorts(4)
        let file = try c.writeClusterFile(base: base)
        let names = ["stage-a", "stage-b", "experts-1"]
        for (i, n) in names.enumerated() {
            let source = fetch ? ["--cache-dir", c.dir.appendingPathComponent("cache-\(n)").path] : ["--model", model]
            try c.start(n, ["worker", "--listen", "tcp://127.0.0.1:\(base + 1 + i)", "--name", n, "--threads", "1"] + source + (workerFlags[n] ?? []))
        }
        try c.start("coordinator", ["serve", "-m", model, "--cluster", file, "--threads", "1", "--join-timeout", "20", "--http", "off"] + extra)
        do {
            try c.waitFor("coordinator", "serving")
        } catch {
            c.stop()
            throw error
        }
        return (c, "tcp://127.0.0.1:\(base)")
    }

    /// Resident bytes of process `pid`'s mappings of `path` (/proc/PID/smaps), nil when it maps none.
    static func residentBytes(of path: String, in pid: Int32) -> Int? {
        // Read to the end: /proc files report no size, and a one-shot read of this one stops at a page.
        guard let h = FileHandle(forReadingAtPath: "/proc/\(pid)/smaps") else { return nil }
        defer { try? h.close() }
        let smaps = String(decoding: h.readDataToEndOfFile(), as: UTF8.self)
        let real = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        var inside = false, total: Int?
        for line in smaps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if let first = fields.first, first.contains("-"), fields.count >= 5 {
                inside = fields.count >= 6 && fields[5...].joined(separator: " ") == real
            } else if inside, fields.first == "Rss:", fields.count >= 2, let kb = Int(fields[1]) {
                total = (total ?? 0) + kb * 1024
            }
        }
        return total
    }

    @Test func distributedGenerationMatchesOneProcess() async throws { try await onThread { [self] in try self.distributedGenerationMatchesOneProcessBlocking() } }
    func distributedGenerationMatchesOneProcessBlocking() throws {
        let (c, endpoint) = try Self.startCluster(fetch: true)
        defer { c.stop() }
        // No worker had the model: each fetched only its shard (the header, its layers' tensors, its experts) into a
        // sparse cache file whose allocated blocks are that share, not the model.
        let source = try GGUFFile(path: Self.model)
        let layout = WeightLayout(file: source, config: try ModelConfig(file: source))
        let header = (source.dataOffset + 4095) / 4096 * 4096
        let shares: [String: [Range<Int>]] = [
            "stage-a": layout.fileRanges(of: source, layers: 0..<2, experts: .none),
            "stage-b": layout.fileRanges(of: source, layers: 2..<4, experts: .none),
            "experts-1": layout.fileRanges(of: source, layers: 0..<0, experts: .every(layers: 0..<4, expertCount: 8)),
        ]
        let modelBytes = try Data(contentsOf: URL(fileURLWithPath: Self.model))
        var fetched = 0
        for (name, share) in shares {
            let dir = c.dir.appendingPathComponent("cache-\(name)").path
            let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".shard.gguf") }
            #expect(files.count == 1, "\(name): \(files)")
            guard let file = files.first else { continue }
            let path = dir + "/" + file
            var st = stat()
            #expect(stat(path, &st) == 0 && Int(st.st_size) == source.fileSize)
            let allocated = Int(st.st_blocks) * 512, bytes = share.reduce(0) { $0 + $1.count }
            // Pieces are fetched in whole pages: at most a page more at each end of each.
            #expect(allocated >= bytes && allocated <= header + bytes + share.count * 2 * 4096 + (64 << 10),
                    "\(name) holds \(allocated) bytes for a share of \(bytes) (+ \(header) header) of the \(source.fileSize)-byte model")
            let cached = try Data(contentsOf: URL(fileURLWithPath: path))
            for r in share { #expect(cached.subdata(in: r) == modelBytes.subdata(in: r), "\(name): bytes \(r)") }
            fetched += allocated
            let log = try String(contentsOf: c.log(name), encoding: .utf8)
            #expect(log.contains("fetching the shard: 100%"), "\(name): \(log)")
        }
        // Together they moved about the model once (each shard once, the header three times), not three times.
        #expect(fetched < source.fileSize + 3 * header + (1 << 20), "the workers fetched \(fetched) bytes of a \(source.fileSize)-byte model")
        // Serving the whole file left little of it in the coordinator's memory (chunks are read with pread, not
        // through its mapping): its mapping of the model holds the header and vocabulary, not the weights.
        let coordinatorPid = try #require(c.processes["coordinator"]?.processIdentifier)
        let mapped = try #require(Self.residentBytes(of: Self.model, in: coordinatorPid), "no mapping of \(Self.model) in the coordinator")
        let size = try FileManager.default.attributesOfItem(atPath: Self.model)[.size] as! Int
        #expect(mapped < size / 2, "the coordinator holds \(mapped) of the model's \(size) bytes after serving it")
        // Greedy with a repetition penalty (plain greedy emits only newlines on this model), then sampled.
        for options in [["--temp", "0", "--repeat-penalty", "1.3"], ["--temp", "0.8", "--seed", "7", "--repeat-penalty", "1.1"]] {
            let args = ["-p", "Once upon a time", "-n", "32"] + options
            let (rc1, single, err1) = try c.run(["run", "-m", Self.model, "--threads", "1"] + args)
            #expect(rc1 == 0, "run failed: \(err1)")
            let (rc2, distributed, err2) = try c.run(["generate", "--coordinator", endpoint] + args)
            #expect(rc2 == 0, "generate failed: \(err2)\n\(c.logs())")
            #expect(!single.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
            #expect(distributed == single, "options \(options)")
        }
        usleep(1_300_000)  // one heartbeat (every second) carries the workers' counters to the coordinator
        // Status while idle: every worker ready, the experts worker served calls, the stages processed tokens.
        let (rc, out, err) = try c.run(["status", "--coordinator", endpoint, "--json"])
        #expect(rc == 0, "status failed: \(err)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        let workers = try #require(json["workers"] as? [[String: Any]])
        #expect(workers.count == 3)
        for w in workers {
            #expect(w["state"] as? String == "ready", "\(w)")
            #expect((w["heartbeat_age_s"] as? Double ?? 99) < 3)
            #expect((w["rss_bytes"] as? Int ?? 0) > 0)
        }
        let byName = Dictionary(uniqueKeysWithValues: workers.map { ($0["name"] as! String, $0) })
        #expect(byName["experts-1"]?["experts"] as? Int == 32)
        #expect((byName["experts-1"]?["expert_calls"] as? Int ?? 0) > 0)
        #expect((byName["stage-a"]?["tokens"] as? Int ?? 0) > 0)
        #expect(byName["stage-a"]?["layers"] as? [Int] == [0, 2])
        #expect(byName["stage-b"]?["layers"] as? [Int] == [2, 4])
        // Activations cross one hop per step; a decode row costs about hidden × 4 bytes plus a small envelope.
        let bytes = byName["stage-a"]?["forwarded_bytes"] as? Int ?? 0, rows = byName["stage-a"]?["forwarded_rows"] as? Int ?? 1
        #expect(bytes > 0 && rows > 0)
    }

    /// A stage started with --drain is stopped (SIGTERM) while a request runs: it asks the coordinator to plan
    /// without it and keeps serving; the coordinator re-plans (the other stage takes its layers), replays the
    /// running request, releases it, and it exits. The request's text is the one process's, and so is the next's.
    @Test func aDrainedStageHandsItsLayersOverWhileARequestRuns() async throws { try await onThread { [self] in try self.drainBlocking() } }
    func drainBlocking() throws {
        let (c, endpoint) = try Self.startCluster(workerFlags: ["stage-b": ["--drain"]])
        defer { c.stop() }
        let args = ["-p", "Once upon a time", "-n", "300", "--temp", "0", "--repeat-penalty", "1.3"]
        let (rc1, single, err1) = try c.run(["run", "-m", Self.model, "--threads", "1"] + args)
        #expect(rc1 == 0, "run failed: \(err1)")
        let running = try c.spawn(["generate", "--coordinator", endpoint] + args)
        // Tokens are streaming (stdout is written token by token) before the stage is stopped.
        let deadline = Date().addingTimeInterval(60)
        while ((try? FileManager.default.attributesOfItem(atPath: running.out.path)[.size] as? Int) ?? 0) == 0, Date() < deadline { usleep(20_000) }
        c.signal("stage-b", SIGTERM)
        let (rc2, distributed, err2) = try running.finish()
        #expect(rc2 == 0, "generate failed: \(err2)\n\(c.logs())")
        #expect(distributed == single)
        #expect(c.exitStatus("stage-b", within: 60) == 0, "\(c.logText("stage-b"))")
        #expect(c.logText("stage-b").contains("released: the coordinator's plan no longer uses this worker"), "\(c.logText("stage-b"))")
        let coordinator = c.logText("coordinator")
        #expect(coordinator.contains("worker 'stage-b' asked to leave") && coordinator.contains("worker 'stage-b' released"), "\(coordinator)")
        #expect(coordinator.contains("replaying 1 sequence"), "the drain did not happen while the request ran: \(coordinator)")
        let (rc, out, err) = try c.run(["status", "--coordinator", endpoint, "--json"])
        #expect(rc == 0, "status failed: \(err)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        let byName = Dictionary(uniqueKeysWithValues: (json["workers"] as? [[String: Any]] ?? []).map { ($0["name"] as! String, $0) })
        #expect(byName["stage-b"]?["state"] as? String == "left")
        #expect(byName["stage-a"]?["layers"] as? [Int] == [0, 4])
        // Gaining layers only, stage-a keeps its mapping (and what it packed).
        #expect(!c.logText("stage-a").contains("mapped anew"), "\(c.logText("stage-a"))")
        let (rc3, again, err3) = try c.run(["generate", "--coordinator", endpoint] + args)
        #expect(rc3 == 0, "generate failed: \(err3)")
        #expect(again == single)
    }

    /// A fourth worker, not in the cluster file, started with `worker --join` while three requests stream: the
    /// coordinator takes it in, re-plans under a new epoch with it holding layers (the running requests replayed
    /// on the new placement), and every text is `conclave run`'s; `status` shows it ready with its layers. A
    /// second worker under the same name is refused and exits with the reason.
    @Test func aWorkerJoinsWhileRequestsRun() async throws { try await onThread { [self] in try self.joinBlocking() } }
    func joinBlocking() throws {
        let (c, endpoint) = try Self.startCluster()
        defer { c.stop() }
        let args = ["-p", "Once upon a time", "-n", "400", "--temp", "0", "--repeat-penalty", "1.3"]
        let (rc1, single, err1) = try c.run(["run", "-m", Self.model, "--threads", "1"] + args)
        #expect(rc1 == 0, "run failed: \(err1)")
        // Three at once: each takes the cluster three times as long, so the join lands while they run.
        let running = try (0..<3).map { _ in try c.spawn(["generate", "--coordinator", endpoint] + args) }
        let deadline = Date().addingTimeInterval(60)
        while ((try? FileManager.default.attributesOfItem(atPath: running[0].out.path)[.size] as? Int) ?? 0) == 0, Date() < deadline { usleep(20_000) }
        let port = ProcessCluster.freePorts(1)
        try c.start("stage-c", ["worker", "--listen", "tcp://127.0.0.1:\(port)", "--name", "stage-c", "--threads", "1", "--model", Self.model,
                                "--join", endpoint, "--role", "stage"])
        for r in running {
            let (rc, text, err) = try r.finish()
            #expect(rc == 0, "generate failed: \(err)\n\(c.logs())")
            #expect(text == single)
        }
        try c.waitFor("stage-c", "joined the cluster of the coordinator at \(endpoint)")
        let coordinator = c.logText("coordinator")
        #expect(coordinator.contains("worker 'stage-c' joined at tcp://127.0.0.1:\(port)") && coordinator.contains("new plan with stage-c, which joined"), "\(coordinator)")
        #expect(coordinator.contains("replaying 3 sequences"), "the join did not happen while the requests ran: \(coordinator)")
        // A worker that hands layers to the newcomer maps the model anew, so that their pages leave its memory.
        let remapped = ["stage-a", "stage-b"].filter { c.logText($0).contains("the model is mapped anew") }
        #expect(!remapped.isEmpty, "\(c.logText("stage-a"))\n\(c.logText("stage-b"))")
        let (rc, out, err) = try c.run(["status", "--coordinator", endpoint, "--json"])
        #expect(rc == 0, "status failed: \(err)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        let byName = Dictionary(uniqueKeysWithValues: (json["workers"] as? [[String: Any]] ?? []).map { ($0["name"] as! String, $0) })
        #expect(byName["stage-c"]?["state"] as? String == "ready", "\(byName)")
        let layers = byName["stage-c"]?["layers"] as? [Int] ?? []
        #expect(layers.count == 2 && layers[1] > layers[0], "\(byName)")
        let (rc3, again, err3) = try c.run(["generate", "--coordinator", endpoint] + args)
        #expect(rc3 == 0, "generate failed: \(err3)")
        #expect(again == single)
        // The name is taken: another worker under it is refused, and says why.
        let other = ProcessCluster.freePorts(1)
        let (rc4, _, err4) = try c.run(["worker", "--listen", "tcp://127.0.0.1:\(other)", "--name", "stage-c", "--threads", "1", "--model", Self.model,
                                        "--join", endpoint], timeout: 60)
        #expect(rc4 != 0 && err4.contains("refused to let this worker join") && err4.contains("the name 'stage-c' is used twice"), "\(err4)")
    }

    /// gpt-oss through two stages and an experts worker (its sliding-window layers, sinks, biased experts and
    /// top-k-then-softmax routing split across processes, rows travelling as Q8_0), and deepseek2 (latent
    /// attention with its smaller cache on each stage, a dense first layer, shared experts, sigmoid routing over
    /// groups; and a file with the unsplit attn_kv_b, which caches K and V per head): the tokens one process makes.
    /// The workers fetch their shards, so a tensor a shard reads but does not fetch (a hole reads as zeros) shows.
    @Test(arguments: [["--arch", "gpt-oss", "--layers", "4", "--sliding-window", "6"],
                      ["--arch", "deepseek2", "--layers", "4", "--gating", "sigmoid", "--norm-weights", "true", "--groups", "4", "--groups-used", "2"],
                      ["--arch", "deepseek2", "--layers", "4", "--q-lora-rank", "0", "--unsplit-kv-b"]])
    func newArchitecturesDistributedMatchOneProcess(synth: [String]) async throws {
        try await onThread { [self] in try self.distributedMatchesOneProcessBlocking(synth: synth) }
    }
    func distributedMatchesOneProcessBlocking(synth: [String]) throws {
        let (c, endpoint) = try Self.startCluster(fetch: true) { c in
            let path = c.dir.appendingPathComponent("synth.gguf").path
            let (rc, _, err) = try c.run(["synth"] + synth + ["--type", "Q8_0", "--seed", "11", "--threads", "1", "-o", path])
            guard rc == 0 else { throw ProcessCluster.Failure(description: "synth failed: \(err)") }
            return path
        }
        defer { c.stop() }
        let model = c.dir.appendingPathComponent("synth.gguf").path
        let args = ["-p", "Once upon a time there was", "-n", "24", "--temp", "0", "--repeat-penalty", "1.1"]
        let (rc1, single, err1) = try c.run(["run", "-m", model, "--threads", "1"] + args)
        #expect(rc1 == 0, "run failed: \(err1)")
        let (rc2, distributed, err2) = try c.run(["generate", "--coordinator", endpoint] + args)
        #expect(rc2 == 0, "generate failed: \(err2)\n\(c.logs())")
        #expect(!single.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
        #expect(distributed == single)
    }

    /// Quantized KV caches on every stage (sent in the Assign): the tokens one process makes with the same types.
    @Test func quantizedCacheClusterMatchesOneProcess() async throws { try await onThread { [self] in try self.quantizedCacheBlocking() } }
    func quantizedCacheBlocking() throws {
        let types = ["--cache-type-k", "q4_0", "--cache-type-v", "q4_0"]
        let (c, endpoint) = try Self.startCluster(serve: types)
        defer { c.stop() }
        // Sampled (seeded): greedy text on this small model is the same with either cache.
        try Self.expectClusterMatchesRun(c, endpoint, options: types, ["-p", "Once upon a time", "-n", "48", "--temp", "0.8", "--seed", "7", "--repeat-penalty", "1.1"],
                                         unchanged: "the quantized cache changed nothing: is it used?")
    }

    /// A cluster served with `options` generates what `run` with them prints, which differs from `run` without.
    static func expectClusterMatchesRun(_ c: ProcessCluster, _ endpoint: String, options: [String], _ args: [String], unchanged: String) throws {
        let (rc1, single, err1) = try c.run(["run", "-m", Self.model, "--threads", "1"] + options + args)
        #expect(rc1 == 0, "run failed: \(err1)")
        let (rc0, plain, _) = try c.run(["run", "-m", Self.model, "--threads", "1"] + args)
        #expect(rc0 == 0)
        let (rc2, distributed, err2) = try c.run(["generate", "--coordinator", endpoint] + args)
        #expect(rc2 == 0, "generate failed: \(err2)\n\(c.logs())")
        #expect(!single.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
        #expect(distributed == single)
        #expect(plain != single, "\(unchanged)")
    }

    /// Fewer experts per token (`serve --experts-used`, `--expert-min-weight`, sent in each Assign): every stage
    /// routes as one process does with the same options, experts on another worker included.
    @Test func fewerExpertsClusterMatchesOneProcess() async throws { try await onThread { [self] in try self.fewerExpertsBlocking() } }
    func fewerExpertsBlocking() throws {
        let selection = ["--expert-min-weight", "0.45"]
        let (c, endpoint) = try Self.startCluster(serve: selection)
        defer { c.stop() }
        try Self.expectClusterMatchesRun(c, endpoint, options: selection, ["-p", "Once upon a time", "-n", "48", "--temp", "0", "--repeat-penalty", "1.3"],
                                         unchanged: "skipping experts changed nothing: is the selection used?")
        // A count past the model's is refused before anything starts.
        let (rc3, _, err3) = try c.run(["run", "-m", Self.model, "--threads", "1", "--experts-used", "3", "-p", "x", "-n", "1"])
        #expect(rc3 != 0 && err3.contains("--experts-used 3 must be between 1 and the 2"), "\(err3)")
    }

    /// Speculative decoding across the cluster (`serve --draft`, the model drafting for itself on the
    /// coordinator): each decode step sends the pending token and up to 6 proposals through both stages at once,
    /// the last stage verifies them, every stage rolls back what was rejected. Greedy and seeded text equal what one
    /// process prints without a draft (the draft proposes its greedy picks without the penalty or the sampling, so
    /// both accept some and reject some), as does a request after them; status reports the proposals accepted and
    /// tokens per pass.
    @Test func draftedClusterMatchesOneProcess() async throws { try await onThread { [self] in try self.draftedClusterBlocking() } }
    func draftedClusterBlocking() throws {
        let (c, endpoint) = try Self.startCluster(serve: ["--draft", Self.model, "--draft-p-min", "0", "--draft-max", "6"])
        defer { c.stop() }
        let asks = [["-p", "Once upon a time", "-n", "40", "--temp", "0", "--repeat-penalty", "1.3"],
                    ["-p", "The little dog", "-n", "40", "--temp", "0.8", "--seed", "3", "--repeat-penalty", "1.1"]]
        for args in asks + [asks[0]] {
            let (rc1, single, err1) = try c.run(["run", "-m", Self.model, "--threads", "1"] + args)
            #expect(rc1 == 0, "run failed: \(err1)")
            let (rc2, distributed, err2) = try c.run(["generate", "--coordinator", endpoint] + args)
            #expect(rc2 == 0, "generate failed: \(err2)\n\(c.logs())")
            #expect(!single.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
            #expect(distributed == single, "\(args)")
        }
        let (rc, out, err) = try c.run(["status", "--coordinator", endpoint, "--json"])
        #expect(rc == 0, "status failed: \(err)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        let draft = try #require(json["draft"] as? [String: Any], "no draft figures in \(out)")
        let proposed = try #require(draft["proposed"] as? Int), accepted = try #require(draft["accepted"] as? Int)
        #expect(accepted > 0 && accepted < proposed, "some proposals accepted, some rejected: \(out)")
        #expect((draft["tokens_per_pass"] as? Double ?? 0) > 1.2, "\(out)")
    }

    /// Several requests at once (sent together on one connection, so they surely overlap): the scheduler keeps
    /// two micro-batches in the pipeline (one per stage), sequences share steps with others, and each request
    /// still gets exactly what `conclave run` prints alone.
    @Test func concurrentRequestsArePipelinedAndMatchOneProcess() async throws {
        let (c, endpoint) = try Self.startCluster()
        defer { c.stop() }
        struct Request { let prompt: String; let temp: Float; let repeatPenalty: Float; let seed: UInt64; let topK: Int }
        let requests = [
            Request(prompt: "Once upon a time", temp: 0, repeatPenalty: 1.3, seed: 0, topK: 40),
            Request(prompt: "The little dog", temp: 0.8, repeatPenalty: 1.1, seed: 3, topK: 40),
            Request(prompt: "One day, a girl named Lily", temp: 0, repeatPenalty: 1.2, seed: 0, topK: 40),
            Request(prompt: "Tom had a red ball", temp: 0.7, repeatPenalty: 1.0, seed: 11, topK: 20),
        ]
        let n = 40
        var single: [[UInt8]] = []
        for r in requests {
            let (rc, out, err) = try c.run(["run", "-m", Self.model, "--threads", "1", "-p", r.prompt, "-n", String(n), "--temp", String(r.temp),
                                            "--repeat-penalty", String(r.repeatPenalty), "--seed", String(r.seed), "--top-k", String(r.topK)])
            #expect(rc == 0 && !out.isEmpty, "run failed: \(err)")
            single.append(Array(out.utf8))
        }
        let dealer = try ZMQSocket(.dealer, bind: false, endpoint: endpoint)
        let watchdog = Task { try await Task.sleep(nanoseconds: 60_000_000_000); dealer.close() }  // never hang
        defer { watchdog.cancel(); dealer.close() }
        for (i, r) in requests.enumerated() {
            var p = SamplingParams()
            p.temperature = r.temp
            p.repeatPenalty = r.repeatPenalty
            p.seed = r.seed
            p.topK = r.topK
            var g = Conclave_V1_Generate()
            g.prompt = r.prompt
            g.maxTokens = UInt32(n)
            g.sampling = p.wire
            var e = Envelope()
            e.requestID = UInt64(i)
            e.generate = g
            dealer.send(Frames(parts: try WireMessage.make(e).encode()))
        }
        var texts = [[UInt8]](repeating: [], count: requests.count), done = Set<Int>()
        var replies = dealer.messages.makeAsyncIterator()
        while done.count < requests.count, let f = await replies.next() {
            let m = try WireMessage.decode(f.parts)
            let i = Int(m.envelope.requestID)
            switch m.envelope.kind {
            case .tokenOut(let t):
                texts[i] += t.text
                if t.done { done.insert(i) }
            case .error(let err):
                Issue.record("request \(i) failed: \(err.message)")
                done.insert(i)
            default:
                continue
            }
        }
        #expect(done.count == requests.count, "answers stopped coming: \(c.logs())")
        for i in requests.indices {
            // `conclave run` ends its text with a newline; the stream carries the text alone.
            #expect(texts[i] + [0x0A] == single[i], "request \(i) (\(requests[i].prompt)) differs from one process: \(String(decoding: texts[i], as: UTF8.self)) vs \(String(decoding: single[i], as: UTF8.self))")
        }
        let (rc, out, err) = try c.run(["status", "--coordinator", endpoint, "--json"])
        #expect(rc == 0, "status failed: \(err)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        #expect(json["micro_batches"] as? Int == 2)
        #expect(json["peak_in_flight"] as? Int == 2, "the stages never had two micro-batches at once: \(out)")
        #expect(json["sequences"] as? Int == 0)
    }

    /// A prompt longer than a step (--ubatch 16) goes in chunks; the next chunk enters stage 0 while the last
    /// one is in stage 1, and the output is still what one process prints.
    @Test func promptChunksPipelineAndMatchOneProcess() async throws { try await onThread { [self] in try self.promptChunksPipelineAndMatchOneProcessBlocking() } }
    func promptChunksPipelineAndMatchOneProcessBlocking() throws {
        let (c, endpoint) = try Self.startCluster(serve: ["--ubatch", "16"])
        defer { c.stop() }
        let prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One day, she saw a big red ball under a tree and ran to get it, but a dog"
        let args = ["-p", prompt, "-n", "24", "--temp", "0", "--repeat-penalty", "1.3"]
        let (rc1, single, err1) = try c.run(["run", "-m", Self.model, "--threads", "1"] + args)
        #expect(rc1 == 0 && !single.isEmpty, "run failed: \(err1)")
        let (tc, tokens, _) = try c.run(["tokenize", "-m", Self.model, "-p", prompt, "--json"])
        #expect(tc == 0 && tokens.split(separator: ",").count > 32, "the prompt should span several 16-token chunks: \(tokens)")
        let (rc2, distributed, err2) = try c.run(["generate", "--coordinator", endpoint] + args)
        #expect(rc2 == 0, "generate failed: \(err2)\n\(c.logs())")
        #expect(distributed == single)
        let (rc, out, _) = try c.run(["status", "--coordinator", endpoint, "--json"])
        #expect(rc == 0)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        #expect(json["peak_in_flight"] as? Int == 2, "prompt chunks did not overlap in the pipeline: \(out)")
    }

    @Test func promptLongerThanContextIsRefusedAndServingContinues() async throws { try await onThread { [self] in try self.promptLongerThanContextIsRefusedAndServingContinuesBlocking() } }
    func promptLongerThanContextIsRefusedAndServingContinuesBlocking() throws {
        let (c, endpoint) = try Self.startCluster()
        defer { c.stop() }
        let long = String(repeating: "word ", count: 300)
        let (rc, _, err) = try c.run(["generate", "--coordinator", endpoint, "-p", long, "--ctx", "64", "-n", "4"])
        #expect(rc != 0)
        #expect(err.contains("context"), "\(err)")
        let (rc2, out, err2) = try c.run(["generate", "--coordinator", endpoint, "-p", "Hello", "-n", "4", "--temp", "0"])
        #expect(rc2 == 0, "\(err2)")
        #expect(!out.isEmpty)
    }

    /// A long sampled generation in the background, returned once its text starts streaming (the model may end
    /// on its own after a few hundred tokens, ~1 s), with its stderr.
    static func startLongGeneration(_ c: ProcessCluster, _ endpoint: String) throws -> (Process, Pipe) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: c.binary)
        p.arguments = ["generate", "--coordinator", endpoint, "-p", "Once upon a time", "-n", "100000", "--ctx", "100000", "--temp", "0.8", "--seed", "1"]
        let err = Pipe(), textOut = Pipe()
        p.standardError = err
        p.standardOutput = textOut
        try p.run()
        #expect(!textOut.fileHandleForReading.readData(ofLength: 1).isEmpty, "no text streamed")
        Thread.detachNewThread { _ = textOut.fileHandleForReading.readDataToEndOfFile() }
        return (p, err)
    }

    /// Waits (20 s at most) for a generation that must fail; returns its stderr, or records the hang.
    static func failure(of p: Process, _ err: Pipe, because why: String) -> String {
        let t0 = Date()
        while p.isRunning && Date().timeIntervalSince(t0) < 20 { usleep(50_000) }
        let finished = !p.isRunning
        if !finished { p.terminate() }
        p.waitUntilExit()
        #expect(finished, "the request hung after \(why)")
        #expect(p.terminationStatus != 0)
        return String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    }

    /// SIGTERM to the coordinator mid-generation: the running request is answered with an error (not left
    /// waiting), and the coordinator exits cleanly.
    @Test func stoppedCoordinatorAnswersRunningRequests() async throws { try await onThread { [self] in try self.stoppedCoordinatorAnswersRunningRequestsBlocking() } }
    func stoppedCoordinatorAnswersRunningRequestsBlocking() throws {
        let (c, endpoint) = try Self.startCluster()
        defer { c.stop() }
        let (p, err) = try Self.startLongGeneration(c, endpoint)
        Thread { c.kill("coordinator", signal: SIGTERM) }.start()
        let message = Self.failure(of: p, err, because: "the coordinator stopped")
        #expect(message.contains("shutting down"), "\(message)\n\(c.logs())")
        try c.waitFor("coordinator", "shutting down")
        #expect(c.exitStatus("coordinator", within: 10) == 0, "\(c.logs())")
    }

    /// SIGTERM to every process of a generating cluster at once (as `serve --local` on Ctrl-C): the experts worker
    /// stops first, and the stages must not wait out an expert call's 30 s timeout to it.
    @Test func terminatedClusterStopsPromptly() async throws { try await onThread { [self] in try self.terminatedClusterStopsPromptlyBlocking() } }
    func terminatedClusterStopsPromptlyBlocking() throws {
        let (c, endpoint) = try Self.startCluster()
        defer { c.stop() }
        let (p, _) = try Self.startLongGeneration(c, endpoint)
        defer { if p.isRunning { p.terminate() } }
        c.kill("experts-1", signal: SIGTERM)
        let t0 = Date()
        for n in ["stage-a", "stage-b", "coordinator"] { c.kill(n, signal: SIGTERM) }
        let took = Date().timeIntervalSince(t0)
        // Generous for a loaded machine; it was about 25 s before a draining stage ended its calls.
        #expect(took < 15, "stopping took \(took) s")
        print("cluster stopped in \(String(format: "%.2f", took)) s after SIGTERM")
    }

    @Test func killedWorkerFailsTheRequestClearly() async throws { try await onThread { [self] in try self.killedWorkerFailsTheRequestClearlyBlocking() } }
    func killedWorkerFailsTheRequestClearlyBlocking() throws {
        let (c, endpoint) = try Self.startCluster()
        defer { c.stop() }
        // A long generation in the background; the experts worker dies under it.
        let (p, err) = try Self.startLongGeneration(c, endpoint)
        // Status answers promptly while the cluster generates.
        let t = Date()
        let (src, sout, _) = try c.run(["status", "--coordinator", endpoint, "--json"])
        #expect(src == 0 && Date().timeIntervalSince(t) < 1.0, "status took \(Date().timeIntervalSince(t)) s")
        #expect(sout.contains("\"workers\""), "\(sout)")
        c.kill("experts-1")
        let message = Self.failure(of: p, err, because: "its worker died")
        #expect(message.contains("experts-1"), "\(message)")
        // The coordinator still answers and reports the dead worker.
        let (rc, out, _) = try c.run(["status", "--coordinator", endpoint, "--json"])
        #expect(rc == 0)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        let workers = try #require(json["workers"] as? [[String: Any]])
        #expect(workers.first { $0["name"] as? String == "experts-1" }?["state"] as? String == "down")
        #expect((json["requests_failed"] as? Int ?? 0) >= 1)
    }
}
