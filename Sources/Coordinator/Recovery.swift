import ClusterProtocol
import Foundation
import Generation
import Model
import Placement
import Runtime
import Synchronization
import CurveKeys
import Wire

/// After a failure (a worker of the plan down, a step lost): finds who answers — the ready workers, the spares,
/// and any down one that was restarted (it answers a Hello again) — keeps the placement when every lost shard
/// has a taker, else plans again over what is left, and assigns the new plan. Runs on the scheduler's thread,
/// which applies the outcome (the KV room of the new placement) and replays every sequence. Keeps a record of
/// each recovery for status.
final class Recovery: @unchecked Sendable {
    let membership: Membership
    let assignment: Assignment
    let cluster: ClusterFile
    /// Our connections (a worker that joins is connected to with the key it proved).
    let transports: TransportFactory
    let loadTimeout: Double
    let log: @Sendable (String) -> Void
    private let records = Mutex<[Conclave_V1_Recovery]>([])
    /// Since a recovery failed: why the cluster cannot serve, and when to try again (doubling the wait from one
    /// second to `maxRetryDelay` while attempts fail, so a cluster that cannot fit the model is not re-planned in
    /// a busy loop, and one that can again is back within seconds).
    struct Healing {
        var broken: GenerationError?
        var nextTry = -Double.infinity
        var delay = Recovery.firstRetryDelay
    }
    private let healing = Mutex(Healing())
    /// A plan for the routing of late, waiting for the scheduler's next turn (`proposeRebalance`).
    struct Rebalance: Sendable {
        let use: [[Double]]
        /// The mean of the layers' imbalances under the plan in force and under the proposed one, same counts.
        let before, after: Double
    }
    private let rebalance = Mutex<Rebalance?>(nil)
    /// Why the scheduler should re-plan now for the routing, or nil.
    var rebalanceWanted: Rebalance? { rebalance.withLock { $0 } }
    static let firstRetryDelay = 1.0
    static let maxRetryDelay = 16.0
    static let historyLimit = 100

    init(membership: Membership, assignment: Assignment, cluster: ClusterFile, transports: TransportFactory, loadTimeout: Double,
         log: @escaping @Sendable (String) -> Void) {
        self.membership = membership
        self.assignment = assignment
        self.cluster = cluster
        self.transports = transports
        self.loadTimeout = loadTimeout
        self.log = log
    }

    /// Every recovery so far, oldest first.
    var history: [Conclave_V1_Recovery] { records.withLock { $0 } }

    /// Why the cluster cannot serve since the last recovery failed; nil once one succeeded.
    var broken: GenerationError? { healing.withLock { $0.broken } }

    /// While nothing runs and the cluster cannot serve (`cause`): another recovery, when the backoff allows.
    func heal(_ cause: GenerationError) -> RecoveryOutcome? {
        let now = membership.clock.now()
        guard healing.withLock({ now >= $0.nextTry }) else { return nil }
        return recover(after: cause, sequences: 0)
    }

    func recover(after cause: GenerationError, sequences: Int) -> RecoveryOutcome {
        let clock = membership.clock
        let t0 = clock.now()
        var record = Conclave_V1_Recovery()
        record.cause = cause.message
        record.sequencesReplayed = UInt32(sequences)
        defer {
            record.seconds = clock.now() - t0
            record.epoch = assignment.epoch
            record.plan = assignment.summary()
            records.withLock { r in
                r.append(record)
                // A cluster that stays broken tries every few seconds: status keeps the latest hundred.
                if r.count > Self.historyLimit { r.removeFirst(r.count - Self.historyLimit) }
            }
        }
        log("re-planning: \(cause.message)")
        let links = membership.links
        // Ask everyone not known to be well who they are; a restarted worker answers (a live one within
        // milliseconds: a second is plenty on a LAN).
        var answered: Set<String> = []
        // A worker that asked to leave is not asked back.
        let leaving: Set<WorkerLink.State> = [.draining, .left]
        for (link, answer) in membership.hello(links.filter { $0.state != .ready && !leaving.contains($0.state) }, timeout: 1) {
            guard let h = answer else { continue }
            if let problem = membership.modelProblem(h, link, path: assignment.model.file.path) {
                log("not taking back: \(problem)")
                continue
            }
            link.info.withLock { $0.hello = h; if $0.state == .down { $0.state = .joining } }
            link.heard()
            answered.insert(link.worker.name)
        }
        let usable = links.filter { $0.state == .ready || answered.contains($0.worker.name) }
        let left = plannable(usable)
        let gone = links.filter { link in !usable.contains { $0 === link } }.map(\.worker.name)
        // Workers that joined are what a re-plan is for: the plan is made anew over everyone, them included. So
        // is a rebalance: the plan made anew with the routing counts of late.
        let newcomers = usable.filter { link in link.info.withLock { $0.newcomer } }
        let balance = rebalance.withLock { r -> Rebalance? in defer { r = nil }; return r }
        if let balance { assignment.footprint.expertUse = balance.use }
        let outcome: Assignment.Outcome
        do {
            // The same placement when every lost shard has a taker (a spare, or the worker restarted): only that
            // shard loads. Otherwise a plan from scratch over what is left.
            let plan = assignment.plan
            if !newcomers.isEmpty {
                assignment.plan = try leastMoving(from: plan, workers: left, newcomers: Set(newcomers.map(\.worker.name)))
                log("new plan with \(newcomers.map(\.worker.name).joined(separator: ", ")), which joined: " + assignment.summary())
            } else if let balance {
                assignment.plan = try Planner.plan(assignment.footprint, cluster: cluster.with(workers: left))
                log("new plan for the routing of late (mean layer imbalance \(String(format: "%.3f", balance.before)) → \(String(format: "%.3f", balance.after)) expected): " + assignment.summary())
            } else if let same = plan.keeping(on: left, expertBytes: assignment.footprint.expertBytes) {
                let moved = plan.workers.map(\.name).filter { n in !same.workers.contains { $0.name == n } }
                assignment.plan = same
                log("keeping the placement\(moved.isEmpty ? "" : " (the shards of \(moved.joined(separator: ", ")) taken over)"): " + assignment.summary())
            } else {
                assignment.plan = try Planner.plan(assignment.footprint, cluster: cluster.with(workers: left))
                log("new plan without \(gone.joined(separator: ", ")): " + assignment.summary())
            }
            outcome = try assignment.assign(timeout: loadTimeout)
        } catch {
            // A newcomer that failed its shard is not re-planned for again until it answers a Hello anew.
            for link in newcomers { link.info.withLock { $0.newcomer = false } }
            let e = GenerationError(.unavailable, newcomers.isEmpty ? "the cluster can no longer serve the model without \(gone.joined(separator: ", ")): \(error)"
                                                                   : "the plan with \(newcomers.map(\.worker.name).joined(separator: ", ")) (joined) failed: \(error)")
            let delay = healing.withLock { h -> Double in
                h.broken = e
                h.nextTry = clock.now() + h.delay
                defer { h.delay = min(2 * h.delay, Self.maxRetryDelay) }
                return h.delay
            }
            log(e.message + "; trying again in \(Int(delay)) s (and whenever idle after that)")
            return .failed(e)
        }
        healing.withLock { $0 = Healing() }
        for link in newcomers { link.info.withLock { $0.newcomer = false } }
        release(links.filter { $0.state == .draining })
        record.reloaded = outcome.reloaded
        record.recovered = true
        log("recovered in \(String(format: "%.2f", clock.now() - t0)) s (plan \(assignment.epoch)); replaying \(sequences) sequence\(sequences == 1 ? "" : "s")")
        return .recovered(maxSequences: outcome.maxSequences)
    }

    /// `links` as the planner takes them: each with the budget in force, a spare as a worker of any role.
    private func plannable(_ links: [WorkerLink]) -> [ClusterFile.Worker] {
        links.map { link in
            let w = membership.budgeted(link, loopbackOnly: cluster.loopbackOnly)
            return link.worker.role == .spare ? w.with(role: .any) : w
        }
    }

    // MARK: Leaving

    /// A worker asks to leave (`worker --drain`): refused, with the reason, when the others cannot hold the model
    /// without it; released at once when the plan does not use it (a spare); else marked draining — it serves
    /// until the scheduler's next turn re-plans without it (`ClusterExecutor.replanWanted`, running requests
    /// replayed as after a failure) — and released once that plan is in force.
    func drain(_ link: WorkerLink, request id: UInt64) {
        let name = link.worker.name
        let others = plannable(membership.links.filter { $0 !== link && ($0.state == .ready || $0.state == .spare) })
        do {
            _ = try Planner.plan(assignment.footprint, cluster: cluster.with(workers: others))
        } catch {
            log("worker '\(name)' asked to leave; refused: the other workers cannot hold the model without it (\(error))")
            link.send(WireMessage.errorReply(to: id, WireError(.unavailable, "the other workers cannot hold the model without '\(name)' (\(error)); it stays in the plan")))
            return
        }
        link.info.withLock { $0.drainRequest = id; $0.state = .draining }
        if !assignment.plan.uses(name) {
            release([link])
            return
        }
        log("worker '\(name)' asked to leave: re-planning without it at the next step")
    }

    /// Tells draining workers that the plan in force no longer uses them; they are never planned again.
    private func release(_ links: [WorkerLink]) {
        for link in links {
            let id = link.info.withLock { i -> UInt64? in
                i.state = .left
                i.layers = 0..<0
                i.experts = 0
                i.plannedBytes = 0
                return i.drainRequest
            }
            guard let id else { continue }
            var e = Envelope()
            e.requestID = id
            e.drain = Conclave_V1_Drain()
            link.send(WireMessage.make(e))
            log("worker '\(link.worker.name)' released: the plan in force (\(assignment.epoch)) no longer uses it")
        }
    }

    // MARK: Joining's plan

    /// The plan with the workers that joined that moves the fewest bytes to the workers already there: layers are
    /// contiguous ranges in the order of the workers, so where the newcomers stand in that order decides how far
    /// the others' ranges shift. Each position is planned; the one whose existing workers must load the fewest
    /// bytes they do not hold now wins (of equals, the latest position: deterministic).
    func leastMoving(from current: Plan, workers: [ClusterFile.Worker], newcomers: Set<String>) throws -> Plan {
        let others = workers.filter { !newcomers.contains($0.name) }, joined = workers.filter { newcomers.contains($0.name) }
        let file = assignment.model.file
        let layout = WeightLayout(file: file, config: assignment.model.config)
        func ranges(_ plan: Plan, _ name: String) -> [Range<Int>] {
            guard let i = plan.workers.firstIndex(where: { $0.name == name }) else { return [] }
            let shard = plan.shard(of: i)
            return layout.fileRanges(of: file, layers: shard.layers, experts: shard.resident)
                + layout.fileRanges(of: file, layers: 0..<0, experts: shard.paged)
        }
        var best: (plan: Plan, moved: Int)?
        var firstError: Error?
        // From the end: of equal plans, the one with the newcomers last (the order the plain plan takes) wins.
        for position in (0...others.count).reversed() {
            let order = Array(others[..<position]) + joined + Array(others[position...])
            do {
                let candidate = try Planner.plan(assignment.footprint, cluster: cluster.with(workers: order))
                let moved = others.reduce(0) { $0 + Self.uncovered(ranges(candidate, $1.name), by: ranges(current, $1.name)) }
                if best == nil || moved < best!.moved { best = (candidate, moved) }
            } catch {
                firstError = firstError ?? error
            }
        }
        guard let best else { throw firstError ?? CoordinatorError("no plan with the workers that joined") }
        log("the workers already serving load \(best.moved) bytes they do not hold for this plan (the fewest of \(others.count + 1) orders)")
        return best.plan
    }

    /// Bytes of `ranges` that `held` does not cover.
    static func uncovered(_ ranges: [Range<Int>], by held: [Range<Int>]) -> Int {
        let held = held.sorted { $0.lowerBound < $1.lowerBound }
        var total = 0
        for r in ranges {
            var at = r.lowerBound
            for h in held where h.upperBound > at && h.lowerBound < r.upperBound {
                if h.lowerBound > at { total += h.lowerBound - at }
                at = max(at, h.upperBound)
                if at >= r.upperBound { break }
            }
            if at < r.upperBound { total += r.upperBound - at }
        }
        return total
    }

    // MARK: Rebalancing

    /// Whether the experts of split layers should move for the routing of late (`serve --rebalance`): a plan is
    /// made from the stages' recent counts over the workers in the plan, and each layer's imbalance (its busiest
    /// holder's share of its rows) is computed for the plan in force and for that one on the same counts. When the
    /// mean falls by more than `gain` (relative), the scheduler's next turn re-plans with those counts
    /// (`ClusterExecutor.replanWanted`) — requests replayed, workers whose share did not change keep it — and this
    /// returns the proposal; else nil (no counts, nothing better, or a re-plan already waiting).
    @discardableResult
    func proposeRebalance(gain: Double = 0.05) -> Rebalance? {
        guard let activity = membership.activity, rebalanceWanted == nil, broken == nil else { return nil }
        let counts = activity.snapshot(now: membership.clock.now())
        let use = counts.expertUse(expertsUsed: assignment.model.config.expertsUsed)
        let current = assignment.plan
        guard let before = counts.meanImbalance(holder: current.holder) else { return nil }
        var footprint = assignment.footprint
        footprint.expertUse = use
        let workers = membership.links.filter { link in current.workers.contains { $0.name == link.worker.name } && link.state == .ready }
        guard workers.count == current.workers.count,
              let candidate = try? Planner.plan(footprint, cluster: cluster.with(workers: plannable(workers))),
              candidate.experts != current.experts,
              let after = counts.meanImbalance(holder: candidate.holder), after < before * (1 - gain) else { return nil }
        let proposal = Rebalance(use: use, before: before, after: after)
        rebalance.withLock { $0 = proposal }
        log(String(format: "rebalance: the routing of late leaves the split layers' busiest holders %.3f of their rows on average; a plan for it gives %.3f: re-planning at the next step", before, after))
        return proposal
    }

    // MARK: Joining

    /// A worker not in the cluster file asks to join (`worker --join`; `role`: who sent the Join, as CurveZMQ
    /// proved it). Checked — with CurveZMQ only a `join_keys` key (the coordinator connects back proving it);
    /// without, a worker on this host unless the cluster runs beyond it (`--insecure`); a fresh name and endpoint;
    /// a budget; a known role — then connected to and asked Hello (its model checked as any worker's), and marked
    /// a newcomer: the scheduler's next turn re-plans with it (`ClusterExecutor.replanWanted`), running requests
    /// replayed. A spare is kept for a failure instead. Blocks for the Hello: call it off the client socket's loop.
    func join(_ j: Conclave_V1_Join, from role: PeerRole?, started: Bool) -> Result<Conclave_V1_Join, WireError> {
        let name = j.workerName, endpoint = j.listenEndpoint
        var key: CurveKey?
        if transports.authenticates {
            guard case .joiner(let z85) = role, let k = try? CurveKey(z85: z85) else {
                return .failure(WireError(.malformed, "only a worker whose key the cluster file's join_keys lists may join (this peer is \(role.map { "\($0)" } ?? "unauthenticated"))"))
            }
            key = k
        } else if cluster.loopbackOnly, !ClusterFile.isLoopback(endpoint) {
            return .failure(WireError(.malformed, "this cluster runs on loopback without CurveZMQ: a worker at \(endpoint.prefix(80)) may not join; list join_keys in the cluster file (CurveZMQ)"))
        }
        guard started else { return .failure(WireError(.unavailable, "the coordinator is still starting; join again in a moment")) }
        guard !name.isEmpty, name.count <= 64, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
            return .failure(WireError(.malformed, "a joining worker's name must be 1 to 64 letters, digits, '-', '_' or '.'"))
        }
        // tcp:// as in a cluster file; ipc:// and inproc:// reach only this host (this process, for inproc).
        guard ClusterFile.isEndpoint(endpoint) || endpoint.hasPrefix("ipc://") || endpoint.hasPrefix("inproc://"), endpoint.count <= 256 else {
            return .failure(WireError(.malformed, "worker '\(name)': '\(endpoint.prefix(80))' is not an endpoint like tcp://10.0.0.5:7070"))
        }
        guard j.memoryBudget > 0, j.memoryBudget <= UInt64(Int.max) else {
            return .failure(WireError(.malformed, "worker '\(name)' gave no memory budget; start it with --memory"))
        }
        let roleName = j.role.isEmpty ? "any" : j.role
        guard let workerRole = ClusterFile.Role(rawValue: roleName) else {
            return .failure(WireError(.malformed, "worker '\(name)': role '\(roleName.prefix(32))' is not one of any, stage, experts, spare"))
        }
        let worker = ClusterFile.Worker(name: name, endpoint: endpoint, memory: Int(j.memoryBudget), role: workerRole, key: key)
        var answer = Conclave_V1_Join()
        answer.workerName = name
        answer.listenEndpoint = endpoint
        answer.memoryBudget = UInt64(worker.memory)
        answer.role = workerRole.rawValue
        if let known = membership.link(named: name), known.worker.endpoint == endpoint, known.worker.key == key {
            // The same worker again: its earlier Join's answer was lost, or it restarted (a Hello takes it back,
            // as any restarted worker). One that drained is gone for good under that name.
            guard known.state != .left else {
                return .failure(WireError(.malformed, "a worker named '\(name)' left this cluster; join under another --name"))
            }
            // Its first Join is still saying Hello: the answer to that one tells.
            guard known.info.withLock({ $0.hello != nil }) else {
                return .failure(WireError(.unavailable, "the coordinator is still waiting for this worker's Hello"))
            }
            return .success(answer)
        }
        // The key is learned for the endpoint only if no other key is known for it: a joiner may not make the
        // coordinator expect its key at another worker's endpoint.
        if let known = membership.links.first(where: { $0.worker.endpoint == endpoint }) {
            return .failure(WireError(.malformed, "join '\(name)': endpoint \(endpoint) belongs to worker '\(known.worker.name)'"))
        }
        if let key, !transports.trust(server: endpoint, key: key) {
            return .failure(WireError(.malformed, "join '\(name)': another key is known for \(endpoint)"))
        }
        let link: WorkerLink
        do {
            link = try membership.add(worker, transports: transports)
        } catch {
            return .failure(WireError(.malformed, error.description))
        }
        guard let h = membership.hello([link], timeout: 10).first?.1 else {
            membership.remove(link)
            return .failure(WireError(.unavailable, "worker '\(name)' did not answer the coordinator's Hello at \(endpoint) within 10 s\(link.transport.handshakeProblem.map { " (\($0))" } ?? ""); give it an endpoint the coordinator reaches (--advertise)"))
        }
        if let problem = membership.modelProblem(h, link, path: assignment.model.file.path) {
            membership.remove(link)
            return .failure(WireError(.malformed, problem))
        }
        link.heard()
        link.info.withLock { i in
            i.hello = h
            i.state = workerRole == .spare ? .spare : .joining
            i.newcomer = workerRole != .spare
        }
        log("worker '\(name)' joined at \(endpoint)\(workerRole == .spare ? " as a spare" : ""): \(h.cores) cores, budget \(h.memoryBudget) bytes, \(h.hasModel_p ? "has the model" : "will fetch its shard")\(workerRole == .spare ? "" : "; re-planning with it at the next step")")
        return .success(answer)
    }
}
