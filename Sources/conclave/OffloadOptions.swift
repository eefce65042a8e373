import ArgumentParser
import Foundation
import GGUF
import Kernels
import Model
import Placement

/// `--memory` and `--policy` for commands that run a model in this process: under a budget smaller than the
/// model, experts beyond it are paged from the file through the offload cache.
struct OffloadOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Hard memory budget for weights, KV and scratch (e.g. 12MiB, 8GiB, bytes); experts that do not fit are read from the model file on use.",
                               valueName: "BYTES"))
    var memory: String?

    @Option(help: "Expert cache eviction policy when offloading: \(EvictionPolicies.names.joined(separator: " | ")).")
    var policy: String = EvictionPolicies.defaultName

    func validate() throws {
        if let memory, ClusterFile.parseBytes(memory) == nil { throw ValidationError("--memory '\(memory)' is not a size like 512MiB, 8GiB or a number of bytes") }
        guard EvictionPolicies.make(policy) != nil else { throw ValidationError("--policy '\(policy)' is not one of \(EvictionPolicies.names.joined(separator: ", "))") }
    }

    var budget: Int? { memory.flatMap(ClusterFile.parseBytes) }

    /// The engine under the budget (all experts resident when they fit), and the cache when one is used.
    func load(_ model: ModelOptions, context: Int?, selection: ExpertSelection = .file) throws -> (Engine, BudgetedExperts?) {
        try load(path: model.model, threads: model.threads, context: context, sequences: 1, cacheTypes: try model.cacheTypes, selection: selection)
    }

    /// The same for `sequences` sequences generating at once, each with KV for `context` positions, in
    /// micro-batches of up to `ubatch` rows (the scratch the budget sets aside).
    /// `prefixCache`: bytes of the budget given to kept prefixes before the experts (nil: only what they leave).
    func load(path: String, threads: Int, context: Int?, sequences: Int, prefixCache: Int? = nil, cacheTypes: CacheTypes, ubatch: Int = 512,
              selection: ExpertSelection = .file) throws -> (Engine, BudgetedExperts?) {
        do {
            let file = try GGUFFile(path: path)
            let config = try ModelConfig(file: file).selecting(selection)
            try KVCache.checkFits(config: config, capacity: context ?? config.contextLength, sequences: sequences, types: cacheTypes)
            guard let budget else {
                // No budget: freed scratch may stay with the process (faster prompts; see ScratchMemory).
                ScratchMemory.keepFreedScratch()
                return (try Engine(file: file, threads: threads, cacheTypes: cacheTypes, selection: selection), nil)
            }
            let plan = try MemoryBudget(file: file, config: config, layers: 0..<config.layerCount, context: min(context ?? config.contextLength, config.contextLength),
                                        sequences: sequences, ubatch: ubatch, budget: budget, cacheTypes: cacheTypes, prefixCache: prefixCache)
            if plan.allResident { return (try Engine(file: file, threads: threads, cacheTypes: cacheTypes, selection: selection), nil) }
            var cache: BudgetedExperts?
            let engine = try Engine(file: file, threads: threads, cacheTypes: cacheTypes, selection: selection) { pool in
                let c = try BudgetedExperts(file: file, config: config, paged: .every(layers: 0..<config.layerCount, expertCount: config.expertCount),
                                            slots: plan.slots, policy: EvictionPolicies.make(policy)!, pool: pool)
                cache = c
                return c
            }
            printError("offload: \(plan.slots) of \(plan.expertCount) experts fit in --memory \(formatBytes(budget)) (weights \(formatBytes(plan.fixedBytes)), KV \(formatBytes(plan.kvBytesPerSequence))\(sequences > 1 ? " × \(sequences) sequences" : ""), scratch \(formatBytes(plan.scratchBytes)) for \(ubatch)-row micro-batches\(plan.prefixCacheBytes > 0 ? ", kept prefixes \(formatBytes(plan.prefixCacheBytes))" : ""), slots \(formatBytes(plan.slots * plan.slotBytes))); the rest are read from \(path), policy \(policy)")
            return (engine, cache)
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
    }
}

extension BudgetedExperts.Counters {
    /// One line for stderr: what the cache did over `tokens` tokens.
    func summary(tokens: Int) -> String {
        let t = Double(max(1, tokens))
        return "experts: \(hits) hits, \(misses) misses (hit rate \(fixed(hitRate * 100, 1))%), read \(formatBytes(bytesRead)) at \(fixed(readGBps, 2)) GB/s, prefetch \(prefetchUsed) used of \(prefetchIssued) issued (precision \(fixed(prefetchPrecision, 2)), recall \(fixed(prefetchRecall, 2))), stall \(fixed(stallSeconds * 1000 / t, 2)) ms/token"
    }
}
