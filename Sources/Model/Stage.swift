#if canImport(Glibc)
import Glibc
#endif
import GGUF
import Runtime
import Kernels

/// Where one row of a batch belongs: which sequence's cache, at which position.
public struct BatchRow: Sendable, Equatable {
    public let sequence: Int
    public let position: Int
    public init(sequence: Int, position: Int) {
        self.sequence = sequence
        self.position = position
    }
}

/// Runs layers `layers` of a model for a batch of rows: hidden states in, hidden states out. The first stage
/// also embeds tokens; the last also applies the output norm and head. A whole model is one stage; pipeline
/// parallelism is several, each on its own worker.
public final class Stage: @unchecked Sendable {
    public let config: ModelConfig
    public let layers: Range<Int>
    public let weights: [Int: LayerWeights]
    public let global: GlobalWeights?
    public let experts: ExpertProvider
    /// How often this stage's routers chose each expert (nil for a dense model): kept across `with(experts:)`.
    public let heat: ExpertHeat?
    let pool: ThreadPool

    public var isFirst: Bool { layers.lowerBound == 0 }
    public var isLast: Bool { layers.upperBound == config.layerCount }

    /// Binds the tensors of `layers` (and the embedding and head when the range touches either end).
    /// `experts` defaults to the resident experts of those layers. `heldExperts` says which experts this process
    /// computes from the mapping itself when others live elsewhere (another worker, or the offload cache): only
    /// their slices of the stacked expert tensors are packed and faulted in, so the rest never count against
    /// this host's memory.
    public init(file: GGUFFile, config: ModelConfig, layers: Range<Int>, pool: ThreadPool, experts: ExpertProvider? = nil,
                heldExperts: ExpertSet = .all) throws(ModelError) {
        guard layers.lowerBound >= 0, layers.upperBound <= config.layerCount, !layers.isEmpty else {
            throw ModelError("stage layers \(layers) are outside the model's 0..<\(config.layerCount)")
        }
        var binder = TensorBinder(file: file)
        var w: [Int: LayerWeights] = [:]
        for i in layers {
            w[i] = try LayerWeights.bind(&binder, layer: i, config: config).packed(in: file, config: config, heldExperts: heldExperts.experts(inLayer: i, of: config.expertCount))
        }
        let needsGlobal = layers.lowerBound == 0 || layers.upperBound == config.layerCount
        global = needsGlobal ? try GlobalWeights.bind(&binder, config: config) : nil
        try binder.checkAllUsed(layers: layers, global: needsGlobal)
        // Fault in exactly this stage's weights now, not during the first requests; experts only as held.
        let layout = WeightLayout(file: file, config: config)
        var resident = 0
        for name in binder.used {
            guard let t = file.tensor(named: name), let holder = layout.holder(of: name), layout.stageNeeds(holder, layers: layers) else { continue }
            if case .experts = holder { continue }
            file.mapping.prefault(offset: t.fileOffset, count: t.info.byteCount)
            resident += t.info.byteCount
        }
        resident += layout.prefault(heldExperts, layers: config.isMoE ? Array(layers) : [], in: file)
        self.config = config
        self.layers = layers
        self.weights = w
        self.pool = pool
        self.residentBytes = resident
        self.experts = experts ?? ResidentExperts(weights: w.compactMapValues(\.ffn.experts), pool: pool, held: heldExperts)
        heat = config.isMoE ? ExpertHeat(layers: layers, experts: config.expertCount) : nil
    }

    /// Bytes of weights this stage faulted in (its share of the mapped file).
    public let residentBytes: Int

    private init(config: ModelConfig, layers: Range<Int>, weights: [Int: LayerWeights], global: GlobalWeights?, experts: ExpertProvider,
                 heat: ExpertHeat?, pool: ThreadPool, residentBytes: Int) {
        self.heat = heat
        self.config = config
        self.layers = layers
        self.weights = weights
        self.global = global
        self.experts = experts
        self.pool = pool
        self.residentBytes = residentBytes
    }

    /// The same layers, weights and all (nothing bound, packed or faulted again), computing their routed experts
    /// with `experts`: a worker whose layers survive a re-plan keeps them while the experts' owners change.
    public func with(experts: ExpertProvider) -> Stage {
        Stage(config: config, layers: layers, weights: weights, global: global, experts: experts, heat: heat, pool: pool, residentBytes: residentBytes)
    }

    /// Token embeddings (first stage only): rows of `token_embd`, dequantized.
    public func embed(_ tokens: [Int32], into hidden: UnsafeMutablePointer<Float>) throws {
        guard let g = global, isFirst else { throw ModelError("this stage does not hold the token embedding") }
        let e = config.embeddingLength
        for (i, t) in tokens.enumerated() {
            guard t >= 0 && Int(t) < config.vocabSize else {
                throw ModelError("token id \(t) is outside the vocabulary of \(config.vocabSize)")
            }
            try Dequantize.row(g.tokenEmbedding.type, g.tokenEmbedding.data + Int(t) * g.tokenEmbedding.rowStride, hidden + i * e, count: e)
        }
    }

    /// Runs every layer of the stage over `rows.count` hidden rows, updating each row's sequence cache.
    public func forward(_ hidden: UnsafeMutablePointer<Float>, rows: [BatchRow], caches: [Int: KVCache]) throws {
        for row in rows {
            guard let c = caches[row.sequence] else { throw ModelError("no KV cache for sequence \(row.sequence)") }
            guard row.position < c.capacity else {
                throw ModelError("position \(row.position) is past the context length \(c.capacity)")
            }
        }
        // The first layer's experts are read ahead from the hidden state as it arrives (the token's embedding, or
        // the previous stage's output): its attention is the time the reads get.
        if let first = layers.first { try prefetch(layer: first, from: hidden, rows.count) }
        for l in layers { try layer(l, hidden, rows: rows, caches: caches) }
        for row in rows { caches[row.sequence]!.length = max(caches[row.sequence]!.length, row.position + 1) }
    }

    /// Final norm and output head for the selected rows (last stage only): `vocab` logits per row.
    public func logits(_ hidden: UnsafePointer<Float>, rows: [Int], into out: UnsafeMutablePointer<Float>) throws {
        guard let g = global, isLast else { throw ModelError("this stage does not hold the output head") }
        let e = config.embeddingLength
        let normed = UnsafeMutablePointer<Float>.allocate(capacity: max(1, rows.count * e))
        defer { normed.deallocate() }
        for (i, r) in rows.enumerated() {
            Ops.rmsNorm(hidden + r * e, weight: g.outputNorm, count: e, eps: config.rmsEpsilon, into: normed + i * e)
        }
        try MatMul.multiply(g.output, normed, batch: rows.count, into: out, pool: pool)
    }

    // MARK: One layer

    /// The layer's attention block, then its feed-forward block; the next layer's experts are read ahead once
    /// this one's are chosen.
    func layer(_ l: Int, _ hidden: UnsafeMutablePointer<Float>, rows: [BatchRow], caches: [Int: KVCache]) throws {
        let w = weights[l]!
        try w.attention.forward(layer: l, hidden, rows: rows, caches: caches, config: config, pool: pool)
        try w.feedForward.forward(layer: l, hidden, rows: rows.count, config: config, experts: experts, heat: heat, pool: pool) {
            try prefetch(layer: l + 1, from: hidden, rows.count)
        }
    }

    /// Layer m's router runs early on a hidden state it has not seen yet — layer m−1's, while layer m−1's experts
    /// compute, or the stage's input before layer m's attention — normed with layer m's FFN norm, and the experts
    /// it picks are read ahead: the hidden state changes little from one layer to the next, so the guess is
    /// usually right, and a wrong one costs only a read. Decode batches only — a stream (prefill) reads nearly
    /// every expert anyway.
    func prefetch(layer m: Int, from hidden: UnsafePointer<Float>, _ t: Int) throws {
        guard experts.pagesExperts, t <= 32, layers.contains(m), let block = weights[m]?.feedForward, block.weights.experts != nil else { return }
        let e = config.embeddingLength
        let normed = UnsafeMutablePointer<Float>.allocate(capacity: t * e)
        defer { normed.deallocate() }
        block.normalize(hidden, t, config: config, into: normed)
        // Exactly the router's k after a layer: reading twice as many raised recall from 0.41–0.49 to 0.49–0.54
        // but doubled the bytes read and lowered decode speed (bench offload, 50% resident). For the stage's
        // first layer only each row's top expert: the guess from before attention is worse and has less time —
        // its top k raised recall from 0.49 to 0.65 but cost 10% of decode speed in wasted reads; its top one
        // gives 0.60 at the same speed.
        guard let predicted = try block.route(normed, t, config: config, pool: pool) else { return }
        let take = m == layers.first ? 1 : config.expertsUsed
        experts.prefetch(layer: m, experts: Set(predicted.flatMap { $0.experts.prefix(take) }))
    }
}
