import ArgumentParser
import GGUF
import Model
import Placement

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Show where a model's layers and experts would live on a cluster (a dry run; nothing is loaded).",
        discussion: "Each worker gets a contiguous range of layers sized to its budget. A layer whose worker has role any, in a cluster with experts workers, has its experts split with them by their speed (expert parallelism); other layers keep their experts while their worker has room; the rest go to the expert-capable worker with the most free memory."
    )

    @Option(name: [.short, .long], help: "Path to a .gguf model.") var model: String = defaultModelPath
    @Option(help: "Cluster file (YAML; see cluster/).") var cluster: String
    @Option(help: "Context length per sequence for the KV cache (default: the model's).") var ctx: Int?
    @Option(help: "Sequences served at once (KV caches per layer).") var sequences = 1
    @Flag(help: "Print the plan as JSON.") var json = false

    func run() throws {
        let file = try openGGUF(model)
        do {
            let config = try ModelConfig(file: file)
            let footprint = ModelFootprint(file: file, config: config, context: ctx ?? config.contextLength, sequences: sequences)
            let plan = try Planner.plan(footprint, cluster: ClusterFile(path: cluster))
            let estimate = DecodeEstimate(plan: plan, weights: ModelFootprint(file: file, config: config, context: 0), expertsUsed: config.expertsUsed)
            print(json ? PlanReport.json(plan, estimate: estimate).render(indent: 2) : PlanReport.text(plan, footprint: footprint, estimate: estimate))
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
            ("stages", .array(p.stages.map { .object([("worker", .string($0.worker)), ("first_layer", .int($0.layers.lowerBound)), ("end_layer", .int($0.layers.upperBound))]) })),
            ("experts", .array(p.experts.map { row in .array(row.map { .string(p.workers[$0].name) }) })),
            ("workers", .array(p.workers.enumerated().map { i, w in
                .object([("name", .string(w.name)), ("endpoint", .string(w.endpoint)), ("role", .string(w.role.rawValue)),
                         ("memory_budget", .int(w.memory)), ("planned_bytes", .int(p.bytes[i])), ("experts", .int(p.experts(of: i).count)),
                         ("resident_experts", .int(p.experts(of: i, paged: false).count)), ("paged_experts", .int(p.experts(of: i, paged: true).count)),
                         ("slots", .int(p.slots[i])), ("bytes_read_per_token", .int(Int(estimate.bytesPerWorker[i])))])
            })),
        ])
    }

    static func text(_ p: Plan, footprint f: ModelFootprint, estimate: DecodeEstimate) -> String {
        var rows: [[String]] = []
        for (i, w) in p.workers.enumerated() {
            let layers = p.stages.first { $0.worker == w.name }.map { "\($0.layers.lowerBound)..<\($0.layers.upperBound)" } ?? "-"
            let paged = p.experts(of: i, paged: true).count
            rows.append([w.name, w.role.rawValue, w.endpoint, layers, String(p.experts(of: i).count) + (paged > 0 ? " (\(paged) paged, \(p.slots[i]) slots)" : ""),
                         "\(formatBytes(p.bytes[i])) / \(formatBytes(w.memory))", formatBytes(Int(estimate.bytesPerWorker[i]))])
        }
        var lines = ["model needs \(formatBytes(f.totalBytes)) (weights + KV); \(f.layerCount) layers × \(f.expertCount) experts"]
        if p.offloads {
            let paged = p.paged.reduce(0) { $0 + $1.filter { $0 }.count }
            lines.append("the cluster's memory holds \(f.layerCount * f.expertCount - paged) experts; \(paged) are paged from the workers' local GGUF through cache slots of \(formatBytes(f.slotBytes))")
        }
        lines.append("")
        lines += table(headers: ["worker", "role", "endpoint", "layers", "experts", "planned / budget", "reads / token"], rows: rows)
        lines.append("")
        lines.append("one stream's decode, bound by bytes read: at most \(String(format: "%.2f", estimate.speedup))× one host (the stages read \(formatBytes(Int(estimate.stageBytes))) in turn; each layer waits for its busiest expert holder, \(formatBytes(Int(estimate.busiestExpertBytes))) of \(formatBytes(Int(estimate.expertBytes))) in all), before the wire's round trips")
        return lines.joined(separator: "\n")
    }
}
