import ArgumentParser
import Wire

/// This build's version, and the wire protocol it speaks (workers and coordinators must agree on it).
enum ConclaveVersion {
    static let release = "0.11.0"
    static var text: String { "conclave \(release) (wire protocol \(WireMessage.protocolVersion))" }
}

@main
struct Conclave: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "conclave",
        abstract: "Distributed inference of Mixture-of-Experts language models from GGUF files.",
        discussion: """
        One binary plays every role: `worker` on each host, `serve` to coordinate them, `generate` and `status` as
        clients; `run`, `perplexity` and `logits` in one process; `inspect`, `tokenize`, `quantize`, `synth`, `plan`
        and `bench` as tools.
        """,
        version: ConclaveVersion.text,
        subcommands: [WorkerCommand.self, ServeCommand.self, GenerateCommand.self, StatusCommand.self, KeysCommand.self, RunCommand.self, PerplexityCommand.self, LogitsCommand.self, TokenizeCommand.self, TraceExpertsCommand.self, PruneCommand.self, Inspect.self, QuantizeCommand.self, SynthCommand.self, PlanCommand.self, Bench.self]
    )
}
