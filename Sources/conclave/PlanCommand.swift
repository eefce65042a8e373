import ArgumentParser
import GGUF
import Runtime
import Kernels
import Model
import Placement

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Show where a model's layers and experts would live on a cluster (a dry run; nothing is loaded).",
        discussion: "Each worker gets a contiguous range of layers sized to its budget. A layer whose worker has role any, in a cluster with experts workers, has its experts split with them so that each one's expected time per token is even: its share of the reads at its read rate (times speed: in the file), plus a round trip per call for the helpers (expert parallelism; a coordinator uses the rates and round trips it measures, this dry run this host's rate and --round-trip-ms); other layers keep their experts while their worker has room; the rest go to the expert-capable worker with the most free memory."
    )

    @Option(name: [.short, .long], help: "Path to a .gguf model.") var model: String = defaultModelPath
    @Option(help: "Cluster file (YAML; see cluster/).") var cluster: String
    @Option(help: "Context length per sequence for the KV cache (default: the model's).") var ctx: Int?
    @Option(help: "Sequences served at once (KV caches per layer).") var sequences = 1
    @OptionGroup var kvCache: CacheTypeOptions
    @Option(help: "Bytes of weights each worker reads per second, in GB/s, times its 'speed:' (default: this host, measured in about 0.1 s with one thread; a coordinator uses what each worker measured).") var readRateGbps: Double?
    @Option(help: "An expert call's round trip in milliseconds (a coordinator measures each worker's; 0.25 is loopback on a small VM, a LAN is often 0.05-0.2).") var roundTripMs = 0.25
    @Option(help: "A routing trace (from `conclave trace-experts`), or a serving cluster's own counts (the URL of its GET /v1/cluster/experts, or that JSON saved to a .json file): split layers spread their most used experts first, the least used are paged first, and the expected times count how often each expert is chosen (default: uniform routing).")
    var trace: String?
    @Flag(help: "Print the plan as JSON.") var json = false

    func run() throws {
        let file = try openGGUF(model)
        do {
            let config = try ModelConfig(file: file)
            let use = try trace.map { try RoutingTraceFile.expertUse($0, config: config) }
            let cacheTypes = try kvCache.types
            try cacheTypes.check(config)
            var footprint = ModelFootprint(file: file, config: config, context: ctx ?? config.contextLength, sequences: sequences, cacheTypes: cacheTypes)
            footprint.expertUse = use
            var weights = ModelFootprint(file: file, config: config, context: 0)
            weights.expertUse = use
            guard roundTripMs >= 0, roundTripMs.isFinite, (readRateGbps ?? 1) > 0 else {
                throw ValidationError("--round-trip-ms must be 0 or more and --read-rate-gbps above 0")
            }
            let rate = try readRateGbps.map { $0 * 1e9 }
                ?? KernelBench.matmul(type: .q4_0, rows: 512, cols: 2048, batch: 1, pool: ThreadPool(threads: 1), totalBytes: 32 << 20, minSeconds: 0.05)!.gbps * 1e9
            let clusterFile = try ClusterFile(path: cluster)
            let measured = clusterFile.workers.map { w in
                var w = w
                w.readRate = rate
                w.roundTrip = roundTripMs / 1000
                return w
            }
            let plan = try Planner.plan(footprint, cluster: ClusterFile(coordinator: clusterFile.coordinator, workers: measured, coordinatorKey: clusterFile.coordinatorKey, clientKeys: clusterFile.clientKeys))
            let estimate = DecodeEstimate(plan: plan, weights: weights)
            // Each stage's KV room by the workers' own formula: running sequences, then kept prefixes.
            let context = min(ctx ?? config.contextLength, config.contextLength)
            let rooms = plan.workers.indices.compactMap { i -> (String, KVRoom)? in
                let shard = plan.shard(of: i)
                guard !shard.layers.isEmpty else { return nil }
                let budget = ShardBudget(file: file, config: config, shard: shard, context: context, ubatch: 512, cacheTypes: cacheTypes)
                return (plan.workers[i].name, budget.room(within: plan.workers[i].memory))
            }
            print(json ? PlanReport.json(plan, estimate: estimate).render(indent: 2) : PlanReport.text(plan, footprint: footprint, estimate: estimate))
            if !json, let all = KVRoom.pipeline(rooms.map(\.1)) {
                print("KV room: " + rooms.map { "\($0.0) \($0.1)" }.joined(separator: ", ")
                      + "; prefixes are kept in what running sequences leave: up to \(all.cacheable(running: 0) - all.overhead) positions of context while none runs")
            }
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
    }
}

enum PlanReport {
    static func json(_ p: Plan, estimate: DecodeEstimate) -> JSON {
        .object([
            ("decode_speedup_bound", .double((estimate.speedup * 1000).rounded() / 1000)),
            ("expected_decode_speedup", .double((estimate.expectedSpeedup * 1000).rounded() / 1000)),
            ("expected_ms_per_token", .double((estimate.seconds * 1e6).rounded() / 1000)),
            ("stages", .array(p.stages.map { .object([("worker", .string($0.worker)), ("first_layer", .int($0.layers.lowerBound)), ("end_layer", .int($0.layers.upperBound))]) })),
            ("experts", .array(p.experts.map { row in .array(row.map { .string(p.workers[$0].name) }) })),
            ("workers", .array(p.workers.enumerated().map { i, w in
                .object([("name", .string(w.name)), ("endpoint", .string(w.endpoint)), ("role", .string(w.role.rawValue)),
                         ("memory_budget", .int(w.memory)), ("planned_bytes", .int(p.bytes[i])), ("experts", .int(p.experts(of: i).count)),
                         ("resident_experts", .int(p.experts(of: i, paged: false).count)), ("paged_experts", .int(p.experts(of: i, paged: true).count)),
                         ("slots", .int(p.slots[i])), ("bytes_read_per_token", .int(Int(estimate.bytesPerWorker[i]))),
                         ("expected_ms_per_token", .double((estimate.secondsPerWorker[i] * 1e6).rounded() / 1000)),
                         ("read_rate_gbps", .double((w.effectiveReadRate / 1e6).rounded() / 1000)), ("round_trip_ms", .double(((w.roundTrip ?? 0) * 1e6).rounded() / 1000))])
            })),
        ])
    }

    static func text(_ p: Plan, footprint f: ModelFootprint, estimate: DecodeEstimate) -> String {
        var rows: [[String]] = []
        for (i, w) in p.workers.enumerated() {
            let layers = p.stages.first { $0.worker == w.name }.map { "\($0.layers.lowerBound)..<\($0.layers.upperBound)" } ?? "-"
            let paged = p.experts(of: i, paged: true).count
            rows.append([w.name, w.role.rawValue, w.endpoint, layers, String(p.experts(of: i).count) + (paged > 0 ? " (\(paged) paged, \(p.slots[i]) slots)" : ""),
                         "\(formatBytes(p.bytes[i])) / \(formatBytes(w.memory))", formatBytes(Int(estimate.bytesPerWorker[i])),
                         String(format: "%.2f ms", estimate.secondsPerWorker[i] * 1000)])
        }
        var lines = ["model needs \(formatBytes(f.totalBytes)) (weights + KV); \(f.layerCount) layers × \(f.expertCount) experts"]
        if p.offloads {
            let paged = p.paged.reduce(0) { $0 + $1.filter { $0 }.count }
            lines.append("the cluster's memory holds \(f.layerCount * f.expertCount - paged) experts; \(paged) are paged from the workers' local GGUF through cache slots of \(formatBytes(f.slotBytes))")
        }
        if f.expertUse != nil { lines.append("routing from the trace: split layers spread their most used experts first; the least used are paged first") }
        lines.append("")
        lines += table(headers: ["worker", "role", "endpoint", "layers", "experts", "planned / budget", "reads / token", "time / token"], rows: rows)
        lines.append("")
        lines.append("one stream's decode, bound by bytes read: at most \(String(format: "%.2f", estimate.speedup))× one host (the stages read \(formatBytes(Int(estimate.stageBytes))) in turn; each layer waits for its busiest expert holder, \(formatBytes(Int(estimate.busiestExpertBytes))) of \(formatBytes(Int(estimate.expertBytes))) in all), before the wire's round trips")
        let rates = Set(p.workers.map { $0.effectiveReadRate / 1e9 }).sorted().map { String(format: "%.1f", $0) }.joined(separator: ", ")
        let trips = Set(p.workers.compactMap { $0.roundTrip.map { $0 * 1000 } }).sorted().map { String(format: "%.3f", $0) }.joined(separator: ", ")
        lines.append("expected: \(String(format: "%.2f", estimate.seconds * 1000)) ms per token, \(String(format: "%.2f", estimate.expectedSpeedup))× one host (read rates \(rates) GB/s\(trips.isEmpty ? "" : "; round trips \(trips) ms"))")
        return lines.joined(separator: "\n")
    }
}
