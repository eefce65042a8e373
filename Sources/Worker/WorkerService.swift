#if canImport(Glibc)
import Glibc
#endif
import Foundation
import CurveKeys
import Runtime
import Kernels
import GGUF
import Model
import ServiceLifecycle
import Synchronization
import Wire

/// The worker daemon (`conclave worker`): binds a ROUTER where the coordinator, the previous stage and other
/// workers' expert calls all arrive. The coordinator opens with Hello; we answer with ours, load what Assign
/// names (from our own copy of the model, or fetched from the coordinator and cached), answer Ready, then serve
/// stage inputs (on the stage queue) and expert calls (on the expert queue, so a stage waiting on remote experts
/// never blocks the experts others ask of us), and heartbeat every second. Bad messages get an Error reply; the
/// loop keeps serving. SIGTERM drains the queues and exits.
public final class WorkerService: Service, @unchecked Sendable {
    public struct Options: Sendable {
        public var name: String
        /// Where others reach us (the cluster file's endpoint for this worker).
        public var endpoint: String
        public var modelPath: String?
        public var memory: Int
        public var threads: Int
        public var cacheDirectory: String
        /// Largest message decoded; a larger one gets a `tooLarge` Error reply. (The socket's ZMQ_MAXMSGSIZE sits a
        /// little above this, so that what is far larger is cut off by libzmq before it is even buffered.)
        public var maxMessageBytes = 256 << 20
        /// Bytes of weights this host streams per second (measured at start; Hello reports it, nil: unmeasured).
        public var readRate: Double?
        /// Heartbeats, step and call timings and expert-call timeouts run on it (a test's manual clock).
        public var clock: any Clock = MonotonicClock()
        /// Seconds between heartbeats.
        public var heartbeatPeriod = 1.0
        /// On a graceful stop, first ask the coordinator to plan without this worker and wait (serving) until it
        /// is released, at most `drainTimeout` seconds (`worker --drain`).
        public var drainOnStop = false
        public var drainTimeout = 300.0
        /// The coordinator's client endpoint to ask to join at start (`worker --join`; nil: the coordinator's
        /// cluster file lists this worker), and the role asked for ("any", "stage", "experts" or "spare").
        public var join: String?
        public var joinRole = "any"
        public init(name: String, endpoint: String, modelPath: String?, memory: Int, threads: Int, cacheDirectory: String) {
            self.name = name
            self.endpoint = endpoint
            self.modelPath = modelPath
            self.memory = memory
            self.threads = threads
            self.cacheDirectory = cacheDirectory
        }
    }

    public enum State: String, Sendable { case joining, loading, ready }

    let options: Options
    let router: Transport
    let transports: TransportFactory
    let log: @Sendable (String) -> Void
    public let metrics = WorkerMetrics()

    private let stageQueue = DispatchQueue(label: "conclave.worker.stage")
    /// Expert calls, on a thread that polls between calls: they come one per layer, a few hundred microseconds
    /// apart, and a sleeping worker answers each one late (see `PollingQueue`).
    private let expertQueue = PollingQueue()
    private let controlQueue = DispatchQueue(label: "conclave.worker.control")
    private let replies: PendingReplies
    private let errorThrottle: ErrorThrottle

    struct Shared {
        var coordinator: Data?
        /// The plan of our last Assign: stage input of another plan is refused.
        var epoch: UInt64 = 0
        /// The worker whose stage feeds ours in that plan (nil: none, or not told): with authenticated peers,
        /// the one peer whose StageInput we take.
        var previousStage: String?
        var state: State = .joining
        var shard: WorkerShard?
        /// The shard of the plan before, between an Assign and the load it queues (which takes it: see `load`).
        var retiring: WorkerShard?
        /// The model this worker fetched last, kept mapped: a later Assign of the same model (a re-plan) reuses
        /// its pages, so experts and matrices packed before are not packed or faulted in again — only what moved
        /// to this worker loads.
        var fetched: Model?
    }
    private let shared = Mutex(Shared())
    /// A model file with its metadata hash and the digest of its tensor data; for a shard-only fetch, the cache
    /// that holds the pieces fetched so far.
    struct Model {
        let file: GGUFFile
        let sha: [UInt8]
        let data: [UInt8]
        var shard: ShardCache? = nil
    }
    /// The model this worker was started with (`--model`).
    /// (Its mapping is made anew when a re-plan takes weights away: see `load`.)
    private let ownModel: Mutex<Model?>

    /// `router` is our listener (made by `transports`, or the in-memory twin's); `transports` makes our
    /// connections to other workers and says whether peers are authenticated.
    public init(options: Options, router: Transport, transports: TransportFactory,
                log: @escaping @Sendable (String) -> Void = { _ in }) throws {
        self.options = options
        self.router = router
        self.transports = transports
        self.log = log
        replies = PendingReplies(clock: options.clock)
        errorThrottle = ErrorThrottle(clock: options.clock)
        if let path = options.modelPath {
            let f = try GGUFFile(path: path)
            ownModel = Mutex(Model(file: f, sha: f.metadataSHA256, data: try ModelDigest.of(f, log: log).bytes))
        } else {
            ownModel = Mutex(nil)
        }
    }

    public var state: State { shared.withLock { $0.state } }

    // MARK: Service

    public func run() async throws {
        let (clock, period) = (options.clock, options.heartbeatPeriod)
        let heartbeat = Task.detached { [weak self] in
            var next = clock.now() + period
            while !Task.isCancelled {
                await clock.sleep(until: next)
                next += period
                self?.sendHeartbeat()
                if let line = self?.errorThrottle.flush() { self?.log(line) }
            }
        }
        defer { heartbeat.cancel() }
        let stopped = Atomic<Bool>(false)
        let refused = Mutex<String?>(nil)
        if let endpoint = options.join {
            let t = Thread { [self] in
                guard let reason = joinCluster(at: endpoint, stopping: { stopped.load(ordering: .relaxed) }) else { return }
                log("the coordinator at \(endpoint) refused to let this worker join: \(reason)")
                refused.withLock { $0 = reason }
                drain()
            }
            t.name = "conclave.worker.join"
            t.start()
        }
        await withGracefulShutdownHandler {
            await self.serve()
        } onGracefulShutdown: {
            stopped.store(true, ordering: .relaxed)
            if self.options.drainOnStop { self.leave() }
            self.drain()
        }
        stopped.store(true, ordering: .relaxed)
        if let reason = refused.withLock({ $0 }) { throw WireError(.malformed, "not joined: \(reason)") }
    }

    /// Asks the coordinator to move this worker's shard to the others (Drain) and waits, serving all the while,
    /// until the plan in force no longer uses it; a refusal (the others cannot hold the model) or no answer is
    /// logged, and the worker stops anyway.
    public func leave() {
        guard let peer = shared.withLock({ $0.shard != nil ? $0.coordinator : nil }) else { return }
        log("leaving the cluster: asking the coordinator to move this worker's shard to the others")
        let id = replies.register()
        var e = Envelope()
        e.requestID = id
        e.drain = Conclave_V1_Drain()
        reply(peer, WireMessage.make(e))
        do {
            let answer = try replies.wait(id, timeout: options.drainTimeout, from: "the coordinator")
            if case .drain = answer.envelope.kind {
                log("released: the coordinator's plan no longer uses this worker")
            } else {
                log("the coordinator answered the drain with something else; stopping anyway")
            }
        } catch {
            log("not released (\(error)); stopping anyway")
        }
    }

    /// Finishes the work already queued, then closes the socket (which ends `serve`). Work still running after
    /// 2 s is waiting on a peer (an experts worker that stopped first, as a whole cluster does on SIGTERM): its
    /// calls are ended, so shutdown takes seconds, not an expert call's timeout.
    public func drain() {
        log("draining: finishing queued work")
        let idle = DispatchGroup()
        stageQueue.async(group: idle) {}
        idle.enter()
        expertQueue.async { idle.leave() }
        if idle.wait(timeout: .now() + 2) == .timedOut {
            log("draining: work still waits on other workers after 2 s; ending its calls")
            shared.withLock { $0.shard }?.abandon()
            idle.wait()
        }
        router.close()
        expertQueue.stop()
    }

    /// Messages are dispatched on the socket's own thread as they arrive (a hop to a task would cost an expert
    /// call tens of microseconds each way); `dispatch` only checks, answers at once or queues the work.
    public func serve() async {
        router.receive { [weak self] frames in self?.dispatch(frames) }
        // Whatever arrived before the receiver was set waits here; after that the stream only ends.
        for await frames in router.messages { dispatch(frames) }
    }

    // MARK: Messages

    private func reply(_ peer: Data?, _ msg: WireMessage) {
        guard let parts = try? msg.encode() else { return }
        router.send(Frames(peer: peer, parts: parts))
    }

    private func replyError(_ peer: Data?, id: UInt64, _ e: Error) {
        let we = e as? WireError ?? WireError(.internalError, "\(e)")
        let toCoordinator = peer != nil && peer == shared.withLock({ $0.coordinator })
        if !toCoordinator {
            let (allowed, closed) = errorThrottle.admit()
            if let closed { log(closed) }
            guard allowed else { return }
        }
        log("error for request \(id): \(we.message)")
        reply(peer, WireMessage.errorReply(to: id, we))
    }

    /// Waits until the work queued so far (loads, steps, expert calls) is done: for harnesses that feed
    /// `dispatch` directly (the wire fuzzer) and must not let queues grow.
    public func quiesce() {
        controlQueue.sync {}
        stageQueue.sync {}
        expertQueue.sync()
    }

    /// Handles one message as the socket delivers it (public for the wire fuzzer, which feeds it directly).
    public func dispatch(_ frames: Frames) {
        let msg: WireMessage
        do {
            msg = try WireMessage.decode(frames.parts, maxBytes: options.maxMessageBytes)
        } catch {
            let id = (try? Envelope(serializedBytes: frames.parts.first ?? Data()))?.requestID ?? 0
            replyError(frames.peer, id: id, error)
            return
        }
        let id = msg.envelope.requestID, peer = frames.peer
        if let refusal = refusal(msg.envelope, from: frames.role) { return replyError(peer, id: id, refusal) }
        switch msg.envelope.kind {
        case .hello:
            // Anyone may ask who we are; only an Assign makes a peer our coordinator.
            var e = Envelope()
            e.requestID = id
            e.hello = hello()
            reply(peer, WireMessage.make(e))
        case .assign(let a):
            if let refusal = adopt(coordinator: peer) { return replyError(peer, id: id, refusal) }
            let peers = a.peers.compactMap { p in (try? CurveKey(z85: p.publicKey)).map { TrustedPeer(name: p.name, endpoint: p.endpoint, key: $0) } }
            transports.trust(workers: peers)
            // A re-plan: input of the old plan is refused from now on, the old shard's calls to other workers end
            // at once (its queue is free for the new plan's steps), and it is let go before the new one loads, so
            // the two never sit in memory together past the budget.
            let old = shared.withLock { s -> WorkerShard? in
                defer { s.shard = nil }
                s.epoch = msg.envelope.epoch
                s.previousStage = a.previousStage.isEmpty ? nil : a.previousStage
                // (An Assign whose load has not started yet leaves the shard before it as the one to keep from.)
                if let current = s.shard { s.retiring = current }
                return s.shard
            }
            old?.abandon()
            controlQueue.async { self.load(a, id: id, peer: peer) }
        case .stageInput:
            // The first stage's input comes from the coordinator alone (it opens every sequence); later stages'
            // from the stage before, which only CurveZMQ can tell apart from anyone else.
            let (first, coordinator, epoch) = shared.withLock { ($0.shard.map { !$0.layers.isEmpty && $0.layers.lowerBound == 0 } ?? false, $0.coordinator, $0.epoch) }
            if first, peer != coordinator {
                return replyError(peer, id: id, WireError(.malformed, "a StageInput to the first stage comes from the coordinator only"))
            }
            guard msg.envelope.epoch == epoch else {
                return replyError(peer, id: id, WireError(.unavailable, "a StageInput of plan \(msg.envelope.epoch) reached a worker of plan \(epoch) (a step from before a re-plan); dropped"))
            }
            stageQueue.async { self.runStep(msg, peer: peer) }
        case .expertCall:
            expertQueue.async { self.runExpertCall(msg, peer: peer) }
        case .modelChunk, .pieceTable, .drain, .error:
            if !replies.resolve(msg) { log("dropped a reply nobody waits for (request \(id))") }
        default:
            replyError(peer, id: id, WireError(.malformed, "a worker does not take \(kindName(msg.envelope))"))
        }
    }

    /// What an authenticated peer's role does not allow (nil: allowed, or peers are not authenticated). The ZAP
    /// handler admitted only the coordinator and the plan's workers; among them only the coordinator may
    /// Assign or send model chunks, only the stage before ours may feed our stage, and clients get nothing.
    func refusal(_ e: Envelope, from role: PeerRole?) -> WireError? {
        guard transports.authenticates else { return nil }
        guard let role else { return WireError(.malformed, "an unauthenticated message reached an authenticated endpoint") }
        let previous = shared.withLock { $0.previousStage }
        switch (e.kind, role) {
        case (.hello, .coordinator), (.hello, .worker): return nil
        case (.assign, .coordinator), (.modelChunk, .coordinator), (.pieceTable, .coordinator), (.drain, .coordinator), (.error, .coordinator): return nil
        case (.stageInput, .coordinator): return nil
        case (.stageInput, .worker(let name)):
            return name == previous ? nil : WireError(.malformed, "a StageInput from worker '\(name)', which does not feed this stage in the plan in force")
        case (.expertCall, .worker), (.expertCall, .coordinator): return nil
        default: return WireError(.malformed, "\(role) may not send \(kindName(e)) to a worker")
        }
    }

    func hello() -> Conclave_V1_Hello {
        var h = Conclave_V1_Hello()
        h.workerName = options.name
        h.listenEndpoint = options.endpoint
        h.memoryBudget = UInt64(options.memory)
        h.cores = UInt32(ProcessInfo.processInfo.activeProcessorCount)
        h.readBytesPerSecond = options.readRate ?? 0
        if let m = ownModel.withLock({ $0 }) ?? shared.withLock({ $0.fetched }) {
            h.hasModel_p = true
            h.modelMetadataSha256 = Data(m.sha)
            h.modelDataSha256 = Data(m.data)
        }
        return h
    }

    /// Makes `peer` this worker's coordinator, unless another coordinator assigned it and is still connected:
    /// a stray or hostile peer cannot take a working worker away from its cluster. A restarted or standby
    /// coordinator takes over as soon as the old one's connection has closed (ROUTER_MANDATORY then refuses the
    /// probe): at once after a crash, within the ZMTP heartbeat timeout when its host vanished.
    private func adopt(coordinator peer: Data?) -> WireError? {
        let (current, shard) = shared.withLock { ($0.coordinator, $0.shard) }
        if let current, current != peer {
            if router.sendReporting(Frames(peer: current, parts: (try? heartbeat(shard).encode()) ?? [])) {
                return WireError(.held, "worker '\(options.name)' is assigned by another coordinator, which is still connected (a dead one is noticed within \(ZMQSocket.heartbeatTimeout / 1000) s)")
            }
            log("the coordinator that assigned this worker is gone; a new one takes over")
        }
        shared.withLock { $0.coordinator = peer; $0.state = .loading }
        return nil
    }

    private func sendHeartbeat() {
        let (peer, shard) = shared.withLock { ($0.coordinator, $0.shard) }
        guard let peer else { return }
        reply(peer, heartbeat(shard))
    }

    private func heartbeat(_ shard: WorkerShard?) -> WireMessage {
        var hb = Conclave_V1_Heartbeat()
        hb.metrics = metrics.samples(resident: shard?.residentBytes ?? 0, expertCallBytes: shard?.expertCallBytes ?? 0,
                                     offload: shard?.offload, refusedPeers: transports.refusedPeers,
                                     remote: shard?.remoteTiming, grammar: shard?.grammarFigures,
                                     kept: shard.flatMap { s in s.layers.isEmpty ? nil : (s.keptFigures.entries, s.keptFigures.positions, s.room.positions) },
                                     expertReads: shard?.stage?.heat?.reads)
                .map(Conclave_V1_MetricSample.init)
        if let heat = shard?.stage?.heat {
            let deltas = heat.takeDeltas()
            if !deltas.isEmpty { hb.expertCounts = Conclave_V1_ExpertCounts(heat: heat, deltas: deltas) }
        }
        var e = Envelope()
        e.heartbeat = hb
        return WireMessage.make(e)
    }

    // MARK: Work (on the queues)

    /// Loads the Assign's shard; what the shard of the plan before holds is kept when the new plan gives this
    /// worker the same weights. A plan that takes weights away from it (a worker joined, or the placement moved)
    /// would leave their pages in the old mapping — packed weights are private copies — so the old shard is let
    /// go first and the file mapped anew: the worker stays within its budget. (Gaining only, it keeps the mapping
    /// and what it packed.)
    private func load(_ a: Conclave_V1_Assign, id: UInt64, peer: Data?) {
        var previous = shared.withLock { s -> WorkerShard? in
            defer { s.retiring = nil }
            return s.retiring
        }
        do {
            var file = try modelFile(for: a, peer: peer)
            if let old = previous?.assign, try Self.drops(old, for: a, in: file) {
                previous = nil
                file = try remap(file)
            }
            let t0 = options.clock.now()
            let shard = try WorkerShard(file: file, assign: a, threads: options.threads, memory: options.memory, previous: previous,
                                        clock: options.clock, connect: { [transports] in try transports.connect($0) })
            let what = a.endLayer > a.firstLayer ? "layers \(a.firstLayer)..<\(a.endLayer)" : "no layers"
            log("\(shard.keptWeights ? "kept" : "loaded") \(what) and \(shard.expertCount) experts: \(shard.residentBytes) bytes resident in \(String(format: "%.2f", options.clock.now() - t0)) s")
            shared.withLock { $0.shard = shard; $0.state = .ready }
            var e = Envelope()
            e.requestID = id
            var r = Conclave_V1_Ready()
            r.residentBytes = UInt64(shard.residentBytes)
            r.maxSequences = UInt32(clamping: shard.layers.isEmpty ? 0 : shard.maxSequences)
            r.keptWeights = shard.keptWeights
            if !shard.layers.isEmpty {
                r.kvPositions = UInt64(shard.room.positions)
                r.kvOverhead = UInt32(clamping: shard.room.overhead)
            }
            e.ready = r
            reply(peer, WireMessage.make(e))
        } catch {
            shared.withLock { $0.state = .joining }
            replyError(peer, id: id, error)
        }
    }

    private func runStep(_ msg: WireMessage, peer: Data?) {
        let (shard, coordinator) = shared.withLock { ($0.shard, $0.coordinator) }
        let id = msg.envelope.requestID
        // Failures go back to the sender only: the coordinator for the first stage, else the stage before, which
        // relays them to the coordinator (`relay`). A peer that is neither hears its own errors and nobody else's
        // requests fail for them.
        guard let shard else { return replyError(peer, id: id, WireError(.unavailable, "stage input before this worker was assigned (it restarted, or its Assign is still loading)")) }
        // A step of neither rows nor sequences to free does nothing, and at the last stage its (empty) output would
        // go to the coordinator under the sender's request id.
        let input = msg.envelope.stageInput
        guard input.hasWork else {
            return replyError(peer, id: id, WireError(.malformed, "a StageInput with neither rows nor cache changes"))
        }
        let t0 = options.clock.now()
        do {
            let rows = input.rows.count
            let out = try shard.step(msg, log: log)
            if rows > 0 { metrics.recordStep(tokens: rows, ms: (options.clock.now() - t0) * 1000) }
            switch out {
            case .tokens(let m): reply(coordinator, m)
            case .forward(let m):
                let parts = try m.encode()
                metrics.recordForward(bytes: parts.reduce(0) { $0 + $1.count }, rows: rows)
                try nextStage(shard).send(Frames(parts: parts))
            }
        } catch {
            replyError(peer, id: id, error)
        }
    }

    /// What the next stage answers on our connection to it (only Errors: its output goes on, or to the
    /// coordinator): handed to the coordinator, which owns the request. The next stage is the endpoint the plan
    /// named (with CurveZMQ, proven by its key), so what comes back on this connection is its word.
    private func relay(_ frames: Frames) {
        guard let msg = try? WireMessage.decode(frames.parts, maxBytes: options.maxMessageBytes), case .error = msg.envelope.kind else {
            log("dropped a message from the next stage that is not an Error")
            return
        }
        guard let coordinator = shared.withLock({ $0.coordinator }) else { return }
        reply(coordinator, msg)
    }

    private var next: (String, Transport)?
    private func nextStage(_ shard: WorkerShard) throws -> Transport {
        guard let endpoint = shard.nextEndpoint, !endpoint.isEmpty else { throw WireError(.internalError, "this stage has no next stage") }
        // Made again when its handshake was refused (the next stage restarted and was not yet assigned).
        if let (e, t) = next, e == endpoint, t.handshakeProblem == nil { return t }
        next?.1.close()
        let t = try transports.connect(endpoint)
        t.receive { [weak self] frames in self?.relay(frames) }
        next = (endpoint, t)
        return t
    }

    private func runExpertCall(_ msg: WireMessage, peer: Data?) {
        let shard = shared.withLock { $0.shard }
        let t0 = options.clock.now()
        do {
            guard let server = shard?.experts else { throw WireError(.unavailable, "this worker holds no experts (it restarted, or holds none in this plan)") }
            let r = try server.handle(msg)
            metrics.recordExpertCall(ms: (options.clock.now() - t0) * 1000, countLatency: shard?.stage == nil)
            reply(peer, r)
        } catch {
            replyError(peer, id: msg.envelope.requestID, error)
        }
    }

    // MARK: The model file

    /// Whether the shard `old` assigned reads bytes of the file that the shard `new` assigns does not.
    static func drops(_ old: Conclave_V1_Assign, for new: Conclave_V1_Assign, in file: GGUFFile) throws -> Bool {
        let kept = try WorkerShard.fileRanges(of: file, assign: new).sorted { $0.lowerBound < $1.lowerBound }
        return try WorkerShard.fileRanges(of: file, assign: old).contains { r in
            // Covered when the ranges kept, in order, reach from its start to its end without a gap.
            var at = r.lowerBound
            for k in kept where k.lowerBound <= at && k.upperBound > at { at = k.upperBound }
            return at < r.upperBound
        }
    }

    /// The same file mapped afresh (this process's copy: packed weights and faulted pages start over), in place of
    /// `file` for what comes next; the old mapping goes with the last shard that used it.
    private func remap(_ file: GGUFFile) throws -> GGUFFile {
        let fresh: GGUFFile
        if let old = shared.withLock({ $0.fetched }), old.file === file, let cache = try old.shard?.remapped() {
            fresh = cache.file
            shared.withLock { $0.fetched = Model(file: fresh, sha: old.sha, data: old.data, shard: cache) }
        } else {
            fresh = try GGUFFile(path: file.path)
            ownModel.withLock { m in if let old = m, old.file === file { m = Model(file: fresh, sha: old.sha, data: old.data, shard: old.shard) } }
            shared.withLock { s in
                if let old = s.fetched, old.file === file { s.fetched = Model(file: fresh, sha: old.sha, data: old.data, shard: old.shard) }
            }
        }
        log("this plan takes weights away from this worker: the model is mapped anew so that their pages leave its memory")
        return fresh
    }

    /// Our own copy when it matches the coordinator's; else one fetched earlier into the cache; else fetched now.
    private func modelFile(for a: Conclave_V1_Assign, peer: Data?) throws -> GGUFFile {
        let want = [UInt8](a.modelMetadataSha256), weights = [UInt8](a.modelDataSha256)
        if let m = ownModel.withLock({ $0 }) {
            guard m.sha == want else {
                throw WireError(.modelMismatch, "this worker's model \(m.file.path) (metadata sha256 \(hex(m.sha).prefix(16))…) is not the coordinator's (\(hex(want).prefix(16))…)")
            }
            guard weights.isEmpty || m.data == weights else {
                throw WireError(.modelMismatch, "worker '\(options.name)': its model \(m.file.path) has the coordinator's metadata but other weights (tensor data sha256 \(hex(m.data).prefix(16))…, the coordinator's \(hex(weights).prefix(16))…); give it the coordinator's file, or none (it then fetches it)")
            }
            return m.file
        }
        let fetch = ModelFetch(replies: replies, send: { [router] m in router.send(Frames(peer: peer, parts: try m.encode())) }, log: log)
        let needs = { (file: GGUFFile) throws -> [Range<Int>] in try WorkerShard.fileRanges(of: file, assign: a) }
        if let f = shared.withLock({ $0.fetched }), f.sha == want, weights.isEmpty || f.data == weights {
            // A re-plan: what the new assignment adds is fetched into the same cache, which the mapping shows.
            try f.shard?.ensure(try needs(f.file), fetch: fetch)
            return f.file
        }
        let fetched = try fetch.fetch(sha: want, data: weights, total: Int(a.modelBytes), into: options.cacheDirectory, needs: needs)
        let file = fetched.file
        shared.withLock { $0.fetched = Model(file: file, sha: want, data: fetched.digest, shard: fetched.shard) }
        return file
    }
}

func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }

func kindName(_ e: Envelope) -> String {
    guard let k = e.kind else { return "an envelope with no kind" }
    return "\(k)".split(separator: "(").first.map(String.init) ?? "\(k)"
}
