import ArgumentParser
import CurveKeys
import Foundation
import Generation
import GGUF
import Kernels
import Model
import Placement
import Runtime
import Synchronization
import Telemetry
import Wire
import ClusterProtocol
import Worker

struct BenchCluster: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "Single-process against distributed decode speed on a loopback cluster, with wire traffic per token.",
        discussion: """
        Generates --gen tokens (greedy, repetition penalty 1.3) in this process with --threads threads, then starts
        the cluster file's workers on this machine (every endpoint must be local), each with --threads threads,
        and a coordinator, and generates the same tokens through them. Only one stage computes at a time when one
        sequence decodes, so each step uses --threads threads either way. Reports both speeds, their ratio, the
        activation bytes per token per hop and expert-call bytes per token (counted by the workers), and the
        per-hop latency: (step time − the stages' own step times) / (stages + 1) hops. With --sequences N > 1,
        N generations at once through the cluster and, for the one-host figure, the same N batched in this process
        by the scheduler `conclave serve` uses without a cluster. With --vs-llama-rpc BIN_DIR (a llama.cpp build
        with -DGGML_RPC=ON), llama.cpp's RPC on the same file in the same sitting: as many rpc-servers as the
        cluster file has workers, on 127.0.0.1 with --threads threads each, driven by llama-bench with every layer
        on them (-ngl 99), --gen tokens, three repetitions.
        """
    )

    @OptionGroup var model: ModelOptions
    @OptionGroup var experts: ExpertSelectionOptions
    @Option(help: "Cluster file with 127.0.0.1 endpoints.") var cluster: String = "cluster/local.yaml"
    @Option(help: "Generated tokens.") var gen = 64
    @Option(help: "Then this many sequences at once (different prompts), for the aggregate throughput of the pipeline; 1: skip.")
    var sequences = 4
    @Option(help: "Micro-batches the coordinator keeps in flight (default: one per stage).") var microBatches: Int?
    @Flag(help: "Authenticate the cluster with fresh CurveZMQ keys (in a temporary directory): run once with and once without to measure the overhead.")
    var curve = false
    @Option(help: "Placements to measure, comma-separated, each with the cluster file's workers (endpoints, memory, speed): file (as the file says), pipeline (every worker a stage, experts with their layers), expert (the first worker runs every layer, the others hold experts), both (half the workers stages, the rest experts; needs 3 or more), all (the last three).")
    var modes = "file"
    @Option(help: "A routing trace (from `conclave trace-experts`) the coordinator plans with and the expected speedup counts (default: uniform routing).")
    var trace: String?
    @Option(name: .customLong("vs-llama-rpc"), help: ArgumentHelp("A llama.cpp build's binary directory (rpc-server and llama-bench) to measure its RPC on the same file and processes.", valueName: "BIN_DIR"))
    var vsLlamaRPC: String?
    @Flag(help: "Print JSON.") var json = false

    enum Mode: String, CaseIterable { case file, pipeline, expert, both }

    /// The cluster file's workers in the roles a mode gives them; nil when the mode needs more workers.
    static func cluster(_ f: ClusterFile, mode: Mode) -> ClusterFile? {
        let n = f.active.workers.count
        func roles(_ role: (Int) -> ClusterFile.Role) -> ClusterFile {
            ClusterFile(coordinator: f.coordinator, workers: f.active.workers.enumerated().map { i, w in w.with(role: role(i)) })
        }
        switch mode {
        case .file: return f
        case .pipeline: return n >= 2 ? roles { _ in .any } : nil
        case .expert: return n >= 2 ? roles { $0 == 0 ? .any : .experts } : nil
        case .both: return n >= 3 ? roles { $0 < (n + 1) / 2 ? .any : .experts } : nil
        }
    }

    func run() throws {
        var clusterFile: ClusterFile
        do { clusterFile = try ClusterFile(path: cluster) } catch { printError("error: \(error)"); throw ExitCode(1) }
        for w in clusterFile.workers + [.init(name: "coordinator", endpoint: clusterFile.coordinator, memory: 0)] {
            guard w.endpoint.hasPrefix("tcp://127.0.0.1:") || w.endpoint.hasPrefix("tcp://localhost:") else {
                printError("error: bench cluster starts the workers itself, so every endpoint must be on 127.0.0.1; \(w.name) is at \(w.endpoint)")
                throw ExitCode(1)
            }
        }
        let rpcBinaries = try vsLlamaRPC.map(Self.llamaRPCBinaries)
        let prompt = "Once upon a time"
        var params = SamplingParams.greedy
        params.repeatPenalty = 1.3

        // 1. One process.
        let engine = try model.load(selection: experts.selection)
        let ids = engine.tokenizer.encode(prompt)
        _ = try engine.generate(prompt: ids, maxTokens: 4, params: params, in: engine.newSequence(capacity: 512)) { _, _ in true }
        var singleText: [UInt8] = []
        let single = try engine.generate(prompt: ids, maxTokens: gen, params: params, in: engine.newSequence(capacity: gen + ids.count + 8)) { _, text in
            singleText += Array(text.utf8)
            return true
        }
        printError("single process: \(fixed(single.decodeTokensPerSecond, 1)) tok/s decode (\(single.generatedTokens) tokens, \(model.threads) threads)")
        let singleAggregate = sequences > 1 ? try oneProcessAggregate(engine: engine, params: params) : nil
        if let singleAggregate { printError("single process, \(sequences) sequences at once: \(fixed(singleAggregate, 1)) tok/s in all") }

        var chosen: [Mode] = []
        for m in modes.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
            if m == "all" { chosen += [.pipeline, .expert, .both]; continue }
            guard let mode = Mode(rawValue: m) else {
                printError("error: unknown mode '\(m)' in --modes; use file, pipeline, expert, both or all")
                throw ExitCode(1)
            }
            chosen.append(mode)
        }
        let rpc = try rpcBinaries.map { try llamaRPC($0, servers: clusterFile.active.workers.count) }
        if let rpc { printError("llama.cpp RPC, \(clusterFile.active.workers.count) rpc-servers: \(fixed(rpc, 1)) tok/s decode") }
        var reports: [JSON] = []
        for mode in chosen {
            guard let file = Self.cluster(clusterFile, mode: mode) else {
                printError("mode \(mode.rawValue): skipped, the cluster file has too few workers (\(clusterFile.active.workers.count))")
                continue
            }
            if !json && chosen.count > 1 { print("== \(mode.rawValue) ==") }
            var report = try measure(file, mode: mode, engine: engine, single: single, singleAggregate: singleAggregate, singleText: singleText, params: params, prompt: prompt)
            if let rpc, case .double(let ours)? = report.first(where: { $0.0 == "distributed_decode_tok_s" })?.1 {
                report += [("llama_rpc_decode_tok_s", .double(round3(rpc))), ("vs_llama_rpc", .double(round3(ours / max(1e-9, rpc))))]
                if !json { print("llama.cpp RPC (\(clusterFile.active.workers.count) rpc-servers, llama-bench -ngl 99): \(fixed(rpc, 1)) tok/s decode; this placement \(fixed(ours / max(1e-9, rpc), 2))× it") }
            }
            reports.append(.object([("mode", .string(mode.rawValue))] + report))
        }
        if json { print((reports.count == 1 ? reports[0] : JSON.object([("modes", .array(reports))])).render()) }
    }

    /// Starts `clusterFile`'s workers and a coordinator, generates through them and reports (JSON fields; the
    /// text form is printed here).
    func measure(_ clusterFile: ClusterFile, mode: Mode, engine: Engine, single: Engine.GenerationStats, singleAggregate: Double?, singleText: [UInt8],
                 params: SamplingParams, prompt: String) throws -> [(String, JSON)] {
        var clusterFile = clusterFile

        // 2. The cluster: workers and a coordinator as child processes (with --curve, the same cluster with
        // fresh keys for everyone, written with the keys to a directory of this run).
        var clusterPath = cluster, keyDir: String?, clientKeys: (pair: CurveKeyPair, serverKey: CurveKey)?
        if mode != .file {
            clusterPath = FileManager.default.temporaryDirectory.appendingPathComponent("conclave-bench-\(mode.rawValue)-\(getpid()).yaml").path
            try clusterFile.yaml.write(toFile: clusterPath, atomically: true, encoding: .utf8)
        }
        defer { if mode != .file { try? FileManager.default.removeItem(atPath: clusterPath) } }
        if curve {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("conclave-bench-keys-\(getpid())").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            clusterFile = try LocalCluster.withKeys(clusterFile, in: dir)
            clusterPath = dir + "/cluster.yaml"
            try clusterFile.yaml.write(toFile: clusterPath, atomically: true, encoding: .utf8)
            clientKeys = (try CurveCertificate.pair(dir, "client"), clusterFile.coordinatorKey!)
            keyDir = dir
        }
        defer { if let keyDir { try? FileManager.default.removeItem(atPath: keyDir) } }
        var children = try LocalCluster.start(clusterFile, model: model.model, threads: model.threads, keyDir: keyDir)
        defer { LocalCluster.stop(children) }
        let coordinator = Process()
        coordinator.executableURL = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        coordinator.arguments = ["serve", "-m", model.model, "--cluster", clusterPath, "--threads", String(model.threads)] + model.serveArguments + experts.serveArguments
            + (microBatches.map { ["--micro-batches", String($0)] } ?? []) + (keyDir.map { ["--key-dir", $0] } ?? [])
            + (trace.map { ["--trace", $0] } ?? [])
        let errors = Pipe()
        coordinator.standardError = errors
        try coordinator.run()
        children.append(coordinator)
        let transports = ZeroMQTransports.client(of: clusterFile.coordinator, keys: clientKeys)
        let client = try CoordinatorClient(endpoint: clusterFile.coordinator, transports: transports)
        do {
            try Self.waitUntilReady(client, coordinator: coordinator)
        } catch {
            if !coordinator.isRunning {
                let said = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                printError(said.split(separator: "\n").filter { $0.hasPrefix("error") }.joined(separator: "\n"))
            }
            printError("error: \(error)")
            throw ExitCode(1)
        }
        // Keep the coordinator's pipe drained so it never blocks on a full pipe.
        let drain = errors.fileHandleForReading
        Thread.detachNewThread { _ = drain.readDataToEndOfFile() }

        func generate(_ n: Int) throws -> (text: [UInt8], out: Conclave_V1_TokenOut) {
            var g = Conclave_V1_Generate()
            g.prompt = prompt
            g.maxTokens = UInt32(n)
            g.sampling = params.wire
            var text: [UInt8] = []
            let out = try client.generate(g, timeout: 120) { text += $0 }
            return (text, out)
        }
        _ = try generate(4)  // warm-up
        Thread.sleep(forTimeInterval: 1.2)
        let mid = try status(client)
        let (text, out) = try generate(gen)
        Thread.sleep(forTimeInterval: 1.2)  // one heartbeat, so the counters include the run
        let after = try status(client)

        let concurrent = sequences > 1 ? try aggregate(endpoint: clusterFile.coordinator, transports: transports, params: params) : nil
        let final = try status(client)

        let stageNames = Set(after.workers.filter { $0.endLayer > $0.firstLayer }.map(\.name))
        let hops = max(0, stageNames.count - 1)
        var fwdBytes: UInt64 = 0, fwdRows: UInt64 = 0, expertBytes: UInt64 = 0, stageMs = 0.0
        var remoteLayers = 0.0, remoteCalls = 0.0, localS = 0.0, waitS = 0.0, serveS = 0.0, served = 0.0
        for w in after.workers {
            let m = mid.workers.first { $0.name == w.name }!
            let (now, then) = (w.samples, m.samples)
            func moved(_ spec: MetricSpec) -> UInt64 { UInt64(max(0, now.value(spec) - then.value(spec))) }
            fwdBytes += moved(WorkerMetric.forwardedBytes)
            fwdRows += moved(WorkerMetric.forwardedRows)
            expertBytes += moved(WorkerMetric.expertCallBytes)
            func movedD(_ spec: MetricSpec) -> Double { max(0, now.value(spec) - then.value(spec)) }
            remoteLayers += movedD(WorkerMetric.remoteLayers)
            remoteCalls += movedD(WorkerMetric.remoteCalls)
            localS += movedD(WorkerMetric.remoteLocalSeconds)
            waitS += movedD(WorkerMetric.remoteWaitSeconds)
            serveS += movedD(WorkerMetric.expertServeSeconds)
            served += movedD(WorkerMetric.expertCalls)
            if stageNames.contains(w.name) { stageMs += now.value(WorkerMetric.stepP50) * 1000 }
        }
        let tokens = Double(max(1, out.generatedTokens))
        let stepMs = 1000 / max(1e-9, out.decodeTokS)
        let hopMs = max(0, stepMs - stageMs) / Double(stageNames.count + 1)
        let bytesPerHop = fwdRows > 0 ? Double(fwdBytes) / Double(fwdRows) : 0
        let hidden = engine.config.embeddingLength * 4
        // One call per remote worker per layer: its bytes against a hidden row's size in Q8_0 (the prompt's
        // multi-row calls are counted too, a few of the run's hundreds).
        let bytesPerCall = remoteCalls > 0 ? Double(expertBytes) / remoteCalls : 0
        let q8Row = engine.config.embeddingLength / 32 * 34
        let ratio = out.decodeTokS / max(1e-9, single.decodeTokensPerSecond)
        // An expert-parallel layer: local experts while the calls are out, then the wait; the servers' compute
        // per call; what is left of local + wait is the wire and its hops (when the remote side is the longer).
        let perLayer = { (x: Double) in remoteLayers > 0 ? x / remoteLayers * 1000 : 0 }
        let localMs = perLayer(localS), waitMs = perLayer(waitS)
        let serveMs = served > 0 ? serveS / served * 1000 : 0
        let wireMs = remoteLayers > 0 ? max(0, localMs + waitMs - serveMs) : 0
        let layersPerToken = remoteLayers / tokens
        // The plan the coordinator made: the file's workers with the rates and round trips it measured.
        let measured = ClusterFile(coordinator: clusterFile.coordinator, workers: clusterFile.workers.map { w in
            var w = w
            if let s = after.workers.first(where: { $0.name == w.name }) {
                w = w.with(memory: min(w.memory, Int(clamping: s.memoryBudget)))
                // Rates measured on one host are not used for the plan (see Coordinator.budgeted); round trips are.
                if s.readBytesPerSecond > 0 && !clusterFile.loopbackOnly { w.readRate = s.readBytesPerSecond }
                if s.roundTripS > 0 { w.roundTrip = s.roundTripS }
            }
            return w
        })
        // One host's processes share one memory bus: what one process reads alone and what all of them read at
        // once (each with the run's threads), measured now, say how much slower the experts' concurrent reads
        // are here than on separate hosts.
        let readers = max(1, after.workers.count)
        let aloneGbps = KernelBench.bandwidth(pool: ThreadPool(threads: model.threads), bytes: 512 << 20, minSeconds: 0.5).gbps
        let allGbps = KernelBench.bandwidth(pool: ThreadPool(threads: min(ThreadPool.availableCores, readers * model.threads)), bytes: 512 << 20, minSeconds: 0.5).gbps
        let shared = min(1, allGbps / Double(readers) / max(1e-9, aloneGbps))
        let limit = try Self.limit(model: model.model, cluster: measured, trace: trace, singleTokS: single.decodeTokensPerSecond,
                                   wireSecondsPerToken: layersPerToken * wireMs / 1000, sharedBus: shared)
        // What bounds expert parallelism for one stream: with no wire at all, the plan allows `limit.bytes`; each
        // expert-parallel layer must then pay its wire out of what splitting its experts saves. Past this wire
        // per layer the cluster is slower than one process, whatever else is done.
        let noWireSpeedup = limit.bytes / max(1e-9, single.decodeTokensPerSecond)
        let breakEvenWireMs = layersPerToken > 0
            ? max(0, 1 / max(1e-9, single.decodeTokensPerSecond) - 1 / max(1e-9, limit.bytes)) / layersPerToken * 1000 : 0
        if text != singleText { printError("warning: the distributed text differs from the single-process text") }
        let fields: [(String, JSON)] = [
                ("single_decode_tok_s", .double(round3(single.decodeTokensPerSecond))), ("distributed_decode_tok_s", .double(round3(out.decodeTokS))),
                ("ratio", .double(round3(ratio))), ("threads", .int(model.threads)), ("stages", .int(stageNames.count)), ("hops", .int(hops)),
                ("per_hop_latency_ms", .double(round3(hopMs))), ("wire_bytes_per_token_per_hop", .double(round3(bytesPerHop))),
                ("hidden_bytes", .int(hidden)), ("expert_call_bytes_per_token", .double(round3(Double(expertBytes) / tokens))),
                ("expert_call_bytes_per_call", .double(round3(bytesPerCall))), ("q8_0_row_bytes", .int(q8Row)),
                ("expert_calls_per_token", .double(round3(remoteCalls / tokens))),
                ("identical_text", .bool(text == singleText)), ("curve", .bool(curve)),
                ("concurrent_sequences", .int(concurrent == nil ? 0 : sequences)), ("aggregate_tok_s", .double(round3(concurrent ?? 0))),
                ("single_aggregate_tok_s", .double(round3(singleAggregate ?? 0))),
                ("micro_batches", .int(Int(final.microBatches))), ("peak_in_flight", .int(Int(Int(final.value(\.peakInFlight))))),
                ("remote_layers_per_token", .double(round3(layersPerToken))), ("local_ms_per_layer", .double(round3(localMs))),
                ("wait_ms_per_layer", .double(round3(waitMs))), ("serve_ms_per_call", .double(round3(serveMs))),
                ("wire_ms_per_layer", .double(round3(wireMs))),
                ("limit_bytes_tok_s", .double(round3(limit.bytes))), ("limit_tok_s", .double(round3(limit.withWire))),
                ("fraction_of_limit", .double(round3(out.decodeTokS / max(1e-9, limit.withWire)))),
                ("plan_expected_speedup", .double(round3(limit.expected))),
                ("read_gbps_one_process", .double(round3(aloneGbps))), ("read_gbps_all_processes", .double(round3(allGbps))),
                ("shared_bus_factor", .double(round3(shared))), ("limit_this_host_tok_s", .double(round3(limit.thisHost))),
                ("fraction_of_this_host_limit", .double(round3(out.decodeTokS / max(1e-9, limit.thisHost)))),
                ("separate_hosts_speedup", .double(round3(limit.withWire / max(1e-9, single.decodeTokensPerSecond)))),
                ("no_wire_speedup", .double(round3(noWireSpeedup))), ("break_even_wire_ms_per_layer", .double(round3(breakEvenWireMs))),
                ("workers", .array(after.workers.map { w in .object([("name", .string(w.name)), ("experts", .int(Int(w.experts))),
                    ("read_gbps", .double(round3(w.readBytesPerSecond / 1e9))), ("round_trip_ms", .double(round3(w.roundTripS * 1000)))]) })),
            ]
        if !json {
            print("decode: single process \(fixed(single.decodeTokensPerSecond, 1)) tok/s, distributed \(fixed(out.decodeTokS, 1)) tok/s (\(fixed(ratio, 2))×), \(stageNames.count) stages, \(model.threads) threads\(curve ? ", CurveZMQ" : "")")
            if let concurrent {
                print("\(sequences) sequences at once: \(fixed(concurrent, 1)) tok/s in all, \(final.microBatches) micro-batches (peak \(Int(final.value(\.peakInFlight))) in flight)"
                      + (singleAggregate.map { "; one process \(fixed($0, 1)) tok/s (\(fixed(concurrent / max(1e-9, $0), 2))×)" } ?? ""))
            }
            if remoteLayers > 0 {
                print("expert-parallel layers: \(fixed(layersPerToken, 1)) per token; each \(fixed(localMs, 3)) ms of local experts while the calls were out, then \(fixed(waitMs, 3)) ms waiting; remote compute \(fixed(serveMs, 3)) ms per call, wire and hops \(fixed(wireMs, 3)) ms")
            }
            print("plan: " + after.workers.map { "\($0.name) \($0.experts) experts (\(fixed($0.readBytesPerSecond / 1e9, 1)) GB/s, round trip \(fixed($0.roundTripS * 1000, 3)) ms)" }.joined(separator: ", ")
                  + "; it expects \(fixed(limit.expected, 2))× one host")
            print("limit: \(fixed(limit.bytes, 1)) tok/s from the bytes a token reads (\(limit.why)), \(fixed(limit.withWire, 1)) tok/s with the measured wire; distributed reached \(fixed(out.decodeTokS / max(1e-9, limit.withWire), 2)) of it")
            print("this host: one process reads \(fixed(aloneGbps, 1)) GB/s alone, \(readers) at once \(fixed(allGbps, 1)) GB/s in all (each \(fixed(shared, 2)) of alone): the limit here is \(fixed(limit.thisHost, 1)) tok/s with the wire, and distributed reached \(fixed(out.decodeTokS / max(1e-9, limit.thisHost), 2)) of it; on separate hosts (each reading as one process alone) the limit is \(fixed(limit.withWire, 1)) tok/s, \(fixed(limit.withWire / max(1e-9, single.decodeTokensPerSecond), 2))× one host")
            if remoteLayers > 0 {
                print("bound: with no wire the plan allows \(fixed(noWireSpeedup, 2))× one process; expert parallelism beats one process only while wire and hops stay under \(fixed(breakEvenWireMs, 3)) ms per layer (measured \(fixed(wireMs, 3)) ms)")
            }
            print("per hop \(fixed(hopMs, 3)) ms; activations \(fixed(bytesPerHop, 1)) bytes per token per hop (hidden × 4 = \(hidden)); expert calls \(fixed(Double(expertBytes) / tokens, 1)) bytes per token, \(fixed(bytesPerCall, 1)) per call (per layer per remote worker; a Q8_0 row is \(q8Row))")
        }
        return fields
    }

    /// `sequences` generations of `gen` tokens at once, each from its own client; generated tokens per second of
    /// wall time from the first request to the last answer.
    func aggregate(endpoint: String, transports: TransportFactory, params: SamplingParams) throws -> Double {
        let prompts = Self.prompts
        let total = Mutex(0), failure = Mutex<String?>(nil)
        let t0 = KernelBench.now()
        DispatchQueue.concurrentPerform(iterations: sequences) { i in
            do {
                let client = try CoordinatorClient(endpoint: endpoint, transports: transports)
                var g = Conclave_V1_Generate()
                g.prompt = prompts[i % prompts.count]
                g.maxTokens = UInt32(gen)
                g.sampling = params.wire
                let out = try client.generate(g, timeout: 300) { _ in }
                total.withLock { $0 += Int(out.generatedTokens) }
            } catch {
                failure.withLock { $0 = "\(error)" }
            }
        }
        if let f = failure.withLock({ $0 }) { throw CoordinatorClient.Failure(description: "a concurrent generation failed: \(f)") }
        return Double(total.withLock { $0 }) / (KernelBench.now() - t0)
    }

    static let prompts = ["Once upon a time", "The little dog", "One day, a girl named Lily", "Tom had a red ball", "In the forest", "The sun was hot"]

    /// The same `sequences` generations in this process, batched by the scheduler `conclave serve` uses without
    /// a cluster (one step decodes every live sequence): the one-host figure the cluster's aggregate is held to.
    /// The rpc-server and llama-bench of a llama.cpp build's bin directory, or a clear error.
    static func llamaRPCBinaries(_ binDir: String) throws -> (server: String, bench: String) {
        let dir = URL(fileURLWithPath: binDir)
        // The server is ggml-rpc-server in current llama.cpp, rpc-server in older builds.
        let server = ["ggml-rpc-server", "rpc-server"].map { dir.appendingPathComponent($0).path }.first { FileManager.default.isExecutableFile(atPath: $0) }
        let bench = dir.appendingPathComponent("llama-bench").path
        guard let server, FileManager.default.isExecutableFile(atPath: bench) else {
            printError("error: --vs-llama-rpc: \(binDir) lacks ggml-rpc-server (or rpc-server) or llama-bench; build llama.cpp with -DGGML_RPC=ON (targets ggml-rpc-server and llama-bench) and give its bin directory")
            throw ExitCode(1)
        }
        return (server, bench)
    }

    /// llama.cpp's RPC on the same file: `servers` rpc-servers on 127.0.0.1 with --threads threads each and
    /// llama-bench driving them with every layer offloaded; its mean decode tok/s over three runs of --gen tokens.
    func llamaRPC(_ binaries: (server: String, bench: String), servers: Int) throws -> Double {
        let (server, bench) = binaries
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("bench-cluster-llama-rpc-\(getpid()).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        var ports: [Int] = []
        while ports.count < servers {
            let p = BenchServe.freePort()
            if !ports.contains(p) { ports.append(p) }
        }
        var children: [Process] = []
        defer {
            // rpc-server does not stop on SIGTERM, and holds nothing worth a graceful end.
            for c in children where c.isRunning { kill(c.processIdentifier, SIGKILL) }
            for c in children { c.waitUntilExit() }
        }
        for port in ports {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: server)
            p.arguments = ["-H", "127.0.0.1", "-p", String(port), "-t", String(model.threads)]
            p.standardOutput = try FileHandle(forWritingTo: log)
            p.standardError = try FileHandle(forWritingTo: log)
            try p.run()
            children.append(p)
        }
        printError("llama.cpp RPC: \(servers) servers on ports \(ports.map(String.init).joined(separator: ", ")) (log \(log.path))")
        // Ready when each accepts a connection (bounded: a server that cannot start is reported, not waited on).
        for port in ports {
            let deadline = KernelBench.now() + 60
            while (try? HTTPClient.connect(port: port)).map({ close($0); return true }) != true {
                guard KernelBench.now() < deadline, children.allSatisfy(\.isRunning) else {
                    printError("error: an rpc-server did not start; its log (\(log.path)):\n" + ((try? String(contentsOf: log, encoding: .utf8)) ?? ""))
                    throw ExitCode(1)
                }
                usleep(100_000)
            }
        }
        let b = Process()
        b.executableURL = URL(fileURLWithPath: bench)
        b.arguments = ["-m", model.model, "--rpc", ports.map { "127.0.0.1:\($0)" }.joined(separator: ","), "-ngl", "99", "-p", "0",
                       "-n", String(gen), "-t", String(model.threads), "-r", "3", "-o", "json"]
        let out = Pipe()
        b.standardOutput = out
        b.standardError = try FileHandle(forWritingTo: log)
        try b.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        b.waitUntilExit()
        guard b.terminationStatus == 0, let rows = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]],
              let rate = rows.compactMap({ $0["avg_ts"] as? Double }).first else {
            printError("error: llama-bench failed (exit \(b.terminationStatus)); its log (\(log.path)):\n" + ((try? String(contentsOf: log, encoding: .utf8)) ?? ""))
            throw ExitCode(1)
        }
        try? FileManager.default.removeItem(at: log)
        return rate
    }

    func oneProcessAggregate(engine: Engine, params: SamplingParams) throws -> Double {
        let executor = LocalExecutor(engine: engine, capacity: 512, maxSequences: sequences)
        let scheduler = Scheduler(executor: executor, tokenizer: engine.tokenizer, contextLength: 512)
        scheduler.maxSequences = sequences
        scheduler.start()
        defer { scheduler.stop(); executor.close() }
        final class Tally: Sendable { let tokens = Mutex(0), failure = Mutex<String?>(nil) }
        let tally = Tally()
        let t0 = KernelBench.now()
        let streams = (0..<sequences).map { i in
            scheduler.submit(GenerationRequest(prompt: engine.tokenizer.encode(Self.prompts[i % Self.prompts.count]), maxTokens: gen, sampling: params)).events
        }
        let done = DispatchSemaphore(value: 0)
        for events in streams {
            Task.detached {
                do {
                    for try await e in events { if case .token(.some, _, _) = e { tally.tokens.withLock { $0 += 1 } } }
                } catch {
                    tally.failure.withLock { $0 = "\(error)" }
                }
                done.signal()
            }
        }
        for _ in streams { done.wait() }
        if let f = tally.failure.withLock({ $0 }) { throw ModelError("a concurrent generation in one process failed: \(f)") }
        return Double(tally.tokens.withLock { $0 }) / (KernelBench.now() - t0)
    }

    func round3(_ x: Double) -> Double { (x * 1000).rounded() / 1000 }

    /// The decode speed the cluster's plan allows when a token is bound by the bytes it reads, at the speed one
    /// process read them (`singleTokS`): the layers' other weights and the head are read by their stage, one
    /// after another; a layer's experts by their holders at once, so the layer waits for the one holding the
    /// largest share (random routing: shares of the experts). Then the wire's own time per token on top.
    /// `sharedBus`: the share of its alone bandwidth each process gets while all read at once (1: separate
    /// hosts); `thisHost` is the limit with the wire when the experts' concurrent reads run at that share.
    static func limit(model: String, cluster: ClusterFile, trace: String?, singleTokS: Double, wireSecondsPerToken: Double,
                      sharedBus: Double = 1) throws -> (bytes: Double, withWire: Double, thisHost: Double, expected: Double, why: String) {
        let file = try GGUFFile(path: model)
        let config = try ModelConfig(file: file)
        let use = try trace.map { try RoutingTraceFile.expertUse($0, config: config) }
        var f = ModelFootprint(file: file, config: config, context: 0)
        f.expertUse = use
        var planned = ModelFootprint(file: file, config: config, context: 512)
        planned.expertUse = use
        let plan = try Planner.plan(planned, cluster: cluster)
        let estimate = DecodeEstimate(plan: plan, weights: f)
        let bytesTokS = singleTokS * estimate.speedup
        let withWire = 1 / (1 / max(1e-9, bytesTokS) + wireSecondsPerToken)
        // One process read stage + all experts' bytes in 1 / singleTokS: the rate a process reads at alone.
        let rate = (estimate.stageBytes + estimate.expertBytes) * singleTokS
        let hostSeconds = estimate.stageBytes / max(1e-9, rate) + estimate.busiestExpertBytes / max(1e-9, rate * max(1e-3, sharedBus))
        let thisHost = 1 / (hostSeconds + wireSecondsPerToken)
        let mb = { (x: Double) in fixed(x / 1e6, 1) }
        return (bytesTokS, withWire, thisHost, estimate.expectedSpeedup, "\(mb(estimate.stageBytes)) MB of attention and head, then \(mb(estimate.busiestExpertBytes)) of the \(mb(estimate.expertBytes)) MB of experts on the busiest holder")
    }

    func status(_ client: CoordinatorClient) throws -> Conclave_V1_StatusReply {
        guard let s = try client.status(timeout: 5) else { throw CoordinatorClient.Failure(description: "no status from the coordinator") }
        return s
    }

    /// Polls status until every worker is ready (the coordinator answers Generate only then).
    static func waitUntilReady(_ client: CoordinatorClient, coordinator: Process) throws {
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            guard coordinator.isRunning else { throw CoordinatorClient.Failure(description: "the coordinator exited") }
            // A spare waits to take over; every other worker must be ready.
            if let s = try client.status(timeout: 0.5), s.workers.contains(where: { $0.state == "ready" }),
               s.workers.allSatisfy({ $0.state == "ready" || $0.state == "spare" }) { return }
            Thread.sleep(forTimeInterval: 0.2)
        }
        throw CoordinatorClient.Failure(description: "the cluster did not become ready within 60 s")
    }
}
