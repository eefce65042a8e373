#if canImport(Glibc)
import Glibc
#endif
import GGUF
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
            w[i] = try LayerWeights.bind(&binder, layer: i, config: config).packed(in: file, heldExperts: heldExperts.experts(inLayer: i, of: config.expertCount))
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
    }

    /// Bytes of weights this stage faulted in (its share of the mapped file).
    public let residentBytes: Int

    private init(config: ModelConfig, layers: Range<Int>, weights: [Int: LayerWeights], global: GlobalWeights?, experts: ExpertProvider,
                 pool: ThreadPool, residentBytes: Int) {
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
        Stage(config: config, layers: layers, weights: weights, global: global, experts: experts, pool: pool, residentBytes: residentBytes)
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

    func layer(_ l: Int, _ hidden: UnsafeMutablePointer<Float>, rows: [BatchRow], caches: [Int: KVCache]) throws {
        let c = config, w = weights[l]!
        let t = rows.count, e = c.embeddingLength
        let buf = Scratch(t: t, c: c)
        defer { buf.free() }

        // Attention block.
        for r in 0..<t { Ops.rmsNorm(hidden + r * e, weight: w.attnNorm, count: e, eps: c.rmsEpsilon, into: buf.normed + r * e) }
        let a = try QuantizedActivations(buf.normed, cols: e, batch: t, format: ActivationQuant.vecDotType(for: w.q.type) ?? .f32, pool: pool)
        if [w.q, w.k, w.v].allSatisfy({ a.format == ActivationQuant.vecDotType(for: $0.type) && MatMul.hasKernel($0.type) }) {
            // Q, K and V in one dispatch: one wake-up and one barrier instead of three.
            try MatMul.multiply([MatMul.Job(w.q, a, into: buf.q), MatMul.Job(w.k, a, into: buf.k), MatMul.Job(w.v, a, into: buf.v)], pool: pool)
        } else {
            try project(w.q, buf.normed, a, into: buf.q, t)
            try project(w.k, buf.normed, a, into: buf.k, t)
            try project(w.v, buf.normed, a, into: buf.v, t)
        }
        for r in 0..<t {
            if let b = w.qBias { for i in 0..<c.qDim { buf.q[r * c.qDim + i] += b[i] } }
            if let b = w.kBias { for i in 0..<c.kvDim { buf.k[r * c.kvDim + i] += b[i] } }
            if let b = w.vBias { for i in 0..<c.kvDim { buf.v[r * c.kvDim + i] += b[i] } }
            if let qn = w.qNorm, let kn = w.kNorm {
                switch c.traits.qkNorm {
                case .perHead:
                    for h in 0..<c.headCount { let p = buf.q + r * c.qDim + h * c.headDim; Ops.rmsNorm(p, weight: qn, count: c.headDim, eps: c.rmsEpsilon, into: p) }
                    for h in 0..<c.headCountKV { let p = buf.k + r * c.kvDim + h * c.headDim; Ops.rmsNorm(p, weight: kn, count: c.headDim, eps: c.rmsEpsilon, into: p) }
                case .whole:
                    Ops.rmsNorm(buf.q + r * c.qDim, weight: qn, count: c.qDim, eps: c.rmsEpsilon, into: buf.q + r * c.qDim)
                    Ops.rmsNorm(buf.k + r * c.kvDim, weight: kn, count: c.kvDim, eps: c.rmsEpsilon, into: buf.k + r * c.kvDim)
                case .none: break
                }
            }
            let angles = Ops.ropeAngles(position: rows[r].position, dims: c.ropeDims, freqBase: c.ropeFreqBase, freqScale: c.ropeFreqScale)
            Ops.rope(buf.q + r * c.qDim, heads: c.headCount, headDim: c.headDim, dims: c.ropeDims, angles: angles, mode: c.traits.ropeMode)
            Ops.rope(buf.k + r * c.kvDim, heads: c.headCountKV, headDim: c.headDim, dims: c.ropeDims, angles: angles, mode: c.traits.ropeMode)
            caches[rows[r].sequence]!.store(layer: l, position: rows[r].position, k: buf.k + r * c.kvDim, v: buf.v + r * c.kvDim)
        }
        attention(l, buf, rows: rows, caches: caches)
        try MatMul.multiply(w.o, buf.attn, batch: t, into: buf.normed, pool: pool)
        for i in 0..<(t * e) { hidden[i] += buf.normed[i] }

        // Feed-forward block: routed experts (plus the shared one), or a dense FFN.
        for r in 0..<t { Ops.rmsNorm(hidden + r * e, weight: w.ffnNorm, count: e, eps: c.rmsEpsilon, into: buf.normed + r * e) }
        buf.moe.initialize(repeating: 0, count: t * e)
        switch w.ffn {
        case .moe(let router, _, let shared):
            let routes = try route(router, buf.normed, t)
            try prefetch(layer: l + 1, from: hidden, t)
            try experts.apply(layer: l, input: buf.normed, rows: t, embedding: e, routes: routes, output: buf.moe)
            if let shared { try sharedExpert(shared, buf.normed, t, into: buf.moe) }
        case .dense(let gate, let up, let down):
            try swigluFFN(gate: gate, up: up, down: down, buf.normed, t, into: buf.moe)
        }
        for i in 0..<(t * e) { hidden[i] += buf.moe[i] }
    }

    /// down(silu(gate·x) ⊙ up·x) for t rows, written to `out`.
    private func swigluFFN(gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix, _ x: UnsafePointer<Float>, _ t: Int,
                           into out: UnsafeMutablePointer<Float>) throws {
        let ff = gate.rows
        let g = UnsafeMutablePointer<Float>.allocate(capacity: t * ff), u = UnsafeMutablePointer<Float>.allocate(capacity: t * ff)
        defer { g.deallocate(); u.deallocate() }
        try MatMul.multiply(gate, x, batch: t, into: g, pool: pool)
        try MatMul.multiply(up, x, batch: t, into: u, pool: pool)
        Ops.swiglu(gate: g, up: u, count: t * ff)
        try MatMul.multiply(down, g, batch: t, into: out, pool: pool)
    }

    /// qwen2moe's shared expert, scaled per row by sigmoid(gateInput · x), added to `out`.
    private func sharedExpert(_ s: SharedExpertWeights, _ x: UnsafePointer<Float>, _ t: Int, into out: UnsafeMutablePointer<Float>) throws {
        let e = config.embeddingLength
        let y = UnsafeMutablePointer<Float>.allocate(capacity: t * e)
        defer { y.deallocate() }
        try swigluFFN(gate: s.gate, up: s.up, down: s.down, x, t, into: y)
        for r in 0..<t {
            var dot: Float = 0
            for i in 0..<e { dot += s.gateInput[i] * x[r * e + i] }
            let scale = 1 / (1 + expf(-dot))
            for i in 0..<e { out[r * e + i] += y[r * e + i] * scale }
        }
    }

    private func project(_ m: WeightMatrix, _ x: UnsafePointer<Float>, _ a: QuantizedActivations, into y: UnsafeMutablePointer<Float>, _ t: Int) throws {
        if a.format == ActivationQuant.vecDotType(for: m.type), MatMul.hasKernel(m.type) {
            try MatMul.multiply(m, a, into: y, pool: pool)
        } else {
            try MatMul.multiply(m, x, batch: t, into: y, pool: pool)
        }
    }

    /// Layer m's router runs early on a hidden state it has not seen yet — layer m−1's, while layer m−1's experts
    /// compute, or the stage's input before layer m's attention — normed with layer m's FFN norm, and the experts
    /// it picks are read ahead: the hidden state changes little from one layer to the next, so the guess is
    /// usually right, and a wrong one costs only a read. Decode batches only — a stream (prefill) reads nearly
    /// every expert anyway.
    func prefetch(layer m: Int, from hidden: UnsafePointer<Float>, _ t: Int) throws {
        guard experts.pagesExperts, t <= 32, layers.contains(m), case .moe(let router, _, _) = weights[m]!.ffn else { return }
        let e = config.embeddingLength
        let normed = UnsafeMutablePointer<Float>.allocate(capacity: t * e)
        defer { normed.deallocate() }
        for r in 0..<t { Ops.rmsNorm(hidden + r * e, weight: weights[m]!.ffnNorm, count: e, eps: config.rmsEpsilon, into: normed + r * e) }
        // Exactly the router's k after a layer: reading twice as many raised recall from 0.41–0.49 to 0.49–0.54
        // but doubled the bytes read and lowered decode speed (bench offload, 50% resident). For the stage's
        // first layer only each row's top expert: the guess from before attention is worse and has less time —
        // its top k raised recall from 0.49 to 0.65 but cost 10% of decode speed in wasted reads; its top one
        // gives 0.60 at the same speed.
        let predicted = try route(router, normed, t)
        let take = m == layers.first ? 1 : config.expertsUsed
        experts.prefetch(layer: m, experts: Set(predicted.flatMap { $0.experts.prefix(take) }))
    }

    /// Router: logits, then the architecture's gating rule.
    func route(_ router: WeightMatrix, _ x: UnsafePointer<Float>, _ t: Int) throws -> [Route] {
        let n = config.expertCount, k = config.expertsUsed
        let logits = UnsafeMutablePointer<Float>.allocate(capacity: t * n)
        defer { logits.deallocate() }
        try MatMul.multiply(router, x, batch: t, into: logits, pool: pool)
        return (0..<t).map { r in Gating.route(logits + r * n, count: n, k: k, traits: config.traits) }
    }

    /// Causal attention of each row over its sequence's cached positions 0...position, heads in parallel.
    func attention(_ l: Int, _ buf: Scratch, rows: [BatchRow], caches: [Int: KVCache]) {
        let c = config
        let group = c.headCount / c.headCountKV
        let scale = 1 / Float(c.headDim).squareRoot()
        let work = rows.count * c.headCount
        pool.parallelFor(work) { range in
            var scores = [Float](repeating: 0, count: 0)
            let qh = UnsafeMutablePointer<Float>.allocate(capacity: c.headDim)
            let q16 = UnsafeMutablePointer<UInt16>.allocate(capacity: c.headDim)
            defer { qh.deallocate(); q16.deallocate() }
            for item in range {
                let r = item / c.headCount, h = item % c.headCount
                let row = rows[r], cache = caches[row.sequence]!
                let n = row.position + 1
                if scores.count < n { scores = [Float](repeating: 0, count: n) }
                // ggml multiplies K (f16) by Q converted to f16: round Q the same way.
                Ops.toF16(buf.q + r * c.qDim + h * c.headDim, q16, count: c.headDim)
                Ops.fromF16(q16, qh, count: c.headDim)
                let kvOff = (h / group) * c.headDim
                scores.withUnsafeMutableBufferPointer { s in
                    for j in 0..<n { s[j] = Ops.dotF16(qh, cache.key(l, j) + kvOff, count: c.headDim) * scale }
                    Ops.softmax(s.baseAddress!, count: n)
                    let out = buf.attn + r * c.qDim + h * c.headDim
                    out.initialize(repeating: 0, count: c.headDim)
                    for j in 0..<n { Ops.axpyF16(s[j], cache.value(l, j) + kvOff, out, count: c.headDim) }
                }
            }
        }
    }

    /// Per-layer working memory for a batch.
    final class Scratch {
        let normed, q, k, v, attn, moe: UnsafeMutablePointer<Float>
        init(t: Int, c: ModelConfig) {
            normed = .allocate(capacity: t * max(c.embeddingLength, c.qDim))
            q = .allocate(capacity: t * c.qDim)
            k = .allocate(capacity: t * c.kvDim)
            v = .allocate(capacity: t * c.kvDim)
            attn = .allocate(capacity: t * c.qDim)
            moe = .allocate(capacity: t * c.embeddingLength)
        }
        func free() {
            for p in [normed, q, k, v, attn, moe] { p.deallocate() }
        }
    }
}

/// Expert selection rules, one per `ArchitectureTraits.Gating`.
public enum Gating {
    public static func route(_ logits: UnsafePointer<Float>, count n: Int, k: Int, traits: ArchitectureTraits) -> Route {
        switch traits.gating {
        case .softmaxThenTopK:
            var p = Array(UnsafeBufferPointer(start: logits, count: n))
            p.withUnsafeMutableBufferPointer { Ops.softmax($0.baseAddress!, count: n) }
            let top = p.withUnsafeBufferPointer { Ops.topK($0.baseAddress!, count: n, k: k) }
            var w = top.map { p[$0] }
            if traits.normalizeExpertWeights {
                // ggml_sum_rows sums in double; llama.cpp clamps the sum away from zero before dividing.
                let sum = max(Float(w.reduce(0.0) { $0 + Double($1) }), 6.103515625e-5)
                w = w.map { $0 / sum }
            }
            return Route(experts: top, weights: w)
        }
    }
}
