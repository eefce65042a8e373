import ClusterProtocol
import Foundation
import GGUF
import Model
import Placement
import Synchronization
import Wire

/// The plan in force and its epoch: turns the plan into each worker's Assign, sends them under a new epoch,
/// waits for every Ready, and then points the executor at the new first stage. The one owner of the plan and of
/// the epoch counter.
final class Assignment: @unchecked Sendable {
    struct Served: Sendable {
        let file: GGUFFile
        let config: ModelConfig
        let sha: [UInt8]
        /// The digest of the tensor data (`ModelDigest`): a worker whose copy differs refuses the Assign.
        let dataSHA: [UInt8]
        let contextLength: Int
        let cacheTypes: CacheTypes
        /// Fewer experts per token than the file's (every stage routes the same way).
        let selection: ExpertSelection
        let workerThreads: Int
        /// Most rows in one step: each worker budgets scratch for it.
        let ubatch: Int
    }
    let model: Served
    /// What plans are made from; a rebalance replaces its routing (`expertUse`) with the live counts.
    var footprint: ModelFootprint {
        get { footprints.withLock { $0 } }
        set { footprints.withLock { $0 = newValue } }
    }
    private let footprints: Mutex<ModelFootprint>
    let membership: Membership
    let executor: ClusterExecutor
    let log: @Sendable (String) -> Void
    /// Read by status and health on their threads, replaced by a recovery on the scheduler's: behind a lock.
    private let state: Mutex<Plan>
    private let epochs = Mutex<UInt64>(0)

    init(initial: Plan, model: Served, footprint: ModelFootprint, membership: Membership, executor: ClusterExecutor,
         log: @escaping @Sendable (String) -> Void) {
        state = Mutex(initial)
        self.model = model
        footprints = Mutex(footprint)
        self.membership = membership
        self.executor = executor
        self.log = log
    }

    var plan: Plan {
        get { state.withLock { $0 } }
        set { state.withLock { $0 = newValue } }
    }

    /// The epoch of the last plan sent.
    var epoch: UInt64 { epochs.withLock { $0 } }

    /// What the plan's workers loaded, and how many sequences every stage has KV room for.
    struct Outcome: Sendable {
        /// Workers that loaded weights (the others held this plan's shard already).
        var reloaded: [String] = []
        var maxSequences = Int.max
        /// Every stage's KV room (nil: none reported one), which the scheduler keeps prefixes in.
        var room: KVRoom?
    }

    /// What worker `i` holds and whom it talks to.
    func assignment(for i: Int, of plan: Plan) -> Conclave_V1_Assign {
        var a = Conclave_V1_Assign()
        a.modelMetadataSha256 = Data(model.sha)
        a.modelDataSha256 = Data(model.dataSHA)
        a.contextLength = UInt32(model.contextLength)
        a.cacheTypeK = model.cacheTypes.key.name.lowercased()
        a.cacheTypeV = model.cacheTypes.value.name.lowercased()
        a.expertsUsed = UInt32(model.selection.used ?? 0)
        a.expertMinWeight = model.selection.minWeight
        a.modelBytes = UInt64(model.file.fileSize)
        a.threads = UInt32(model.workerThreads)
        a.ubatch = UInt32(clamping: model.ubatch)
        let w = plan.workers[i]
        if let k = plan.stages.firstIndex(where: { $0.worker == w.name }) {
            let s = plan.stages[k]
            if k > 0 { a.previousStage = plan.stages[k - 1].worker }
            a.firstLayer = UInt32(s.layers.lowerBound)
            a.endLayer = UInt32(s.layers.upperBound)
            if k + 1 < plan.stages.count, let next = plan.workers.first(where: { $0.name == plan.stages[k + 1].worker }) {
                a.nextStageEndpoint = next.endpoint
            }
            var remote: [Int: [(layer: Int, expert: Int)]] = [:]  // owner → its experts of our layers
            for l in s.layers where l < plan.experts.count {
                for (e, owner) in plan.experts[l].enumerated() where owner != i { remote[owner, default: []].append((l, e)) }
            }
            for owner in remote.keys.sorted() {
                var r = Conclave_V1_RemoteExperts()
                r.endpoint = plan.workers[owner].endpoint
                r.experts = [Conclave_V1_ExpertSet](pairs: remote[owner]!)
                a.remote.append(r)
            }
        }
        a.experts = [Conclave_V1_ExpertSet](pairs: plan.experts(of: i, paged: false))
        a.paged = [Conclave_V1_ExpertSet](pairs: plan.experts(of: i, paged: true))
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

    /// Each worker's part of `plan` by the formula the worker admits it with (`ShardBudget`): a plan that gives
    /// any worker more than its budget is refused here, with the figures, rather than by the worker at Assign.
    func checkBudgets(_ plan: Plan) throws(CoordinatorError) {
        for (i, w) in plan.workers.enumerated() {
            let budget = ShardBudget(file: model.file, config: model.config, shard: plan.shard(of: i), context: model.contextLength, ubatch: model.ubatch,
                                     cacheTypes: model.cacheTypes)
            do {
                try budget.check(memory: w.memory)
            } catch {
                throw CoordinatorError("worker '\(w.name)': \(error.description) (its budget in the plan); give it more memory, or serve with a smaller --ubatch or --ctx")
            }
        }
    }

    func summary() -> String { Self.summary(plan) }

    static func summary(_ plan: Plan) -> String {
        plan.workers.enumerated().map { i, w in
            let layers = plan.stages.first { $0.worker == w.name }.map { "layers \($0.layers.lowerBound)..<\($0.layers.upperBound)" } ?? "no layers"
            let paged = plan.experts(of: i, paged: true).count
            return "\(w.name): \(layers), \(plan.experts(of: i).count) experts" + (paged > 0 ? " (\(paged) paged through \(plan.slots[i]) slots)" : "")
        }.joined(separator: "; ")
    }

    /// Sends every worker of the plan its Assign under a new epoch and waits for each Ready; the executor then
    /// sends steps to this plan's first stage. A worker that goes down meanwhile, or does not load within
    /// `timeout` seconds, fails it, and so does a shutdown (`stopping`).
    func assign(timeout: Double, stopping: @Sendable () -> Bool = { false }) throws -> Outcome {
        let plan = self.plan
        try checkBudgets(plan)
        let epoch = epochs.withLock { $0 += 1; return $0 }
        let clock = membership.clock
        var assigns: [(WorkerLink, PendingReplies.Waiter)] = []
        for (i, w) in plan.workers.enumerated() {
            guard let link = membership.link(named: w.name) else { continue }
            let a = assignment(for: i, of: plan)
            link.info.withLock {
                $0.layers = Int(a.firstLayer)..<Int(a.endLayer)
                $0.experts = (a.experts + a.paged).reduce(0) { $0 + $1.experts.count }
                $0.plannedBytes = i < plan.bytes.count ? plan.bytes[i] : 0
                $0.state = .loading
            }
            let waiter = membership.replies.waiter()
            var e = Envelope()
            e.requestID = waiter.id
            e.epoch = epoch
            e.assign = a
            link.send(WireMessage.make(e))
            assigns.append((link, waiter))
        }
        // Workers the plan leaves out hold nothing of it.
        for link in membership.links where !plan.workers.contains(where: { $0.name == link.worker.name }) {
            link.info.withLock { $0.layers = 0..<0; $0.experts = 0; $0.plannedBytes = 0 }
        }
        var outcome = Outcome()
        var rooms: [KVRoom] = []
        for (link, waiter) in assigns {
            let deadline = clock.now() + timeout
            var reply: WireMessage?
            do {
                while reply == nil {
                    reply = try waiter.poll(timeout: 0.5)
                    if reply == nil {
                        if stopping() { throw CoordinatorError("the coordinator is shutting down") }
                        if link.state == .down || clock.now() > deadline {
                            throw CoordinatorError(link.state == .down ? "it stopped answering while loading" : "no Ready within \(Int(timeout)) s")
                        }
                    }
                }
            } catch {
                for (_, other) in assigns { membership.replies.cancel(other.id) }
                if let e = error as? WireError, e.code == .held {
                    // The worker's own words ("worker 'X' is assigned by another coordinator…") say it all.
                    throw CoordinatorError(e.message.hasPrefix("remote error: ") ? String(e.message.dropFirst(14)) : e.message, held: true)
                }
                throw CoordinatorError("worker '\(link.worker.name)' failed to load its shard: \(error)")
            }
            guard case .ready(let r) = reply!.envelope.kind else { throw CoordinatorError("worker '\(link.worker.name)' answered Assign with something else") }
            link.info.withLock { $0.state = .ready; $0.residentBytes = r.residentBytes }
            if !r.keptWeights { outcome.reloaded.append(link.worker.name) }
            log("worker '\(link.worker.name)' ready\(r.keptWeights ? " (kept its weights)" : ""): \(r.residentBytes) bytes resident" + (r.maxSequences > 0 ? ", KV for \(r.maxSequences) sequence\(r.maxSequences == 1 ? "" : "s")" : ""))
            if r.maxSequences > 0 { outcome.maxSequences = min(outcome.maxSequences, Int(r.maxSequences)) }
            if let room = r.kvRoom(context: model.contextLength) { rooms.append(room) }
        }
        outcome.room = KVRoom.pipeline(rooms)
        if let room = outcome.room {
            log("prefix cache: \(max(0, room.positions - room.overhead)) positions on every stage while nothing runs (\(room))")
        }
        executor.setPlan(first: plan.stages.first.flatMap { membership.link(named: $0.worker) },
                         workers: Set(plan.workers.map(\.name)), epoch: epoch, room: outcome.room)
        return outcome
    }
}
