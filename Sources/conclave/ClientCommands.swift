import ArgumentParser
import CurveKeys
import Coordinator
import Foundation
import Synchronization
import Telemetry
import Wire
import ClusterProtocol

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate text on a running cluster (the client of `conclave serve`).",
        discussion: "Prints the generated text and nothing else on stdout — what `conclave run` prints for the same model and options; speed goes to stderr."
    )

    @Option(help: "The coordinator's endpoint.") var coordinator: String = "tcp://127.0.0.1:7000"
    @Option(name: [.short, .long], help: "Prompt text.") var prompt: String = "The"
    @Option(name: .short, help: "Tokens to generate.") var n: Int = 64
    @Option(help: "Context length (default: the cluster's).") var ctx: Int?
    @OptionGroup var sampling: SamplingOptions
    @Option(help: "Seconds to wait for each token before giving up.") var timeout: Double = 60
    @Option(help: "Stop before this text (repeat for several).") var stop: [String] = []
    @OptionGroup var keys: ClientKeyOptions

    func validate() throws {
        guard (0...Int(UInt32.max)).contains(n) else { throw ValidationError("-n \(n) is outside 0...\(UInt32.max) (the context ends generation anyway)") }
        if let ctx, !(1...Int(UInt32.max)).contains(ctx) { throw ValidationError("--ctx \(ctx) is outside 1...\(UInt32.max)") }
        guard timeout > 0, timeout.isFinite else { throw ValidationError("--timeout must be a positive number of seconds") }
    }

    func run() throws {
        let client = try CoordinatorClient(endpoint: coordinator, transports: keys.transports(to: coordinator), failWhenNothingListens: true)
        var g = Conclave_V1_Generate()
        g.prompt = prompt
        g.maxTokens = UInt32(n)
        g.sampling = sampling.params.wire
        g.contextLength = UInt32(ctx ?? 0)
        g.stop = stop
        var text = TextStream()
        do {
            let t = try client.generate(g, timeout: timeout) { text.write($0) }
            text.finish()
            printError("prompt \(t.promptTokens) tokens: \(fixed(t.prefillTokS, 1)) tok/s; generated \(t.generatedTokens): \(fixed(t.decodeTokS, 1)) tok/s"
                       + (t.finishReason == "length" ? " (stopped at the length limit: -n tokens, or the context is full)" : ""))
        } catch {
            text.finish(newline: false)
            printError("error: \(error)")
            throw ExitCode(1)
        }
    }
}

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the cluster: each worker's state, shard, memory, traffic and latency.",
        discussion: "States: joining (not yet answered), loading, ready, suspect (a heartbeat late), down (3 s without one)."
    )

    @Option(help: "The coordinator's endpoint.") var coordinator: String = "tcp://127.0.0.1:7000"
    @Flag(help: "Print JSON.") var json = false
    @Option(help: "Seconds to wait for the answer.") var timeout: Double = 3
    @OptionGroup var keys: ClientKeyOptions

    func run() throws {
        let client = try CoordinatorClient(endpoint: coordinator, transports: keys.transports(to: coordinator), failWhenNothingListens: true)
        let answer: Conclave_V1_StatusReply?
        do { answer = try client.status(timeout: timeout) } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
        guard let s = answer else {
            printError("error: no status from the coordinator at \(coordinator) within \(fixed(timeout, 0)) s (is `conclave serve` running there?)")
            throw ExitCode(1)
        }
        print(json ? s.json.render() : StatusReport.text(s))
    }
}

enum StatusReport {
    /// "-" without paging, else paged experts / slots, hit rate, bytes read, stall.
    static func offloadCell(_ m: [MetricSample]) -> String {
        guard m.value(WorkerMetric.offloadSlots) > 0 else { return "-" }
        let hits = m.value(WorkerMetric.offloadHits), uses = hits + m.value(WorkerMetric.offloadMisses)
        return "\(Int(m.value(WorkerMetric.offloadPaged))) paged / \(Int(m.value(WorkerMetric.offloadSlots))) slots, hit \(uses > 0 ? fixed(hits / uses * 100, 1) : "-")%, read \(formatBytes(Int(m.value(WorkerMetric.offloadReadBytes)))), stall \(fixed(m.value(WorkerMetric.offloadStall) * 1000, 0)) ms"
    }

    static func text(_ s: Conclave_V1_StatusReply) -> String {
        // The serving figures as the catalog names them (a new one shows up here without a line of its own).
        let (figures, groups) = s.serving
        func list(_ pairs: [(key: String, value: Double)]) -> String { pairs.map { "\($0.key.replacingOccurrences(of: "_", with: " ")) \(Int($0.value))" }.joined(separator: ", ") }
        var lines = ["model \(s.model); \(s.microBatches) micro-batches; " + list(figures)]
        lines += groups.filter { $0.name != "draft" }.map { "\($0.name): " + list($0.entries) }
        lines.append("")
        let rows = s.workers.map { w -> [String] in
            let m = w.samples
            return [w.name, w.endpoint, w.state, w.layersCell, String(w.experts), w.memoryCell, formatBytes(Int(m.value(WorkerMetric.rss))),
                    String(Int(m.value(WorkerMetric.tokens))), String(Int(m.value(WorkerMetric.expertCalls))),
                    "\(fixed(m.value(WorkerMetric.stepP50) * 1000, 2)) / \(fixed(m.value(WorkerMetric.stepP99) * 1000, 2))",
                    w.heartbeatAgeS < 0 ? "-" : "\(fixed(w.heartbeatAgeS, 1)) s", offloadCell(m)]
        }
        lines += table(headers: ["worker", "endpoint", "state", "layers", "experts", "resident / planned / budget", "rss", "tokens", "expert calls", "p50 / p99 ms", "heartbeat", "offload"], rows: rows)
        let refused = s.totalRefusedPeers
        lines += ["", s.security == "curve" ? "CurveZMQ: peers authenticated; \(refused) connection\(refused == 1 ? "" : "s") refused (coordinator \(s.refusedPeers), workers \(refused - s.refusedPeers))"
                                            : "no CurveZMQ: any process that reaches these endpoints may talk to them"]
        if let d = s.draftStats {
            lines += ["draft: \(d.accepted) of \(d.proposed) proposals accepted (\(fixed(d.acceptanceRate * 100, 1))%), \(fixed(d.tokensPerPass, 2)) tokens per pipeline pass over \(d.passes) passes"]
        }
        if !s.recoveries.isEmpty {
            lines += ["", "recoveries (plan \(s.epoch) in force):"]
            lines += s.recoveries.map { r in
                "  plan \(r.epoch): \(r.recovered ? "recovered" : "FAILED") in \(fixed(r.seconds, 2)) s, \(r.sequencesReplayed) sequences replayed"
                    + (r.recovered ? "; loaded weights: \(r.reloaded.isEmpty ? "none (every worker kept its shard)" : r.reloaded.joined(separator: ", "))" : "")
                    + "; cause: \(r.cause)"
            }
        }
        return lines.joined(separator: "\n")
    }
}

/// `--key-dir` of the client commands: CurveZMQ as the client the cluster file lists.
struct ClientKeyOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Connect with CurveZMQ using the keys in this directory: this client's pair (client.key_secret; else coordinator.key_secret) and the coordinator's public key (coordinator.key).", valueName: "dir"))
    var keyDir: String?

    /// Sockets to the coordinator at `endpoint`: plain, or CurveZMQ with the keys of `--key-dir`.
    func transports(to endpoint: String) throws -> TransportFactory { try Self.transports(to: endpoint, keyDir: keyDir) }

    /// Without a key directory, a coordinator on this host's loopback uses the keys `serve --local` wrote for its
    /// port (`LocalKeys`), when there are any: a local cluster is authenticated, and its clients need no flag.
    static func transports(to endpoint: String, keyDir: String?) throws -> TransportFactory {
        guard let keyDir = keyDir ?? LocalKeys.existing(for: endpoint) else { return ZeroMQTransports.client(of: endpoint, keys: nil) }
        do {
            // The operator on the coordinator's host may use the coordinator's own key, which it admits too.
            let fallback = !FileManager.default.fileExists(atPath: CurveCertificate.secretPath(keyDir, "client"))
                && FileManager.default.fileExists(atPath: CurveCertificate.secretPath(keyDir, "coordinator"))
            let pair = try CurveCertificate.pair(keyDir, fallback ? "coordinator" : "client")
            let server = try CurveCertificate.read(CurveCertificate.publicPath(keyDir, "coordinator")).publicKey
            return ZeroMQTransports.client(of: endpoint, keys: (pair, server))
        } catch {
            throw ValidationError("--key-dir \(keyDir): \(error)")
        }
    }
}

/// The worker cells `status` and `top` both show.
extension Conclave_V1_WorkerStatus {
    /// Its stage's layers, or "-" for an experts-only worker.
    var layersCell: String { endLayer > firstLayer ? "\(firstLayer)..<\(endLayer)" : "-" }
    /// What it holds, what the plan gives it and its budget.
    var memoryCell: String { "\(formatBytes(Int(residentBytes))) / \(formatBytes(Int(plannedBytes))) / \(formatBytes(Int(memoryBudget)))" }
}
