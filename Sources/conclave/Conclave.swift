import ArgumentParser

@main
struct Conclave: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "conclave",
        abstract: "Distributed inference of Mixture-of-Experts language models from GGUF files.",
        discussion: """
        One binary plays every role: inspect a model file here; later issues add run, serve, worker and status.
        """,
        subcommands: [RunCommand.self, PerplexityCommand.self, LogitsCommand.self, TokenizeCommand.self, Inspect.self, QuantizeCommand.self, SynthCommand.self, PlanCommand.self, Bench.self]
    )
}
