import ArgumentParser
import Runtime
import Tokenizer
import GGUF
import Foundation
import Kernels
import Model

struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tokenize", abstract: "Show the token ids of a text.")

    @OptionGroup var model: ModelOptions
    @Option(name: [.short, .long], help: "Text to tokenize.") var prompt: String?
    @Option(name: .short, help: "File whose bytes are tokenized exactly as they are.") var file: String?
    @Flag(name: .customLong("no-bos"), help: "Do not add the beginning-of-sequence token.") var noBOS = false
    @Flag(help: "Print {\"ids\": [...]}.") var json = false

    func validate() throws {
        if (prompt == nil) == (file == nil) { throw ValidationError("give exactly one of -p TEXT or -f FILE") }
    }

    func run() throws {
        // Only the vocabulary is needed: any GGUF with one works (llama.cpp's vocabulary-only files, any
        // architecture), and no weights are mapped in or checked.
        let tokenizer: Tokenizer
        do { tokenizer = try Tokenizer(file: try GGUFFile(path: model.model)) } catch { printError("error: \(error)"); throw ExitCode(1) }
        let bytes = try readInput(prompt: prompt, file: file)
        let ids = tokenizer.encode(bytes: bytes, addSpecial: !noBOS)
        if json {
            print(JSON.object([("ids", .array(ids.map { .int(Int($0)) }))]).render())
        } else {
            for id in ids { print("\(id) \(String(decoding: tokenizer.piece(id, special: true), as: UTF8.self).debugDescription)") }
        }
    }
}

func readInput(prompt: String?, file: String?) throws -> [UInt8] {
    if let prompt { return Array(prompt.utf8) }
    guard let data = FileManager.default.contents(atPath: file!) else {
        printError("error: cannot read '\(file!)'")
        throw ExitCode(1)
    }
    return Array(data)
}

struct LogitsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logits",
        abstract: "Run the first N tokens of a text (BOS first) as one batch and print the top logits per position.",
        discussion: "One JSON line per position: {\"pos\": i, \"token\": id, \"top\": [[id, logit], …]} — the format of llama-ref logits."
    )

    @OptionGroup var model: ModelOptions
    @OptionGroup var experts: ExpertSelectionOptions
    @Option(name: .short, help: "Text file.") var file: String
    @Option(name: .short, help: "Positions to run.") var n: Int = 256
    @Option(help: "Logits to print per position.") var top: Int = 10

    func run() throws {
        let engine = try model.load(selection: experts.selection)
        let ids = Array(engine.tokenizer.encode(bytes: try readInput(prompt: nil, file: file)).prefix(n))
        let seq = engine.newSequence(capacity: max(ids.count, 1))
        let v = engine.config.vocabSize
        do {
            let logits = try engine.evaluate(ids, in: seq, all: true)
            for (i, t) in ids.enumerated() {
                let row = Array(logits[(i * v)..<((i + 1) * v)])
                let best = row.withUnsafeBufferPointer { Ops.topK($0.baseAddress!, count: v, k: min(top, v)) }
                let pairs = best.map { JSON.array([.int($0), .double((Double(row[$0]) * 1e6).rounded() / 1e6)]) }
                print(JSON.object([("pos", .int(i)), ("token", .int(Int(t))), ("top", .array(pairs))]).render())
            }
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
    }
}

struct PerplexityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perplexity",
        abstract: "Perplexity of a text, computed as llama-perplexity does (comparable figures).",
        discussion: "Chunks of --ctx tokens, BOS in place of each chunk's first token, the second half of each chunk scored."
    )

    @OptionGroup var model: ModelOptions
    @OptionGroup var experts: ExpertSelectionOptions
    @Option(name: .short, help: "Text file.") var file: String
    @Option(help: "Tokens per chunk.") var ctx: Int = 512
    @Flag(help: "Print {\"ppl\": …, \"chunks\": …}.") var json = false

    func run() throws {
        let engine = try model.load(selection: experts.selection)
        let ids = engine.tokenizer.encode(bytes: try readInput(prompt: nil, file: file))
        let start = MonotonicClock.seconds()
        do {
            let r = try engine.perplexity(ids, ctx: ctx) { c, total, ppl in
                printError("[\(c)/\(total)] ppl \(fixed(ppl, 4))")
            }
            let secs = MonotonicClock.seconds() - start
            if json {
                print(JSON.object([("ppl", .double(r.ppl)), ("chunks", .int(r.chunks))]).render())
            } else {
                print("perplexity \(fixed(r.ppl, 4)) over \(r.chunks) chunks of \(ctx) tokens")
            }
            printError("\(fixed(Double(r.chunks * ctx) / secs, 1)) tok/s")
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
    }
}
