#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CKernels
import Foundation
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
        file as the coordinator's); without one it fetches the file from the coordinator in checksummed chunks and
        caches it in --cache-dir for the next start. SIGTERM or SIGINT finish the queued work and exit.
        """
    )

    @Option(help: "Endpoint to bind, e.g. tcp://0.0.0.0:7070.") var listen: String
    @Option(name: [.short, .long], help: "This host's copy of the model (optional).") var model: String?
    @Option(help: "Hard memory budget for weights, KV caches, expert cache slots and scratch, e.g. 12GiB (default: all physical memory). Reported to the coordinator, which plans with it; experts beyond it are paged from the model file.") var memory: String?
    @Option(help: "Name reported to the coordinator (default: the host name).") var name: String?
    @Option(help: "Threads for this worker's kernels (default: every core).") var threads: Int = ThreadPool.availableCores
    @Option(help: "Where a fetched model is cached.") var cacheDir: String = FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/conclave").path
    @Flag(help: .hidden) var exitWithParent = false

    func validate() throws {
        if let problem = ThreadPool.problem(threads: threads) { throw ValidationError(problem) }
    }

    func run() async throws {
        if exitWithParent { ck_exit_with_parent() }
        let budget: Int
        if let memory {
            guard let b = ClusterFile.parseBytes(memory) else { throw ValidationError("--memory '\(memory)' is not a size like 12GiB") }
            budget = b
        } else {
            budget = Int(ProcessInfo.processInfo.physicalMemory)
        }
        let label = name ?? ProcessInfo.processInfo.hostName
        let socket: ZMQSocket
        do {
            socket = try ZMQSocket(.router, bind: true, endpoint: listen, maxMessageSize: (256 << 20) + (1 << 20))
        } catch {
            printError("error: cannot listen on \(listen): \(error)")
            throw ExitCode(1)
        }
        let service: WorkerService
        do {
            service = try WorkerService(
                options: .init(name: label, endpoint: listen, modelPath: model, memory: budget, threads: threads, cacheDirectory: cacheDir),
                router: socket, connect: { try ZMQSocket(.dealer, bind: false, endpoint: $0) },
                log: { printError("[\(label)] \($0)") })
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        printError("[\(label)] listening on \(socket.endpoint)\(model.map { " with \($0)" } ?? " (no model file: it will be fetched from the coordinator)")")
        let group = ServiceGroup(services: [service], gracefulShutdownSignals: [.sigterm, .sigint], logger: Logger(label: "conclave.worker"))
        try await group.run()
        printError("[\(label)] stopped")
    }
}
