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
        abstract: "Many requests at a cluster, with faults if asked: every one completed with the clean text or cleanly refused, none lost; RSS growth; latency over time.",
        discussion: """
        Starts `conclave serve --local N` (or the workers of --cluster and a coordinator, all on 127.0.0.1) and sends
        --requests generations of --gen tokens from --concurrency clients at once over the ZeroMQ client API, with
        varied prompts and seeds. Every tenth request is one the coordinator must refuse (a prompt longer than the
        context). First each (prompt, seed) pair is generated once, alone: its clean text, which every later answer
        for the pair must equal.

        With --faults K (and --cluster, whose processes this bench then owns), K faults are spread over the run:
        kill -9 of a random worker (restarted after --outage seconds) or SIGSTOP of one (SIGCONT after --outage),
        and once, in the middle, kill -9 of the coordinator and a new one at once. A request may then be refused
        with a clear error, or see its connection lost, while an outage lasts (from the fault until the cluster
        answered again after it); everywhere else it must complete with its clean text. Each fault prints how soon
        the cluster answered during and after it. Logs: one per process in a temporary directory, kept on failure.

        Counts completed, refused (an Error answer), wrong (text other than the clean one) and lost (no answer within
        --timeout), reads each process's RSS after the warm-up and at the end, and prints request latency p50/p99 per
        tenth of the run. Exits 1 when a request was lost or wrong, refused outside an outage, or when the cluster
        did not serve again after a fault.
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
    @Option(help: "Faults to do to the cluster during the run (needs --cluster): kill -9 or SIGSTOP of workers, one coordinator restart.") var faults = 0
    @Option(help: "Seconds a killed or stopped worker stays away (longer than the 3 s after which the coordinator calls it down).") var outage: Double = 8
    @Option(help: "Seed of the fault schedule (which worker, which fault).") var faultSeed: UInt64 = 1
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        guard (local != nil) != (cluster != nil) else { throw ValidationError("give --local N or --cluster FILE") }
        if let local, local < 1 { throw ValidationError("--local needs at least one worker") }
        guard requests >= 1, concurrency >= 1, gen >= 1, ctx >= 16 else { throw ValidationError("--requests, --concurrency and --gen need at least 1, --ctx at least 16") }
        guard faults >= 0, outage >= 0 else { throw ValidationError("--faults and --outage cannot be negative") }
        if faults > 0 && cluster == nil { throw ValidationError("--faults needs --cluster: the bench must own the workers to kill and restart them (serve --local owns its own)") }
    }

    /// The 24 (prompt, seed) pairs the run cycles through; request i asks for pair i % 24.
    static let prompts = ["Once upon a time", "The little dog", "One day, a girl named Lily", "Tom had a red ball", "In the forest", "The sun was hot"]
    static let pairs = 24

    enum Answer { case completed([UInt8]), refused(String), interrupted(String), lost }
    struct Outcome { var index: Int; var answer: Answer; var started: Double; var finished: Double }

    func run() throws {
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().path
        let logDir = FileManager.default.temporaryDirectory.appendingPathComponent("conclave-soak-\(getpid())").path
        try FileManager.default.createDirectory(atPath: logDir, withIntermediateDirectories: true)
        let coordinatorEndpoint: String
        // --local: serve owns its workers; --cluster: this bench owns every process.
        var served: Process?
        var owned: SoakCluster?
        // A local cluster runs CurveZMQ (serve's default); its keys go where this bench finds them.
        var keyDir: String?
        if let local {
            coordinatorEndpoint = "tcp://127.0.0.1:\(port)"
            let dir = logDir + "/keys"
            keyDir = dir
            let p = Process()
            p.executableURL = URL(fileURLWithPath: binary)
            p.arguments = ["serve", "-m", model, "--local", String(local), "--port", String(port), "--threads", String(threads), "--http", "off", "--key-dir", dir]
            p.standardError = try LocalCluster.appendingLog(logDir + "/serve.log")
            try p.run()
            served = p
        } else {
            let file: ClusterFile
            do { file = try ClusterFile(path: cluster!) } catch { printError("error: \(error)"); throw ExitCode(1) }
            guard (file.workers.map(\.endpoint) + [file.coordinator]).allSatisfy({ $0.hasPrefix("tcp://127.0.0.1:") }) else {
                printError("error: bench soak starts the workers itself, so every endpoint must be on 127.0.0.1")
                throw ExitCode(1)
            }
            coordinatorEndpoint = file.coordinator
            owned = try SoakCluster(file: file, clusterPath: cluster!, model: model, threads: threads, logDir: logDir)
        }
        var keepLogs = false
        defer {
            owned?.stop()
            if let served { LocalCluster.stop([served]) }
            if keepLogs { printError("logs of every process: \(logDir)") } else { try? FileManager.default.removeItem(atPath: logDir) }
        }
        let coordinatorNow: @Sendable () -> Process = { [served, owned] in owned?.coordinator ?? served! }
        if let keyDir {
            let deadline = Date().addingTimeInterval(120)
            while !FileManager.default.fileExists(atPath: keyDir + "/client.key_secret"), coordinatorNow().isRunning, Date() < deadline { usleep(50_000) }
        }
        let keys = keyDir
        let makeClient: @Sendable () throws -> CoordinatorClient = {
            try CoordinatorClient(endpoint: coordinatorEndpoint, transports: try ClientKeyOptions.transports(to: coordinatorEndpoint, keyDir: keys))
        }
        let client = try makeClient()
        do { try BenchCluster.waitUntilReady(client, coordinator: coordinatorNow()) } catch { keepLogs = true; throw error }
        // The processes to watch: the coordinator and the workers it started (--local), or every owned one.
        let pids = owned?.pids ?? ([served!.processIdentifier] + Self.children(of: served!.processIdentifier))
        let names = owned?.names ?? (["coordinator"] + (1..<max(1, pids.count)).map { "worker-\($0)" })

        let tooLong = String(repeating: "word ", count: ctx + 8)
        let request: @Sendable (Int, CoordinatorClient, Bool) -> Answer = { [gen, ctx, timeout] i, client, refuse in
            var g = Conclave_V1_Generate()
            g.prompt = refuse ? tooLong : Self.prompts[i % Self.prompts.count]
            g.maxTokens = UInt32(gen)
            g.contextLength = UInt32(ctx)
            var s = SamplingParams()
            s.seed = UInt64(i % Self.pairs)
            g.sampling = s.wire
            var text: [UInt8] = []
            do {
                _ = try client.generate(g, timeout: timeout) { text += $0 }
                return .completed(text)
            } catch let e as CoordinatorClient.Failure where e.interrupted {
                return .interrupted(e.description)
            } catch let e as CoordinatorClient.Failure where !e.description.hasPrefix("no answer") {
                return .refused(e.description)
            } catch {
                return .lost
            }
        }
        // Each pair's clean text, alone on a quiet cluster; this is also the warm-up.
        var clean: [[UInt8]] = []
        for k in 0..<Self.pairs {
            guard case .completed(let text) = request(k, client, false) else {
                keepLogs = true
                printError("error: the clean run of pair \(k) did not complete")
                throw ExitCode(1)
            }
            clean.append(text)
        }
        let reference = clean
        let rssStart = pids.map(Self.rss)
        let next = Mutex(0), outcomes = Mutex<[Outcome]>([]), done = Atomic<Int>(0)
        let t0 = KernelBench.now()
        // The faults, on their own thread, each after an equal share of the requests finished.
        let records = Mutex<[SoakFaultRecord]>([])
        let faultsDone = DispatchSemaphore(value: 0)
        // Workers restarted by the fault thread die with it (their --exit-with-parent is the kernel's parent-death
        // signal, which follows the thread that started them): it waits for the end of the run.
        let release = DispatchSemaphore(value: 0)
        if let owned, faults > 0 {
            let schedule = SoakFault.schedule(faults, workers: owned.file.workers.map(\.name), seed: faultSeed)
            Thread.detachNewThread { [requests, outage] in
                defer {
                    faultsDone.signal()
                    release.wait()
                }
                guard let probe = try? makeClient() else { return }
                // A request that completes: the cluster serves. Probes run until one does (or `until`).
                func served(until deadline: Double) -> Double? {
                    while KernelBench.now() < deadline {
                        if case .completed(let text) = request(0, probe, false) {
                            if text != reference[0] { outcomes.withLock { $0.append(Outcome(index: -1, answer: .completed(text), started: 0, finished: 0)) } }
                            return KernelBench.now() - t0
                        }
                        usleep(200_000)
                    }
                    return nil
                }
                for (k, fault) in schedule.enumerated() {
                    while done.load(ordering: .relaxed) < (k + 1) * requests / (schedule.count + 1) { usleep(50_000) }
                    var r = SoakFaultRecord(fault: fault, began: KernelBench.now() - t0)
                    let outageEnds = KernelBench.now() + outage
                    do {
                        switch fault {
                        case .kill(let w, _):
                            owned.kill9(worker: w)
                            r.servedDuring = served(until: outageEnds)
                            while KernelBench.now() < outageEnds { usleep(50_000) }
                            try owned.restart(worker: w)
                        case .stop(let w, _):
                            owned.signal(worker: w, SIGSTOP)
                            r.servedDuring = served(until: outageEnds)
                            while KernelBench.now() < outageEnds { usleep(50_000) }
                            owned.signal(worker: w, SIGCONT)
                        case .coordinatorRestart:
                            try owned.restartCoordinator()
                        }
                    } catch {
                        printError("error: fault \(k + 1) (\(fault)): \(error)")
                    }
                    r.ended = KernelBench.now() - t0
                    r.servedAfter = served(until: KernelBench.now() + 180)
                    records.withLock { $0.append(r) }
                    if r.servedAfter == nil { return }
                }
            }
        } else {
            faultsDone.signal()
        }
        DispatchQueue.concurrentPerform(iterations: concurrency) { _ in
            guard let c = try? makeClient() else { return }
            while true {
                let i = next.withLock { n -> Int in defer { n += 1 }; return n }
                guard i < requests else { return }
                let started = KernelBench.now() - t0
                let a = request(i, c, i % 10 == 9)
                outcomes.withLock { $0.append(Outcome(index: i, answer: a, started: started, finished: KernelBench.now() - t0)) }
                done.add(1, ordering: .relaxed)
            }
        }
        faultsDone.wait()
        let seconds = KernelBench.now() - t0
        let rssEnd = (owned?.pids ?? pids).map(Self.rss)
        let restarted = zip(pids, owned?.pids ?? pids).map { $0 != $1 }
        release.signal()
        let faultRecords = records.withLock { $0 }
        let all = outcomes.withLock { $0 }.sorted { $0.finished < $1.finished }
        let probeMismatches = all.filter { $0.index < 0 }.count
        let answers = all.filter { $0.index >= 0 }

        // Every answer judged: the clean text, a refusal that was meant, or an error while an outage lasted.
        var completed = 0, refusedAsMeant = 0, refusedInOutage = 0, interrupted = 0, wrong = probeMismatches, refusedOutside = 0, lost = requests - answers.count
        var errors: [String: Int] = [:]
        func inOutage(_ o: Outcome) -> Bool { faultRecords.contains { $0.window.overlaps(o.started...o.finished) } }
        for o in answers {
            let meant = o.index % 10 == 9
            switch o.answer {
            case .completed(let text):
                if meant || text != reference[o.index % Self.pairs] { wrong += 1 } else { completed += 1 }
            case .refused(let message):
                if meant { refusedAsMeant += 1 } else if inOutage(o) { refusedInOutage += 1; errors[message, default: 0] += 1 } else { refusedOutside += 1; errors[message, default: 0] += 1 }
            case .interrupted(let message):
                if inOutage(o) { interrupted += 1; errors[message, default: 0] += 1 } else { refusedOutside += 1; errors[message, default: 0] += 1 }
            case .lost:
                lost += 1
            }
        }
        let notServing = faultRecords.count < faults || faultRecords.contains { $0.servedAfter == nil }
        // Latency per tenth of the run, by completion order.
        let latencies = answers.filter { if case .completed = $0.answer { return true } else { return false } }
        let per = max(1, latencies.count / 10)
        let windows = stride(from: 0, to: latencies.count, by: per).map { start in
            latencies[start..<min(latencies.count, start + per)].map { $0.finished - $0.started }.sorted()
        }
        func pct(_ v: [Double], _ p: Double) -> Double { v.isEmpty ? 0 : v[min(v.count - 1, Int(Double(v.count) * p))] * 1000 }
        let growth = zip(rssStart, rssEnd).map { $0 > 0 ? Double($1) / Double($0) - 1 : 0 }
        func opt(_ v: Double?) -> JSON { v.map { .double($0) } ?? .null }
        if json {
            print(JSON.object([
                ("requests", .int(requests)), ("completed", .int(completed)), ("refused_as_meant", .int(refusedAsMeant)),
                ("refused_in_outage", .int(refusedInOutage)), ("interrupted_in_outage", .int(interrupted)),
                ("refused_outside_outage", .int(refusedOutside)), ("wrong", .int(wrong)), ("lost", .int(lost)),
                ("concurrency", .int(concurrency)), ("seconds", .double(seconds)),
                ("faults", .array(faultRecords.map { r in
                    .object([("fault", .string(r.fault.description)), ("began_s", .double(r.began)), ("ended_s", .double(r.ended)),
                             ("served_during_s", opt(r.servedDuring.map { $0 - r.began })), ("served_after_s", opt(r.servedAfter.map { $0 - r.ended }))])
                })),
                ("errors", .array(errors.sorted { $0.value > $1.value }.map { .object([("message", .string($0.key)), ("count", .int($0.value))]) })),
                ("rss", .array(names.indices.map { i in
                    .object([("process", .string(names[i])), ("start_bytes", .int(rssStart[i])), ("end_bytes", .int(rssEnd[i])),
                             ("restarted", .bool(restarted[i])), ("growth", restarted[i] ? .null : .double(growth[i]))])
                })),
                ("windows", .array(windows.enumerated().map { i, w in
                    .object([("window", .int(i)), ("requests", .int(w.count)), ("p50_ms", .double(pct(w, 0.5))), ("p99_ms", .double(pct(w, 0.99)))])
                })),
            ]).render())
        } else {
            print("\(requests) requests, \(concurrency) at once, in \(fixed(seconds, 1)) s: \(completed) completed with the clean text, \(refusedAsMeant) refused as meant, "
                  + "\(refusedInOutage) refused and \(interrupted) interrupted during an outage, \(refusedOutside) refused outside one, \(wrong) wrong, \(lost) lost")
            for (k, r) in faultRecords.enumerated() {
                let during = r.servedDuring.map { "answered \(fixed($0 - r.began, 1)) s after it began; " } ?? ""
                let after = r.servedAfter.map { "answered \(fixed($0 - r.ended, 1)) s after it ended" } ?? "NOT answering 180 s after it ended"
                print("  fault \(k + 1) at \(fixed(r.began, 1)) s: \(r.fault): \(during)\(after)")
            }
            for (message, n) in errors.sorted(by: { $0.value > $1.value }) { print("  \(n)× \(message)") }
            for i in names.indices {
                let change = restarted[i] ? "restarted" : "\(fixed(growth[i] * 100, 1))%"
                print("  \(names[i].padding(toLength: 12, withPad: " ", startingAt: 0)) RSS \(formatBytes(rssStart[i])) → \(formatBytes(rssEnd[i])) (\(change))")
            }
            print("  latency p50 / p99 ms per tenth of the run: " + windows.map { "\(fixed(pct($0, 0.5), 0))/\(fixed(pct($0, 0.99), 0))" }.joined(separator: "  "))
        }
        if lost > 0 || wrong > 0 || refusedOutside > 0 || notServing {
            keepLogs = true
            throw ExitCode(1)
        }
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
