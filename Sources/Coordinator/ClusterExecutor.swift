import Foundation
import Generation
import Model
import Synchronization
import Wire
import ClusterProtocol

/// Steps over the cluster's pipeline: each becomes a StageInput to the first stage's worker, and the last stage's
/// TokenOut comes back through the coordinator's reply table. The scheduler above it knows none of this.
final class ClusterExecutor: StepExecutor, @unchecked Sendable {
    /// Every worker's link now (the membership's: workers join while it runs).
    let links: @Sendable () -> [WorkerLink]
    let replies: PendingReplies
    let pipelineDepth: Int
    let stepTimeout: Double? = 120
    /// The plan in force as steps need it — its first stage, its workers and its epoch — set by `Assignment`
    /// after each Ready (it owns the plan; this is what it last put in force).
    struct InForce {
        var first: WorkerLink?
        var workers: Set<String> = []
        var epoch: UInt64 = 0
        /// Every stage's KV room under this plan.
        var room: KVRoom?
    }
    private let inForce = Mutex(InForce())
    /// Re-plans the cluster after a failure (the coordinator's `Recovery`); nil: failures stand.
    var onRecover: (@Sendable (GenerationError, Int) -> RecoveryOutcome)?
    /// Why the cluster cannot serve since a recovery failed (nil: it can, as far as recoveries know); and tries
    /// again while idle (the coordinator's `Recovery`, which backs off).
    var brokenBecause: (@Sendable () -> GenerationError?)?
    var onHeal: (@Sendable (GenerationError) -> RecoveryOutcome?)?
    /// Whether a rebalance waits for the next turn (the coordinator's `Recovery.rebalanceWanted`).
    var rebalanceWanted: (@Sendable () -> Bool)?
    /// Step id → the request id its StageInput carries.
    private let requests = Mutex<[UInt64: UInt64]>([:])

    init(links: @escaping @Sendable () -> [WorkerLink], replies: PendingReplies, pipelineDepth: Int) {
        self.links = links
        self.replies = replies
        self.pipelineDepth = max(1, pipelineDepth)
    }

    var epoch: UInt64 { inForce.withLock { $0.epoch } }

    func setPlan(first link: WorkerLink?, workers: Set<String>, epoch: UInt64, room: KVRoom? = nil) {
        inForce.withLock { $0 = InForce(first: link, workers: workers, epoch: epoch, room: room) }
    }

    var kvRoom: KVRoom? { inForce.withLock { $0.room } }

    func start(_ step: Step, id: UInt64, done: @escaping @Sendable (Result<[UInt64: [SampledToken]], GenerationError>) -> Void) {
        let input = Conclave_V1_StageInput(step: step)
        let requestID = replies.register { [weak self] result in
            _ = self?.requests.withLock { $0.removeValue(forKey: id) }
            switch result {
            case .success(let m):
                guard case .tokenOut(let out) = m.envelope.kind else {
                    return done(.failure(GenerationError(.internal, "the last stage answered a step with something else")))
                }
                done(Result { () throws(GenerationError) in try out.sampledTokens() })
            case .failure(let e):
                done(.failure(GenerationError(wire: e, "generation failed: ")))
            }
        }
        requests.withLock { $0[id] = requestID }
        let plan = inForce.withLock { $0 }
        guard let link = plan.first else {
            _ = replies.resolve(.failure(WireError(.unavailable, "the plan has no stages")), id: requestID)
            return
        }
        var e = Envelope()
        e.requestID = requestID
        e.epoch = plan.epoch
        e.stageInput = input
        link.send(WireMessage.make(e))
    }

    func cancel(_ id: UInt64) {
        if let r = requests.withLock({ $0.removeValue(forKey: id) }) { replies.cancel(r) }
    }

    /// Fire and forget: the changes travel the pipeline behind every step already sent, like a step.
    func apply(_ ops: CacheOps) {
        let plan = inForce.withLock { $0 }
        guard let link = plan.first, !ops.isEmpty else { return }
        let input = Conclave_V1_StageInput(cacheOps: ops)
        var e = Envelope()
        e.epoch = plan.epoch
        e.stageInput = input
        link.send(WireMessage.make(e))
    }

    /// While a worker of the plan is down, or since a recovery failed, nothing can be generated (until a
    /// recovery succeeds). Down is what the heartbeats say now: a worker that answers again is not down.
    func unavailable() -> GenerationError? {
        let names = inForce.withLock { $0.workers }
        if let down = links().first(where: { names.contains($0.worker.name) && $0.state == .down }) {
            let age = down.heartbeatAge.map { String(format: "%.1f", $0) } ?? "?"
            return GenerationError(.unavailable, "worker '\(down.worker.name)' at \(down.worker.endpoint) stopped answering (last heartbeat \(age) s ago); the coordinator re-plans as soon as the workers that answer can hold the model")
        }
        return brokenBecause?()
    }

    /// A worker of the plan asked to leave, or one joined: steps could run, but the scheduler should re-plan now.
    func replanWanted() -> GenerationError? {
        let names = inForce.withLock { $0.workers }
        let all = links()
        // (A spare of the plan holds nothing: it is released without a re-plan.)
        if let leaving = all.first(where: { names.contains($0.worker.name) && $0.state == .draining }) {
            return GenerationError(.unavailable, "worker '\(leaving.worker.name)' is leaving the cluster (drain): its shard moves to the others")
        }
        if let joined = all.first(where: { $0.info.withLock { $0.newcomer } && $0.state == .joining }) {
            return GenerationError(.unavailable, "worker '\(joined.worker.name)' joined the cluster: re-planning to use it")
        }
        if rebalanceWanted?() == true {
            return GenerationError(.unavailable, "the experts of split layers move for the routing of late (rebalance)")
        }
        return nil
    }

    func heal() -> RecoveryOutcome? {
        guard let cause = unavailable() ?? replanWanted() else { return nil }
        return onHeal?(cause)
    }

    func recover(after cause: GenerationError, sequences: Int) -> RecoveryOutcome {
        guard let onRecover else { return .failed(cause) }
        return onRecover(cause, sequences)
    }
}
