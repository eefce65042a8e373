import Foundation
import Placement
import Synchronization
import Telemetry
import Wire
import ClusterProtocol
import Runtime

/// The coordinator's view of one worker: the DEALER connected to its endpoint, what it said in Hello, what it
/// was assigned, and its last heartbeat. Heartbeats mark it ready; a silence of `downAfter` seconds marks it down.
public final class WorkerLink: @unchecked Sendable {
    public let worker: ClusterFile.Worker
    let transport: Transport

    /// `spare`: answered Hello and holds nothing until a re-plan needs it. `draining`: asked to leave (Drain); it
    /// serves until a plan without it is in force, then is `left` and never planned again.
    public enum State: String, Sendable { case joining, loading, ready, suspect, down, spare, draining, left }

    struct Info {
        var state: State = .joining
        var hello: Conclave_V1_Hello?
        /// The shortest Hello round trip measured at join (what an expert call to it costs on top of compute).
        var roundTrip: Double?
        var lastHeard: Double?
        /// The worker's figures from its last heartbeat, checked.
        var metrics: [MetricSample] = []
        var layers: Range<Int> = 0..<0
        var experts = 0
        var residentBytes: UInt64 = 0
        /// What the plan in force expects it to hold (weights, KV, scratch).
        var plannedBytes = 0
        var failed: String?
        /// The request id of its Drain, answered once a plan without it is in force.
        var drainRequest: UInt64?
        /// It joined while the cluster served (`worker --join`) and answered Hello; no plan has weighed it yet.
        var newcomer = false
    }
    let info = Mutex(Info())
    /// Heartbeat silence that makes a worker suspect, then down (heartbeats come every second).
    static let suspectAfter = 1.5
    static let downAfter = 3.0
    /// What silence is measured on.
    let clock: any Clock

    init(worker: ClusterFile.Worker, transport: Transport, clock: any Clock) {
        self.worker = worker
        self.transport = transport
        self.clock = clock
    }

    func send(_ m: WireMessage) {
        guard let parts = try? m.encode() else { return }
        transport.send(Frames(parts: parts))
    }

    func heard() { info.withLock { $0.lastHeard = clock.now() } }

    /// The state with heartbeat silence taken into account.
    var state: State {
        info.withLock { i in
            if i.state == .down || i.state == .left { return i.state }
            guard i.state == .ready || i.state == .loading || i.state == .draining, let last = i.lastHeard else { return i.state }
            let age = clock.now() - last
            if age > Self.downAfter { return .down }
            if i.state == .draining { return .draining }
            if age > Self.suspectAfter { return .suspect }
            return i.state
        }
    }

    var heartbeatAge: Double? { info.withLock { i in i.lastHeard.map { clock.now() - $0 } } }

    func status() -> Conclave_V1_WorkerStatus {
        let s = state
        return info.withLock { i in
            var w = Conclave_V1_WorkerStatus()
            w.name = worker.name
            w.endpoint = worker.endpoint
            w.state = s.rawValue
            w.firstLayer = UInt32(i.layers.lowerBound)
            w.endLayer = UInt32(i.layers.upperBound)
            w.experts = UInt32(i.experts)
            // The budget in force: the worker's own when smaller than the cluster file's (the plan used it).
            let reported = Int(clamping: i.hello?.memoryBudget ?? 0)
            w.memoryBudget = UInt64(reported > 0 ? min(worker.memory, reported) : worker.memory)
            w.residentBytes = max(i.residentBytes, UInt64(i.metrics.value(WorkerMetric.resident)))
            w.heartbeatAgeS = i.lastHeard.map { clock.now() - $0 } ?? -1
            w.metrics = i.metrics.map(Conclave_V1_MetricSample.init)
            w.readBytesPerSecond = i.hello?.readBytesPerSecond ?? 0
            w.roundTripS = i.roundTrip ?? 0
            w.plannedBytes = UInt64(max(0, i.plannedBytes))
            return w
        }
    }
}
