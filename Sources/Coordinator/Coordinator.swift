import Foundation
import Generation
import Kernels
import GGUF
import Model
import Placement
import ServiceLifecycle
import Synchronization
import Telemetry
import Tokenizer
import Wire
import Worker

public struct CoordinatorError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}

/// The coordinator (`conclave serve`): plans where layers and experts live, connects to every worker in the
/// cluster file, checks their Hello, assigns, waits for Ready, then serves clients on the cluster file's
/// coordinator endpoint: Generate requests (run by the `Scheduler`) and StatusQuery (answered at once, even
/// mid-generation). It holds the tokenizer and every sequence's tokens; workers hold weights and KV caches.
public final class Coordinator: Service, @unchecked Sendable {
    public struct Options: Sendable {
        public var contextLength: Int?
        public var workerThreads: Int
        public var joinTimeout: Double = 30
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
        public init(contextLength: Int? = nil, workerThreads: Int) {
            self.contextLength = contextLength
            self.workerThreads = workerThreads
        }
    }

    public let file: GGUFFile
    public let config: ModelConfig
    public let tokenizer: Tokenizer
    /// Made from the cluster file at start, then again from each worker's own budget once all said Hello.
    /// Read by status and health on their threads, replaced by a recovery on the scheduler's: behind a lock.
    public private(set) var plan: Plan {
        get { planState.withLock { $0 } }
        set { planState.withLock { $0 = newValue } }
    }
    private let planState: Mutex<Plan>
    let cluster: ClusterFile
    let footprint: ModelFootprint
    public let contextLength: Int
    let options: Options
    let clients: Transport
    /// Makes our connections to workers; counts the peers our client endpoint refused.
    let transports: TransportFactory
    public let links: [WorkerLink]
    let replies = PendingReplies()
    let log: @Sendable (String) -> Void
    let sha: [UInt8]
    /// Generation over the cluster: the transport-free scheduler, driving the pipeline through `executor`.
    public let scheduler: Scheduler
    let executor: ClusterExecutor
    /// Client requests whose events are still being answered.
    private let answering = Mutex(0)
    /// Model chunks for fetching workers are hashed here, several at once, off the links' read loops.
    private let chunkQueue = DispatchQueue(label: "conclave.coordinator.fetch", attributes: .concurrent)
    /// Every re-plan after a failure, for status.
    private let recoveries = Mutex<[Conclave_V1_Recovery]>([])
    private var readers: [Task<Void, Never>] = []

    /// `clients`: our listener for `generate`, `status` (made by `transports`, as our connections to workers are).
    public init(modelPath: String, cluster: ClusterFile, options: Options, clients: Transport,
                transports: TransportFactory, log: @escaping @Sendable (String) -> Void = { _ in }) throws {
        file = try GGUFFile(path: modelPath)
        config = try ModelConfig(file: file)
        tokenizer = try Tokenizer(file: file)
        contextLength = min(options.contextLength ?? config.contextLength, config.contextLength)
        try options.cacheTypes.check(config)
        var footprint = ModelFootprint(file: file, config: config, context: contextLength, cacheTypes: options.cacheTypes)
        footprint.expertUse = options.expertUse
        self.footprint = footprint
        let initial = try Planner.plan(footprint, cluster: cluster)
        planState = Mutex(initial)
        self.cluster = cluster
        self.options = options
        self.clients = clients
        self.transports = transports
        self.log = log
        sha = file.metadataSHA256
        links = try cluster.workers.map { w in
            do {
                return WorkerLink(worker: w, transport: try transports.connect(w.endpoint))
            } catch {
                throw CoordinatorError("cannot connect to worker '\(w.name)' at \(w.endpoint): \(error)")
            }
        }
        executor = ClusterExecutor(links: links, replies: replies, pipelineDepth: options.microBatches ?? initial.stages.count)
        scheduler = Scheduler(executor: executor, tokenizer: tokenizer, contextLength: contextLength, maxBatch: options.maxBatch, log: log)
        for link in links { readers.append(Task.detached { [weak self] in await self?.read(link) }) }
    }

    deinit { for r in readers { r.cancel() } }

    public var modelName: String { file.string("general.name") ?? URL(fileURLWithPath: file.path).lastPathComponent }

    // MARK: Start-up (blocking: call from a thread of its own, not the cooperative pool)

    /// Hello to every worker, check the answers, assign, wait for Ready. Throws a message naming any worker that
    /// did not answer or does not fit.
    public func start() throws {
        log("plan: " + planSummary())
        log("waiting for \(links.count) workers: " + links.map { "\($0.worker.name) (\($0.worker.endpoint))" }.joined(separator: ", "))
        var missing: [String] = []
        for (link, answer) in hello(links, timeout: options.joinTimeout) {
            guard let h = answer else {
                missing.append("\(link.worker.name) (\(link.worker.endpoint)\(link.transport.handshakeProblem.map { ": " + $0 } ?? ""))")
                continue
            }
            if h.hasModel_p, [UInt8](h.modelMetadataSha256) != sha {
                throw CoordinatorError("worker '\(link.worker.name)' at \(link.worker.endpoint) has a different model file (its metadata hash differs from \(file.path)); give it the same file or none (it then fetches ours)")
            }
            if h.workerName != link.worker.name {
                log("note: the worker at \(link.worker.endpoint) calls itself '\(h.workerName)'; the cluster file calls it '\(link.worker.name)'")
            }
            let spare = link.worker.role == .spare
            link.info.withLock { $0.hello = h; $0.state = spare ? .spare : .loading }
            log("worker '\(link.worker.name)' joined\(spare ? " as a spare" : ""): \(h.cores) cores, budget \(h.memoryBudget) bytes, \(h.hasModel_p ? "has the model" : "will fetch the model")")
        }
        guard missing.isEmpty else {
            throw CoordinatorError("these workers did not answer within \(Int(options.joinTimeout)) s: \(missing.joined(separator: ", ")). Start each with `conclave worker --listen ENDPOINT`, or check the endpoints in the cluster file"
                                   + (transports.authenticates ? "; with CurveZMQ, check that each worker runs with the key the cluster file gives it and with this coordinator's public key" : ""))
        }
        measureRoundTrips()
        try replanWithReportedBudgets()

        try assignPlan(timeout: options.loadTimeout)
        executor.onRecover = { [weak self] cause, sequences in
            guard let self else { return cause }
            return self.recover(after: cause, sequences: sequences)
        }
        scheduler.start()
        log("serving \(modelName) on \(clients.endpoint)")
    }

    /// Hello to each of `links` at once; each one's answer, or nil when none came within `timeout` seconds (or
    /// it answered with something else).
    func hello(_ links: [WorkerLink], timeout: Double) -> [(WorkerLink, Conclave_V1_Hello?)] {
        let asked = links.map { link -> (WorkerLink, UInt64) in
            let id = replies.register()
            var e = Envelope()
            e.requestID = id
            e.hello = Conclave_V1_Hello()
            link.send(WireMessage.make(e))
            return (link, id)
        }
        let deadline = KernelBench.now() + timeout
        return asked.map { link, id in
            guard let reply = try? replies.wait(id, timeout: max(0.01, deadline - KernelBench.now()), from: link.worker.endpoint),
                  case .hello(let h) = reply.envelope.kind else { return (link, nil) }
            return (link, h)
        }
    }

    /// The worker as the plan sees it: its own budget when it reported a smaller one than the cluster file's,
    /// its measured read rate and round trip.
    func budgeted(_ link: WorkerLink) -> ClusterFile.Worker {
        let (hello, roundTrip) = link.info.withLock { ($0.hello, $0.roundTrip) }
        let reported = Int(clamping: hello?.memoryBudget ?? 0)
        var w = reported > 0 && reported < link.worker.memory ? link.worker.with(memory: reported) : link.worker
        // Workers that share one host share its memory bus, and they measured at the same moment, each slowing
        // the others: their rates say nothing about each other, so a loopback cluster splits by `speed:` alone.
        if !cluster.loopbackOnly, let rate = hello?.readBytesPerSecond, rate.isFinite, rate > 0 { w.readRate = rate }
        w.roundTrip = roundTrip
        return w
    }

    /// Times a few Hellos to each worker that joined, one after another, and keeps the shortest: an expert call
    /// to that worker costs about this on top of its compute, which the planner weighs against its rate.
    func measureRoundTrips(probes: Int = 5) {
        for link in links where link.info.withLock({ $0.hello != nil }) {
            var best = Double.infinity
            for _ in 0..<probes {
                let id = replies.register()
                var e = Envelope()
                e.requestID = id
                e.hello = Conclave_V1_Hello()
                let t0 = KernelBench.now()
                link.send(WireMessage.make(e))
                guard (try? replies.wait(id, timeout: 10, from: link.worker.endpoint)) != nil else { break }
                best = min(best, KernelBench.now() - t0)
            }
            if best.isFinite { link.info.withLock { $0.roundTrip = best } }
        }
    }

    /// A worker's own `--memory` is the truth when it is below the cluster file's figure: the plan uses the
    /// smaller of the two, so no worker is assigned more than it will hold. The workers' measured rates and
    /// round trips re-balance expert-parallel layers.
    func replanWithReportedBudgets() throws {
        let workers = links.map(budgeted)
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
            let p = try Planner.plan(footprint, cluster: ClusterFile(coordinator: cluster.coordinator, workers: workers))
            guard p.stages.count == plan.stages.count else {
                guard !smaller.isEmpty else { return }  // measurements alone never change the pipeline's shape
                throw CoordinatorError("with the budgets the workers report, the model needs \(p.stages.count) pipeline stages instead of \(plan.stages.count); correct the cluster file's memory figures")
            }
            plan = p
            log("plan: " + planSummary())
        } catch let e as PlacementError {
            guard !smaller.isEmpty else { return }
            throw CoordinatorError("with the budgets the workers report: \(e)")
        }
    }

    /// What worker `i` holds and whom it talks to.
    func assignment(for i: Int) -> Conclave_V1_Assign {
        let plan = self.plan
        var a = Conclave_V1_Assign()
        a.modelMetadataSha256 = Data(sha)
        a.contextLength = UInt32(contextLength)
        a.cacheTypeK = options.cacheTypes.key.name.lowercased()
        a.cacheTypeV = options.cacheTypes.value.name.lowercased()
        a.modelBytes = UInt64(file.fileSize)
        a.threads = UInt32(options.workerThreads)
        let w = plan.workers[i]
        if let k = plan.stages.firstIndex(where: { $0.worker == w.name }) {
            let s = plan.stages[k]
            if k > 0 { a.previousStage = plan.stages[k - 1].worker }
            a.firstLayer = UInt32(s.layers.lowerBound)
            a.endLayer = UInt32(s.layers.upperBound)
            if k + 1 < plan.stages.count, let next = plan.workers.first(where: { $0.name == plan.stages[k + 1].worker }) {
                a.nextStageEndpoint = next.endpoint
            }
            var remote: [Int: [Int: [UInt32]]] = [:]  // owner → layer → experts
            for l in s.layers where l < plan.experts.count {
                for (e, owner) in plan.experts[l].enumerated() where owner != i { remote[owner, default: [:]][l, default: []].append(UInt32(e)) }
            }
            for owner in remote.keys.sorted() {
                var r = Conclave_V1_RemoteExperts()
                r.endpoint = plan.workers[owner].endpoint
                r.experts = remote[owner]!.keys.sorted().map { l in
                    var set = Conclave_V1_ExpertSet()
                    set.layer = UInt32(l)
                    set.experts = remote[owner]![l]!
                    return set
                }
                a.remote.append(r)
            }
        }
        a.experts = Self.wireSets(plan.experts(of: i, paged: false))
        a.paged = Self.wireSets(plan.experts(of: i, paged: true))
        a.slots = UInt32(plan.slots[i])
        // With CurveZMQ the worker admits exactly the plan's workers, and knows each endpoint's key.
        a.peers = plan.workers.compactMap { w in
            w.key.map { key in
                var p = Conclave_V1_Peer()
                p.name = w.name
                p.endpoint = w.endpoint
                p.publicKey = key.z85
                return p
            }
        }
        return a
    }

    static func wireSets(_ pairs: [(layer: Int, expert: Int)]) -> [Conclave_V1_ExpertSet] {
        var held: [Int: [UInt32]] = [:]
        for (l, e) in pairs { held[l, default: []].append(UInt32(e)) }
        return held.keys.sorted().map { l in
            var set = Conclave_V1_ExpertSet()
            set.layer = UInt32(l)
            set.experts = held[l]!
            return set
        }
    }

    func planSummary() -> String {
        let plan = self.plan
        return plan.workers.enumerated().map { i, w in
            let layers = plan.stages.first { $0.worker == w.name }.map { "layers \($0.layers.lowerBound)..<\($0.layers.upperBound)" } ?? "no layers"
            let paged = plan.experts(of: i, paged: true).count
            return "\(w.name): \(layers), \(plan.experts(of: i).count) experts" + (paged > 0 ? " (\(paged) paged through \(plan.slots[i]) slots)" : "")
        }.joined(separator: "; ")
    }

    /// Sends every worker of the plan its Assign under a new epoch and waits for each Ready; the first stage and
    /// the sequences every stage has room for then come from this plan. A worker that goes down meanwhile, or
    /// does not load within `timeout` seconds, fails it. Returns the workers that loaded weights (the others
    /// held this plan's shard already).
    @discardableResult
    func assignPlan(timeout: Double) throws -> [String] {
        let plan = self.plan
        let epoch = executor.nextEpoch()
        var assigns: [(WorkerLink, PendingReplies.Waiter)] = []
        for (i, w) in plan.workers.enumerated() {
            guard let link = links.first(where: { $0.worker.name == w.name }) else { continue }
            let a = assignment(for: i)
            link.info.withLock {
                $0.layers = Int(a.firstLayer)..<Int(a.endLayer)
                $0.experts = (a.experts + a.paged).reduce(0) { $0 + $1.experts.count }
                $0.state = .loading
            }
            let waiter = replies.waiter()
            var e = Envelope()
            e.requestID = waiter.id
            e.epoch = epoch
            e.assign = a
            link.send(WireMessage.make(e))
            assigns.append((link, waiter))
        }
        // Workers the plan leaves out hold nothing of it.
        for link in links where !plan.workers.contains(where: { $0.name == link.worker.name }) {
            link.info.withLock { $0.layers = 0..<0; $0.experts = 0 }
        }
        var maxSequences = Int.max
        var reloaded: [String] = []
        for (link, waiter) in assigns {
            let deadline = KernelBench.now() + timeout
            var reply: WireMessage?
            do {
                while reply == nil {
                    reply = try waiter.poll(timeout: 0.5)
                    if reply == nil, link.state == .down || KernelBench.now() > deadline {
                        throw CoordinatorError(link.state == .down ? "it stopped answering while loading" : "no Ready within \(Int(timeout)) s")
                    }
                }
            } catch {
                for (_, other) in assigns { replies.cancel(other.id) }
                throw CoordinatorError("worker '\(link.worker.name)' failed to load its shard: \(error)")
            }
            guard case .ready(let r) = reply!.envelope.kind else { throw CoordinatorError("worker '\(link.worker.name)' answered Assign with something else") }
            link.info.withLock { $0.state = .ready; $0.residentBytes = r.residentBytes }
            if !r.keptWeights { reloaded.append(link.worker.name) }
            log("worker '\(link.worker.name)' ready\(r.keptWeights ? " (kept its weights)" : ""): \(r.residentBytes) bytes resident" + (r.maxSequences > 0 ? ", KV for \(r.maxSequences) sequence\(r.maxSequences == 1 ? "" : "s")" : ""))
            if r.maxSequences > 0 { maxSequences = min(maxSequences, Int(r.maxSequences)) }
        }
        scheduler.maxSequences = maxSequences
        executor.setPlan(first: plan.stages.first.flatMap { s in links.first { $0.worker.name == s.worker } },
                         workers: Set(plan.workers.map(\.name)))
        return reloaded
    }

    /// After a failure (a worker of the plan down, a step lost): plans again onto the workers that answer — those
    /// still ready, the spares, and any down one that was restarted (it answers a Hello again) — and assigns
    /// the new plan. Runs on the scheduler's thread, which replays every sequence after it. Returns why the
    /// cluster cannot go on, or nil.
    func recover(after cause: GenerationError, sequences: Int) -> GenerationError? {
        let t0 = KernelBench.now()
        var record = Conclave_V1_Recovery()
        record.cause = cause.message
        record.sequencesReplayed = UInt32(sequences)
        defer {
            record.seconds = KernelBench.now() - t0
            record.epoch = executor.epoch
            record.plan = planSummary()
            recoveries.withLock { $0.append(record) }
        }
        log("re-planning: \(cause.message)")
        // Ask everyone not known to be well who they are; a restarted worker answers (a live one within
        // milliseconds: a second is plenty on a LAN).
        var answered: Set<String> = []
        for (link, answer) in hello(links.filter { $0.state != .ready }, timeout: 1) {
            guard let h = answer, !h.hasModel_p || [UInt8](h.modelMetadataSha256) == sha else { continue }
            link.info.withLock { $0.hello = h; if $0.state == .down { $0.state = .joining } }
            link.heard()
            answered.insert(link.worker.name)
        }
        let usable = links.filter { $0.state == .ready || answered.contains($0.worker.name) }
        let left = usable.map { link in link.worker.role == .spare ? budgeted(link).with(role: .any) : budgeted(link) }
        let gone = links.filter { link in !usable.contains { $0 === link } }.map(\.worker.name)
        do {
            // The same placement when every lost shard has a taker (a spare, or the worker restarted): only that
            // shard loads. Otherwise a plan from scratch over what is left.
            if let same = plan.keeping(on: left, expertBytes: footprint.expertBytes) {
                let moved = plan.workers.map(\.name).filter { n in !same.workers.contains { $0.name == n } }
                plan = same
                log("keeping the placement\(moved.isEmpty ? "" : " (the shards of \(moved.joined(separator: ", ")) taken over)"): " + planSummary())
            } else {
                plan = try Planner.plan(footprint, cluster: ClusterFile(coordinator: cluster.coordinator, workers: left, coordinatorKey: cluster.coordinatorKey, clientKeys: cluster.clientKeys))
                log("new plan without \(gone.joined(separator: ", ")): " + planSummary())
            }
            record.reloaded = try assignPlan(timeout: options.loadTimeout)
        } catch {
            let e = GenerationError(.unavailable, "the cluster can no longer serve the model without \(gone.joined(separator: ", ")): \(error)")
            log(e.message)
            return e
        }
        record.recovered = true
        log("recovered in \(String(format: "%.2f", KernelBench.now() - t0)) s (plan \(executor.epoch)); replaying \(sequences) sequence\(sequences == 1 ? "" : "s")")
        return nil
    }

    // MARK: Serving

    public func run() async throws {
        await withGracefulShutdownHandler {
            await self.serveClients()
        } onGracefulShutdown: {
            self.log("shutting down")
            self.scheduler.stop()
            // The scheduler has ended every stream; let their last answers reach the clients (2 s at most).
            let deadline = KernelBench.now() + 2
            while self.answering.withLock({ $0 }) > 0 && KernelBench.now() < deadline { usleep(5_000) }
            self.clients.close()
        }
        for l in links { l.transport.close() }
    }

    /// Client requests until the client socket closes.
    public func serveClients() async {
        for await frames in clients.messages {
            let msg: WireMessage
            do {
                msg = try WireMessage.decode(frames.parts)
            } catch {
                let id = (try? Envelope(serializedBytes: frames.parts.first ?? Data()))?.requestID ?? 0
                reply(frames.peer, WireMessage.errorReply(to: id, error))
                continue
            }
            switch msg.envelope.kind {
            case .statusQuery:
                var e = Envelope()
                e.requestID = msg.envelope.requestID
                e.statusReply = status()
                reply(frames.peer, WireMessage.make(e))
            case .generate(let g):
                generate(g, client: frames.peer, requestID: msg.envelope.requestID)
            default:
                reply(frames.peer, WireMessage.errorReply(to: msg.envelope.requestID, WireError(.malformed, "the coordinator takes Generate and StatusQuery from clients")))
            }
        }
    }

    /// A client's Generate: tokenized here, run by the scheduler, each event answered as a TokenOut (an Error
    /// when it fails, with the failure's class as its code).
    func generate(_ g: Conclave_V1_Generate, client: Data?, requestID: UInt64) {
        let request = GenerationRequest(prompt: tokenizer.encode(g.prompt), maxTokens: Int(g.maxTokens), stop: g.stop,
                                        sampling: g.hasSampling ? SamplingParams(g.sampling) : SamplingParams(),
                                        contextLength: g.contextLength > 0 ? Int(g.contextLength) : nil)
        let (sequence, events) = scheduler.submit(request)
        answering.withLock { $0 += 1 }
        Task.detached { [self] in
            defer { answering.withLock { $0 -= 1 } }
            do {
                for try await event in events {
                    var out = Conclave_V1_TokenOut()
                    out.sequences = [sequence]
                    switch event {
                    case .token(let t, let text, let lp):
                        if let t { out.tokens = [t] }
                        out.text = Data(text.utf8)
                        if let lp, let l = lp.logprob {
                            out.logprobs = [l]
                            var top = Conclave_V1_TopLogprobs()
                            top.tokens = lp.top.map(\.token)
                            top.logprobs = lp.top.map(\.logprob)
                            out.top = [top]
                        }
                    case .finished(let reason, let u):
                        out.done = true
                        out.finishReason = reason.rawValue
                        out.promptTokens = UInt32(u.promptTokens)
                        out.generatedTokens = UInt32(u.completionTokens)
                        out.prefillTokS = u.prefillTokensPerSecond
                        out.decodeTokS = u.decodeTokensPerSecond
                    }
                    var e = Envelope()
                    e.requestID = requestID
                    e.tokenOut = out
                    reply(client, WireMessage.make(e))
                }
            } catch let e as GenerationError {
                reply(client, WireMessage.errorReply(to: requestID, WireError(generation: e)))
            } catch {
                reply(client, WireMessage.errorReply(to: requestID, WireError(.internalError, "generation ended: \(error)")))
            }
        }
    }

    func reply(_ peer: Data?, _ m: WireMessage) {
        guard let parts = try? m.encode() else { return }
        clients.send(Frames(peer: peer, parts: parts))
    }

    /// Why the cluster cannot serve now (for GET /health), or nil when every worker is ready.
    public func healthProblem() -> String? {
        guard scheduler.isRunning else { return "the cluster is starting: workers are joining or loading their shards" }
        let planned = Set(plan.workers.map(\.name))
        if let bad = links.first(where: { planned.contains($0.worker.name) && $0.state != .ready }) {
            return "worker '\(bad.worker.name)' at \(bad.worker.endpoint) is \(bad.state.rawValue)"
        }
        return nil
    }

    public func status() -> Conclave_V1_StatusReply {
        var s = Conclave_V1_StatusReply()
        s.model = modelName
        s.workers = links.map { $0.status() }
        let stats = scheduler.stats()
        s.sequences = UInt32(stats.running)
        s.tokensGenerated = stats.tokens
        s.requestsFailed = UInt32(stats.failed)
        s.microBatches = UInt32(executor.pipelineDepth)
        s.peakInFlight = UInt32(stats.peakInFlight)
        s.plan = planSummary()
        s.epoch = executor.epoch
        s.recoveries = recoveries.withLock { $0 }
        s.refusedPeers = UInt64(transports.refusedPeers)
        s.security = transports.authenticates ? "curve" : "none"
        if scheduler.drafter != nil {
            s.draft.proposed = UInt64(stats.draft.proposed)
            s.draft.accepted = UInt64(stats.draft.accepted)
            s.draft.passes = UInt64(stats.draft.passes)
        }
        return s
    }

    // MARK: Worker messages

    private func read(_ link: WorkerLink) async {
        for await frames in link.transport.messages {
            let msg: WireMessage
            do {
                msg = try WireMessage.decode(frames.parts)
            } catch {
                log("unreadable message from worker '\(link.worker.name)': \(error)")
                continue
            }
            link.heard()
            switch msg.envelope.kind {
            case .heartbeat(let hb):
                do {
                    let checked = try MetricSample.checked(hb.metrics, catalog: WorkerMetric.bySeries)
                    link.info.withLock { $0.metrics = checked }
                } catch {
                    log("worker '\(link.worker.name)' sent a heartbeat with bad figures (kept the last good ones): \(error)")
                }
            case .fetchModel(let f):
                serveChunk(f, id: msg.envelope.requestID, to: link)
            default:
                if !replies.resolve(msg), case .error(let e) = msg.envelope.kind {
                    log("worker '\(link.worker.name)': \(e.message)")
                }
            }
        }
    }

    /// A chunk of our model file for a worker that has none. Hashed off the link's read loop, so that the
    /// worker's pipelined requests are served while the next one is read.
    private func serveChunk(_ f: Conclave_V1_FetchModel, id: UInt64, to link: WorkerLink) {
        let file = self.file
        chunkQueue.async { link.send(ModelFetch.chunk(f, id: id, of: file)) }
    }
}
