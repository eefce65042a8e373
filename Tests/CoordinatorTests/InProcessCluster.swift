import ClusterProtocol
@testable import Coordinator
import Foundation
import Generation
import Model
import Placement
import Runtime
import Synchronization
import TestSupport
import Wire
import Worker

/// A coordinator and N `WorkerService`s in this process, over the in-memory transports (authenticated: every
/// dealer carries its role, as CurveZMQ's ZAP would say it) and one `ManualClock`: heartbeats, silence and
/// deadlines move only when the test advances time, so "suspect", "down" and recovery happen at the instant
/// the test chooses, with no sleeps and no processes.
final class InProcessCluster: @unchecked Sendable {
    struct Failure: Error, CustomStringConvertible { let description: String }

    let network = InMemoryNetwork()
    let clock = ManualClock()
    let cluster: ClusterFile
    let model: String
    let coordinator: Coordinator
    private let services: Mutex<[String: Running]>
    /// Workers the test silenced: no heartbeat is expected of them.
    private let silenced = Mutex<Set<String>>([])
    /// Every component's log lines, for failure messages.
    final class Log: Sendable {
        private let lines = Mutex<[String]>([])
        func append(_ l: String) { lines.withLock { $0.append(l) } }
        var all: [String] { lines.withLock { $0 } }
    }
    let log = Log()

    static func endpoint(_ name: String) -> String { "inproc://\(name)" }

    /// `files`: a worker's own model file instead of the coordinator's (nil: none, it fetches the model into
    /// `cache` when given, else a fresh directory).
    init(workers: [(name: String, role: ClusterFile.Role)], memory: Int = 1 << 30, context: Int = 256,
         model: String = Fixtures.shippedModel, files: [String: String?] = [:], cache: String? = nil) throws {
        self.model = model
        cluster = ClusterFile(coordinator: Self.endpoint("coordinator"),
                              workers: workers.map { ClusterFile.Worker(name: $0.name, endpoint: Self.endpoint($0.name), memory: memory, role: $0.role) })
        var running: [String: Running] = [:]
        for w in workers {
            let file = files[w.name] ?? model
            running[w.name] = try Self.worker(w.name, model: file, network: network, clock: clock, log: log, cache: cache)
        }
        services = Mutex(running)
        var options = Coordinator.Options(contextLength: context, workerThreads: 1)
        options.clock = clock
        options.measureRoundTrips = false
        let clients = try network.router(at: cluster.coordinator)
        coordinator = try Coordinator(modelPath: model, cluster: cluster, options: options, clients: clients,
                                      transports: InMemoryTransports(network: network, identity: "coordinator", role: .coordinator),
                                      log: { [log] l in log.append(l) })
    }

    /// Another coordinator of the same workers (`serve` started a second time, on another host): its own
    /// routing id and client endpoint, the same clock.
    /// `clients`: its client endpoint (default: one of its own; the first's, once closed, for a restart).
    func anotherCoordinator(_ name: String, standby: Bool, clients: String? = nil) throws -> Coordinator {
        var options = Coordinator.Options(contextLength: 256, workerThreads: 1)
        options.clock = clock
        options.measureRoundTrips = false
        options.standby = standby
        return try Coordinator(modelPath: model, cluster: cluster, options: options, clients: try network.router(at: clients ?? Self.endpoint(name)),
                               transports: InMemoryTransports(network: network, identity: name, role: .coordinator),
                               log: { [log] l in log.append("[\(name)] " + l) })
    }

    typealias Running = (service: WorkerService, router: InMemoryEndpoint, task: Task<Void, Never>)

    /// A worker service on its router, heartbeating on the manual clock. `join`: the coordinator's client endpoint
    /// it asks to join (`worker --join`), proving `role` (a `join_keys` key stands as `.joiner`).
    static func worker(_ name: String, model: String?, network: InMemoryNetwork, clock: ManualClock, log: Log, cache: String? = nil,
                       join: String? = nil, joinRole: PeerRole? = nil) throws -> Running {
        let router = try network.router(at: endpoint(name))
        var options = WorkerService.Options(name: name, endpoint: router.endpoint, modelPath: model, memory: 1 << 30, threads: 1,
                                            cacheDirectory: cache ?? Fixtures.temporaryDirectory().path)
        options.clock = clock
        options.join = join
        let service = try WorkerService(options: options, router: router,
                                        transports: InMemoryTransports(network: network, identity: name, role: .worker(name),
                                                                   rolesAt: join.map { [$0: joinRole ?? .worker(name)] } ?? [:]),
                                        log: { [log] l in log.append("[\(name)] " + l) })
        return (service, router, Task.detached { _ = try? await service.run() })
    }

    /// Join, plan, assign, wait for every Ready; the scheduler then runs.
    func start() async throws { try await coordinator.startUp() }

    /// The worker stops answering anything, heartbeats included, as a host that lost its network.
    func silence(_ name: String) {
        silenced.withLock { _ = $0.insert(name) }
        services.withLock { s in
            s[name]?.router.close()
            s[name]?.task.cancel()
        }
    }

    /// A silenced worker started again under its name, as an operator restarts a killed one: a new process
    /// that holds nothing until a coordinator assigns it (the coordinator's link reconnects, as ZeroMQ's does).
    func restart(_ name: String) throws {
        let fresh = try Self.worker(name, model: model, network: network, clock: clock, log: log)
        services.withLock { $0[name] = fresh }
        silenced.withLock { _ = $0.remove(name) }
    }

    /// A worker the cluster file does not list, started with `--join` this coordinator's client endpoint and
    /// proving `role` there (`.joiner(KEY)` for a key of `join_keys`) and its name to the other workers, as
    /// their ZAP handlers say once an Assign lists it; the coordinator's client API must be serving.
    func join(_ name: String, proving role: PeerRole) throws {
        let w = try Self.worker(name, model: model, network: network, clock: clock, log: log, join: cluster.coordinator, joinRole: role)
        services.withLock { $0[name] = w }
    }

    func isSilenced(_ name: String) -> Bool { silenced.withLock { $0.contains(name) } }

    func stop() {
        coordinator.scheduler.stop()
        coordinator.membership.close()
        services.withLock { s in for (_, w) in s { w.router.close(); w.task.cancel() } }
    }

    func link(_ name: String) -> WorkerLink { coordinator.links.first { $0.worker.name == name }! }

    /// Moves time by one heartbeat period and waits (in real time, bounded) until the coordinator has heard every
    /// worker that should heartbeat — ready, not silenced — at the new instant: each step of the test then starts
    /// from the same state whatever the machine's speed. (A worker still loading may get its Assign just after
    /// the tick's heartbeat; it is heard by the next.)
    func tick(_ seconds: Double = 1.0) throws {
        clock.advance(by: seconds)
        let deadline = MonotonicClock.seconds() + 60
        while true {
            let quiet = coordinator.links.filter { link in
                guard !silenced.withLock({ $0.contains(link.worker.name) }) else { return false }
                let (state, assigned) = link.info.withLock { ($0.state, $0.layers.count + $0.experts > 0) }
                return assigned && state == .ready && link.heartbeatAge != 0
            }
            if quiet.isEmpty { return }
            if MonotonicClock.seconds() > deadline {
                throw Failure(description: "no heartbeat at t=\(clock.now()) from \(quiet.map(\.worker.name)); log: \(log.all.suffix(20))")
            }
            usleep(1_000)
        }
    }

    /// `eventually` for a test that waits on tasks: it sleeps as a task, so the task it waits for can run on the
    /// cooperative pool's threads (a blocked thread of a two-core machine's pool may leave none).
    func settle(_ what: String, within seconds: Double = 60, _ condition: () -> Bool) async throws {
        let deadline = MonotonicClock.seconds() + seconds
        while !condition() {
            if MonotonicClock.seconds() > deadline { throw Failure(description: "not within \(seconds) s: \(what); log: \(log.all.suffix(15))") }
            try await Task.sleep(nanoseconds: 1_000_000)
        }
    }

    /// Real time, bounded: for what the machine does in its own time (a load, a step), never for what the clock
    /// decides.
    static func eventually(_ what: String, within seconds: Double = 60, _ condition: () -> Bool) throws {
        let deadline = MonotonicClock.seconds() + seconds
        while !condition() {
            if MonotonicClock.seconds() > deadline { throw Failure(description: "not within \(seconds) s: \(what)") }
            usleep(1_000)
        }
    }
}
