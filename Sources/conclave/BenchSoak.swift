import ArgumentParser
import Foundation
import Kernels
import Model
import Placement
import Synchronization
import ClusterProtocol
import Wire

/// `conclave bench soak`: many requests through a cluster, every one accounted for, and the processes' memory
/// from start to end.
struct BenchSoak: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soak",
        abstract: "Many requests at a cluster: every one completed or cleanly refused, none lost; RSS growth; latency over time.",
        discussion: """
        Starts `conclave serve --local N` (or the workers of --cluster and a coordinator, all on 127.0.0.1) and sends
        --requests generations of --gen tokens from --concurrency clients at once over the ZeroMQ client API, with
        varied prompts and seeds. Every tenth request is one the coordinator must refuse (a prompt longer than the
        context). Counts completed, refused (an Error answer) and lost (no answer within --timeout), reads each
        process's RSS after the warm-up and at the end, and prints request latency p50/p99 per tenth of the run.
        """
    )

    @Option(name: [.short, .long], help: "Path to a .gguf model.") var model: String = defaultModelPath
    @Option(help: "Start this many workers on 127.0.0.1.") var local: Int?
    @Option(help: "Or a cluster file whose endpoints are all on 127.0.0.1 (its workers are started here).") var cluster: String?
    @Option(help: "With --local: the coordinator's port; workers take the ports after it.") var port: Int = 7600
    @Option(help: "Requests in all.") var requests = 1000
    @Option(help: "Clients sending at once.") var concurrency = 8
    @Option(help: "Tokens generated per request.") var gen = 16
    @Option(help: "Context per request (a refused request's prompt is longer).") var ctx = 256
    @Option(help: "Threads per worker.") var threads = 1
    @Option(help: "Seconds without an answer before a request counts as lost.") var timeout: Double = 120
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        guard (local != nil) != (cluster != nil) else { throw ValidationError("give --local N or --cluster FILE") }
        if let local, local < 1 { throw ValidationError("--local needs at least one worker") }
        guard requests >= 1, concurrency >= 1, gen >= 1, ctx >= 16 else { throw ValidationError("--requests, --concurrency and --gen need at least 1, --ctx at least 16") }
    }

    struct Outcome { var index: Int; var ok: Bool; var refused: Bool; var seconds: Double; var finished: Double }

    func run() throws {
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().path
        var children: [Process] = []
        let coordinatorEndpoint: String
        let coordinator = Process()
        coordinator.executableURL = URL(fileURLWithPath: binary)
        // A local cluster runs CurveZMQ (serve's default); its keys go where this bench finds them.
        var keyDir: String?
        if let local {
            coordinatorEndpoint = "tcp://127.0.0.1:\(port)"
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("conclave-soak-keys-\(getpid())").path
            keyDir = dir
            coordinator.arguments = ["serve", "-m", model, "--local", String(local), "--port", String(port), "--threads", String(threads), "--http", "off", "--key-dir", dir]
        } else {
            let file: ClusterFile
            do { file = try ClusterFile(path: cluster!) } catch { printError("error: \(error)"); throw ExitCode(1) }
            guard (file.workers.map(\.endpoint) + [file.coordinator]).allSatisfy({ $0.hasPrefix("tcp://127.0.0.1:") }) else {
                printError("error: bench soak starts the workers itself, so every endpoint must be on 127.0.0.1")
                throw ExitCode(1)
            }
            coordinatorEndpoint = file.coordinator
            children = try LocalCluster.start(file, model: model, threads: threads)
            coordinator.arguments = ["serve", "-m", model, "--cluster", cluster!, "--threads", String(threads), "--http", "off"]
        }
        let log = Pipe()
        coordinator.standardError = log
        try coordinator.run()
        children.append(coordinator)
        defer { LocalCluster.stop(children) }
        let drain = log.fileHandleForReading
        Thread.detachNewThread { _ = drain.readDataToEndOfFile() }

        defer { if let keyDir { try? FileManager.default.removeItem(atPath: keyDir) } }
        if let keyDir {
            let deadline = Date().addingTimeInterval(120)
            while !FileManager.default.fileExists(atPath: keyDir + "/client.key_secret"), coordinator.isRunning, Date() < deadline { usleep(50_000) }
        }
        let keys = keyDir
        let client = try CoordinatorClient(endpoint: coordinatorEndpoint, transports: try ClientKeyOptions.transports(to: coordinatorEndpoint, keyDir: keys))
        try BenchCluster.waitUntilReady(client, coordinator: coordinator)
        // The processes to watch: the coordinator, the workers it started (--local), the workers started here.
        let pids = [coordinator.processIdentifier] + Self.children(of: coordinator.processIdentifier) + children.dropLast().map(\.processIdentifier)

        let prompts = ["Once upon a time", "The little dog", "One day, a girl named Lily", "Tom had a red ball", "In the forest", "The sun was hot"]
        let tooLong = String(repeating: "word ", count: ctx + 8)
        let request: @Sendable (Int, CoordinatorClient) -> Outcome = { [gen, ctx, timeout] i, client in
            var g = Conclave_V1_Generate()
            let refuse = i % 10 == 9
            g.prompt = refuse ? tooLong : prompts[i % prompts.count]
            g.maxTokens = UInt32(gen)
            g.contextLength = UInt32(ctx)
            var s = SamplingParams()
            s.seed = UInt64(i)
            g.sampling = s.wire
            let t0 = KernelBench.now()
            do {
                _ = try client.generate(g, timeout: timeout) { _ in }
                return Outcome(index: i, ok: !refuse, refused: false, seconds: KernelBench.now() - t0, finished: KernelBench.now())
            } catch let e as CoordinatorClient.Failure where !e.description.hasPrefix("no answer") {
                // An Error answer: clean when it was meant to be refused.
                return Outcome(index: i, ok: refuse, refused: true, seconds: KernelBench.now() - t0, finished: KernelBench.now())
            } catch {
                return Outcome(index: i, ok: false, refused: false, seconds: KernelBench.now() - t0, finished: KernelBench.now())
            }
        }
        // Warm-up, then the start figures.
        for i in 0..<min(concurrency, 4) { _ = request(i, client) }
        let rssStart = pids.map(Self.rss)
        let next = Mutex(0), outcomes = Mutex<[Outcome]>([])
        let t0 = KernelBench.now()
        DispatchQueue.concurrentPerform(iterations: concurrency) { _ in
            guard let c = try? CoordinatorClient(endpoint: coordinatorEndpoint, transports: try ClientKeyOptions.transports(to: coordinatorEndpoint, keyDir: keys)) else { return }
            while true {
                let i = next.withLock { n -> Int in defer { n += 1 }; return n }
                guard i < requests else { return }
                let o = request(i, c)
                outcomes.withLock { $0.append(o) }
            }
        }
        let seconds = KernelBench.now() - t0
        let rssEnd = pids.map(Self.rss)
        let all = outcomes.withLock { $0 }.sorted { $0.finished < $1.finished }
        let completed = all.filter { $0.ok && !$0.refused }.count
        let refused = all.filter { $0.refused }.count
        let cleanlyRefused = all.filter { $0.refused && $0.ok }.count
        let lost = requests - completed - cleanlyRefused
        // Latency per tenth of the run, by completion order.
        let windows = stride(from: 0, to: all.count, by: max(1, all.count / 10)).map { start -> [Double] in
            all[start..<min(all.count, start + max(1, all.count / 10))].filter { !$0.refused }.map(\.seconds).sorted()
        }
        func pct(_ v: [Double], _ p: Double) -> Double { v.isEmpty ? 0 : v[min(v.count - 1, Int(Double(v.count) * p))] * 1000 }
        let names = ["coordinator"] + (1..<pids.count).map { "worker-\($0)" }
        let growth = zip(rssStart, rssEnd).map { $0 > 0 ? Double($1) / Double($0) - 1 : 0 }
        if json {
            print(JSON.object([
                ("requests", .int(requests)), ("completed", .int(completed)), ("refused", .int(refused)), ("lost", .int(lost)),
                ("concurrency", .int(concurrency)), ("seconds", .double(seconds)),
                ("rss", .array(names.indices.map { i in
                    .object([("process", .string(names[i])), ("start_bytes", .int(rssStart[i])), ("end_bytes", .int(rssEnd[i])), ("growth", .double(growth[i]))])
                })),
                ("windows", .array(windows.enumerated().map { i, w in
                    .object([("window", .int(i)), ("requests", .int(w.count)), ("p50_ms", .double(pct(w, 0.5))), ("p99_ms", .double(pct(w, 0.99)))])
                })),
            ]).render())
        } else {
            print("\(requests) requests, \(concurrency) at once, in \(fixed(seconds, 1)) s: \(completed) completed, \(refused) refused (\(cleanlyRefused) as meant), \(lost) lost")
            for i in names.indices {
                print("  \(names[i].padding(toLength: 12, withPad: " ", startingAt: 0)) RSS \(formatBytes(rssStart[i])) → \(formatBytes(rssEnd[i])) (\(fixed(growth[i] * 100, 1))%)")
            }
            print("  latency p50 / p99 ms per tenth of the run: " + windows.map { "\(fixed(pct($0, 0.5), 0))/\(fixed(pct($0, 0.99), 0))" }.joined(separator: "  "))
        }
        if lost > 0 { throw ExitCode(1) }
    }

    /// Resident set size of a process, from /proc (0 when it is gone).
    static func rss(_ pid: Int32) -> Int {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kb = Int(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
        return kb * 1024
    }

    /// The processes whose parent is `pid` (the workers `serve --local` started).
    static func children(of pid: Int32) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { p in
            guard let stat = try? String(contentsOfFile: "/proc/\(p)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return false }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 1 && Int32(fields[1]) == pid
        }.sorted()
    }
}
