import GGUF

/// How a process's `--memory` divides: the weights it must keep (everything of its layers but the routed
/// experts, and the embedding or head at the ends), KV caches for the sequences it admits, scratch for one
/// micro-batch, and what is left for experts — all of them resident when they fit, else as many cache slots
/// as fit. The pieces come from `ShardBudget`, the formula the planner and the workers use too. The process never allocates beyond these figures, so its peak RSS is the budget plus a fixed
/// runtime overhead (code, thread stacks, tokenizer tables), measured by `conclave bench offload`.
public struct MemoryBudget: Sendable, Equatable {
    public let budget: Int
    /// Weights other than routed experts this process keeps.
    public let fixedBytes: Int
    public let kvBytesPerSequence: Int
    public let sequences: Int
    public let scratchBytes: Int
    /// Bytes of every routed expert of the layers.
    public let expertBytes: Int
    public let expertCount: Int
    /// Bytes of one cache slot (the largest expert, parts aligned for O_DIRECT).
    public let slotBytes: Int
    /// Bytes of KV for prefixes kept for reuse, beyond the running sequences'.
    public let prefixCacheBytes: Int

    /// For a process running `layers` (and holding their experts) with `sequences` caches of `context` positions
    /// (in `cacheTypes`) and micro-batches of up to `ubatch` rows. Throws when even the fixed part and one slot do
    /// not fit.
    /// `prefixCache`: bytes set aside for prefixes kept for reuse, taken before the experts' share; nil: what is
    /// left when every expert is resident (none when they page).
    public init(file: GGUFFile, config: ModelConfig, layers: Range<Int>, context: Int, sequences: Int, ubatch: Int = 512,
                budget: Int, cacheTypes: CacheTypes = .f16, prefixCache: Int? = nil) throws(ModelError) {
        // The shard with every expert resident: its pieces are what this process needs, by the one formula.
        let all = ShardBudget(file: file, config: config, shard: .init(layers: layers, resident: config.isMoE ? .every(layers: layers, expertCount: config.expertCount) : .none),
                              context: context, ubatch: ubatch, cacheTypes: cacheTypes, sampledRows: sequences)
        let layout = WeightLayout(file: file, config: config)
        self.budget = budget
        fixedBytes = all.fixedBytes
        kvBytesPerSequence = all.kvBytesPerSequence
        self.sequences = sequences
        scratchBytes = all.scratchBytes
        expertBytes = all.residentExpertBytes
        expertCount = layers.count * config.expertCount
        slotBytes = layers.map(layout.slotBytes).max() ?? 0
        let fixed = fixedBytes
        let base = fixed + kvBytesPerSequence * sequences + scratchBytes
        allResident = budget - base - max(0, prefixCache ?? 0) >= expertBytes
        prefixCacheBytes = prefixCache.map { max(0, $0) } ?? (allResident ? max(0, budget - base - expertBytes) : 0)
        let asked = prefixCache.map { max(0, $0) } ?? 0
        let cacheNote = asked > 0 ? ", the prefix cache's \(mib(asked))" : ""
        guard config.isMoE || budget >= base + asked else {
            throw ModelError("--memory \(mib(budget)) is below the \(mib(base + asked)) this model needs (weights \(mib(fixed)), KV \(mib(kvBytesPerSequence * sequences)), scratch \(mib(scratchBytes))\(cacheNote))")
        }
        guard !config.isMoE || forExperts >= slotBytes else {
            throw ModelError("--memory \(mib(budget)) is too small: layers \(layers.lowerBound)..<\(layers.upperBound) need \(mib(fixed)) of weights, \(mib(kvBytesPerSequence)) of KV per sequence × \(sequences), \(mib(scratchBytes)) of scratch for \(ubatch)-row micro-batches\(cacheNote) and at least one expert slot of \(mib(slotBytes)); give at least \(mib(base + asked + slotBytes)), a shorter --ctx, a smaller --ubatch or fewer sequences")
        }
    }

    /// Bytes as MiB with two decimals, for budget messages.
    public static func mib(_ n: Int) -> String { ShardBudget.mib(n) }
    func mib(_ n: Int) -> String { Self.mib(n) }

    /// Bytes left for experts.
    public var forExperts: Int { budget - fixedBytes - kvBytesPerSequence * sequences - scratchBytes - prefixCacheBytes }
    /// Whether every expert fits resident (no cache needed) beside what the prefix cache was given.
    public let allResident: Bool
    /// Cache slots that fit (when not all resident).
    public var slots: Int { slotBytes > 0 ? min(expertCount, forExperts / slotBytes) : 0 }
}
