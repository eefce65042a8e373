#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CurveKeys
import CHost
import Foundation
import Runtime
import Kernels
import Logging
import Placement
import ServiceLifecycle
import Wire
import Worker

struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run a worker daemon: hold a shard of a model and serve stage inputs and expert calls.",
        discussion: """
        Binds --listen and waits for the coordinator (`conclave serve`), which connects to the endpoint its cluster
        file names for this worker. With --model the worker maps its own copy of the GGUF file (it must be the same
        file as the coordinator's); without one it fetches from the coordinator only its shard — the header, its
        layers' tensors and its experts' slices, each checked against the coordinator's SHA-256 of that piece — into
        a sparse file in --cache-dir (the rest of the model takes no disk), kept for the next start; a re-plan that
        gives it more fetches only what it adds. SIGTERM or SIGINT finish the queued work and exit; with --drain
        the worker first asks the coordinator to move its shard to the others (it keeps serving, running requests
        go on under the new plan) and stops once released — or at once, with the reason logged, when the others
        cannot hold the model without it.

        With --join the worker is not in the cluster file: it asks the coordinator (at its client endpoint, the
        cluster file's `coordinator:`) to use it, and the coordinator re-plans under a new epoch while requests
        keep running. With CurveZMQ the cluster file's `join_keys` must list this worker's public key. The
        coordinator connects back to --advertise (default: --listen), so give it an address the coordinator
        reaches when --listen binds every interface.
        """
    )

    @Option(help: "Endpoint to bind, e.g. tcp://0.0.0.0:7070.") var listen: String
    @Flag(help: "On SIGTERM or SIGINT, first have the coordinator move this worker's shard to the others, then stop.") var drain = false
    @Option(help: ArgumentHelp("Join a serving cluster that does not list this worker: the coordinator's endpoint (its cluster file's `coordinator:`), e.g. tcp://10.0.0.1:7000.", valueName: "endpoint"))
    var join: String?
    @Option(help: ArgumentHelp("With --join: where the coordinator reaches this worker (default: --listen), e.g. tcp://10.0.0.5:7070.", valueName: "endpoint"))
    var advertise: String?
    @Option(help: "With --join: what the worker may hold, as a cluster file's role: any, stage (layers), experts, or spare (kept for a failure).") var role: String = "any"
    @Option(name: [.short, .long], help: "This host's copy of the model (optional).") var model: String?
    @Option(help: "Hard memory budget for weights, KV caches, expert cache slots and scratch, e.g. 12GiB (default: all physical memory). Reported to the coordinator, which plans with it; experts beyond it are paged from the model file.") var memory: String?
    @Option(help: "Name reported to the coordinator (default: the host name).") var name: String?
    @Option(help: "Threads for this worker's kernels (default: every core).") var threads: Int = ThreadPool.availableCores
    @Option(help: "Where the fetched shard of a model is kept (one sparse file per model, shared by workers of this host).") var cacheDir: String = FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/conclave").path
    @Option(help: ArgumentHelp("CurveZMQ: this worker's key pair is DIR/NAME.key_secret (NAME: --name) and the coordinator's public key DIR/coordinator.key (`conclave keys generate`). Only the coordinator and the workers of its plan are then admitted.", valueName: "dir"))
    var keyDir: String?
    @Option(help: ArgumentHelp("The coordinator's public key (40 Z85 characters, or a .key file), instead of DIR/coordinator.key.", valueName: "key"))
    var coordinatorKey: String?
    @Flag(help: "Listen on a non-loopback address without CurveZMQ: anyone who reaches the port can use this worker.") var insecure = false
    @Flag(help: .hidden) var exitWithParent = false

    func validate() throws {
        if let problem = ThreadPool.problem(threads: threads) { throw ValidationError(problem) }
        if join == nil, advertise != nil || role != "any" { throw ValidationError("--advertise and --role go with --join (a worker of the cluster file has the endpoint and role the file gives it)") }
        if ClusterFile.Role(rawValue: role) == nil { throw ValidationError("--role \(role) is not one of any, stage, experts, spare") }
        if let join, !ClusterFile.isEndpoint(join) { throw ValidationError("--join \(join) is not an endpoint like tcp://10.0.0.1:7000") }
        if let advertise, !ClusterFile.isEndpoint(advertise) { throw ValidationError("--advertise \(advertise) is not an endpoint like tcp://10.0.0.5:7070") }
        if join != nil, advertise == nil, listen.hasPrefix("tcp://0.0.0.0:") || listen.hasPrefix("tcp://*:") || listen.hasPrefix("tcp://[::]:") {
            throw ValidationError("--listen \(listen) binds every interface: give --advertise tcp://ADDRESS:PORT, where the coordinator reaches this worker")
        }
        if coordinatorKey != nil, keyDir == nil { throw ValidationError("--coordinator-key needs --key-dir (this worker's own key pair)") }
        if keyDir != nil, insecure { throw ValidationError("--insecure and --key-dir contradict each other: with keys the worker authenticates its peers") }
        if keyDir == nil, !insecure, !ClusterFile.isLoopback(listen) {
            throw ValidationError("""
                --listen \(listen) is reachable from other hosts, and without CurveZMQ anyone who reaches it can use this worker. \
                Give --key-dir DIR (make keys with `conclave keys generate -o DIR coordinator \(name ?? "NAME")`), \
                or --insecure on a network you trust
                """)
        }
    }

    /// CurveZMQ settings from --key-dir, or nil for plain sockets.
    func curve(name: String) throws -> ZeroMQTransports.Curve? {
        guard let keyDir else { return nil }
        let pair = try CurveCertificate.pair(keyDir, name)
        let coordinator = try coordinatorKey.map { try CurveKey(keyOrFile: $0) }
            ?? CurveCertificate.read(CurveCertificate.publicPath(keyDir, "coordinator")).publicKey
        // With --join we also connect to the coordinator's client endpoint, which proves the coordinator's key.
        return ZeroMQTransports.Curve(keys: pair, admitted: [coordinator: .coordinator], servers: join.map { [$0: coordinator] } ?? [:])
    }

    func run() async throws {
        if exitWithParent { host_exit_with_parent() }
        let budget: Int
        if let memory {
            guard let b = ClusterFile.parseBytes(memory) else { throw ValidationError("--memory '\(memory)' is not a size like 12GiB") }
            budget = b
        } else {
            budget = Int(ProcessInfo.processInfo.physicalMemory)
        }
        let label = name ?? ProcessInfo.processInfo.hostName
        let transports: ZeroMQTransports
        do {
            transports = ZeroMQTransports(curve: try curve(name: label), log: { printError("[\(label)] \($0)") })
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        if insecure { printError("[\(label)] WARNING: --insecure: no CurveZMQ; any process that reaches \(listen) can assign this worker, feed it and read its activations") }
        let socket: Transport
        do {
            socket = try transports.listen(listen, maxMessageSize: (256 << 20) + (1 << 20))
        } catch {
            printError("error: cannot listen on \(listen): \(error)")
            throw ExitCode(1)
        }
        // How fast this host streams quantized weights (about 0.1 s): the coordinator splits expert-parallel
        // layers so that each worker's share takes the same time.
        var options = WorkerService.Options(name: label, endpoint: advertise ?? listen, modelPath: model, memory: budget, threads: threads, cacheDirectory: cacheDir)
        options.drainOnStop = drain
        options.join = join
        options.joinRole = role
        if let rate = try? KernelBench.matmul(type: .q4_0, rows: 512, cols: 2048, batch: 1, pool: ThreadPool(threads: threads),
                                              totalBytes: 32 << 20, minSeconds: 0.05) ?? nil {
            options.readRate = rate.gbps * 1e9
            printError("[\(label)] reads Q4_0 weights at \(String(format: "%.1f", rate.gbps)) GB/s with \(threads) threads")
        }
        let service: WorkerService
        do {
            service = try WorkerService(
                options: options,
                router: socket, transports: transports,
                log: { printError("[\(label)] \($0)") })
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        printError("[\(label)] listening on \(socket.endpoint)\(transports.authenticates ? " (CurveZMQ)" : "")\(model.map { " with \($0)" } ?? " (no model file: it will be fetched from the coordinator)")")
        let group = ServiceGroup(services: [service], gracefulShutdownSignals: [.sigterm, .sigint], logger: Logger(label: "conclave.worker"))
        try await group.run()
        printError("[\(label)] stopped")
    }
}
