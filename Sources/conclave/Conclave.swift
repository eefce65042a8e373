import ArgumentParser

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
        subcommands: [WorkerCommand.self, ServeCommand.self, GenerateCommand.self, StatusCommand.self, RunCommand.self, PerplexityCommand.self, LogitsCommand.self, TokenizeCommand.self, TraceExpertsCommand.self, Inspect.self, QuantizeCommand.self, SynthCommand.self, PlanCommand.self, Bench.self]
    )
}
