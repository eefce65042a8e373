import ArgumentParser
import Foundation
import GGUF
import Kernels
import Model
import Tokenizer

struct BenchOffload: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "offload",
        abstract: "Decode and prefill speed with part of the experts resident, against the disk's physical limit.",
        discussion: """
        For each --resident percentage the model runs with that share of its experts in cache slots and the rest
        read from the file on use (100: all resident, no cache). Reported: decode and prefill tok/s, the decode
        hit rate, bytes read and stall per token, the ratio to fully resident, the disk's read bandwidth for the
        cache's access pattern (page cache dropped), and the physical limit 1 / max(compute time per token,
        missed bytes per token ÷ disk bandwidth) with our speed as a fraction of it.

        Each share below 100% runs twice (--page-cache both): "warm", with the file's pages where the runs
        before left them (the resident run read every expert through the mapping, so buffered reads of a miss
        may come from the page cache), and "cold", with every expert dropped from the mapping and the page cache
        first, so every miss is read from the disk — the case of a model larger than the host's memory.

        With --trace FILE (from `conclave trace-experts`) nothing runs: the trace is replayed against every
        eviction policy and Belady's optimum (MIN, the ceiling) at each --cache-fractions size.
        """
    )

    @OptionGroup var model: ModelOptions
    @Option(help: "Percentages of experts resident, comma-separated.") var resident = "25,50,75,100"
    @Option(help: "Eviction policy: \(EvictionPolicies.names.joined(separator: " | ")).") var policy = EvictionPolicies.defaultName
    @Option(name: .short, help: "Text whose tokens drive prefill and decode (default: fixed synthetic token ids).") var file: String?
    @Option(help: "Prompt tokens.") var prompt = 128
    @Option(help: "Generated tokens.") var gen = 64
    @Option(help: "Replay this routing trace instead of running the model.") var trace: String?
    @Option(help: "warm (the page cache as the runs before left it), cold (experts dropped from it before each run) or both.") var pageCache = "both"
    @Option(name: .customLong("cache-fractions"), help: "Cache sizes for --trace, as fractions of all experts.") var cacheFractions = "0.25,0.5,0.75"
    @Flag(help: "Print a JSON array, one object per measurement.") var json = false

    func validate() throws {
        guard EvictionPolicies.make(policy) != nil else { throw ValidationError("--policy '\(policy)' is not one of \(EvictionPolicies.names.joined(separator: ", "))") }
        guard parse(resident).map({ $0.allSatisfy { $0 > 0 && $0 <= 100 } }) == true else { throw ValidationError("--resident takes percentages in 1...100, like 25,50,100") }
        guard parse(cacheFractions).map({ $0.allSatisfy { $0 > 0 && $0 <= 1 } }) == true else { throw ValidationError("--cache-fractions takes fractions in (0, 1], like 0.25,0.5") }
        guard ["warm", "cold", "both"].contains(pageCache) else { throw ValidationError("--page-cache is warm, cold or both, not '\(pageCache)'") }
    }

    func parse(_ list: String) -> [Double]? {
        let v = list.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
        return v.contains(nil) || v.isEmpty ? nil : v.map { $0! }
    }

    func run() throws {
        do {
            if let trace { try replay(trace) } else { try measure() }
        } catch let e as ExitCode {
            throw e
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
    }

    // MARK: Trace replay

    func replay(_ path: String) throws {
        let t = try RoutingTraceFile.read(path)
        let layers = Set(t.events.map(\.layer)).count, experts = (t.events.flatMap(\.experts).max() ?? 0) + 1
        let total = layers * experts
        var rows: [JSON] = []
        if !json { print("cache   policy      hit rate   vs LRU    vs MIN") }
        for f in parse(cacheFractions)! {
            let capacity = max(1, Int((f * Double(total)).rounded()))
            let min = CacheSimulator.optimal(t, capacity: capacity).hitRate
            let results = EvictionPolicies.names.map { ($0, CacheSimulator.run(t, capacity: capacity, policy: EvictionPolicies.make($0)!).hitRate) }
            let lru = results.first { $0.0 == "lru" }!.1
            for (name, rate) in results + [("min", min)] {
                var obj: [(String, JSON)] = [("cache_fraction", .double(f)), ("capacity", .int(capacity)), ("policy", .string(name)), ("hit_rate", .double(round4(rate)))]
                if name == EvictionPolicies.defaultName { obj.append(("default", .bool(true))) }
                rows.append(.object(obj))
                if !json {
                    let mark = name == EvictionPolicies.defaultName ? " (default)" : ""
                    print("\(pad(fixed(f, 2), 7)) \(pad(name, 11)) \(pad(fixed(rate * 100, 1) + "%", 9)) \(pad(fixed((rate - lru) * 100, 1), 7)) pt \(pad(fixed(min > 0 ? rate / min : 0, 3), 6))×\(mark)")
                }
            }
        }
        if json { print(JSON.array(rows).render()) }
    }

    // MARK: Running the model

    struct Run {
        var decode = 0.0, prefill = 0.0
        var counters = BudgetedExperts.Counters()
    }

    func measure() throws {
        let file = try GGUFFile(path: model.model)
        let config = try ModelConfig(file: file)
        guard config.isMoE else { throw ModelError("\(model.model) has no routed experts to offload") }
        let tokenizer = try Tokenizer(file: file)
        let needed = prompt + gen + 8
        var ids: [Int32]
        if let f = self.file {
            ids = tokenizer.encode(bytes: try readInput(prompt: nil, file: f))
            guard ids.count >= needed else { throw ModelError("\(f) has \(ids.count) tokens; --prompt + --gen need \(needed)") }
        } else {
            ids = [tokenizer.bos ?? 1] + (0..<(needed - 1)).map { Int32(($0 * 7919) % (config.vocabSize - 10) + 5) }
        }
        let total = config.layerCount * config.expertCount
        let every = ExpertSet.every(layers: 0..<config.layerCount, expertCount: config.expertCount)
        func run(percent: Double, cold: Bool = false) throws -> Run {
            if cold { try ExpertDisk.dropExperts(file: file, config: config) }
            var cache: BudgetedExperts?
            let slots = max(1, Int((percent / 100 * Double(total)).rounded()))
            let engine = percent >= 100 ? try Engine(file: file, threads: model.threads) : try Engine(file: file, threads: model.threads) { pool in
                let c = try BudgetedExperts(file: file, config: config, paged: every, slots: slots, policy: EvictionPolicies.make(policy)!, pool: pool)
                cache = c
                return c
            }
            var r = Run()
            // Warm-up: the first tokens of the text fill the cache as a running server's would be.
            let warm = engine.newSequence(capacity: needed)
            for t in ids.prefix(8) { _ = try engine.evaluate([t], in: warm) }
            let seq = engine.newSequence(capacity: needed)
            var t0 = KernelBench.now()
            _ = try engine.evaluate(Array(ids[8..<(8 + prompt)]), in: seq)
            r.prefill = Double(prompt) / (KernelBench.now() - t0)
            let before = cache?.snapshot ?? .init()
            t0 = KernelBench.now()
            for t in ids[(8 + prompt)..<needed] { _ = try engine.evaluate([t], in: seq) }
            r.decode = Double(gen) / (KernelBench.now() - t0)
            if let after = cache?.snapshot { r.counters = after.minus(before) }
            return r
        }
        let full = try run(percent: 100)
        let disk = try ExpertDisk.readBandwidth(file: file, config: config)
        var rows: [JSON] = []
        if !json {
            print("disk read \(fixed(disk / 1e9, 2)) GB/s (experts in shuffled order, page cache dropped); \(total) experts of \(formatBytes(WeightLayout(file: file, config: config).bytesPerExpert(layer: 0))); policy \(policy), \(model.threads) threads")
            print("resident  pages  decode tok/s  prefill tok/s  hit rate  read/token  stall ms/token  vs resident  limit tok/s  of limit  prefetch precision / recall")
        }
        let caches = pageCache == "both" ? ["warm", "cold"] : [pageCache]
        for p in parse(resident)! {
          for pages in p >= 100 ? ["warm"] : caches {
            let r = p >= 100 ? full : try run(percent: p, cold: pages == "cold")
            let c = r.counters, g = Double(gen)
            let missed = Double(c.bytesRead) / g
            let limit = 1 / max(1 / full.decode, missed / disk)
            let obj: [(String, JSON)] = [
                ("resident_fraction", .double(p / 100)), ("decode_tok_s", .double(round4(r.decode))), ("prefill_tok_s", .double(round4(r.prefill))),
                ("hit_rate", .double(round4(p >= 100 ? 1 : c.hitRate))), ("bytes_read_per_token", .double(missed.rounded())),
                ("stall_ms_per_token", .double(round4(c.stallSeconds * 1000 / g))), ("ratio_to_resident", .double(round4(r.decode / full.decode))),
                ("disk_gbps", .double(round4(disk / 1e9))), ("limit_tok_s", .double(round4(limit))), ("fraction_of_limit", .double(round4(r.decode / limit))),
                ("prefetch_issued", .int(c.prefetchIssued)), ("prefetch_used", .int(c.prefetchUsed)),
                ("prefetch_precision", .double(round4(c.prefetchPrecision))), ("prefetch_recall", .double(round4(c.prefetchRecall))),
                ("policy", .string(policy)), ("page_cache", .string(pages)),
            ]
            rows.append(.object(obj))
            if !json {
                print("\(pad(fixed(p, 0) + "%", 8))  \(pad(pages, 5))  \(pad(fixed(r.decode, 1), 12))  \(pad(fixed(r.prefill, 1), 13))  \(pad(fixed((p >= 100 ? 1 : c.hitRate) * 100, 1) + "%", 8))  \(pad(formatBytes(Int(missed)), 10))  \(pad(fixed(c.stallSeconds * 1000 / g, 2), 14))  \(pad(fixed(r.decode / full.decode, 2) + "×", 11))  \(pad(fixed(limit, 1), 11))  \(pad(fixed(r.decode / limit, 2), 8))  \(fixed(c.prefetchPrecision, 2)) / \(fixed(c.prefetchRecall, 2))")
            }
          }
        }
        if json { print(JSON.array(rows).render()) }
    }

    func round4(_ x: Double) -> Double { (x * 10000).rounded() / 10000 }
    func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }
}

extension BudgetedExperts.Counters {
    /// The counts between two snapshots.
    func minus(_ b: Self) -> Self {
        var d = Self()
        d.hits = hits - b.hits
        d.misses = misses - b.misses
        d.residentUses = residentUses - b.residentUses
        d.bytesRead = bytesRead - b.bytesRead
        d.readSeconds = readSeconds - b.readSeconds
        d.prefetchIssued = prefetchIssued - b.prefetchIssued
        d.prefetchUsed = prefetchUsed - b.prefetchUsed
        d.prefetchWasted = prefetchWasted - b.prefetchWasted
        d.stallSeconds = stallSeconds - b.stallSeconds
        return d
    }
}
