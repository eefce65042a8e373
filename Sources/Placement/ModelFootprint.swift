import GGUF
import Model

/// What a model needs in memory, split the way placement divides it: per layer the bytes that must sit with
/// the layer (attention, norms, router, shared expert, KV cache) and the bytes of each routed expert, plus the
/// embedding (first stage) and the head (last stage).
public struct ModelFootprint: Sendable, Equatable {
    public let layerCount: Int
    public let expertCount: Int
    /// Per layer: bytes that must stay with the layer's stage (weights other than routed experts, and KV).
    public let layerBytes: [Int]
    /// Per layer: bytes of one routed expert (gate + up + down).
    public let expertBytes: [Int]
    public let embeddingBytes: Int
    public let headBytes: Int
    /// Bytes of one offload cache slot (the largest expert, parts aligned for O_DIRECT).
    public let slotBytes: Int
    /// The fewest slots a worker that pages experts needs: one token's experts of a layer, twice (the layer
    /// computing and the next one prefetched).
    public let minSlots: Int
    /// Working memory of a stage, and of a worker that computes experts, for one micro-batch.
    public let stageScratchBytes: Int
    public let expertScratchBytes: Int
    /// Experts a token is routed to per layer.
    public let expertsUsed: Int
    /// How often a token chooses each expert, per layer (`RoutingTrace.expertUse`, from `conclave trace-experts`):
    /// the planner spreads the hot experts over a split layer's workers and pages the cold ones first. Nil, or a
    /// layer's empty row: every expert equally (`expertsUsed ÷ expertCount`).
    public var expertUse: [[Double]]?

    /// How often a token chooses expert `e` of layer `l`.
    public func use(layer l: Int, expert e: Int) -> Double {
        if let use = expertUse, l < use.count, use[l].count == expertCount { return use[l][e] }
        return Double(expertsUsed) / Double(max(1, expertCount))
    }

    public init(layerBytes: [Int], expertBytes: [Int], expertCount: Int, embeddingBytes: Int, headBytes: Int,
                slotBytes: Int? = nil, minSlots: Int = 4, stageScratchBytes: Int = 0, expertScratchBytes: Int = 0, expertsUsed: Int? = nil) {
        self.layerCount = layerBytes.count
        self.layerBytes = layerBytes
        self.expertBytes = expertBytes
        self.expertCount = expertCount
        self.embeddingBytes = embeddingBytes
        self.headBytes = headBytes
        self.slotBytes = slotBytes ?? (expertBytes.max() ?? 0)
        self.minSlots = minSlots
        self.stageScratchBytes = stageScratchBytes
        self.expertScratchBytes = expertScratchBytes
        self.expertsUsed = expertsUsed ?? max(1, minSlots / 2)
    }

    /// From a model file, with a KV cache of `context` positions × `sequences` per layer, in `cacheTypes`, and
    /// scratch for micro-batches of `ubatch` rows (what the scheduler sends; the workers are told in Assign).
    public init(file: GGUFFile, config: ModelConfig, context: Int, sequences: Int = 1, cacheTypes: CacheTypes = .f16, ubatch: Int = 512) {
        let layout = WeightLayout(file: file, config: config)
        var layer = [Int](repeating: 0, count: config.layerCount)
        var embd = 0, head = 0
        for info in file.tensorInfos {
            switch layout.holder(of: info.name) {
            case .layer(let l): layer[l] += info.byteCount
            case .embedding: embd += info.byteCount
            case .head: head += info.byteCount
            case .experts, nil: break
            }
        }
        let expert = (0..<config.layerCount).map(layout.bytesPerExpert)
        // A tied head reads the embedding; the last stage then needs those bytes too.
        if layout.tiedHead { head += embd }
        // Capped at an exabyte (a file may claim any context): no plan fits it, and sums below cannot overflow.
        // A sequence's cache is its rows plus, per layer, at most a page for keys and one for values and one
        // row of rounding (`KVRoom`'s overhead, which `ShardBudget` counts for a whole stage).
        let row = KVRoom.bytesPerPosition(layers: 1, config: config, types: cacheTypes)
        let rows = KVCache.bytes(layers: 1, capacity: context, config: config, types: cacheTypes)
        let (kvAll, overflow) = rows >= 1 << 60 ? (Int.max, true) : (rows + 2 * KVCache.pageSize + row).multipliedReportingOverflow(by: sequences)
        let kv = overflow ? 1 << 60 : min(kvAll, 1 << 60)
        self.init(layerBytes: layer.map { $0 + kv }, expertBytes: expert, expertCount: config.expertCount,
                  embeddingBytes: embd, headBytes: head, slotBytes: (0..<config.layerCount).map(layout.slotBytes).max() ?? 0,
                  minSlots: 2 * max(1, config.expertsUsed),
                  stageScratchBytes: ShardBudget.scratchBytes(config: config, context: context, ubatch: ubatch, sequences: sequences, experts: false),
                  expertScratchBytes: ShardBudget.scratchBytes(config: config, context: context, ubatch: ubatch, sequences: sequences, stage: false),
                  expertsUsed: max(1, config.expertsUsed))
    }

    public var totalBytes: Int {
        layerBytes.reduce(0, +) + expertBytes.reduce(0, +) * expertCount + embeddingBytes + headBytes
    }

    /// Bytes of weights one decoded token reads: every layer's attention, norms and router, its chosen experts
    /// (`config.expertsUsed` per MoE layer, each read once), the head, and one row of the embedding (a tied head
    /// reads the whole table as the head). The KV a token reads comes on top (`KVRoom.bytesPerPosition` a position).
    public static func decodeWeightBytes(file: GGUFFile, config: ModelConfig) -> Int {
        let layout = WeightLayout(file: file, config: config)
        var bytes = 0
        for info in file.tensorInfos {
            switch layout.holder(of: info.name) {
            case .layer, .head: bytes += info.byteCount
            case .embedding: bytes += layout.tiedHead ? info.byteCount : info.byteCount / max(1, config.vocabSize)
            case .experts, nil: break
            }
        }
        if config.expertCount > 0 {
            bytes += (0..<config.layerCount).reduce(0) { $0 + layout.bytesPerExpert(layer: $1) * config.expertsUsed }
        }
        return bytes
    }
}
