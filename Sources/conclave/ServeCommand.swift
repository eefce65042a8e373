#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CurveKeys
import ChatTemplate
import ClusterProtocol
import Coordinator
import Foundation
import Runtime
import Generation
import GGUF
import Hummingbird
import HummingbirdCore
import Kernels
import Logging
import Model
import Placement
import Serving
import Telemetry
import Tokenizer
import ServiceLifecycle
import Wire
import Worker

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve a model: an OpenAI-compatible HTTP API, from this process or across a cluster's workers.",
        discussion: """
        With neither --cluster nor --local, serves the model from this one process (continuous batching of up to
        --parallel sequences). With --cluster, connects to every worker in the cluster file (start them first with
        `conclave worker`), assigns each its layers and experts, and also listens on the file's coordinator endpoint
        for `conclave generate` and `conclave status`. With --local N it starts N workers on 127.0.0.1 itself (N ≥ 3:
        the last one holds experts only, so every MoE layer calls experts in another process) — the demo.

        HTTP (--http, default 127.0.0.1:8080): POST /v1/chat/completions and /v1/completions (OpenAI's shapes, SSE
        with "stream": true), GET /v1/models, /health, /v1/cluster; llama-server's /tokenize, /detokenize,
        /apply-template. Chat messages are rendered with the model's chat template (or --chat-template FILE; chatml
        for a model without one). Runs until SIGTERM or SIGINT.
        """
    )

    @Option(name: [.short, .long], help: "Path to a .gguf model.") var model: String = defaultModelPath
    @Option(help: "Cluster file (YAML; see cluster/).") var cluster: String?
    @Option(help: "Start this many workers on 127.0.0.1 instead of using a cluster file.") var local: Int?
    @Option(help: "With --local: the coordinator's port; workers take the ports after it.") var port: Int = 7000
    @Option(help: "Context length per sequence (default: the model's).") var ctx: Int?
    @OptionGroup var kvCache: CacheTypeOptions
    @OptionGroup var experts: ExpertSelectionOptions
    @Option(help: "Threads per worker (assigned to workers; default: every core).") var threads: Int = ThreadPool.availableCores
    @Option(help: "Seconds to wait for the cluster's workers to answer.") var joinTimeout: Double = 30
    @Option(help: ArgumentHelp("Every SECONDS, plan the experts of split layers for the routing of late (the stages' counts) and move them when that lowers the layers' imbalance by more than 5% (a re-plan under a new epoch; running requests are replayed, workers whose share did not change keep it). Off by default.", valueName: "seconds"))
    var rebalance: Double?
    @Flag(help: "A standby coordinator: while another coordinator holds the workers, wait; take them over when it goes (workers notice a dead coordinator within 5 s).")
    var standby = false
    @Option(help: "Micro-batches in the pipeline at once (default: one per stage, so every stage computes while the others do).")
    var microBatches: Int?
    @Option(help: "Most tokens in one step (llama.cpp's -ub); a longer prompt is fed in chunks that pipeline through the stages.")
    var ubatch = 512
    @Option(help: "Serve the HTTP API at HOST:PORT (port 0: any free port, printed at start); 'off' for none.")
    var http = "127.0.0.1:8080"
    @Option(help: "Require 'Authorization: Bearer KEY' on every HTTP request but /health (also from $CONCLAVE_API_KEY, or --api-key-file: a command line is visible to every local user).")
    var apiKey: String?
    @Option(help: ArgumentHelp("Read the API key from this file (its first line).", valueName: "path")) var apiKeyFile: String?
    @Option(help: "Requests that may wait for a free sequence; one more gets 429 with Retry-After.") var maxQueue = 256
    @Option(help: "Seconds an HTTP connection may stay idle (no request in flight, or headers never finished) before it is closed.")
    var httpIdleTimeout = 30
    @Option(help: "Most HTTP connections open at once; more wait in the listen backlog.") var httpMaxConnections = 512
    @Option(help: "A Jinja chat template file to use instead of the model's tokenizer.chat_template.") var chatTemplate: String?
    @Flag(inversion: .prefixedNo, help: "Continue a conversation that ends with an assistant message from that message's text (as llama-server does; a request can say \"continue_final_message\": false).")
    var prefillAssistant = true
    @Option(help: "In one process: sequences generated at once (llama-server's -np); each gets KV for --ctx positions.")
    var parallel = 4
    @Flag(inversion: .prefixedNo, help: "Keep each ended request's KV and start a request from the longest cached prefix of its tokens, so a conversation's next turn computes only what is new (a request can say \"cache_prompt\": false). A cluster keeps prefixes in what its workers' --memory leaves beside the running sequences.")
    var prefixCache = true
    @Option(help: ArgumentHelp("In one process: memory for kept prefixes beyond the running sequences' KV (e.g. 2GiB). Default: with --memory, what it leaves when every expert is resident (taken from the experts' share if given); without, the smaller of 4 GiB and an eighth of this machine's memory.", valueName: "BYTES"))
    var prefixCacheMemory: String?
    @OptionGroup var offload: OffloadOptions
    @OptionGroup var draft: DraftModelOptions
    @Option(help: "A routing trace (from `conclave trace-experts`) to plan with: a layer split over workers spreads its most used experts first, and when the cluster must page, the least used experts are the ones paged.")
    var trace: String?
    @Option(help: ArgumentHelp("CurveZMQ keys: with --cluster, the coordinator's pair is DIR/coordinator.key_secret (the cluster file lists everyone's public keys); with --local, where fresh keys for the local cluster and a client pair (client.key_secret, coordinator.key) are written (default: ~/.cache/conclave/local-PORT, which `generate` and `status` find by themselves).", valueName: "dir"))
    var keyDir: String?
    @Flag(inversion: .prefixedNo, help: "With --local: authenticate the local cluster with fresh CurveZMQ keys (the default; --no-curve: plain sockets, which any local process can talk to).")
    var curve: Bool?
    @Flag(help: "Run a cluster file without keys whose endpoints are reachable from other hosts (anyone who reaches them can use the cluster).")
    var insecure = false

    func validate() throws {
        if curve != nil, local == nil { throw ValidationError("--curve/--no-curve choose keys for a --local cluster; a cluster file lists its keys (coordinator_key, key:, client_keys)") }
        if insecure, curve == true { throw ValidationError("--insecure and --curve contradict each other") }
        if let m = microBatches, m < 1 { throw ValidationError("--micro-batches needs at least 1") }
        if ubatch < 1 { throw ValidationError("--ubatch needs at least 1") }
        if parallel < 1 { throw ValidationError("--parallel needs at least 1") }
        if let problem = ThreadPool.problem(threads: threads) { throw ValidationError(problem) }
        if offload.memory != nil, cluster != nil || local != nil {
            throw ValidationError("--memory bounds a model served in this process; give each worker its budget with `conclave worker --memory` (or memory: in the cluster file)")
        }
        if http != "off", Self.hostPort(http) == nil { throw ValidationError("--http takes HOST:PORT (e.g. 127.0.0.1:8080) or 'off', not '\(http)'") }
        if apiKey != nil, apiKeyFile != nil { throw ValidationError("give the API key once: --api-key or --api-key-file") }
        if apiKey?.isEmpty == true { throw ValidationError("--api-key must not be empty") }
        if maxQueue < 1 { throw ValidationError("--max-queue needs at least 1") }
        if let rebalance, !(rebalance >= 1 && rebalance <= 86_400) { throw ValidationError("--rebalance takes 1 to 86400 seconds") }
        if httpIdleTimeout < 1 { throw ValidationError("--http-idle-timeout needs at least 1 second") }
        if httpMaxConnections < 1 { throw ValidationError("--http-max-connections needs at least 1") }
    }

    static func hostPort(_ s: String) -> (String, Int)? {
        guard let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        let host = String(s[..<colon])
        return (host.isEmpty ? "127.0.0.1" : host, port)
    }

    /// Whether a `--local` cluster runs CurveZMQ: unless --no-curve (or --insecure).
    var localCurve: Bool { curve ?? !insecure }

    /// Where `--local` writes its keys: --key-dir, else the directory its clients look in for this port.
    var localKeyDirectory: String { keyDir ?? LocalKeys.directory(port: port) }

    /// The coordinator's CurveZMQ settings: its key pair from --key-dir, the clients the cluster file lists (and
    /// its own key, for the operator on its host), every worker's key by endpoint. Nil for a plain cluster,
    /// which may run beyond loopback only with --insecure.
    func coordinatorCurve(_ file: ClusterFile) throws -> ZeroMQTransports.Curve? {
        guard let key = file.coordinatorKey else {
            if !file.loopbackOnly {
                guard insecure else {
                    throw CoordinatorError("the cluster file lists no keys and its endpoints are reachable from other hosts: anyone who reaches them could assign the workers or read the activations. List CurveZMQ keys in it (`conclave keys generate -o DIR coordinator WORKER… client`, then coordinator_key, key: per worker, client_keys) and give --key-dir DIR, or pass --insecure on a network you trust")
                }
                printError("[coordinator] WARNING: --insecure: no CurveZMQ; any process that reaches the cluster's endpoints can assign its workers, feed them and read their activations")
            }
            return nil
        }
        guard !insecure else { throw CoordinatorError("--insecure with a cluster file that lists keys: remove the keys from the file to run without CurveZMQ") }
        guard let keyDir = local != nil && localCurve ? localKeyDirectory : keyDir else {
            throw CoordinatorError("the cluster file lists CurveZMQ keys: give --key-dir DIR with the coordinator's coordinator.key_secret")
        }
        let pair = try CurveCertificate.pair(keyDir, "coordinator")
        guard pair.publicKey == key else {
            throw CoordinatorError("\(CurveCertificate.secretPath(keyDir, "coordinator")) holds key \(pair.publicKey.z85), but the cluster file's coordinator_key is \(key.z85)")
        }
        var admitted: [CurveKey: PeerRole] = [key: .client]
        for k in file.clientKeys { admitted[k] = .client }
        // A worker that may join proves its key here; the coordinator then connects to it expecting that key.
        for k in file.joinKeys { admitted[k] = .joiner(k.z85) }
        var servers: [String: CurveKey] = [:]
        for w in file.workers { if let k = w.key { servers[w.endpoint] = k } }
        return ZeroMQTransports.Curve(keys: pair, admitted: admitted, servers: servers)
    }

    /// What the HTTP API says about the model: its name, context and chat template.
    func servedModel(file: GGUFFile, tokenizer: Tokenizer, context: Int) throws -> ServedModel {
        var source = file.string("tokenizer.chat_template")
        var origin = "the model's tokenizer.chat_template"
        if let chatTemplate {
            do { source = try String(contentsOfFile: chatTemplate, encoding: .utf8) } catch {
                throw CoordinatorError("cannot read --chat-template \(chatTemplate): \(error.localizedDescription)")
            }
            origin = chatTemplate
        }
        let id = file.string("general.name") ?? URL(fileURLWithPath: file.path).deletingPathExtension().lastPathComponent
        let m = ServedModel(id: id, contextLength: context, tokenizer: tokenizer, templateSource: source, templateOrigin: origin, prefillAssistant: prefillAssistant)
        if case .failure(let e) = m.template {
            printError("warning: the chat template (\(origin)) cannot be used: \(e); /v1/chat/completions will answer 500 until you give --chat-template FILE")
        }
        return m
    }

    /// The API key: --api-key, --api-key-file's first line, or $CONCLAVE_API_KEY (nil: none).
    func resolvedAPIKey() throws -> String? {
        if let apiKey { return apiKey }
        if let apiKeyFile {
            let text: String
            do { text = try String(contentsOfFile: apiKeyFile, encoding: .utf8) } catch {
                throw ValidationError("cannot read --api-key-file \(apiKeyFile): \(error.localizedDescription)")
            }
            let key = text.split(whereSeparator: \.isNewline).first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
            guard !key.isEmpty else { throw ValidationError("--api-key-file \(apiKeyFile) is empty") }
            return key
        }
        if let env = ProcessInfo.processInfo.environment["CONCLAVE_API_KEY"], !env.isEmpty { return env }
        return nil
    }

    /// Whether `host` is this machine's loopback only.
    static func isLoopback(_ host: String) -> Bool { host == "localhost" || host.hasPrefix("127.") || host == "::1" || host == "[::1]" }

    /// The HTTP front door as a service, or none with --http off.
    func httpService(_ api: HTTPAPI) -> [any Service] {
        guard http != "off", let (host, port) = Self.hostPort(http) else { return [] }
        if api.apiKey == nil, !Self.isLoopback(host) {
            printError("[http] WARNING: the API listens on \(host), beyond this machine, without an API key: anyone who reaches port \(port) can use the model; give --api-key-file FILE (or $CONCLAVE_API_KEY)")
        }
        var logger = Logger(label: "conclave.http")
        logger.logLevel = .warning
        let app = Application(router: api.router(), server: .http1(configuration: .init(idleTimeout: .seconds(Int64(httpIdleTimeout)))),
                              configuration: .init(address: .hostname(host, port: port), serverName: "conclave",
                                                   availableConnectionsDelegate: MaximumAvailableConnections(httpMaxConnections, logger: logger)),
                              onServerRunning: { channel in
                                  let p = channel.localAddress?.port ?? port
                                  printError("[http] OpenAI-compatible API on http://\(host):\(p)/v1 (\(api.model.id), context \(api.model.contextLength))"
                                             + (api.apiKey == nil ? "" : "; API key required"))
                              }, logger: logger)
        return [app]
    }

    /// The draft model proposing tokens for every decoding sequence, in this process (nil without --draft).
    func drafter(for tokenizer: Tokenizer, vocabSize: Int) throws -> Drafter? {
        guard let engine = try draft.load(threads: threads, for: tokenizer, vocabSize: vocabSize) else { return nil }
        printError("[serve] draft model \(draft.path ?? ""): proposes up to \(draft.maxTokens) tokens per pass while its best is at least \(draft.minProbability) likely")
        return Drafter(engine: engine, options: draft.options)
    }

    /// `serve -m MODEL` alone: the model in this process behind the HTTP API.
    func runInProcess() async throws {
        let engine: Engine
        let cache: BudgetedExperts?
        let model: ServedModel
        do {
            (engine, cache) = try offload.load(path: self.model, threads: threads, context: ctx, sequences: parallel, prefixCache: try prefixCacheAsked(),
                                              cacheTypes: try kvCache.types, ubatch: ubatch, selection: experts.selection)
            let context = min(ctx ?? engine.config.contextLength, engine.config.contextLength)
            model = try servedModel(file: engine.file, tokenizer: engine.tokenizer, context: context)
        } catch let e as ExitCode {
            throw e  // `offload.load` has said why
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        guard http != "off" else { throw ValidationError("serving from one process needs the HTTP API: give --http HOST:PORT") }
        let cacheBytes = try prefixCacheBytes(engine: engine, context: model.contextLength)
        let executor = LocalExecutor(engine: engine, capacity: model.contextLength, maxSequences: parallel, prefixCacheBytes: cacheBytes)
        let metrics = MetricsRegistry()
        let scheduler = Scheduler(executor: executor, tokenizer: engine.tokenizer, contextLength: model.contextLength, maxBatch: ubatch,
                                  figures: metrics, log: { printError("[serve] \($0)") })
        scheduler.maxSequences = parallel
        scheduler.prefixCaching = prefixCache
        executor.log = { printError("[serve] \($0)") }
        if let room = executor.kvRoom, prefixCache {
            printError("[serve] prefix cache: \(formatBytes(cacheBytes)) beyond \(parallel) running sequences (\(room.cacheable(running: parallel)) positions; \(room.cacheable(running: 0)) while none runs)")
        }
        do { scheduler.drafter = try drafter(for: engine.tokenizer, vocabSize: engine.config.vocabSize) } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        scheduler.start()
        printError("[serve] \(model.id) in this process: \(threads) threads, \(parallel) sequences at once, context \(model.contextLength), chat template: \(model.templateOrigin)")
        scheduler.maxQueued = maxQueue
        let activity = engine.config.isMoE ? ExpertActivity(layers: engine.config.layerCount, experts: engine.config.expertCount) : nil
        let heats = engine.stages.compactMap(\.heat)
        // One process: the counts grow in the engine's stages, taken into the activity when asked for.
        let experts = { @Sendable () -> ExpertActivity.Snapshot? in
            guard let activity else { return nil }
            let now = MonotonicClock.seconds()
            for heat in heats { activity.add(firstLayer: heat.layers.lowerBound, deltas: heat.takeDeltas(), now: now) }
            return activity.snapshot(now: now)
        }
        let api = HTTPAPI(scheduler: scheduler, model: model, apiKey: try resolvedAPIKey(), metrics: metrics, experts: {
            experts()?.json(halfLife: activity?.halfLife ?? 0) { _, _ in "local" }
        }, beforeScrape: {
            experts()?.mirror(into: metrics) { _, _ in "local" }
            // The experts each layer pass read, as a worker reports them (bench serve's byte ceiling).
            let reads = heats.reduce((passes: UInt64(0), experts: UInt64(0))) { ($0.passes + $1.reads.passes, $0.experts + $1.reads.experts) }
            if !heats.isEmpty { metrics.record(expertReads: reads) }
            if let cache { metrics.record(offload: cache) }
            let grammar = executor.grammarFigures
            metrics.handle(ServingMetrics.catalog.constrainedTokens).advance(toTotal: Double(grammar.tokens))
            metrics.handle(ServingMetrics.catalog.grammarSeconds).advance(toTotal: grammar.seconds)
        })
        let group = ServiceGroup(services: [SchedulerService(scheduler: scheduler, onStop: executor.close)] + httpService(api),
                                 gracefulShutdownSignals: [.sigterm, .sigint], logger: Logger(label: "conclave.serve"))
        try await run(group)
    }

    /// Bytes for kept prefixes in one process: --prefix-cache-memory, else what --memory leaves when every expert
    /// is resident, else the smaller of 4 GiB and an eighth of the machine (0 with --no-prefix-cache).
    func prefixCacheBytes(engine: Engine, context: Int) throws -> Int {
        guard prefixCache else { return 0 }
        let asked = try prefixCacheAsked()
        if let budget = offload.budget {
            let plan = try MemoryBudget(file: engine.file, config: engine.config, layers: 0..<engine.config.layerCount, context: context,
                                        sequences: parallel, ubatch: ubatch, budget: budget, cacheTypes: engine.cacheTypes, prefixCache: asked)
            return plan.prefixCacheBytes
        }
        if let asked { return asked }
        let physical = Int(clamping: UInt64(sysconf(Int32(_SC_PHYS_PAGES))) &* UInt64(sysconf(Int32(_SC_PAGESIZE))))
        return min(4 << 30, physical / 8)
    }

    /// --prefix-cache-memory in bytes (nil: not given; 0 with --no-prefix-cache).
    func prefixCacheAsked() throws -> Int? {
        guard prefixCache else { return 0 }
        return try prefixCacheMemory.map { text -> Int in
            guard let n = ClusterFile.parseBytes(text) else { throw ValidationError("--prefix-cache-memory '\(text)' is not a size like 512MiB, 2GiB or a number of bytes") }
            return n
        }
    }

    /// Runs the services; a failure (the HTTP port taken) ends the process with a message saying what to change.
    func run(_ group: ServiceGroup) async throws {
        do {
            try await group.run()
        } catch {
            let text = "\(error)"
            if text.contains("bind") || text.contains("Address already in use") {
                printError("error: cannot serve HTTP on \(http): \(text); another process holds the port — choose another with --http HOST:PORT (or --http off)")
            } else {
                printError("error: \(text)")
            }
            throw ExitCode(1)
        }
    }

    func run() async throws {
        var clusterFile: ClusterFile
        var children: [Process] = []
        do {
            if let local {
                guard local >= 1 else { throw ValidationError("--local needs at least one worker") }
                clusterFile = LocalCluster.file(workers: local, port: port)
                if localCurve {
                    try LocalKeys.prepare(localKeyDirectory)
                    clusterFile = try LocalCluster.withKeys(clusterFile, in: localKeyDirectory)
                    printError("[serve] CurveZMQ keys for the local cluster in \(localKeyDirectory)" + (keyDir == nil ? " (`conclave generate` and `status` on this host use them)" : "; clients connect with `conclave generate --key-dir \(localKeyDirectory)`"))
                } else if keyDir == nil {
                    // Stale keys of an earlier run on this port would make clients try CurveZMQ against plain sockets.
                    LocalKeys.forget(port: port)
                }
                children = try LocalCluster.start(clusterFile, model: model, threads: threads, keyDir: localCurve ? localKeyDirectory : nil)
            } else if let cluster {
                clusterFile = try ClusterFile(path: cluster)
            } else {
                return try await runInProcess()
            }
        } catch let e as ValidationError {
            throw e
        } catch let e as ExitCode {
            throw e  // already said why
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        defer { LocalCluster.stop(children) }
        let coordinator: Coordinator
        let metrics = MetricsRegistry()
        do {
            let transports = ZeroMQTransports(identity: ZeroMQTransports.coordinatorIdentity(), curve: try coordinatorCurve(clusterFile), log: { printError("[coordinator] \($0)") })
            let socket = try transports.listen(clusterFile.coordinator.replacingOccurrences(of: "tcp://localhost", with: "tcp://127.0.0.1"), maxMessageSize: 256 << 20)
            var options = Coordinator.Options(contextLength: ctx, workerThreads: threads)
            options.joinTimeout = joinTimeout
            options.rebalanceEvery = rebalance
            options.standby = standby
            options.microBatches = microBatches
            options.maxBatch = ubatch
            options.cacheTypes = try kvCache.types
            options.expertSelection = experts.selection
            if let trace {
                let config = try ModelConfig(file: GGUFFile(path: model))
                options.expertUse = try RoutingTraceFile.expertUse(trace, config: config)
            }
            coordinator = try Coordinator(modelPath: model, cluster: clusterFile, options: options, clients: socket, transports: transports,
                                          figures: metrics, log: { printError("[coordinator] \($0)") })
            coordinator.scheduler.drafter = try drafter(for: coordinator.tokenizer, vocabSize: coordinator.config.vocabSize)
            coordinator.scheduler.prefixCaching = prefixCache
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        if !children.isEmpty { LocalCluster.failFast(children, names: clusterFile.workers.map(\.name), until: { coordinator.started }) }
        let model: ServedModel
        do {
            model = try servedModel(file: coordinator.file, tokenizer: coordinator.tokenizer, context: coordinator.contextLength)
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        coordinator.scheduler.maxQueued = maxQueue
        let api = HTTPAPI(scheduler: coordinator.scheduler, model: model, apiKey: try resolvedAPIKey(), metrics: metrics, health: { coordinator.healthProblem() },
                          cluster: { coordinator.status().json },
                          experts: { coordinator.expertActivity().map { $0.snapshot.json(halfLife: $0.halfLife, holder: $0.holder) } },
                          beforeScrape: {
                              coordinator.status().mirror(into: metrics)
                              if let a = coordinator.expertActivity() { a.snapshot.mirror(into: metrics, holder: a.holder) }
                          })
        // Start-up (join, assign, load) runs inside the coordinator's service: SIGTERM while workers load is graceful.
        let group = ServiceGroup(services: coordinator.services + httpService(api), gracefulShutdownSignals: [.sigterm, .sigint], logger: Logger(label: "conclave.serve"))
        try await run(group)
    }
}

/// Keeps the in-process scheduler running until shutdown, then answers what is still running and stops it.
struct SchedulerService: Service {
    let scheduler: Scheduler
    let onStop: @Sendable () -> Void

    func run() async throws {
        try? await gracefulShutdown()
        scheduler.stop()
        onStop()
    }
}

/// `serve --local N` and `bench cluster`: workers as child processes of this binary on 127.0.0.1.
enum LocalCluster {
    /// Workers of one host share its memory: each gets an equal part of three quarters of it (the rest is the
    /// coordinator's and the system's), so together they never promise more than the host has.
    static func file(workers n: Int, port: Int, memory: Int? = nil) -> ClusterFile {
        let memory = memory ?? Int(ProcessInfo.processInfo.physicalMemory) / 4 * 3 / max(1, n)
        let ws = (0..<n).map { i in
            ClusterFile.Worker(name: "local-\(i + 1)", endpoint: "tcp://127.0.0.1:\(port + 1 + i)", memory: memory,
                               role: n >= 3 ? (i == n - 1 ? .experts : .stage) : .any)
        }
        return ClusterFile(coordinator: "tcp://127.0.0.1:\(port)", workers: ws)
    }

    /// The same cluster with fresh CurveZMQ keys for the coordinator, each worker and a client, written to `dir`.
    static func withKeys(_ file: ClusterFile, in dir: String) throws -> ClusterFile {
        func make(_ name: String) throws -> CurveKey {
            let pair = try CurveKeyPair.generate()
            try CurveCertificate.write(pair, name: name, into: dir, overwrite: true)
            return pair.publicKey
        }
        let coordinator = try make("coordinator"), client = try make("client")
        let workers = try file.workers.map { w in ClusterFile.Worker(name: w.name, endpoint: w.endpoint, memory: w.memory, role: w.role, key: try make(w.name), speed: w.speed) }
        return ClusterFile(coordinator: file.coordinator, workers: workers, coordinatorKey: coordinator, clientKeys: [client])
    }

    /// Starts `conclave worker` for every worker of `cluster` whose endpoint is on this machine; with `keyDir`,
    /// each with its key pair there.
    static func start(_ cluster: ClusterFile, model: String?, threads: Int, keyDir: String? = nil, logDir: String? = nil) throws -> [Process] {
        var started: [Process] = []
        for w in cluster.workers {
            do {
                started.append(try startWorker(w, model: model, threads: threads, keyDir: keyDir, logDir: logDir))
            } catch {
                stop(started)
                throw error
            }
        }
        return started
    }

    /// Starts one worker of a local cluster (again, after it died); with `logDir`, its stderr is appended to
    /// `logDir/NAME.log` instead of going to ours.
    static func startWorker(_ w: ClusterFile.Worker, model: String?, threads: Int, keyDir: String? = nil, logDir: String? = nil) throws -> Process {
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        let p = Process()
        p.executableURL = exe
        var args = ["worker", "--listen", w.endpoint, "--name", w.name, "--memory", String(w.memory), "--threads", String(threads), "--exit-with-parent"]
        if let model { args += ["--model", model] }
        if let keyDir { args += ["--key-dir", keyDir] }
        p.arguments = args
        // Workers sharing this machine's cores: idle pools park sooner than the default (see ThreadPool) — soon
        // enough not to take the cores of the stage that computes next, late enough to stay awake through
        // the short gaps between one step's products (2000 polls parked inside steps: 0.77–0.82× of one
        // process on `bench cluster` with two stages, against 0.81–1.02× at 100000).
        var env = ProcessInfo.processInfo.environment
        if env["CONCLAVE_SPIN_POLLS"] == nil { env["CONCLAVE_SPIN_POLLS"] = "100000" }
        p.environment = env
        if let logDir { p.standardError = try appendingLog(logDir + "/" + w.name + ".log") }
        do {
            try p.run()
        } catch {
            throw CoordinatorError("cannot start worker '\(w.name)' (\(exe.path)): \(error)")
        }
        return p
    }

    /// A log file opened for appending (created when missing): restarted processes add to what came before.
    static func appendingLog(_ path: String) throws -> FileHandle {
        if !FileManager.default.fileExists(atPath: path) { FileManager.default.createFile(atPath: path, contents: nil) }
        guard let h = FileHandle(forWritingAtPath: path) else { throw CoordinatorError("cannot write the log \(path)") }
        h.seekToEndOfFile()
        return h
    }

    /// A local worker that exits before the cluster serves (its port taken, a bad option) ends `serve` at once
    /// with its name, instead of a join timeout later; its own error is already on our stderr (inherited).
    /// Once serving, a worker that dies is recovery's business.
    static func failFast(_ processes: [Process], names: [String], until started: @escaping @Sendable () -> Bool) {
        let watched = Array(zip(processes, names))
        Thread.detachNewThread {
            while !started() {
                if let (p, name) = watched.first(where: { !$0.0.isRunning }) {
                    printError("error: local worker '\(name)' exited with status \(p.terminationStatus) before the cluster started (its error is above); nothing to serve with")
                    for (other, _) in watched where other.isRunning { other.terminate() }
                    exit(1)
                }
                usleep(100_000)
            }
        }
    }

    static func stop(_ processes: [Process]) {
        for p in processes where p.isRunning { p.terminate() }
        for p in processes { p.waitUntilExit() }
    }
}
