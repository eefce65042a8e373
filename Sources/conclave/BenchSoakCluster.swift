import Foundation
import Synchronization
import Placement

/// The processes of `bench soak --cluster`: the workers of the cluster file and a coordinator, all started
/// here, so faults can be done to them (kill -9, SIGSTOP) and undone (a restart with the same name, port and
/// model; SIGCONT). Their stderr goes to one log per process in `logDir`, restarts appending.
final class SoakCluster: @unchecked Sendable {
    let file: ClusterFile
    let model: String
    let threads: Int
    let logDir: String
    private let coordinatorArguments: [String]
    /// Slot i is worker i of the file; the last slot is the coordinator.
    private let processes: Mutex<[Process]>

    init(file: ClusterFile, clusterPath: String, model: String, threads: Int, logDir: String) throws {
        self.file = file
        self.model = model
        self.threads = threads
        self.logDir = logDir
        coordinatorArguments = ["serve", "-m", model, "--cluster", clusterPath, "--threads", String(threads), "--http", "off"]
        var started = try LocalCluster.start(file, model: model, threads: threads, logDir: logDir)
        do {
            started.append(try Self.startCoordinator(coordinatorArguments, logDir: logDir))
        } catch {
            LocalCluster.stop(started)
            throw error
        }
        processes = Mutex(started)
    }

    static func startCoordinator(_ arguments: [String], logDir: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        p.arguments = arguments
        p.standardError = try LocalCluster.appendingLog(logDir + "/coordinator.log")
        try p.run()
        return p
    }

    var coordinator: Process { processes.withLock { $0[$0.count - 1] } }
    var pids: [Int32] { processes.withLock { $0.map(\.processIdentifier) } }
    var names: [String] { file.workers.map(\.name) + ["coordinator"] }

    func signal(worker i: Int, _ sig: Int32) { kill(processes.withLock { $0[i].processIdentifier }, sig) }

    /// kill -9 of worker i, waiting until it is gone.
    func kill9(worker i: Int) {
        let p = processes.withLock { $0[i] }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    /// Worker i again, with its name, port and model.
    func restart(worker i: Int) throws {
        let p = try LocalCluster.startWorker(file.workers[i], model: model, threads: threads, logDir: logDir)
        processes.withLock { $0[i] = p }
    }

    /// kill -9 of the coordinator and a new one in its place at once.
    func restartCoordinator() throws {
        let old = coordinator
        kill(old.processIdentifier, SIGKILL)
        old.waitUntilExit()
        let p = try Self.startCoordinator(coordinatorArguments, logDir: logDir)
        processes.withLock { $0[$0.count - 1] = p }
    }

    func stop() {
        let all = processes.withLock { $0 }
        for p in all where p.isRunning { kill(p.processIdentifier, SIGCONT) }
        LocalCluster.stop(all)
    }
}

/// What `bench soak --faults` does to the cluster, drawn from a seed: kill -9 (then a restart) or SIGSTOP (then
/// SIGCONT) of a worker, and once, in the middle of the run, a coordinator restart.
enum SoakFault: CustomStringConvertible {
    case kill(worker: Int, name: String)
    case stop(worker: Int, name: String)
    case coordinatorRestart

    var description: String {
        switch self {
        case .kill(_, let name): "kill -9 of '\(name)', restarted after the outage"
        case .stop(_, let name): "SIGSTOP of '\(name)', SIGCONT after the outage"
        case .coordinatorRestart: "kill -9 of the coordinator, started again at once"
        }
    }

    /// `count` faults over `workers`: one coordinator restart (in the middle) when there are two or more.
    static func schedule(_ count: Int, workers: [String], seed: UInt64) -> [SoakFault] {
        var state = seed
        func next() -> UInt64 {
            // SplitMix64: the run's faults follow from the seed alone.
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        return (0..<count).map { k in
            if count >= 2 && k == count / 2 { return .coordinatorRestart }
            let w = Int(next() % UInt64(workers.count))
            return next() % 2 == 0 ? .kill(worker: w, name: workers[w]) : .stop(worker: w, name: workers[w])
        }
    }
}

/// One fault as it happened: when it began and ended (seconds from the run's start), and when the cluster
/// answered a request again — during the outage (a spare took over) and after it.
struct SoakFaultRecord {
    var fault: SoakFault
    var began: Double
    var ended: Double = 0
    /// The first request that completed after the fault began (nil: none within the outage).
    var servedDuring: Double?
    /// The first request that completed after the fault ended (nil: the cluster never served again).
    var servedAfter: Double?
    /// The outage as requests see it: from the fault until the cluster served again after it.
    var window: ClosedRange<Double> { began...(servedAfter ?? .infinity) }
}
