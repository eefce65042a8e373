import GGUF

/// How a process's `--memory` divides: the weights it must keep (everything of its layers but the routed
/// experts, and the embedding or head at the ends), KV caches for the sequences it admits, scratch for one
/// micro-batch, and what is left for experts — all of them resident when they fit, else as many cache slots
/// as fit. The process never allocates beyond these figures, so its peak RSS is the budget plus a fixed
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

    /// For a process running `layers` (and holding their experts) with `sequences` caches of `context` positions
    /// (in `cacheTypes`) and micro-batches of up to `ubatch` rows. Throws when even the fixed part and one slot do
    /// not fit.
    public init(file: GGUFFile, config: ModelConfig, layers: Range<Int>, context: Int, sequences: Int, ubatch: Int = 512,
                budget: Int, cacheTypes: CacheTypes = .f16) throws(ModelError) {
        let layout = WeightLayout(file: file, config: config)
        let fixed = Self.fixedBytes(file: file, layout: layout, layers: layers)
        let perExpert = layers.map(layout.bytesPerExpert)
        self.budget = budget
        fixedBytes = fixed
        kvBytesPerSequence = KVCache.bytes(layers: layers.count, capacity: context, config: config, types: cacheTypes)
        self.sequences = sequences
        scratchBytes = Self.scratchBytes(config: config, context: context, ubatch: ubatch, sequences: sequences)
        expertBytes = perExpert.reduce(0, +) * config.expertCount
        expertCount = layers.count * config.expertCount
        slotBytes = layers.map(layout.slotBytes).max() ?? 0
        guard config.isMoE || budget >= fixed + kvBytesPerSequence * sequences + scratchBytes else {
            throw ModelError("--memory \(mib(budget)) is below the \(mib(fixed + kvBytesPerSequence * sequences + scratchBytes)) this model needs (weights \(mib(fixed)), KV \(mib(kvBytesPerSequence * sequences)), scratch \(mib(scratchBytes)))")
        }
        guard !config.isMoE || forExperts >= slotBytes else {
            throw ModelError("--memory \(mib(budget)) is too small: layers \(layers.lowerBound)..<\(layers.upperBound) need \(mib(fixed)) of weights, \(mib(kvBytesPerSequence)) of KV per sequence × \(sequences), \(mib(scratchBytes)) of scratch and at least one expert slot of \(mib(slotBytes)); give at least \(mib(fixed + kvBytesPerSequence * sequences + scratchBytes + slotBytes)), a shorter --ctx or fewer sequences")
        }
    }

    /// Bytes of the weights a stage running `layers` keeps, routed experts excepted.
    public static func fixedBytes(file: GGUFFile, layout: WeightLayout, layers: Range<Int>) -> Int {
        guard !layers.isEmpty else { return 0 }
        var fixed = 0
        for info in file.tensorInfos {
            guard let h = layout.holder(of: info.name), layout.stageNeeds(h, layers: layers) else { continue }
            if case .experts = h { continue }
            fixed += info.byteCount
        }
        return fixed
    }

    /// Working memory for a micro-batch of up to `ubatch` rows: a stage's (Stage.Scratch, router logits,
    /// activations quantized once, attention scores, the logits of the rows sampled) and an expert server's (the
    /// expert arena: each row's inputs, gate, up and down results for every expert it is routed to).
    public static func scratchBytes(config c: ModelConfig, context: Int, ubatch: Int, sequences: Int, stage: Bool = true, experts: Bool = true) -> Int {
        let t = min(ubatch, context)
        var bytes = 0
        if stage {
            let perRow = 6 * c.embeddingLength + 3 * c.qDim + 2 * c.kvDim + c.expertCount + c.expertsUsed * c.embeddingLength
            bytes += 4 * (t * perRow + c.vocabSize * max(1, sequences) + context * c.headCount)
        }
        if experts && c.isMoE { bytes += 4 * t * c.expertsUsed * (2 * c.embeddingLength + 2 * c.expertFeedForward) }
        return bytes
    }

    /// Bytes as MiB with two decimals, for budget messages.
    public static func mib(_ n: Int) -> String { "\((Double(n) / 1048576 * 100).rounded() / 100) MiB" }
    func mib(_ n: Int) -> String { Self.mib(n) }

    /// Bytes left for experts.
    public var forExperts: Int { budget - fixedBytes - kvBytesPerSequence * sequences - scratchBytes }
    /// Whether every expert fits resident (no cache needed).
    public var allResident: Bool { forExperts >= expertBytes }
    /// Cache slots that fit (when not all resident).
    public var slots: Int { slotBytes > 0 ? min(expertCount, forExperts / slotBytes) : 0 }
}
