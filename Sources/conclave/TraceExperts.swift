import ArgumentParser
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import GGUF
import JSON
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

    /// How often a token chooses each expert of `config`'s model (what planning takes), from a trace file, or
    /// from a serving cluster's own counts: the URL of its `GET /v1/cluster/experts` (the key, if it has one,
    /// from $CONCLAVE_API_KEY), or that JSON saved to a `.json` file.
    static func expertUse(_ path: String, config: ModelConfig) throws -> [[Double]] {
        let live = path.hasPrefix("http://") || path.hasPrefix("https://")
        if live || path.hasSuffix(".json") {
            let bytes: [UInt8]
            if live { bytes = try fetch(path) } else {
                guard let data = FileManager.default.contents(atPath: path) else { throw ModelError("cannot read \(path)") }
                bytes = Array(data)
            }
            return try countsUse(bytes, source: path, config: config)
        }
        return try read(path).expertUse(layers: config.layerCount, experts: config.expertCount)
    }

    /// `GET /v1/cluster/experts`'s totals as use per token: each expert's choices ÷ the rows its layer routed
    /// (choices ÷ experts used per token). A layer without choices has an empty row, as an untraced one.
    static func countsUse(_ bytes: [UInt8], source: String, config: ModelConfig) throws -> [[Double]] {
        let json: JSONValue
        do { json = try JSONValue.parse(bytes) } catch { throw ModelError("\(source) is not JSON: \(error)") }
        guard json["object"]?.stringValue == "cluster.experts", let layers = json["layers"]?.arrayValue else {
            throw ModelError("\(source) is not the routing counts of GET /v1/cluster/experts (no \"object\": \"cluster.experts\" with layers)")
        }
        var use = [[Double]](repeating: [], count: config.layerCount)
        for entry in layers {
            guard let l = entry["layer"]?.intValue, (0..<config.layerCount).contains(l), let total = entry["total"]?.arrayValue else {
                throw ModelError("\(source): a layer entry without a layer of the model's 0..<\(config.layerCount) and its totals")
            }
            let counts = total.compactMap { $0.intValue }.filter { $0 >= 0 }
            guard counts.count == total.count, counts.count == config.expertCount else {
                throw ModelError("\(source): layer \(l) counts \(total.count) experts, but the model has \(config.expertCount) per layer: counts of another model?")
            }
            let rows = Double(counts.reduce(0, +)) / Double(max(1, config.expertsUsed))
            if rows > 0 { use[l] = counts.map { Double($0) / rows } }
        }
        return use
    }

    private static func fetch(_ url: String) throws -> [UInt8] {
        guard let u = URL(string: url) else { throw ModelError("\(url) is not a URL") }
        var request = URLRequest(url: u)
        request.timeoutInterval = 30
        if let key = ProcessInfo.processInfo.environment["CONCLAVE_API_KEY"], !key.isEmpty {
            request.setValue("Bearer \(key)", forHTTPHeaderField: "Authorization")
        }
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: (Data?, URLResponse?, Error?) = (nil, nil, nil)
        URLSession.shared.dataTask(with: request) { d, r, e in result = (d, r, e); done.signal() }.resume()
        done.wait()
        if let e = result.2 { throw ModelError("cannot read \(url): \(e.localizedDescription)") }
        let status = (result.1 as? HTTPURLResponse)?.statusCode ?? 0
        guard status == 200 else {
            throw ModelError("\(url) answered \(status)\(status == 401 ? " (set CONCLAVE_API_KEY to the server's --api-key)" : "")")
        }
        return Array(result.0 ?? Data())
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
