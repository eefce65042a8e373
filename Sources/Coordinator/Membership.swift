import ClusterProtocol
import Foundation
import Model
import Placement
import Runtime
import Synchronization
import Telemetry
import Wire

/// Who is in the cluster and how they are doing: one `WorkerLink` per worker of the cluster file and per worker
/// that joined since (`add`), the Hellos that join them (and find a restarted one), the round trips the planner
/// weighs, and the read loop of each link — heartbeats checked and kept, model-chunk requests handed to
/// `ModelChunks`, replies to their waiters.
final class Membership: @unchecked Sendable {
    /// The links, in the order workers came: the cluster file's, then those that joined.
    var links: [WorkerLink] { list.withLock { $0 } }
    private let list: Mutex<[WorkerLink]>
    /// Replies from every worker, matched to their requests (Hello, Assign, steps).
    let replies: PendingReplies
    let clock: any Clock
    let log: @Sendable (String) -> Void
    /// The model's metadata hash and the digest of its tensor data: a worker with another model, or the same
    /// metadata over other weights, may not join.
    let sha: [UInt8]
    let dataSHA: [UInt8]
    private let readers = Mutex<[Task<Void, Never>]>([])
    /// What each link's read loop hands on (set by `startReading`, used for links added later).
    private var onFetch: (@Sendable (WireMessage, WorkerLink) -> Void)?
    private var onDrain: (@Sendable (UInt64, WorkerLink) -> Void)?

    /// The routers' choices the stages report in their heartbeats (nil for a dense model).
    let activity: ExpertActivity?

    init(cluster: ClusterFile, transports: TransportFactory, clock: any Clock, sha: [UInt8], dataSHA: [UInt8], activity: ExpertActivity?,
         log: @escaping @Sendable (String) -> Void) throws {
        self.clock = clock
        self.activity = activity
        self.sha = sha
        self.dataSHA = dataSHA
        self.log = log
        replies = PendingReplies(clock: clock)
        list = Mutex(try cluster.workers.map { w in
            do {
                return WorkerLink(worker: w, transport: try transports.connect(w.endpoint), clock: clock)
            } catch {
                throw CoordinatorError("cannot connect to worker '\(w.name)' at \(w.endpoint): \(error)")
            }
        })
    }

    deinit { for r in readers.withLock({ $0 }) { r.cancel() } }

    /// Starts reading every link; `onFetch` serves a worker's request for model chunks or the model's pieces,
    /// `onDrain` a worker's request to leave. Links added later are read with the same.
    func startReading(onFetch: @escaping @Sendable (WireMessage, WorkerLink) -> Void,
                      onDrain: @escaping @Sendable (UInt64, WorkerLink) -> Void = { _, _ in }) {
        self.onFetch = onFetch
        self.onDrain = onDrain
        for link in links { startReading(link) }
    }

    private func startReading(_ link: WorkerLink) {
        guard let onFetch, let onDrain else { return }
        let task = Task<Void, Never>.detached { [weak self] in await self?.read(link, onFetch: onFetch, onDrain: onDrain) }
        readers.withLock { $0.append(task) }
    }

    /// Adds a worker that joined (`worker --join`): connects to it and reads it like the others. Refused (nil
    /// link, the reason) when its name or endpoint is taken — by a worker that left too: a name is one worker's
    /// for the coordinator's life, so status and metrics never mix two — or the connection cannot be made.
    func add(_ worker: ClusterFile.Worker, transports: TransportFactory) throws(CoordinatorError) -> WorkerLink {
        // Before connecting, and again under the lock: of two joins of one name at once, one is added.
        func taken(_ l: [WorkerLink]) -> String? {
            if l.contains(where: { $0.worker.name == worker.name }) { return "join: the name '\(worker.name)' is used twice" }
            if l.contains(where: { $0.worker.endpoint == worker.endpoint }) { return "join '\(worker.name)': endpoint \(worker.endpoint) is used twice" }
            return nil
        }
        if let problem = taken(links) { throw CoordinatorError(problem) }
        let transport: Transport
        do {
            transport = try transports.connect(worker.endpoint)
        } catch {
            throw CoordinatorError("join '\(worker.name)': cannot connect to \(worker.endpoint): \(error)")
        }
        let link = WorkerLink(worker: worker, transport: transport, clock: clock)
        let problem = list.withLock { l -> String? in
            if let problem = taken(l) { return problem }
            l.append(link)
            return nil
        }
        if let problem {
            transport.close()
            throw CoordinatorError(problem)
        }
        startReading(link)
        return link
    }

    /// Takes back a link `add` made, before any plan used it (its worker never answered): the worker may try again.
    func remove(_ link: WorkerLink) {
        list.withLock { $0.removeAll { $0 === link } }
        link.transport.close()
    }

    /// Why the model a worker says it has (in Hello) is not ours, or nil: it has ours, or none (it then fetches
    /// ours). A worker that reports no digest of its weights (an older build) is judged by its metadata.
    func modelProblem(_ h: Conclave_V1_Hello, _ link: WorkerLink, path: String) -> String? {
        guard h.hasModel_p else { return nil }
        if [UInt8](h.modelMetadataSha256) != sha {
            return "worker '\(link.worker.name)' at \(link.worker.endpoint) has a different model file (its metadata hash differs from \(path)); give it the same file or none (it then fetches ours)"
        }
        if !h.modelDataSha256.isEmpty, [UInt8](h.modelDataSha256) != dataSHA {
            return "worker '\(link.worker.name)' at \(link.worker.endpoint) has a model with the metadata of \(path) but other weights (its tensor data digest differs: a corrupted or altered copy); give it the same file or none (it then fetches ours)"
        }
        return nil
    }

    func close() { for l in links { l.transport.close() } }

    func link(named name: String) -> WorkerLink? { links.first { $0.worker.name == name } }

    /// Hello to each of `links` at once; each one's answer, or nil when none came within `timeout` seconds (or
    /// it answered with something else). `stopping` is looked at between waits: a shutdown does not wait out
    /// the join.
    func hello(_ links: [WorkerLink], timeout: Double, stopping: @Sendable () -> Bool = { false }) -> [(WorkerLink, Conclave_V1_Hello?)] {
        let asked = links.map { link -> (WorkerLink, PendingReplies.Waiter) in
            let waiter = replies.waiter()
            var e = Envelope()
            e.requestID = waiter.id
            e.hello = Conclave_V1_Hello()
            link.send(WireMessage.make(e))
            return (link, waiter)
        }
        let deadline = clock.now() + timeout
        return asked.map { link, waiter in
            // Each waiter is looked at once even past the deadline: answers that came while an earlier one
            // was waited for count.
            repeat {
                let left = max(0, deadline - clock.now())
                if let reply = try? waiter.poll(timeout: min(0.5, left)) {
                    guard case .hello(let h) = reply.envelope.kind else { return (link, nil) }
                    return (link, h)
                }
            } while !stopping() && clock.now() < deadline
            replies.cancel(waiter.id)
            return (link, nil)
        }
    }

    /// Times a few Hellos to each worker that joined, one after another, and keeps the shortest: an expert call
    /// to that worker costs about this on top of its compute, which the planner weighs against its rate. A
    /// measurement of the machine, so on the machine's clock whatever clock the cluster runs on.
    func measureRoundTrips(probes: Int = 5) {
        for link in links where link.info.withLock({ $0.hello != nil }) {
            var best = Double.infinity
            for _ in 0..<probes {
                let id = replies.register()
                var e = Envelope()
                e.requestID = id
                e.hello = Conclave_V1_Hello()
                let t0 = MonotonicClock.seconds()
                link.send(WireMessage.make(e))
                guard (try? replies.wait(id, timeout: 10, from: link.worker.endpoint)) != nil else { break }
                best = min(best, MonotonicClock.seconds() - t0)
            }
            if best.isFinite { link.info.withLock { $0.roundTrip = best } }
        }
    }

    /// The worker as the plan sees it: its own budget when it reported a smaller one than the cluster file's,
    /// its measured read rate and round trip.
    func budgeted(_ link: WorkerLink, loopbackOnly: Bool) -> ClusterFile.Worker {
        let (hello, roundTrip) = link.info.withLock { ($0.hello, $0.roundTrip) }
        let reported = Int(clamping: hello?.memoryBudget ?? 0)
        var w = reported > 0 && reported < link.worker.memory ? link.worker.with(memory: reported) : link.worker
        // Workers that share one host share its memory bus, and they measured at the same moment, each slowing
        // the others: their rates say nothing about each other, so a loopback cluster splits by `speed:` alone.
        if !loopbackOnly, let rate = hello?.readBytesPerSecond, rate.isFinite, rate > 0 { w.readRate = rate }
        w.roundTrip = roundTrip
        return w
    }

    private func read(_ link: WorkerLink, onFetch: @Sendable (WireMessage, WorkerLink) -> Void,
                      onDrain: @Sendable (UInt64, WorkerLink) -> Void) async {
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
                if hb.hasExpertCounts, let activity {
                    do {
                        let (first, deltas) = try hb.expertCounts.checked(for: activity)
                        activity.add(firstLayer: first, deltas: deltas, now: clock.now())
                    } catch {
                        log("worker '\(link.worker.name)' sent expert counts that do not fit the model (ignored): \(error)")
                    }
                }
            case .fetchModel, .fetchPieces:
                onFetch(msg, link)
            case .drain:
                onDrain(msg.envelope.requestID, link)
            default:
                if !replies.resolve(msg), case .error(let e) = msg.envelope.kind {
                    log("worker '\(link.worker.name)': \(e.message)")
                }
            }
        }
    }
}
