import ArgumentParser
import Foundation
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
        subcommands: [WorkerCommand.self, ServeCommand.self, GenerateCommand.self, StatusCommand.self, TopCommand.self, KeysCommand.self, RunCommand.self, PerplexityCommand.self, LogitsCommand.self, TokenizeCommand.self, TraceExpertsCommand.self, PruneCommand.self, Inspect.self, QuantizeCommand.self, SynthCommand.self, PlanCommand.self, Bench.self]
    )

    /// ArgumentParser's own entry, with one difference: its errors read `error: …` as ours do (it writes
    /// `Error: …`), so a script or a reader sees one prefix whatever failed. An `ExitCode` thrown after a
    /// command has said why prints nothing more.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asynchronous = command as? AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
        } catch let code as ExitCode {
            // The command has said why already.
            Foundation.exit(code.rawValue)
        } catch {
            let code = exitCode(for: error)
            let message = fullMessage(for: error)
            if code == .success {
                if !message.isEmpty { print(message) }
            } else if !message.isEmpty {
                let text = message.hasPrefix("Error: ") ? "error: " + message.dropFirst(7) : message
                printError(String(text))
            }
            Foundation.exit(code.rawValue)
        }
    }
}
