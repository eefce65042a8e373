import GGUF
import Grammar

/// What a shard costs in memory, by the one formula every part uses: the planner checks each worker's
/// assignment with it, the worker admits an Assign with it (and derives the sequences it has KV room for), and
/// `--memory` in one process (`MemoryBudget`) splits its budget with its pieces. A shard is the layers a process
/// runs, the experts it keeps resident, the ones it pages through its slots, the context and micro-batch it
/// serves and what its KV caches store.
///
/// The process allocates nothing beyond these figures, so its peak RSS is `bytes(sequences:)` plus the fixed
/// runtime overhead of any process (code, thread stacks, tokenizer tables), which the budget tests measure.
public struct ShardBudget: Sendable, Equatable {
    public struct Shard: Sendable, Equatable {
        public var layers: Range<Int>
        public var resident: ExpertSet
        public var paged: ExpertSet
        public var slots: Int
        public init(layers: Range<Int>, resident: ExpertSet = .none, paged: ExpertSet = .none, slots: Int = 0) {
            self.layers = layers
            self.resident = resident
            self.paged = paged
            self.slots = slots
        }
        /// Whether it computes experts (its expert arena is part of its scratch).
        public var computesExperts: Bool { !resident.isEmpty || !paged.isEmpty }
    }

    public let shard: Shard
    /// Weights of its layers other than routed experts (the embedding and the head at the pipeline's ends).
    public let fixedBytes: Int
    public let residentExpertBytes: Int
    /// One slot: the largest expert it pages, parts aligned for O_DIRECT.
    public let slotBytes: Int
    /// Working memory for one micro-batch of up to `ubatch` rows.
    public let scratchBytes: Int
    public let kvBytesPerSequence: Int
    public let ubatch: Int

    /// `sampledRows`: the most rows whose logits one step keeps (the head's output; 1 for a worker, the
    /// sequences decoding at once in one process).
    public init(file: GGUFFile, config: ModelConfig, shard: Shard, context: Int, ubatch: Int, cacheTypes: CacheTypes = .f16,
                sampledRows: Int = 1) {
        let layout = WeightLayout(file: file, config: config)
        self.shard = shard
        self.ubatch = max(1, ubatch)
        fixedBytes = Self.fixedBytes(file: file, layout: layout, layers: shard.layers)
        var resident = 0
        for l in 0..<config.layerCount where config.isMoE {
            resident += shard.resident.experts(inLayer: l, of: config.expertCount).count * layout.bytesPerExpert(layer: l)
        }
        residentExpertBytes = resident
        slotBytes = (0..<config.layerCount).filter { !shard.paged.experts(inLayer: $0, of: config.expertCount).isEmpty }.map(layout.slotBytes).max() ?? 0
        scratchBytes = Self.scratchBytes(config: config, context: context, ubatch: self.ubatch, sequences: sampledRows,
                                         stage: !shard.layers.isEmpty, experts: shard.computesExperts)
        kvBytesPerPosition = KVRoom.bytesPerPosition(layers: shard.layers.count, config: config, types: cacheTypes)
        kvOneSequence = KVRoom(bytes: 0, layers: shard.layers.count, context: context, config: config, types: cacheTypes)
        kvBytesPerSequence = shard.layers.isEmpty ? 0 : KVCache.bytes(layers: 1, capacity: kvOneSequence.perSequence, rowBytes: kvBytesPerPosition)
    }

    /// Bytes of one position of the shard's layers, and what one running sequence costs in positions.
    public let kvBytesPerPosition: Int
    let kvOneSequence: KVRoom

    /// The KV room `memory` leaves beside the rest: running sequences and, in what they leave, kept prefixes.
    public func room(within memory: Int) -> KVRoom {
        var r = kvOneSequence
        r.positions = kvBytesPerPosition > 0 ? max(0, memory - baseBytes) / kvBytesPerPosition : 0
        return r
    }

    /// Everything but KV: weights, resident experts, slots, scratch.
    public var baseBytes: Int { fixedBytes + residentExpertBytes + shard.slots * slotBytes + scratchBytes }

    /// The whole shard with KV for `sequences` sequences.
    public func bytes(sequences: Int) -> Int { baseBytes + kvBytesPerSequence * sequences }

    /// Sequences whose KV fits in `memory` beside the rest (0 for a shard without layers, which holds no KV).
    public func sequences(within memory: Int) -> Int {
        guard kvBytesPerSequence > 0 else { return 0 }
        return room(within: memory).sequences
    }

    /// Refuses a shard that does not fit `memory` with one sequence, naming every part.
    public func check(memory: Int) throws(ModelError) {
        let need = bytes(sequences: shard.layers.isEmpty ? 0 : 1)
        guard need <= memory else {
            let mib = Self.mib
            throw ModelError("the shard needs \(mib(need)) (weights \(mib(fixedBytes)), resident experts \(mib(residentExpertBytes)), \(shard.slots) cache slots \(mib(shard.slots * slotBytes)), scratch for \(ubatch)-row micro-batches \(mib(scratchBytes)), KV for one sequence \(mib(kvBytesPerSequence))) but the budget is \(mib(memory))")
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
    /// activations quantized once, attention scores, the logits of the rows sampled, the grammar caches) and an expert server's (the
    /// expert arena: each row's inputs, gate, up and down results for every expert it is routed to).
    public static func scratchBytes(config c: ModelConfig, context: Int, ubatch: Int, sequences: Int, stage: Bool = true, experts: Bool = true) -> Int {
        let t = min(ubatch, context)
        var bytes = 0
        if stage {
            let perRow = 6 * c.embeddingLength + 3 * c.qDim + 2 * c.kvDim + c.expertCount + c.expertsUsed * c.embeddingLength
            bytes += 4 * (t * perRow + c.vocabSize * max(1, sequences) + context * c.headCount)
            // The sampler's grammar caches (constrained output), bounded by the same figure.
            bytes += GrammarCache.byteLimit(vocabularySize: c.vocabSize)
        }
        if experts && c.isMoE { bytes += 4 * t * c.expertsUsed * (2 * c.embeddingLength + 2 * c.expertFeedForward) }
        return bytes
    }

    /// Bytes as MiB with two decimals, for budget messages.
    public static func mib(_ n: Int) -> String { "\((Double(n) / 1048576 * 100).rounded() / 100) MiB" }
}
