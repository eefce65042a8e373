import ArgumentParser
import Foundation
import GGUF
import Model
import Tokenizer

struct TraceExpertsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trace-experts",
        abstract: "Record which experts every layer chooses at every position of a text.",
        discussion: """
        Writes one JSON object a line, {"layer": L, "position": P, "experts": [E, …]} (experts in the router's
        order), positions ascending and layers ascending within one. The text runs in chunks of --chunk tokens,
        each from an empty cache as perplexity runs it. `conclave bench offload --trace FILE` replays the trace
        against each eviction policy and Belady's optimum; `conclave plan|serve|bench cluster --trace FILE` plan
        with it (hot experts spread over a split layer's workers, cold ones paged first).
        """
    )

    @OptionGroup var model: ModelOptions
    @Option(name: .short, help: "Text file.") var file: String
    @Option(name: .short, help: "Where to write the trace (JSON lines).") var output: String
    @Option(help: "Tokens per chunk.") var chunk = 512
    @Option(help: "Trace only the first N tokens of the text.") var tokens: Int?

    func run() throws {
        do {
            let f = try GGUFFile(path: model.model)
            let tokenizer = try Tokenizer(file: f)
            var ids = tokenizer.encode(bytes: try readInput(prompt: nil, file: file))
            if let tokens { ids = Array(ids.prefix(tokens)) }
            let trace = try RoutingTrace.record(file: f, threads: model.threads, tokens: ids, chunk: chunk) { done, total in
                printError("\rtraced \(done)/\(total) tokens", terminator: done == total ? "\n" : "")
            }
            try RoutingTraceFile.write(trace, to: output)
            printError("\(trace.events.count) events (\(ids.count) positions, \(trace.keys.count) distinct experts) → \(output)")
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
    }
}

/// The trace's JSON-lines file format.
enum RoutingTraceFile {
    static func write(_ trace: RoutingTrace, to path: String) throws {
        var out = ""
        for e in trace.events {
            out += JSON.object([("layer", .int(e.layer)), ("position", .int(e.position)), ("experts", .array(e.experts.map { .int($0) }))]).render() + "\n"
        }
        guard FileManager.default.createFile(atPath: path, contents: Data(out.utf8)) else {
            throw ModelError("cannot write the trace to \(path)")
        }
    }

    /// The trace at `path` as how often a token chooses each expert of `config`'s model (what planning takes).
    static func expertUse(_ path: String, config: ModelConfig) throws -> [[Double]] {
        try read(path).expertUse(layers: config.layerCount, experts: config.expertCount)
    }

    static func read(_ path: String) throws -> RoutingTrace {
        guard let data = FileManager.default.contents(atPath: path) else { throw ModelError("cannot read the trace \(path)") }
        var events: [RoutingTrace.Event] = []
        let decoder = JSONDecoder()
        for (i, line) in data.split(separator: UInt8(ascii: "\n")).enumerated() where !line.isEmpty {
            do {
                let e = try decoder.decode(RoutingTrace.Event.self, from: Data(line))
                guard e.layer >= 0, e.position >= 0, e.experts.allSatisfy({ $0 >= 0 }) else { throw ModelError("negative value") }
                events.append(e)
            } catch {
                throw ModelError("\(path):\(i + 1): not a trace line {\"layer\", \"position\", \"experts\"}: \(error)")
            }
        }
        guard !events.isEmpty else { throw ModelError("\(path) holds no trace events") }
        return RoutingTrace(events: events)
    }
}
