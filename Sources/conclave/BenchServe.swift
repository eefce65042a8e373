#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import GGUF
import JSON
import Kernels
import Model
import Placement
import Runtime
import Synchronization
import Tokenizer

struct BenchServe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serving throughput through the HTTP API: N concurrent streaming clients, aggregate and per-stream tok/s, TTFT, inter-token latency.",
        discussion: """
        Starts `conclave serve` (one process, or --cluster / --local N) on a free 127.0.0.1 port, then for each
        --concurrency level sends that many streaming /v1/completions requests at once (--prompt token ids each,
        different per stream, --gen tokens, greedy) and times every SSE event. Aggregate tok/s = tokens generated
        by all streams ÷ the wall time of the round; per-stream tok/s = a stream's tokens ÷ its time after the first
        token. Each round also gets its byte ceiling, from the server's counts of layer passes and the distinct
        experts they chose (each read once for all the rows that chose it): the aggregate the read bandwidth
        (measured on --threads threads) allows for the bytes those steps read. With --vs-llama-server PATH, the same rounds run against llama.cpp's llama-server on the same file
        with the same threads (-t), slots (-np) and context, in the same sitting. With --draft DRAFT.gguf, the rounds
        run again on a server with that draft (speculative decoding: "conclave+draft"), and each round reports the
        draft's acceptance rate and the tokens each verifying pass produced (from the server's /metrics).

        With --turns N, a multi-turn chat workload instead: --conversations clients at once, each sending its whole
        conversation again every turn (a shared --system prompt, then per turn --user tokens of its own and the
        reply of --gen tokens, sent back as text). It runs on a server with the prefix cache ("conclave"), one
        without ("conclave (no cache)") and llama-server with its prompt cache, and reports each turn's median time
        to first token and the prompt tokens reused, each server's aggregate throughput, the ratios at the last
        turn, and whether the text with the cache is the text without.

        With --page-watchers N, what the dashboard costs the server: N watchers fetch what an open page fetches each
        second (/v1/cluster, /v1/cluster/experts, /metrics, /v1/models). Each round runs --page-repeats times with
        the page closed ("conclave") and open ("conclave+page"), alternating, and the medians are compared; then the
        idle server's CPU time over --page-idle-seconds with the page closed and open gives the CPU one refresh costs
        and the feed's share of the machine.
        """
    )

    @OptionGroup var model: ModelOptions
    @OptionGroup var experts: ExpertSelectionOptions
    @Option(help: "Serve from this cluster file instead of one process.") var cluster: String?
    @Option(help: "Serve from N local workers instead of one process.") var local: Int?
    @Option(help: "Concurrent streams per round, comma-separated.") var concurrency = "1,4,8"
    @Option(help: "Prompt tokens per request.") var prompt = 128
    @Option(help: "Tokens generated per request.") var gen = 64
    @Option(help: "Path to llama.cpp's llama-server, to measure it the same way.") var vsLlamaServer: String?
    @OptionGroup var draft: DraftModelOptions
    @Option(help: "Seconds to wait for a server to become healthy.") var startTimeout: Double = 300
    @Option(help: "Multi-turn mode: turns per conversation (0: the concurrency rounds).") var turns = 0
    @Option(help: "Multi-turn mode: conversations at once.") var conversations = 8
    @Option(help: "Multi-turn mode: tokens of the system prompt every conversation shares.") var system = 2000
    @Option(help: "Multi-turn mode: tokens of user text each turn adds.") var user = 300
    @Option(help: "Also measure what an open dashboard costs: N watchers poll what the page polls, once a second each; every concurrency round runs with the page closed and open, alternating.") var pageWatchers = 0
    @Option(help: "With --page-watchers: closed/open pairs per concurrency round (the median of each is reported).") var pageRepeats = 3
    @Option(help: "With --page-watchers: seconds of the idle server's CPU measured with the page closed, then open.") var pageIdleSeconds: Double = 20
    @Flag(help: "Print JSON.") var json = false

    struct Round {
        var server: String
        var streams: Int
        var aggregate = 0.0, perStream = 0.0
        var ttft50 = 0.0, ttft99 = 0.0, itl50 = 0.0, itl99 = 0.0
        var tokens = 0
        /// With a draft: what it did during the round.
        var draft: DraftStats?
        /// The round's byte ceiling: the aggregate the read bandwidth allows for the bytes its steps read (each
        /// layer pass its weights once, and each distinct expert it chose once); nil without the server's counts.
        var ceiling: Double?
        /// Distinct experts a layer pass read, on average.
        var expertsPerPass: Double?

        var json: JSONValue {
            var fields: [(String, JSONValue)] = [("server", .string(server)), ("concurrency", .int(streams)), ("aggregate_tok_s", .double(r3(aggregate))),
                     ("per_stream_tok_s", .double(r3(perStream))), ("ttft_p50_ms", .double(r3(ttft50 * 1000))), ("ttft_p99_ms", .double(r3(ttft99 * 1000))),
                     ("itl_p50_ms", .double(r3(itl50 * 1000))), ("itl_p99_ms", .double(r3(itl99 * 1000))), ("tokens", .int(tokens))]
            if let c = ceiling, let e = expertsPerPass {
                fields += [("byte_ceiling_tok_s", .double(r3(c))), ("fraction_of_ceiling", .double(r3(aggregate / max(1e-9, c)))),
                           ("experts_per_layer_pass", .double(r3(e)))]
            }
            if let d = draft {
                fields += [("draft_proposed", .int(d.proposed)), ("draft_accepted", .int(d.accepted)), ("draft_acceptance", .double(r3(d.acceptanceRate))),
                           ("tokens_per_pass", .double(r3(d.tokensPerPass)))]
            }
            return .object(fields)
        }
        func r3(_ x: Double) -> Double { (x * 1000).rounded() / 1000 }
    }

    func run() throws {
        if turns > 0 { return try runTurns() }
        let levels = concurrency.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !levels.isEmpty, levels.allSatisfy({ $0 >= 1 }) else { throw ValidationError("--concurrency takes positive integers, e.g. 1,4,8") }
        guard prompt >= 1, gen >= 1 else { throw ValidationError("--prompt and --gen need at least 1") }
        let tokenizer: Tokenizer
        do { tokenizer = try Tokenizer(file: try GGUFFile(path: model.model)) } catch { printError("error: \(error)"); throw ExitCode(1) }
        let prompts = (0..<(levels.max() ?? 1)).map { Self.promptIDs(tokenizer, count: prompt, variant: $0) }
        let ctx = prompt + gen + 16
        let slots = levels.max() ?? 1
        var rounds: [Round] = []

        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().path
        func serve(port: Int) -> [String] { serveArguments(port: port, context: ctx, slots: slots) }
        let port = Self.freePort()
        var pageCost: PageWatchers.IdleCost?
        let bytes = try stepBytes()
        rounds += try withUnsafeMutablePointer(to: &pageCost) { cost in
            try measure(name: "conclave", exe: exe, args: serve(port: port), port: port, levels: levels, prompts: prompts, pageCost: pageWatchers > 0 ? cost : nil,
                        stepBytes: bytes)
        }
        if draft.path != nil {
            let dport = Self.freePort()
            rounds += try measure(name: "conclave+draft", exe: exe, args: serve(port: dport) + draft.arguments, port: dport, levels: levels, prompts: prompts, draftMetrics: true,
                                  stepBytes: bytes)
        }
        if let path = vsLlamaServer {
            let lport = Self.freePort()
            let largs = llamaServerArguments(port: lport, context: ctx, slots: slots)
            rounds += try measure(name: "llama-server", exe: path, args: largs, port: lport, levels: levels, prompts: prompts)
        }
        let page = pageWatchers > 0 ? pageReport(rounds: rounds, levels: levels, cost: pageCost) : nil
        if json {
            let list = JSON.array(rounds.map(\.json))
            print((page.map { JSONValue.object([("rounds", list), ("page", $0.json)]) } ?? list).render())
            return
        }
        print("prompt \(prompt) tokens, \(gen) generated per stream, \(model.threads) threads")
        let rows = rounds.map { r in
            [r.server, String(r.streams), fixed(r.aggregate, 1), fixed(r.perStream, 1), "\(fixed(r.ttft50 * 1000, 1)) / \(fixed(r.ttft99 * 1000, 1))",
             "\(fixed(r.itl50 * 1000, 2)) / \(fixed(r.itl99 * 1000, 2))", String(r.tokens)]
                + (draft.path == nil ? [] : [r.draft.map { fixed($0.acceptanceRate * 100, 1) + "%" } ?? "-", r.draft.map { fixed($0.tokensPerPass, 2) } ?? "-"])
        }
        let headers = ["server", "streams", "aggregate tok/s", "per-stream tok/s", "TTFT p50 / p99 ms", "inter-token p50 / p99 ms", "tokens"]
            + (draft.path == nil ? [] : ["draft accepted", "tokens / pass"])
        for line in table(headers: headers, rows: rows) {
            print(line)
        }
        for name in Set(rounds.map(\.server)).sorted() {
            let mine = rounds.filter { $0.server == name }
            if let one = mine.first(where: { $0.streams == 1 }), let most = mine.max(by: { $0.streams < $1.streams }), most.streams > 1, one.aggregate > 0 {
                print("\(name): \(most.streams) streams give \(fixed(most.aggregate / one.aggregate, 2))× the aggregate of one")
            }
        }
        for c in levels where draft.path != nil {
            if let a = rounds.first(where: { $0.server == "conclave+draft" && $0.streams == c }), let b = rounds.first(where: { $0.server == "conclave" && $0.streams == c }), b.aggregate > 0 {
                print("\(c) stream\(c == 1 ? "" : "s"): with the draft / without = \(fixed(a.aggregate / b.aggregate, 2))× aggregate, \(fixed(a.perStream / max(1e-9, b.perStream), 2))× per stream")
            }
        }
        if vsLlamaServer != nil {
            for c in levels {
                if let a = rounds.first(where: { $0.server == "conclave" && $0.streams == c }), let b = rounds.first(where: { $0.server == "llama-server" && $0.streams == c }), b.aggregate > 0 {
                    print("\(c) streams: conclave / llama-server aggregate = \(fixed(a.aggregate / b.aggregate, 2))×")
                }
            }
        }
        for r in rounds where r.ceiling != nil {
            print("\(r.server) × \(r.streams): \(fixed(r.aggregate, 1)) tok/s of a byte ceiling of \(fixed(r.ceiling!, 1)) (\(fixed(r.aggregate / r.ceiling! * 100, 1))%), \(fixed(r.expertsPerPass!, 1)) distinct experts read per layer pass")
        }
        for line in page?.lines ?? [] { print(line) }
    }

    /// The dashboard's cost, from the rounds with the page closed and open and the idle server's CPU.
    func pageReport(rounds: [Round], levels: [Int], cost: PageWatchers.IdleCost?) -> (json: JSONValue, lines: [String]) {
        var lines: [String] = [], ratios: [(String, JSONValue)] = []
        for c in levels {
            guard let closed = rounds.first(where: { $0.server == "conclave" && $0.streams == c }),
                  let open = rounds.first(where: { $0.server == "conclave+page" && $0.streams == c }), closed.aggregate > 0 else { continue }
            let r = open.aggregate / closed.aggregate
            ratios.append((String(c), .double((r * 1000).rounded() / 1000)))
            lines.append("\(c) stream\(c == 1 ? "" : "s"): page open / closed aggregate = \(fixed(r, 3))× (medians of \(max(1, pageRepeats)) alternating rounds each)")
        }
        var fields: [(String, JSONValue)] = [("watchers", .int(pageWatchers)), ("open_over_closed", .object(ratios))]
        if let cost {
            let share = cost.share(cores: ProcessInfo.processInfo.activeProcessorCount, watchers: pageWatchers)
            fields += [("idle_seconds", .double(cost.seconds)), ("idle_cpu_closed_s", .double(cost.closedCPU)), ("idle_cpu_open_s", .double(cost.openCPU)),
                       ("refreshes", .int(cost.refreshes)), ("cpu_ms_per_refresh", .double((cost.perRefresh * 1e6).rounded() / 1000)),
                       ("cpu_share_per_open_page", .double((share / Double(max(1, pageWatchers)) * 1e6).rounded() / 1e6))]
            lines.append("idle server over \(fixed(cost.seconds, 0)) s: CPU \(fixed(cost.closedCPU * 1000, 0)) ms page closed, \(fixed(cost.openCPU * 1000, 0)) ms open "
                + "(\(cost.refreshes) refreshes by \(pageWatchers) watchers): \(fixed(cost.perRefresh * 1000, 2)) ms a refresh, "
                + "\(fixed(share / Double(max(1, pageWatchers)) * 100, 3))% of \(ProcessInfo.processInfo.activeProcessorCount) cores per open page")
        } else {
            lines.append("the idle server's CPU could not be read from /proc")
        }
        return (.object(fields), lines)
    }

    /// The multi-turn workload on each server (see the discussion).
    func runTurns() throws {
        guard conversations >= 1, system >= 1, user >= 1, gen >= 1 else { throw ValidationError("--conversations, --system, --user and --gen need at least 1") }
        let tokenizer: Tokenizer
        do { tokenizer = try Tokenizer(file: try GGUFFile(path: model.model)) } catch { printError("error: \(error)"); throw ExitCode(1) }
        let work = MultiTurnWorkload(tokenizer: tokenizer, conversations: conversations, turns: turns, system: system, user: user, gen: gen)
        let ctx = work.context
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().path
        func serve(port: Int) -> [String] { serveArguments(port: port, context: ctx, slots: conversations) }
        var runs: [MultiTurnWorkload.Run] = []
        for (name, extra) in [("conclave", [String]()), ("conclave (no cache)", ["--no-prefix-cache"])] {
            let port = Self.freePort()
            runs.append(try serving(name: name, exe: exe, args: serve(port: port) + extra, port: port) { _ in work.run(server: name, port: port) })
        }
        if let path = vsLlamaServer {
            let port = Self.freePort()
            let largs = llamaServerArguments(port: port, context: ctx, slots: conversations)
            runs.append(try serving(name: "llama-server", exe: path, args: largs, port: port) { _ in work.run(server: "llama-server", port: port) })
        }
        printError("bench serve: \(conversations) conversations × \(turns) turns, system \(work.system.count) tokens, \(user) user tokens and \(gen) generated per turn, context \(ctx)")
        MultiTurnWorkload.report(runs, turns: turns, json: json)
    }

    /// `conclave serve` on `port` with `slots` sequences of `context` positions (one process, or the cluster asked
    /// for). Each server gets fresh ports (its own workers' too: the previous server's may not be free yet).
    func serveArguments(port: Int, context: Int, slots: Int) -> [String] {
        var args = ["serve", "-m", model.model, "--http", "127.0.0.1:\(port)", "--threads", String(model.threads), "--ctx", String(context), "--parallel", String(slots)]
            + model.serveArguments + experts.serveArguments
        if let cluster { args += ["--cluster", cluster] }
        if let local { args += ["--local", String(local), "--port", String(Self.freePort())] }
        return args
    }

    /// llama-server on the same file, threads and slots. It divides -c among its -np slots: each slot gets the same
    /// context as ours.
    func llamaServerArguments(port: Int, context: Int, slots: Int) -> [String] {
        ["-m", model.model, "--host", "127.0.0.1", "--port", String(port), "-t", String(model.threads), "-tb", String(model.threads),
         "-np", String(slots), "-c", String(context * slots), "-b", "512", "-ub", "512"]
    }

    /// Starts a server, waits for /health, does `work`, stops it.
    func serving<T>(name: String, exe: String, args: [String], port: Int, _ work: (_ pid: Int32) throws -> T) throws -> T {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("bench-serve-\(name.filter { $0.isLetter })-\(port).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        p.standardOutput = try FileHandle(forWritingTo: log)
        p.standardError = try FileHandle(forWritingTo: log)
        try p.run()
        defer {
            // SIGTERM, then SIGKILL after 5 s: a server that drains slowly must not hang the benchmark.
            if p.isRunning { p.terminate() }
            let deadline = KernelBench.now() + 5
            while p.isRunning && KernelBench.now() < deadline { usleep(20_000) }
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
        }
        printError("bench serve: starting \(name) on 127.0.0.1:\(port) (log \(log.path))")
        let deadline = KernelBench.now() + startTimeout
        while (try? HTTPClient.get(port: port, path: "/health")) != 200 {
            guard p.isRunning, KernelBench.now() < deadline else {
                printError("error: \(name) did not become healthy within \(Int(startTimeout)) s; its log:\n" + ((try? String(contentsOf: log, encoding: .utf8)) ?? ""))
                throw ExitCode(1)
            }
            usleep(200_000)
        }
        // One short request first: the first request pays for faulting the weights in, on every server.
        _ = try? HTTPClient.stream(port: port, body: Self.body([1, 2, 3, 4], gen: 4))
        return try work(p.processIdentifier)
    }

    /// Starts a server, waits for /health, runs every round, stops it.
    /// With --page-watchers, the first server's rounds alternate page closed / open, and `pageCost` gets what the
    /// feed costs the idle server.
    func measure(name: String, exe: String, args: [String], port: Int, levels: [Int], prompts: [[Int32]], draftMetrics: Bool = false,
                 pageCost: UnsafeMutablePointer<PageWatchers.IdleCost?>? = nil, stepBytes: StepBytes? = nil) throws -> [Round] {
        try serving(name: name, exe: exe, args: args, port: port) { pid in
            guard pageWatchers > 0, let pageCost else {
                return rounds(name: name, port: port, levels: levels, prompts: prompts, draftMetrics: draftMetrics, stepBytes: stepBytes)
            }
            var all: [Round] = []
            for _ in 0..<max(1, pageRepeats) {
                all += rounds(name: name, port: port, levels: levels, prompts: prompts, draftMetrics: draftMetrics, stepBytes: stepBytes)
                let page = PageWatchers(port: port, count: pageWatchers)
                all += rounds(name: name + "+page", port: port, levels: levels, prompts: prompts, draftMetrics: draftMetrics, stepBytes: stepBytes)
                _ = page.stop()
            }
            pageCost.pointee = PageWatchers.idleCost(port: port, pid: pid, watchers: pageWatchers, seconds: pageIdleSeconds)
            // The median round of each (server, streams) by aggregate throughput.
            return Dictionary(grouping: all) { "\($0.server)/\($0.streams)" }.values
                .map { $0.sorted { $0.aggregate < $1.aggregate }[$0.count / 2] }
                .sorted { ($0.streams, $0.server) < ($1.streams, $1.server) }
        }
    }

    /// Each --concurrency round against the server at `port`.
    func rounds(name: String, port: Int, levels: [Int], prompts: [[Int32]], draftMetrics: Bool, stepBytes: StepBytes? = nil) -> [Round] {
        var out: [Round] = []
        for c in levels {
            let before = draftMetrics ? Self.draftCounters(port: port) : nil
            let readsBefore = Self.expertReads(port: port)
            let results = Mutex<[HTTPClient.StreamResult]>([])
            let t0 = KernelBench.now()
            // A thread per stream (concurrentPerform would run only one per core at a time).
            let group = DispatchGroup()
            for i in 0..<c {
                group.enter()
                let body = Self.body(prompts[i], gen: gen)
                Thread.detachNewThread {
                    let r = (try? HTTPClient.stream(port: port, body: body)) ?? HTTPClient.StreamResult()
                    results.withLock { $0.append(r) }
                    group.leave()
                }
            }
            group.wait()
            let wall = KernelBench.now() - t0
            let rs = results.withLock { $0 }
            var round = Round(server: name, streams: c)
            round.tokens = rs.reduce(0) { $0 + $1.tokens }
            round.aggregate = wall > 0 ? Double(round.tokens) / wall : 0
            let per = rs.compactMap { r -> Double? in
                guard let first = r.events.first, let last = r.events.last, last > first, r.tokens > 1 else { return nil }
                return Double(r.tokens - 1) / (last - first)
            }
            round.perStream = per.isEmpty ? 0 : per.reduce(0, +) / Double(per.count)
            let ttft = rs.compactMap { r in r.events.first.map { $0 - r.sent } }.sorted()
            let gaps = rs.flatMap { r in zip(r.events.dropFirst(), r.events).map { $0 - $1 } }.sorted()
            (round.ttft50, round.ttft99) = (Self.quantile(ttft, 0.5), Self.quantile(ttft, 0.99))
            (round.itl50, round.itl99) = (Self.quantile(gaps, 0.5), Self.quantile(gaps, 0.99))
            if let bytes = stepBytes, let a = readsBefore, let b = Self.expertReads(port: port), b.passes > a.passes, wall > 0 {
                let passes = b.passes - a.passes, reads = b.experts - a.experts
                let seconds = (passes / Double(bytes.moeLayers) * bytes.perStep + reads * bytes.perExpert) / bytes.bandwidth
                round.ceiling = Double(round.tokens) / seconds
                round.expertsPerPass = reads / passes
            }
            if let before, let after = Self.draftCounters(port: port) {
                round.draft = DraftStats(proposed: after.proposed - before.proposed, accepted: after.accepted - before.accepted, passes: after.passes - before.passes)
            }
            if rs.contains(where: { $0.tokens == 0 }) { printError("warning: \(name): \(rs.filter { $0.tokens == 0 }.count) of \(c) streams produced nothing") }
            printError("bench serve: \(name) × \(c): \(fixed(round.aggregate, 1)) tok/s aggregate")
            out.append(round)
        }
        return out
    }

    /// Layer passes and distinct experts read so far, summed over a server's workers (nil when it has none:
    /// llama-server, a dense model).
    static func expertReads(port: Int) -> (passes: Double, experts: Double)? {
        guard let text = try? HTTPClient.fetch(port: port, path: "/metrics") else { return nil }
        func sum(_ name: String) -> Double {
            text.split(separator: "\n").filter { $0.hasPrefix(name + " ") || $0.hasPrefix(name + "{") }
                .compactMap { Double($0.split(separator: " ").last ?? "") }.reduce(0, +)
        }
        let passes = sum("conclave_worker_expert_layer_passes_total")
        return passes > 0 ? (passes, sum("conclave_worker_expert_reads_total")) : nil
    }

    /// What a step reads, for the byte ceiling: the weights of every layer but its routed experts, the head and an
    /// embedding row once per step (`perStep`), and an expert's bytes (`perExpert`, the MoE layers' average) for
    /// each distinct expert a layer pass chose; with the read bandwidth measured on the bench's threads.
    struct StepBytes { let perStep: Double, perExpert: Double, moeLayers: Int, bandwidth: Double }

    /// This model's `StepBytes` (nil for a dense model), the bandwidth measured now on --threads threads.
    func stepBytes() throws -> StepBytes? {
        let file = try GGUFFile(path: model.model)
        let config = try ModelConfig(file: file).selecting(experts.selection)
        guard config.isMoE else { return nil }
        let layout = WeightLayout(file: file, config: config)
        let moe = (0..<config.layerCount).filter { !layout.expertSlices[$0].isEmpty }
        guard !moe.isEmpty else { return nil }
        let expertBytes = moe.reduce(0) { $0 + layout.bytesPerExpert(layer: $1) }
        let perStep = ModelFootprint.decodeWeightBytes(file: file, config: config) - expertBytes * config.expertsUsed
        let bandwidth = KernelBench.bandwidth(pool: ThreadPool(threads: model.threads)).gbps * 1e9
        printError("bench serve: a step reads \(formatBytes(perStep)) besides its experts (\(formatBytes(expertBytes / moe.count)) each); this machine reads \(fixed(bandwidth / 1e9, 1)) GB/s on \(model.threads) threads")
        return StepBytes(perStep: Double(perStep), perExpert: Double(expertBytes) / Double(moe.count), moeLayers: moe.count, bandwidth: bandwidth)
    }

    /// The draft's counters in a server's /metrics (nil when it has none).
    static func draftCounters(port: Int) -> DraftStats? {
        guard let text = try? HTTPClient.fetch(port: port, path: "/metrics") else { return nil }
        func value(_ name: String) -> Int {
            text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }.map { Int($0) } ?? 0
        }
        return DraftStats(proposed: value("conclave_draft_tokens_proposed_total"), accepted: value("conclave_draft_tokens_accepted_total"),
                          passes: value("conclave_draft_verify_passes_total"))
    }

    static func body(_ ids: [Int32], gen: Int) -> String {
        JSON.object([("prompt", .array(ids.map { .int(Int($0)) })), ("max_tokens", .int(gen)), ("temperature", .int(0)),
                     ("stream", .bool(true)), ("stream_options", .object([("include_usage", .bool(true))])), ("ignore_eos", .bool(true))]).render()
    }

    /// `count` token ids of ordinary text, starting at a different place for each variant (no two streams share a
    /// prompt, so no server can answer one from another's cache).
    static func promptIDs(_ t: Tokenizer, count: Int, variant: Int) -> [Int32] {
        let text = String(repeating: "The default sort order for directories found by a search path is the natural order of their names; ", count: 4 + count / 8)
        let ids = t.encode(text, addSpecial: false)
        let start = (variant * 7) % max(1, ids.count - count)
        return (t.vocab.bos.map { [$0] } ?? []) + Array(ids[start..<min(ids.count, start + count - 1)])
    }

    static func quantile(_ sorted: [Double], _ q: Double) -> Double {
        guard !sorted.isEmpty else { return 0 }
        return sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * q).rounded()))]
    }

    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}

/// A minimal blocking HTTP/1.1 client for 127.0.0.1: enough to time SSE events as they arrive (chunked bodies
/// decoded), identically for every server measured.
enum HTTPClient {
    struct StreamResult {
        var sent = 0.0
        /// Arrival time of each event that carried generated text.
        var events: [Double] = []
        var tokens = 0
        /// With `text`: what the events said, and the prompt tokens the server says it reused (OpenAI's
        /// `usage.prompt_tokens_details.cached_tokens`, or llama-server's `timings.cache_n`).
        var text = ""
        var cached: Int?
    }

    struct Failure: Error, CustomStringConvertible { let description: String }

    static func connect(port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { close(fd); throw Failure(description: "cannot connect to 127.0.0.1:\(port)") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var tv = timeval(tv_sec: 600, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    static func send(_ fd: Int32, _ text: String) throws {
        let bytes = Array(text.utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { throw Failure(description: "send failed") }
            off += n
        }
    }

    /// The status code of a GET.
    static func get(port: Int, path: String) throws -> Int {
        let fd = try connect(port: port)
        defer { close(fd) }
        try send(fd, "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        var buf = [UInt8](repeating: 0, count: 512)
        let n = recv(fd, &buf, buf.count, 0)
        guard n > 12 else { throw Failure(description: "no answer") }
        return Int(String(decoding: buf[9..<12], as: UTF8.self)) ?? 0
    }

    /// The body of a GET (read to the end: the server closes the connection).
    static func fetch(port: Int, path: String) throws -> String {
        let fd = try connect(port: port)
        defer { close(fd) }
        try send(fd, "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        var all: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { break }
            all += buf[0..<n]
        }
        let text = String(decoding: all, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else { throw Failure(description: "no HTTP answer from \(path)") }
        return String(text[split.upperBound...])
    }

    /// POSTs a streaming completion and timestamps each text event.
    static func stream(port: Int, body: String, text collect: Bool = false) throws -> StreamResult {
        let fd = try connect(port: port)
        defer { close(fd) }
        var r = StreamResult()
        r.sent = KernelBench.now()
        try send(fd, "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
        var raw: [UInt8] = []  // bytes received and not yet decoded
        var body: [UInt8] = []  // decoded body not yet split into events
        var headerDone = false, chunked = false
        var buf = [UInt8](repeating: 0, count: 65536)
        var eventsText = 0
        var finished = false  // [DONE] or the last chunk seen: a server may keep the connection open after
        func take() {
            if !headerDone {
                guard let end = find(raw, [13, 10, 13, 10]) else { return }
                let head = String(decoding: raw[..<end], as: UTF8.self).lowercased()
                chunked = head.contains("transfer-encoding: chunked")
                raw.removeFirst(end + 4)
                headerDone = true
            }
            if chunked {
                while let lineEnd = find(raw, [13, 10]) {
                    let sizeText = String(decoding: raw[..<lineEnd], as: UTF8.self).split(separator: ";").first.map(String.init) ?? ""
                    guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16) else { break }
                    if size == 0 { finished = true }
                    guard raw.count >= lineEnd + 2 + size + 2 else { break }
                    body += raw[(lineEnd + 2)..<(lineEnd + 2 + size)]
                    raw.removeFirst(lineEnd + 2 + size + 2)
                }
            } else {
                body += raw
                raw.removeAll()
            }
            let now = KernelBench.now()
            while let end = find(body, [10, 10]) {
                let event = Array(body[..<end])
                body.removeFirst(end + 2)
                if event == Array("data: [DONE]".utf8) { finished = true; continue }
                // Cheap on purpose (the client shares the cores with the server it measures): only the usage
                // chunk is parsed; a text event is one whose "text" is not empty.
                if collect, let v = try? JSONValue.parse(Array(event.dropFirst(6))) {
                    if let c = v["usage"]?["prompt_tokens_details"]?["cached_tokens"]?.intValue ?? v["timings"]?["cache_n"]?.intValue { r.cached = c }
                    if let n = v["usage"]?["completion_tokens"]?.intValue { r.tokens = n }
                    if let t = v["choices"]?.arrayValue?.first?["text"]?.stringValue, !t.isEmpty {
                        r.text += t
                        r.events.append(now)
                        eventsText += 1
                    }
                } else if find(event, Array(#""usage":{"#.utf8)) != nil,
                   let v = try? JSONValue.parse(Array(event.dropFirst(6))), let n = v["usage"]?["completion_tokens"]?.intValue {
                    r.tokens = n
                } else if let at = find(event, Array(#""text":""#.utf8)), at + 8 < event.count, event[at + 8] != UInt8(ascii: "\"") {
                    r.events.append(now)
                    eventsText += 1
                }
            }
        }
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { break }
            raw += buf[0..<n]
            take()
            if finished { break }
        }
        if r.tokens == 0 { r.tokens = eventsText }
        return r
    }

    static func find(_ hay: [UInt8], _ needle: [UInt8]) -> Int? {
        guard hay.count >= needle.count else { return nil }
        for i in 0...(hay.count - needle.count) where hay[i] == needle[0] && Array(hay[i..<(i + needle.count)]) == needle { return i }
        return nil
    }
}
