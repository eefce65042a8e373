#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Coordinator
import Foundation
import GGUF
import Kernels
import Logging
import Placement
import ServiceLifecycle
import Wire

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the coordinator: place the model on the cluster's workers and serve generation and status.",
        discussion: """
        With --cluster, connects to every worker in the cluster file (start them first with `conclave worker`),
        assigns each its layers and experts, and listens on the file's coordinator endpoint for `conclave generate`
        and `conclave status`. With --local N it starts N workers on 127.0.0.1 itself (N ≥ 3: the last one holds
        experts only, so every MoE layer calls experts in another process) — the one-command demo. Runs until
        SIGTERM or SIGINT.
        """
    )

    @Option(name: [.short, .long], help: "Path to a .gguf model.") var model: String = defaultModelPath
    @Option(help: "Cluster file (YAML; see cluster/).") var cluster: String?
    @Option(help: "Start this many workers on 127.0.0.1 instead of using a cluster file.") var local: Int?
    @Option(help: "With --local: the coordinator's port; workers take the ports after it.") var port: Int = 7000
    @Option(help: "Context length per sequence (default: the model's).") var ctx: Int?
    @Option(help: "Threads per worker (assigned to workers; default: every core).") var threads: Int = ThreadPool.availableCores
    @Option(help: "Seconds to wait for the cluster's workers to answer.") var joinTimeout: Double = 30
    @Option(help: "Micro-batches in the pipeline at once (default: one per stage, so every stage computes while the others do).")
    var microBatches: Int?
    @Option(help: "Most tokens in one step (llama.cpp's -ub); a longer prompt is fed in chunks that pipeline through the stages.")
    var ubatch = 512

    func validate() throws {
        if let m = microBatches, m < 1 { throw ValidationError("--micro-batches needs at least 1") }
        if ubatch < 1 { throw ValidationError("--ubatch needs at least 1") }
    }

    func run() async throws {
        let clusterFile: ClusterFile
        var children: [Process] = []
        do {
            if let local {
                guard local >= 1 else { throw ValidationError("--local needs at least one worker") }
                clusterFile = LocalCluster.file(workers: local, port: port)
                children = try LocalCluster.start(clusterFile, model: model, threads: threads)
            } else if let cluster {
                clusterFile = try ClusterFile(path: cluster)
            } else {
                throw ValidationError("give --cluster FILE or --local N")
            }
        } catch let e as ValidationError {
            throw e
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        defer { LocalCluster.stop(children) }
        let coordinator: Coordinator
        do {
            let socket = try ZMQSocket(.router, bind: true, endpoint: clusterFile.coordinator.replacingOccurrences(of: "tcp://localhost", with: "tcp://127.0.0.1"))
            var options = Coordinator.Options(contextLength: ctx, workerThreads: threads)
            options.joinTimeout = joinTimeout
            options.microBatches = microBatches
            options.maxBatch = ubatch
            coordinator = try Coordinator(modelPath: model, cluster: clusterFile, options: options, clients: socket,
                                          connect: { try ZMQSocket(.dealer, bind: false, endpoint: $0, identity: "coordinator") },
                                          log: { printError("[coordinator] \($0)") })
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
                // Start-up blocks on replies: a thread of its own, not the cooperative pool.
                Thread.detachNewThread {
                    do { try coordinator.start(); c.resume() } catch { c.resume(throwing: error) }
                }
            }
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        let group = ServiceGroup(services: [coordinator], gracefulShutdownSignals: [.sigterm, .sigint], logger: Logger(label: "conclave.serve"))
        try await group.run()
    }
}

/// `serve --local N` and `bench cluster`: workers as child processes of this binary on 127.0.0.1.
enum LocalCluster {
    static func file(workers n: Int, port: Int, memory: Int = Int(ProcessInfo.processInfo.physicalMemory) / 2) -> ClusterFile {
        let ws = (0..<n).map { i in
            ClusterFile.Worker(name: "local-\(i + 1)", endpoint: "tcp://127.0.0.1:\(port + 1 + i)", memory: memory,
                               role: n >= 3 ? (i == n - 1 ? .experts : .stage) : .any)
        }
        return ClusterFile(coordinator: "tcp://127.0.0.1:\(port)", workers: ws)
    }

    /// Starts `conclave worker` for every worker of `cluster` whose endpoint is on this machine.
    static func start(_ cluster: ClusterFile, model: String?, threads: Int) throws -> [Process] {
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var started: [Process] = []
        for w in cluster.workers {
            let p = Process()
            p.executableURL = exe
            var args = ["worker", "--listen", w.endpoint, "--name", w.name, "--memory", String(w.memory), "--threads", String(threads), "--exit-with-parent"]
            if let model { args += ["--model", model] }
            p.arguments = args
            // Workers sharing this machine's cores: idle pools park sooner than the default (see ThreadPool) — soon
            // enough not to take the cores of the stage that computes next, late enough to stay awake through
            // the short gaps between one step's products (2000 polls parked inside steps: 0.77–0.82× of one
            // process on `bench cluster` with two stages, against 0.81–1.02× at 100000).
            var env = ProcessInfo.processInfo.environment
            if env["CONCLAVE_SPIN_POLLS"] == nil { env["CONCLAVE_SPIN_POLLS"] = "100000" }
            p.environment = env
            do {
                try p.run()
            } catch {
                stop(started)
                throw CoordinatorError("cannot start a worker (\(exe.path)): \(error)")
            }
            started.append(p)
        }
        return started
    }

    static func stop(_ processes: [Process]) {
        for p in processes where p.isRunning { p.terminate() }
        for p in processes { p.waitUntilExit() }
    }
}
