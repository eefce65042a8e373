import ArgumentParser
import Foundation
import GGUF
import Model
import Tokenizer

struct PruneCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Drop each MoE layer's least used experts, measured on a calibration text, into a new GGUF.",
        discussion: """
        Runs the text through the model (chunks of --chunk tokens, as perplexity does), counts how often each
        layer chooses each expert, keeps the same number of experts in every layer — --keep N, or --keep-mass F:
        the fewest that carry F of every layer's routing — and writes a GGUF llama.cpp loads as is (router rows,
        stacked expert tensors and their biases sliced, expert_count rewritten). `conclave perplexity` before and
        after is the quality figure. Keeping every expert writes the same tensors.
        """
    )

    @OptionGroup var model: ModelOptions
    @Option(name: .short, help: "Calibration text file.") var file: String
    @Option(help: "Experts to keep per layer.") var keep: Int?
    @Option(name: .customLong("keep-mass"), help: "Keep the fewest experts per layer that carry this fraction of the routing (0-1].") var keepMass: Double?
    @Option(help: "Tokens per chunk.") var chunk = 512
    @Option(help: "Use only the first N tokens of the text.") var tokens: Int?
    @Option(name: .short, help: "Where to write the pruned .gguf.") var output: String
    @Flag(help: "Print the routing-mass curve and what was kept as JSON.") var json = false

    func validate() throws {
        guard (keep == nil) != (keepMass == nil) else { throw ValidationError("give one of --keep N or --keep-mass F") }
        if let keepMass, !(keepMass > 0 && keepMass <= 1) { throw ValidationError("--keep-mass must be in (0, 1]") }
        if let keep, keep < 1 { throw ValidationError("--keep must be at least 1") }
        if chunk < 1 { throw ValidationError("--chunk must be at least 1") }
    }

    func run() throws {
        do {
            let f = try GGUFFile(path: model.model)
            let config = try ModelConfig(file: f)
            guard config.isMoE else { throw ModelError("\(model.model) has no routed experts to prune") }
            if let keep, keep < config.expertsUsed || keep > config.expertCount {
                throw ValidationError("--keep \(keep) must be between the \(config.expertsUsed) experts used per token and the \(config.expertCount) the model has")
            }
            var ids = try Tokenizer(file: f).encode(bytes: try readInput(prompt: nil, file: file))
            if let tokens { ids = Array(ids.prefix(tokens)) }
            let trace = try RoutingTrace.record(file: f, threads: model.threads, tokens: ids, chunk: chunk) { done, total in
                printError("\rrouting traced over \(done)/\(total) tokens", terminator: done == total ? "\n" : "")
            }
            let use = try trace.expertUse(layers: config.layerCount, experts: config.expertCount)
            let n = keep ?? ModelPruner.count(forMass: keepMass!, use: use, minimum: config.expertsUsed, expertCount: config.expertCount)
            let kept = ModelPruner.choose(use: use, keep: n, expertCount: config.expertCount)
            // The routing mass the kept experts carried on the calibration text, per layer.
            let mass = zip(use, kept).map { row, k in row.isEmpty ? 1 : k.reduce(0) { $0 + row[$1] } / max(1e-12, row.reduce(0, +)) }
            printError("keeping \(n) of \(config.expertCount) experts per layer; they carried \(fixed(100 * (mass.min() ?? 1), 1))–\(fixed(100 * (mass.max() ?? 1), 1))% of each layer's routing")
            let curve = ModelPruner.massCurve(use: use, expertCount: config.expertCount)
            if json {
                print(JSON.object([
                    ("experts", .int(config.expertCount)), ("kept", .int(n)), ("calibration_tokens", .int(ids.count)),
                    ("kept_per_layer", .array(kept.map { .array($0.map { .int($0) }) })),
                    ("mass_curve", .array(curve.map { .object([("experts", .int($0.experts)), ("min_mass", .double(($0.min * 1e4).rounded() / 1e4)),
                                                                ("max_mass", .double(($0.max * 1e4).rounded() / 1e4))]) })),
                ]).render())
            } else {
                printError("routing mass carried by each layer's k most used experts: " + curve.map { "\($0.experts): \(fixed(100 * $0.min, 1))–\(fixed(100 * $0.max, 1))%" }.joined(separator: ", "))
            }
            try ModelPruner.write(source: model.model, kept: kept, to: output)
            printError("wrote \(output)")
        } catch let e as ValidationError {
            throw e
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
    }
}
