import ClusterProtocol
import Foundation
import Generation
import GGUF
import Model
import Placement
import Runtime
import ServiceLifecycle
import Synchronization
import Telemetry
import Tokenizer
import Wire

public struct CoordinatorError: Error, CustomStringConvertible, Sendable {
    public let description: String
    /// A worker refused us because another coordinator holds it and is still connected (a standby waits).
    public var held = false
    public init(_ d: String, held: Bool = false) {
        description = d
        self.held = held
    }
}

/// The coordinator (`conclave serve`): holds the tokenizer and every sequence's tokens; workers hold weights and
/// KV caches. It is composed of one part per job, each the owner of its state:
/// - `Membership`: the links to the workers, Hello, round trips, heartbeats;
/// - `Assignment`: the plan and its epoch, Assign → Ready;
/// - `Recovery`: re-planning after a failure, returning an outcome the scheduler applies;
/// - `ClientAPI`: the ZeroMQ front door, a Service of its own (`services`);
/// - `ModelChunkServer`: the model file for workers that have none;
/// - status (`status()`), read by the client API, `GET /v1/cluster` and `/metrics`.
/// Start-up — join, plan with what the workers report, assign, wait for Ready — happens inside `run()`, so a
/// SIGTERM while workers load ends it gracefully.
public final class Coordinator: Service, @unchecked Sendable {
    public struct Options: Sendable {
        public var contextLength: Int?
        public var workerThreads: Int
        public var joinTimeout: Double = 30
        /// Wait while another coordinator holds the workers, and take them over when it goes (`serve --standby`).
        public var standby = false
        public var loadTimeout: Double = 600
        /// Steps in the pipeline at once; nil: one per stage, so that every stage can compute at the same time.
        public var microBatches: Int?
        /// Most rows in one step (llama.cpp's n_ubatch): a longer prompt goes in chunks of this many tokens,
        /// which follow each other down the pipeline.
        public var maxBatch = 512
        /// How often a token chooses each expert per layer (a routing trace's `expertUse`): the plan spreads the
        /// hot experts over a split layer's workers and pages the cold ones first. Nil: uniform.
        public var expertUse: [[Double]]?
        /// What every stage's KV caches store keys and values in (sent in each Assign; the plan counts it).
        public var cacheTypes = CacheTypes.f16
        /// Fewer experts per token than the file routes to (sent in each Assign; off by default).
        public var expertSelection = ExpertSelection.file
        /// Deadlines, heartbeat silence and the scheduler's timeouts are measured on it (a test's manual clock).
        public var clock: any Clock = MonotonicClock()
        /// Seconds between looks at the routing of late: the split layers' experts move when a plan for it
        /// lowers their imbalance (`serve --rebalance`; nil: the plan keeps the routing it was made with).
        public var rebalanceEvery: Double?
        /// Measure each worker's round trip after the join (five Hellos each) for the planner: a measurement of
        /// the machine, which a test on a manual clock leaves out.
        public var measureRoundTrips = true
        public init(contextLength: Int? = nil, workerThreads: Int) {
            self.contextLength = contextLength
            self.workerThreads = workerThreads
        }
    }

    public let file: GGUFFile
    public let config: ModelConfig
    public let tokenizer: Tokenizer
    public let contextLength: Int
    let cluster: ClusterFile
    let options: Options
    /// Makes our connections to workers; counts the peers our client endpoint refused.
    let transports: TransportFactory
    let log: @Sendable (String) -> Void
    let membership: Membership
    let assignment: Assignment
    let recovery: Recovery
    let chunks: ModelChunkServer
    /// Generation over the cluster: the transport-free scheduler, driving the pipeline through `executor`.
    public let scheduler: Scheduler
    let executor: ClusterExecutor
    public private(set) var clientAPI: ClientAPI!
    /// Set on shutdown: a start-up still joining or loading gives up at its next look.
    private let stopping = Mutex(false)
    /// The periodic look at the routing (`Options.rebalanceEvery`), cancelled at shutdown.
    private var rebalancer: Task<Void, Never>?
    /// Start-up's end: nil while it runs, then its error or success (read by `started`).
    private let startup = Mutex<Result<Void, CoordinatorError>?>(nil)

    /// `clients`: our listener for `generate`, `status` (made by `transports`, as our connections to workers are).
    /// `figures`: the process's registry, where the scheduler counts (`GET /metrics` exposes it).
    public init(modelPath: String, cluster: ClusterFile, options: Options, clients: Transport,
                transports: TransportFactory, figures: MetricsRegistry = MetricsRegistry(), log: @escaping @Sendable (String) -> Void = { _ in }) throws {
        file = try GGUFFile(path: modelPath)
        config = try ModelConfig(file: file).selecting(options.expertSelection)
        tokenizer = try Tokenizer(file: file)
        contextLength = min(options.contextLength ?? config.contextLength, config.contextLength)
        try options.cacheTypes.check(config)
        var footprint = ModelFootprint(file: file, config: config, context: contextLength, cacheTypes: options.cacheTypes, ubatch: options.maxBatch)
        footprint.expertUse = options.expertUse
        let initial = try Planner.plan(footprint, cluster: cluster)
        self.cluster = cluster
        self.options = options
        self.transports = transports
        self.log = log
        let digest = try ModelDigest.of(file, log: log)
        let members = try Membership(cluster: cluster, transports: transports, clock: options.clock, sha: file.metadataSHA256, dataSHA: digest.bytes,
                                     activity: config.isMoE ? ExpertActivity(layers: config.layerCount, experts: config.expertCount) : nil, log: log)
        membership = members
        executor = ClusterExecutor(links: { members.links }, replies: membership.replies, pipelineDepth: options.microBatches ?? initial.stages.count)
        assignment = Assignment(initial: initial,
                                model: .init(file: file, config: config, sha: file.metadataSHA256, dataSHA: digest.bytes, contextLength: contextLength,
                                             cacheTypes: options.cacheTypes, selection: options.expertSelection, workerThreads: options.workerThreads,
                                             ubatch: options.maxBatch),
                                footprint: footprint, membership: membership, executor: executor, log: log)
        recovery = Recovery(membership: membership, assignment: assignment, cluster: cluster, transports: transports, loadTimeout: options.loadTimeout, log: log)
        chunks = ModelChunkServer(file: file, digest: digest)
        scheduler = Scheduler(executor: executor, tokenizer: tokenizer, contextLength: contextLength, maxBatch: options.maxBatch,
                              clock: options.clock, figures: figures, log: log)
        clientAPI = ClientAPI(clients: clients, scheduler: scheduler, tokenizer: tokenizer, status: { [unowned self] in self.status() },
                              join: { [unowned self] j, role in self.recovery.join(j, from: role, started: self.started) }, log: log)
        membership.startReading(onFetch: { [chunks] msg, link in chunks.serve(msg, to: link) },
                                 onDrain: { [recovery] id, link in recovery.drain(link, request: id) })
    }

    public var modelName: String { file.string("general.name") ?? URL(fileURLWithPath: file.path).lastPathComponent }

    /// The plan in force.
    public var plan: Plan { assignment.plan }
    public var links: [WorkerLink] { membership.links }

    /// What a ServiceGroup runs, in start order: the client API first, so that it stops last — after the
    /// coordinator has stopped the scheduler, which ends every stream with an answer the API still delivers.
    public var services: [any Service] { [clientAPI, self] }

    // MARK: Service

    /// Start-up on a thread of its own (it blocks on replies), then serving until shutdown. A start-up that
    /// fails ends the service with its error; a shutdown during it ends it at the next look.
    public func run() async throws {
        do {
            try await withGracefulShutdownHandler {
                try await self.startUp()
                try? await gracefulShutdown()
            } onGracefulShutdown: {
                self.stopping.withLock { $0 = true }
            }
        } catch where isStopping {
            // Stopped while starting: a shutdown, not a failure.
            log("stopped during start-up: \(error)")
        }
        log("shutting down")
        rebalancer?.cancel()
        scheduler.stop()
        membership.close()
    }

    func startUp() async throws {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
            let t = Thread { [self] in
                let r = Result { () throws(CoordinatorError) in try start() }
                startup.withLock { $0 = r }
                c.resume(with: r.mapError { $0 as Error })
            }
            t.name = "conclave.coordinator.start"
            t.start()
        }
    }

    /// True once start-up has succeeded (the scheduler runs).
    public var started: Bool { startup.withLock { if case .success = $0 { return true } else { return false } } }

    private var isStopping: Bool { stopping.withLock { $0 } }

    /// Hello to every worker, check the answers, assign, wait for Ready. Throws a message naming any worker that
    /// did not answer or does not fit.
    func start() throws(CoordinatorError) {
        log("plan: " + assignment.summary())
        let links = membership.links
        log("waiting for \(links.count) workers: " + links.map { "\($0.worker.name) (\($0.worker.endpoint))" }.joined(separator: ", "))
        var missing: [String] = []
        for (link, answer) in membership.hello(links, timeout: options.joinTimeout, stopping: { self.isStopping }) {
            guard let h = answer else {
                missing.append("\(link.worker.name) (\(link.worker.endpoint)\(link.transport.handshakeProblem.map { ": " + $0 } ?? ""))")
                continue
            }
            if let problem = membership.modelProblem(h, link, path: file.path) { throw CoordinatorError(problem) }
            if h.workerName != link.worker.name {
                log("note: the worker at \(link.worker.endpoint) calls itself '\(h.workerName)'; the cluster file calls it '\(link.worker.name)'")
            }
            let spare = link.worker.role == .spare
            link.info.withLock { $0.hello = h; $0.state = spare ? .spare : .loading }
            log("worker '\(link.worker.name)' joined\(spare ? " as a spare" : ""): \(h.cores) cores, budget \(h.memoryBudget) bytes, \(h.hasModel_p ? "has the model" : "will fetch the model")")
        }
        if isStopping { throw CoordinatorError("the coordinator was stopped while workers were joining") }
        guard missing.isEmpty else {
            throw CoordinatorError("these workers did not answer within \(Int(options.joinTimeout)) s: \(missing.joined(separator: ", ")). Start each with `conclave worker --listen ENDPOINT`, or check the endpoints in the cluster file"
                                   + (transports.authenticates ? "; with CurveZMQ, check that each worker runs with the key the cluster file gives it and with this coordinator's public key" : ""))
        }
        if options.measureRoundTrips { membership.measureRoundTrips() }
        try replanWithReportedBudgets()
        var waiting = false
        while true {
            do {
                let outcome = try assignment.assign(timeout: options.loadTimeout, stopping: { self.isStopping })
                scheduler.maxSequences = outcome.maxSequences
                if waiting { log("standby: the other coordinator is gone; this one holds the workers now") }
                break
            } catch let e as CoordinatorError where e.held {
                guard options.standby else {
                    throw CoordinatorError("\(e.description). Stop that coordinator first, or serve with --standby to wait and take the workers over when it goes")
                }
                if isStopping { throw CoordinatorError("the coordinator was stopped while waiting as a standby") }
                if !waiting { log("standby: \(e.description); waiting to take the workers over when it goes") }
                waiting = true
                usleep(500_000)
            } catch let e as CoordinatorError {
                throw e
            } catch {
                throw CoordinatorError("\(error)")
            }
        }
        executor.onRecover = { [weak self] cause, sequences in
            guard let self else { return .failed(cause) }
            return self.recovery.recover(after: cause, sequences: sequences)
        }
        executor.brokenBecause = { [weak self] in self?.recovery.broken }
        executor.onHeal = { [weak self] cause in self?.recovery.heal(cause) }
        executor.rebalanceWanted = { [weak self] in self?.recovery.rebalanceWanted != nil }
        if let every = options.rebalanceEvery, membership.activity != nil {
            // Routing drifts with what is asked; every so often the split layers' experts follow it.
            let clock = options.clock
            rebalancer = Task.detached { [weak self] in
                while !Task.isCancelled {
                    await clock.sleep(until: clock.now() + every)
                    guard let self, !Task.isCancelled else { return }
                    self.recovery.proposeRebalance()
                }
            }
        }
        scheduler.start()
        log("serving \(modelName) on \(clientAPI.endpoint)")
    }

    /// A worker's own `--memory` is the truth when it is below the cluster file's figure: the plan uses the
    /// smaller of the two, so no worker is assigned more than it will hold. The workers' measured rates and
    /// round trips re-balance expert-parallel layers.
    func replanWithReportedBudgets() throws(CoordinatorError) {
        let links = membership.links
        let workers = links.map { membership.budgeted($0, loopbackOnly: cluster.loopbackOnly) }
        let smaller = zip(links, workers).filter { $0.0.worker.memory != $0.1.memory }.map { "\($0.1.name) \($0.1.memory) bytes (cluster file: \($0.0.worker.memory))" }
        let measured = workers.contains { $0.readRate != nil || $0.roundTrip != nil }
        guard !smaller.isEmpty || measured else { return }
        if !smaller.isEmpty { log("workers report smaller budgets than the cluster file: \(smaller.joined(separator: ", ")); planning with those") }
        if measured {
            log("measured: " + workers.map { w in
                "\(w.name) \(w.readRate.map { String(format: "%.1f GB/s", $0 / 1e9) } ?? "rate unknown"), round trip \(w.roundTrip.map { String(format: "%.3f ms", $0 * 1000) } ?? "unknown")"
            }.joined(separator: "; "))
        }
        do {
            let p = try Planner.plan(assignment.footprint, cluster: cluster.with(workers: workers))
            guard p.stages.count == assignment.plan.stages.count else {
                guard !smaller.isEmpty else { return }  // measurements alone never change the pipeline's shape
                throw CoordinatorError("with the budgets the workers report, the model needs \(p.stages.count) pipeline stages instead of \(assignment.plan.stages.count); correct the cluster file's memory figures")
            }
            assignment.plan = p
            log("plan: " + assignment.summary())
        } catch let e as PlacementError {
            guard !smaller.isEmpty else { return }
            throw CoordinatorError("with the budgets the workers report: \(e)")
        } catch let e as CoordinatorError {
            throw e
        } catch {
            throw CoordinatorError("\(error)")
        }
    }

    // MARK: Health and status

    /// Why the cluster cannot serve now (for GET /health), or nil when every worker is ready.
    public func healthProblem() -> String? {
        guard scheduler.isRunning else { return "the cluster is starting: workers are joining or loading their shards" }
        let planned = Set(assignment.plan.workers.map(\.name))
        if let bad = membership.links.first(where: { planned.contains($0.worker.name) && $0.state != .ready }) {
            return "worker '\(bad.worker.name)' at \(bad.worker.endpoint) is \(bad.state.rawValue)"
        }
        return recovery.broken?.message
    }

    /// The stages' routing counts now and the plan's holder of each expert (nil for a dense model): what
    /// `GET /v1/cluster/experts` answers and /metrics mirrors.
    public func expertActivity() -> (snapshot: ExpertActivity.Snapshot, halfLife: Double, holder: (Int, Int) -> String)? {
        guard let activity = membership.activity else { return nil }
        let plan = assignment.plan
        return (activity.snapshot(now: options.clock.now()), activity.halfLife, plan.holder)
    }

    public func status() -> Conclave_V1_StatusReply {
        var s = Conclave_V1_StatusReply()
        s.model = modelName
        s.workers = membership.links.map { $0.status() }
        // The serving figures, as the catalog names them (the registry also holds the workers' ingested series).
        let catalog = ServingMetrics.catalog.bySeries
        s.metrics = scheduler.figures.samples().filter { sample in
            guard let spec = catalog[MetricSample.seriesName(sample.name, sample.labels)] else { return false }
            return scheduler.drafter != nil || !(spec.statusKey ?? "").hasPrefix("draft.")
        }.map(Conclave_V1_MetricSample.init)
        s.microBatches = UInt32(executor.pipelineDepth)
        s.plan = assignment.summary()
        s.epoch = assignment.epoch
        s.recoveries = recovery.history
        s.refusedPeers = UInt64(transports.refusedPeers)
        s.security = transports.authenticates ? "curve" : "none"
        if let a = expertActivity() { s.heat = [Conclave_V1_LayerHeat](a.snapshot, holder: a.holder) }
        return s
    }
}
