import ArgumentParser
import JSON
import Foundation
import Kernels
import Model
import Placement

struct BenchDecode: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decode",
        abstract: "Prefill and decode speed of a model, measured as `llama-ref bench` measures llama.cpp.",
        discussion: """
        A prompt of --prompt tokens is evaluated as one batch (prefill tok/s), then --gen tokens one at a time
        (decode tok/s), with fixed token values so sampling stays out of the figure. Peak RSS is reported against
        the model's mapped size plus its KV cache.

        Decode on a CPU is bound by the bytes it reads: the bench counts what one decoded token reads from the
        file's tensor sizes (every layer's attention, norms and router, the chosen experts of each MoE layer, the
        head, an embedding row, and the KV cache at the run's average position), measures this machine's read
        bandwidth with the same threads, and reports the limit that gives (bandwidth ÷ bytes) and the fraction of
        it reached.

        With --schema FILE (a JSON Schema), decoding is measured with sampling instead (llama.cpp's default
        chain, seed 42), once free and once constrained to the schema, and the ratio reported with what the
        grammar costs: compiling the schema, the vocabulary's trie (once per process), masks computed and reused.
        """
    )

    @OptionGroup var model: ModelOptions
    @OptionGroup var experts: ExpertSelectionOptions
    @Option(help: "Prompt tokens.") var prompt = 128
    @Option(help: "Generated tokens.") var gen = 32
    @Option(help: "A JSON Schema file: compare decoding constrained to it with free decoding.") var schema: String?
    @Flag(help: "Print {\"prefill_tok_s\": …, \"decode_tok_s\": …, \"threads\": …}.") var json = false

    func run() throws {
        let engine = try model.load(selection: experts.selection)
        let vocab = engine.config.vocabSize
        let toks = [engine.tokenizer.bos ?? 1] + (0..<(prompt - 1)).map { Int32(($0 * 7919) % (vocab - 10) + 5) }
        if let schema {
            do {
                let text = try String(contentsOfFile: schema, encoding: .utf8)
                let bench = ConstrainedDecodeBench(engine: engine, schema: try JSONValue.parse(text), gen: gen,
                                                   prompt: engine.tokenizer.encode("Answer with the JSON object asked for.\n"))
                report(try bench.run(), vocab: vocab)
            } catch {
                printError("error: \(error)")
                throw ExitCode(1)
            }
            return
        }
        do {
            let ctx = prompt + gen + 8
            _ = try engine.evaluate(Array(toks.prefix(8)), in: engine.newSequence(capacity: ctx))  // warm-up
            let seq = engine.newSequence(capacity: ctx)
            var t = KernelBench.now()
            _ = try engine.evaluate(toks, in: seq)
            let pp = Double(prompt) / (KernelBench.now() - t)
            t = KernelBench.now()
            for i in 0..<gen { _ = try engine.evaluate([toks[1 + i % (prompt - 1)]], in: seq) }
            let tg = Double(gen) / (KernelBench.now() - t)
            let rss = peakRSS()
            let kv = seq.caches.reduce(0) { $0 + $1.bytes }
            // The physical limit: bytes a decoded token reads, against the read bandwidth with the same threads.
            let kvRead = KVRoom.bytesPerPosition(layers: engine.config.layerCount, config: engine.config, types: engine.cacheTypes) * (prompt + gen / 2)
            let perToken = ModelFootprint.decodeWeightBytes(file: engine.file, config: engine.config) + kvRead
            let bandwidth = KernelBench.bandwidth(pool: engine.pool).gbps * 1e9
            let limit = Double(perToken) / bandwidth
            let fraction = tg * limit
            if json {
                print(JSON.object([("prefill_tok_s", .double((pp * 1000).rounded() / 1000)), ("decode_tok_s", .double((tg * 1000).rounded() / 1000)),
                                   ("threads", .int(model.threads)), ("peak_rss_bytes", .int(rss)), ("model_bytes", .int(engine.file.fileSize)),
                                   ("kv_bytes", .int(kv)), ("kv_bytes_per_token", .int(kv / ctx)),
                                   ("cache_type_k", .string(engine.cacheTypes.key.name.lowercased())),
                                   ("cache_type_v", .string(engine.cacheTypes.value.name.lowercased())),
                                   ("decode_bytes_per_token", .int(perToken)), ("read_gbps", .double((bandwidth / 1e6).rounded() / 1000)),
                                   ("decode_limit_tok_s", .double((1 / limit * 10).rounded() / 10)), ("decode_fraction_of_limit", .double((fraction * 1000).rounded() / 1000))]).render())
            } else {
                print("prefill \(fixed(pp, 1)) tok/s (\(prompt) tokens), decode \(fixed(tg, 1)) tok/s (\(gen) tokens), \(model.threads) threads")
                print("decode reads \(formatBytes(perToken)) a token; this machine reads \(fixed(bandwidth / 1e9, 1)) GB/s on \(model.threads) threads: limit \(fixed(1 / limit, 1)) tok/s, reached \(fixed(fraction * 100, 1))%")
                print("peak RSS \(formatBytes(rss)); model \(formatBytes(engine.file.fileSize)) mapped + KV \(formatBytes(kv)) (\(kv / ctx) bytes per position, \(engine.cacheTypes))")
            }
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
    }
}

extension BenchDecode {
    func report(_ f: ConstrainedDecodeBench.Figures, vocab: Int) {
        let ms = { (s: Double) in (s * 1e6 / Double(max(1, gen))).rounded() / 1000 }
        if json {
            print(JSON.object([("vocab", .int(vocab)), ("gen", .int(gen)), ("threads", .int(model.threads)),
                               ("free_decode_tok_s", .double((f.freeTokS * 1000).rounded() / 1000)),
                               ("constrained_decode_tok_s", .double((f.constrainedTokS * 1000).rounded() / 1000)),
                               ("ratio", .double((f.ratio * 1000).rounded() / 1000)),
                               ("schema_compile_ms", .double((f.schemaSeconds * 1e6).rounded() / 1000)), ("grammar_rules", .int(f.grammarRules)),
                               ("vocabulary_trie_ms", .double((f.vocabularySeconds * 1e6).rounded() / 1000)), ("trie_nodes", .int(f.vocabularyNodes)),
                               ("sample_ms_free", .double(ms(f.freeSampleSeconds))), ("sample_ms_constrained", .double(ms(f.constrainedSampleSeconds))),
                               ("masks_computed", .int(f.masksComputed)), ("mask_hits", .int(f.maskHits)),
                               ("grammar_states", .int(f.states)), ("grammar_cache_bytes", .int(f.cacheBytes)), ("grammar_cache_limit_bytes", .int(f.cacheLimit)), ("answers", .int(f.answers)),
                               ("first_answer", .string(f.firstAnswer))]).render())
        } else {
            print("decode \(fixed(f.freeTokS, 1)) tok/s free, \(fixed(f.constrainedTokS, 1)) tok/s under the schema (\(fixed(f.ratio, 3))×), \(gen) tokens, vocabulary \(vocab), \(model.threads) threads")
            print("schema → grammar \(fixed(f.schemaSeconds * 1000, 2)) ms (\(f.grammarRules) rules); vocabulary trie \(fixed(f.vocabularySeconds * 1000, 1)) ms (\(f.vocabularyNodes) nodes, once per process)")
            print("sampling \(fixed(ms(f.freeSampleSeconds), 3)) ms/token free, \(fixed(ms(f.constrainedSampleSeconds), 3)) ms/token constrained; masks computed \(f.masksComputed), reused \(f.maskHits); \(f.answers) answers completed")
            print("grammar caches: \(f.states) states, \(fixed(Double(f.cacheBytes) / 1048576, 2)) MiB (a sampling stage sets aside \(fixed(Double(f.cacheLimit) / 1048576, 2)) MiB)")
            print("first answer: \(f.firstAnswer.debugDescription)")
        }
    }
}

/// Peak resident set size of this process (VmHWM), in bytes.
func peakRSS() -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
          let kb = Int(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
    return kb * 1024
}
