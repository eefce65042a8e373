import ArgumentParser
import Foundation
import Grammar
import JSON
import Runtime
import Kernels
import Model
import Tokenizer

/// Options every command that loads a model shares.
struct ModelOptions: ParsableArguments {
    @Option(name: [.short, .long], help: "Path to a .gguf model.")
    var model: String = defaultModelPath

    @Option(help: "Threads (default: every core).")
    var threads: Int = ThreadPool.availableCores

    @OptionGroup var kvCache: CacheTypeOptions

    func validate() throws {
        if let problem = ThreadPool.problem(threads: threads) { throw ValidationError(problem) }
    }

    var cacheTypes: CacheTypes { get throws { try kvCache.types } }

    /// The options a command passes to the `conclave serve` it starts, so the server runs as this command asked.
    var serveArguments: [String] { ["--cache-type-k", kvCache.key, "--cache-type-v", kvCache.value] }

    func load(split: [Int] = [], selection: ExpertSelection = .file) throws -> Engine {
        // No --memory here: freed scratch may stay with the process (faster prompts).
        ScratchMemory.keepFreedScratch()
        do {
            return try Engine(path: model, threads: threads, split: split, cacheTypes: try cacheTypes, selection: selection)
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
    }
}

/// `--experts-used` / `--expert-min-weight`: fewer routed experts per token than the file asks for (off by default).
struct ExpertSelectionOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Route each token to N experts instead of the model's expert_used_count (at most that): fewer bytes read per token, some quality lost (bench decode and perplexity measure both). Off by default.", valueName: "N"))
    var expertsUsed: Int?

    @Option(help: ArgumentHelp("Skip a token's chosen experts whose share of its expert weights is below W (0–1; the best one always stays, the rest are scaled back to the same sum). 0: off.", valueName: "W"))
    var expertMinWeight: Float = 0

    var selection: ExpertSelection { ExpertSelection(used: expertsUsed, minWeight: expertMinWeight) }

    /// The same options for a `conclave serve` a command starts.
    var serveArguments: [String] { (expertsUsed.map { ["--experts-used", String($0)] } ?? []) + (expertMinWeight > 0 ? ["--expert-min-weight", String(expertMinWeight)] : []) }

    func validate() throws {
        // The model's own limits are checked when it loads; here only what no model accepts.
        if let n = expertsUsed, n < 1 { throw ValidationError("--experts-used \(n) must be at least 1") }
        if !(expertMinWeight >= 0 && expertMinWeight < 1) { throw ValidationError("--expert-min-weight \(expertMinWeight) must be at least 0 and below 1") }
    }
}

/// `--cache-type-k` / `--cache-type-v`, for every command that makes KV caches or counts them.
struct CacheTypeOptions: ParsableArguments {
    @Option(name: .customLong("cache-type-k"), help: ArgumentHelp("KV cache type for keys: f16, q8_0 (half the bytes), q4_0 (under a third).", valueName: "TYPE"))
    var key: String = "f16"

    @Option(name: .customLong("cache-type-v"), help: ArgumentHelp("KV cache type for values: f16, q8_0, q4_0 (computed as llama.cpp's flash attention does).", valueName: "TYPE"))
    var value: String = "f16"

    func validate() throws {
        do { _ = try types } catch { throw ValidationError("\(error)") }
    }

    var types: CacheTypes { get throws { try CacheTypes(key: key, value: value) } }
}

/// Speculative decoding's draft model and how far it proposes (run and serve take the same flags, as llama.cpp's
/// llama-cli and llama-server do).
struct DraftModelOptions: ParsableArguments {
    @Option(name: .customLong("draft"), help: ArgumentHelp("A draft model with the same vocabulary for speculative decoding: it proposes tokens, the model verifies them all in one pass; the text is the same as without it.", valueName: "DRAFT.gguf"))
    var path: String?
    @Option(name: .customLong("draft-max"), help: "Most tokens the draft proposes per pass.") var maxTokens = 8
    @Option(name: .customLong("draft-min"), help: "Fewer confident proposals than this are dropped.") var minTokens = 1
    @Option(name: .customLong("draft-p-min"), help: "The draft stops proposing below this probability of its best token.") var minProbability: Float = 0.75

    var options: DraftOptions {
        var d = DraftOptions()
        d.maxTokens = maxTokens
        d.minTokens = minTokens
        d.minProbability = minProbability
        return d
    }

    func validate() throws {
        if let problem = options.problem { throw ValidationError(problem) }
    }

    /// The draft engine (f16 cache: the draft's cache is small), checked to share the served model's vocabulary;
    /// nil without --draft.
    func load(threads: Int, for tokenizer: Tokenizer, vocabSize: Int) throws -> Engine? {
        guard let path else { return nil }
        let engine = try Engine(path: path, threads: threads)
        try engine.checkDrafts(for: tokenizer, vocabSize: vocabSize)
        return engine
    }

    /// The arguments that give a child `conclave serve` the same draft.
    var arguments: [String] {
        guard let path else { return [] }
        return ["--draft", path, "--draft-max", String(maxTokens), "--draft-min", String(minTokens), "--draft-p-min", String(minProbability)]
    }
}

/// The model the repository ships, found beside the executable's package (so `swift run conclave run` works).
let defaultModelPath: String = {
    let name = "models/tiny-qwen3moe-4L-256d-8x2-Q4_0.gguf"
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    for _ in 0..<6 {
        let candidate = dir.appendingPathComponent(name).path
        if FileManager.default.fileExists(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    return name
}()

struct SamplingOptions: ParsableArguments {
    // `parsing: .unconditional`: `--temp -1` is a value to refuse by name in validate(), not a missing one.
    @Option(name: .customLong("temp"), parsing: .unconditional, help: "Temperature; 0 is greedy.") var temperature: Float = 0.8
    @Option(name: .customLong("top-k"), parsing: .unconditional, help: "Keep the k most likely tokens (0: all).") var topK: Int = 40
    @Option(name: .customLong("top-p"), parsing: .unconditional, help: "Keep the smallest set with this total probability.") var topP: Float = 0.95
    @Option(name: .customLong("min-p"), parsing: .unconditional, help: "Drop tokens below this fraction of the best one's probability.") var minP: Float = 0.05
    // 1.1 (llama.cpp's default until 2024) rather than 1.0: small models such as the shipped one otherwise fall into
    // repeating one token (greedy `run` printed only newlines).
    @Option(name: .customLong("repeat-penalty"), parsing: .unconditional, help: "Penalty for tokens among the last 64 (1: none).") var repeatPenalty: Float = 1.1
    @Option(help: "Random seed; the same seed gives the same text.") var seed: UInt64 = 0
    @Option(name: .customLong("grammar-file"), help: "Constrain the output to this GBNF grammar (llama.cpp's format: root ::= …).") var grammarFile: String?
    @Option(name: [.customShort("j"), .customLong("json-schema")], help: "Constrain the output to JSON valid under this JSON schema (given inline).") var jsonSchema: String?
    @Option(name: .customLong("json-schema-file"), help: "Constrain the output to JSON valid under the JSON schema in this file.") var jsonSchemaFile: String?

    func validate() throws {
        _ = try grammarText()
        if let problem = params.problem { throw ValidationError(problem) }
    }

    /// The grammar the options ask for (nil: none), checked: a file that cannot be read, a schema that is not
    /// JSON or cannot be enforced, or two constraints at once are errors naming the option.
    func grammarText() throws -> String? {
        let given = [grammarFile, jsonSchema, jsonSchemaFile].compactMap { $0 }
        guard !given.isEmpty else { return nil }
        guard given.count == 1 else { throw ValidationError("--grammar-file, --json-schema and --json-schema-file each constrain the output; give one") }
        func read(_ path: String, _ option: String) throws -> String {
            do { return try String(contentsOfFile: path, encoding: .utf8) } catch {
                throw ValidationError("\(option) \(path): cannot be read (\(error.localizedDescription))")
            }
        }
        if let grammarFile {
            let text = try read(grammarFile, "--grammar-file")
            do { _ = try GrammarProgram(parsing: text) } catch { throw ValidationError("--grammar-file \(grammarFile): \(error.message)") }
            return text
        }
        let (option, source) = jsonSchema.map { ("--json-schema", $0) } ?? ("--json-schema-file", "")
        let text = jsonSchema == nil ? try read(jsonSchemaFile!, option) : source
        let schema: JSONValue
        do { schema = try JSONValue.parse(text) } catch { throw ValidationError("\(option): not JSON (\(error))") }
        do { return try JSONSchemaGrammar.compile(schema) } catch { throw ValidationError("\(option): \(error.message)") }
    }

    var params: SamplingParams {
        var p = SamplingParams()
        p.temperature = temperature
        p.topK = topK
        p.topP = topP
        p.minP = minP
        p.repeatPenalty = repeatPenalty
        p.seed = seed
        p.grammar = try? grammarText()  // checked by validate()
        return p
    }
}

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Generate text from a prompt in this process.",
        discussion: "Streams the generated text (not the prompt) to stdout; prefill and decode speed go to stderr."
    )

    @OptionGroup var model: ModelOptions
    @OptionGroup var experts: ExpertSelectionOptions
    @Option(name: [.short, .long], help: "Prompt text.") var prompt: String = "The"
    @Option(name: .short, help: "Tokens to generate.") var n: Int = 64
    @Option(help: "Context length (default: the model's).") var ctx: Int?
    @Option(help: "Stop before this text (repeat for several).") var stop: [String] = []
    @Flag(name: .customLong("ignore-eos"), help: "Generate -n tokens even past end-of-generation tokens (as llama.cpp's --ignore-eos).") var ignoreEOS = false
    @OptionGroup var sampling: SamplingOptions
    @OptionGroup var offload: OffloadOptions
    @OptionGroup var draft: DraftModelOptions

    func run() throws {
        let (engine, cache) = try offload.load(model, context: ctx, selection: experts.selection)
        let ids = engine.tokenizer.encode(prompt)
        let seq = engine.newSequence(capacity: ctx)
        var text = TextStream()
        do {
            let policy = GenerationPolicy(maxTokens: n, stop: stop, capacity: seq.caches.first?.capacity ?? 0, ignoreEOS: ignoreEOS)
            let write: (Int32?, String) -> Bool = { _, piece in
                text.write(Array(piece.utf8))
                return true
            }
            let stats: Engine.GenerationStats
            if let d = try draft.load(threads: model.threads, for: engine.tokenizer, vocabSize: engine.config.vocabSize) {
                var ds = DraftStats()
                stats = try engine.generate(prompt: ids, policy: policy, params: sampling.params, in: seq, draft: d,
                                            draftSequence: d.newSequence(capacity: seq.caches.first?.capacity), options: draft.options, draftStats: &ds, onToken: write)
                text.finish()
                printError("draft: \(ds.accepted) of \(ds.proposed) proposals accepted (\(fixed(ds.acceptanceRate * 100, 1))%), \(fixed(ds.tokensPerPass, 2)) tokens per pass over \(ds.passes) passes")
            } else {
                stats = try engine.generate(prompt: ids, policy: policy, params: sampling.params, in: seq, onToken: write)
                text.finish()
            }
            printError("prompt \(stats.promptTokens) tokens: \(fixed(stats.prefillTokensPerSecond, 1)) tok/s; generated \(stats.generatedTokens): \(fixed(stats.decodeTokensPerSecond, 1)) tok/s"
                       + (stats.finishReason == .length ? " (stopped at the length limit: -n tokens, or the context is full)" : ""))
            if let cache { printError(cache.snapshot.summary(tokens: stats.promptTokens + stats.generatedTokens)) }
            if let budget = offload.budget {
                let peak = peakRSS()
                printError("memory: peak RSS \(formatBytes(peak)) (\(peak) bytes) for --memory \(formatBytes(budget)); the runtime's own share is the difference")
            }
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
    }
}

/// Generated text to stdout as it streams, whole UTF-8 characters only (a character split over two tokens is not
/// mangled); `finish` prints the rest and the final newline. `conclave run` and `conclave generate` share it, so
/// they print the same bytes.
struct TextStream {
    private var pending: [UInt8] = []

    mutating func write(_ bytes: [UInt8]) {
        pending += bytes
        let cut = completeUTF8Prefix(pending)
        if cut > 0 {
            writeStdout(Array(pending[..<cut]))
            pending.removeFirst(cut)
        }
    }

    /// The rest, with the newline that ends the text (without it when the text was cut short by an error).
    mutating func finish(newline: Bool = true) {
        writeStdout(pending + (newline ? [0x0A] : []))
        pending.removeAll()
    }
}

func writeStdout(_ bytes: [UInt8]) {
    bytes.withUnsafeBytes { TensorDump.writeAll(1, $0) }
}
