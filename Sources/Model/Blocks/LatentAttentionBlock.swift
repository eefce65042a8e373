import GGUF
import Runtime
import Kernels
import Synchronization

/// DeepSeek's multi-head latent attention, as llama.cpp computes it with the absorption optimisation: each
/// position caches only a normed `latentRank` latent and a roped `ropeDim` key shared by all heads; a head's
/// no-position query is carried into latent space by its `attn_k_b` slice, scores are taken against the cached
/// row (latent then rope key), the weighted latents are summed, and its `attn_v_b` slice carries the sum back to
/// the head's value size before the output projection. One cached row per position instead of K and V per head
/// is what makes DeepSeek-V3's 128 heads affordable to cache. Files converted before llama.cpp split `attn_kv_b`
/// are computed as llama.cpp computes them: the latent decompressed into K and V per head, cached as such.
public struct LatentAttentionBlock: Sendable {
    /// How the latent becomes keys and values.
    public enum Expansion: Sendable {
        /// Per-head slices (`attn_k_b`, `attn_v_b`; rows latentRank × cols noPositionDim, and valueDim × latentRank).
        case absorbed(keyB: WeightMatrix, valueB: WeightMatrix)
        /// `attn_kv_b`: per head, the key's no-position part then the value, from the latent.
        case decompressed(WeightMatrix)
    }

    public let norm: [Float]
    /// Q through a low-rank pair with a norm between (`queryA`, `queryANorm`, `queryB`), or one `query`.
    public let query: WeightMatrix?
    public let queryA: WeightMatrix?, queryANorm: [Float]?, queryB: WeightMatrix?
    /// Hidden → latent and rope key, and the latent's norm.
    public let keyValueA: WeightMatrix
    public let keyValueANorm: [Float]
    public let expansion: Expansion
    public let output: WeightMatrix

    /// The tensors of layer `i`'s latent attention (llama.cpp's deepseek2 with split k_b/v_b).
    public static func tensors(layer i: Int, _ d: LayerDimensions, _ m: LatentAttentionShape) -> [TensorSpec] {
        let e = d.embedding, h = d.heads, kv = m.latentRank
        var out = [TensorSpec(.block(i, .attnNorm), [e])]
        if m.queryRank > 0 {
            out += [TensorSpec(.block(i, .attnQA), [e, m.queryRank]), TensorSpec(.block(i, .attnQANorm), [m.queryRank]),
                    TensorSpec(.block(i, .attnQB), [m.queryRank, h * m.queryHeadDim])]
        } else {
            out.append(TensorSpec(.block(i, .attnQ), [e, h * m.queryHeadDim]))
        }
        out += [TensorSpec(.block(i, .attnKVAMQA), [e, kv + m.ropeDim]), TensorSpec(.block(i, .attnKVANorm), [kv])]
        out += m.cachesLatent ? [TensorSpec(.block(i, .attnKB), [m.noPositionDim, kv, h]), TensorSpec(.block(i, .attnVB), [kv, m.valueDim, h])]
                              : [TensorSpec(.block(i, .attnKVB), [kv, h * (m.noPositionDim + m.valueDim)])]
        out.append(TensorSpec(.block(i, .attnOutput), [h * m.valueDim, e]))
        return out
    }

    static func bind(_ b: inout TensorBinder, layer i: Int, config c: ModelConfig) throws(ModelError) -> LatentAttentionBlock {
        guard let m = c.latent else { throw ModelError("internal: latent attention without its shape") }
        let spec = tensors(layer: i, c.dimensions, m)
        let lowRank = m.queryRank > 0
        return LatentAttentionBlock(
            norm: try b.vector(.block(i, .attnNorm), in: spec),
            query: lowRank ? nil : try b.matrix(.block(i, .attnQ), in: spec),
            queryA: lowRank ? try b.matrix(.block(i, .attnQA), in: spec) : nil,
            queryANorm: lowRank ? try b.vector(.block(i, .attnQANorm), in: spec) : nil,
            queryB: lowRank ? try b.matrix(.block(i, .attnQB), in: spec) : nil,
            keyValueA: try b.matrix(.block(i, .attnKVAMQA), in: spec), keyValueANorm: try b.vector(.block(i, .attnKVANorm), in: spec),
            expansion: m.cachesLatent ? .absorbed(keyB: try b.matrix(.block(i, .attnKB), in: spec), valueB: try b.matrix(.block(i, .attnVB), in: spec))
                                      : .decompressed(try b.matrix(.block(i, .attnKVB), in: spec)),
            output: try b.matrix(.block(i, .attnOutput), in: spec))
    }

    /// The matrices repacked for this host's kernels; the per-head stacks only where every head's slice is whole
    /// groups of eight rows.
    func packed(in file: GGUFFile, config c: ModelConfig) throws(ModelError) -> LatentAttentionBlock {
        func pack(_ w: WeightMatrix?) throws(ModelError) -> WeightMatrix? { try w.map { w throws(ModelError) in try file.packed(w) } }
        func perHead(_ w: WeightMatrix) throws(ModelError) -> WeightMatrix {
            (w.rows / c.headCount) % 8 == 0 ? try file.packed(w) : w
        }
        let e: Expansion
        switch expansion {
        case .absorbed(let k, let v): e = .absorbed(keyB: try perHead(k), valueB: try perHead(v))
        case .decompressed(let kv): e = .decompressed(try file.packed(kv))
        }
        return LatentAttentionBlock(norm: norm, query: try pack(query), queryA: try pack(queryA), queryANorm: queryANorm, queryB: try pack(queryB),
                                    keyValueA: try file.packed(keyValueA), keyValueANorm: keyValueANorm, expansion: e, output: try file.packed(output))
    }

    /// hidden += O · attention(norm(hidden)) for the batch's rows, caching each row's latent and rope key.
    func forward(layer l: Int, _ hidden: UnsafeMutablePointer<Float>, rows: [BatchRow], caches: [Int: KVCache],
                 config c: ModelConfig, pool: ThreadPool) throws {
        guard let m = c.latent else { throw ModelError("internal: latent attention without its shape") }
        let t = rows.count, e = c.embeddingLength, heads = c.headCount
        let qw = m.queryHeadDim, rank = m.latentRank, row = rank + m.ropeDim
        let buf = Scratch(t: t, c: c, m)
        defer { buf.free() }
        for r in 0..<t { Ops.rmsNorm(hidden + r * e, weight: norm, count: e, eps: c.rmsEpsilon, into: buf.normed + r * e) }
        if let a = queryA, let an = queryANorm, let b = queryB {
            try MatMul.multiply(a, buf.normed, batch: t, into: buf.queryLow, pool: pool)
            for r in 0..<t {
                let p = buf.queryLow + r * m.queryRank
                Ops.rmsNorm(p, weight: an, count: m.queryRank, eps: c.rmsEpsilon, into: p)
            }
            try MatMul.multiply(b, buf.queryLow, batch: t, into: buf.q, pool: pool)
        } else if let q = query {
            try MatMul.multiply(q, buf.normed, batch: t, into: buf.q, pool: pool)
        }
        try MatMul.multiply(keyValueA, buf.normed, batch: t, into: buf.kv, pool: pool)
        for r in 0..<t {
            let angles = Ops.ropeAngles(position: rows[r].position, dims: m.ropeDim, freqBase: c.ropeFreqBase, freqScale: c.ropeFreqScale, yarn: c.yarn)
            let kv = buf.kv + r * row
            Ops.rope(kv + rank, heads: 1, headDim: m.ropeDim, dims: m.ropeDim, angles: angles, mode: c.traits.ropeMode)
            Ops.rmsNorm(kv, weight: keyValueANorm, count: rank, eps: c.rmsEpsilon, into: kv)
            // Each head's rope part follows its no-position part.
            Ops.rope(buf.q + r * heads * qw + m.noPositionDim, heads: heads, headDim: qw, dims: m.ropeDim, angles: angles, mode: c.traits.ropeMode)
        }
        switch expansion {
        case .absorbed(let keyB, let valueB):
            for r in 0..<t { try caches[rows[r].sequence]!.store(layer: l, position: rows[r].position, k: buf.kv + r * row, v: nil) }
            // Per head: the no-position query into latent space, beside its rope part: the row scored against the cache.
            for h in 0..<heads {
                for r in 0..<t { (buf.gather + r * m.noPositionDim).update(from: buf.q + (r * heads + h) * qw, count: m.noPositionDim) }
                try MatMul.multiply(keyB.rows((h * rank)..<((h + 1) * rank)), buf.gather, batch: t, into: buf.absorbed, pool: pool)
                for r in 0..<t {
                    let dst = buf.scored + (r * heads + h) * row
                    dst.update(from: buf.absorbed + r * rank, count: rank)
                    (dst + rank).update(from: buf.q + (r * heads + h) * qw + m.noPositionDim, count: m.ropeDim)
                }
            }
            try attend(l, buf.scored, width: row, keyOffset: { _ in 0 }, valuesInKeys: true, valueOffset: { _ in 0 }, valueWidth: rank,
                       into: buf.latent, rows: rows, caches: caches, config: c, pool: pool)
            // Per head: the weighted latent back to the head's value size.
            for h in 0..<heads {
                for r in 0..<t { (buf.gather + r * rank).update(from: buf.latent + (r * heads + h) * rank, count: rank) }
                try MatMul.multiply(valueB.rows((h * m.valueDim)..<((h + 1) * m.valueDim)), buf.gather, batch: t, into: buf.absorbed, pool: pool)
                for r in 0..<t { (buf.attn + (r * heads + h) * m.valueDim).update(from: buf.absorbed + r * m.valueDim, count: m.valueDim) }
            }
        case .decompressed(let keyValueB):
            // K (no-position part from the latent, the shared rope key after it) and V per head, cached; then
            // standard attention, the query's rope part already in place.
            let kvWidth = m.noPositionDim + m.valueDim
            for r in 0..<t { (buf.gather + r * rank).update(from: buf.kv + r * row, count: rank) }
            try MatMul.multiply(keyValueB, buf.gather, batch: t, into: buf.decompressed, pool: pool)
            for r in 0..<t {
                for h in 0..<heads {
                    let src = buf.decompressed + (r * heads + h) * kvWidth
                    (buf.keyRow + h * qw).update(from: src, count: m.noPositionDim)
                    (buf.keyRow + h * qw + m.noPositionDim).update(from: buf.kv + r * row + rank, count: m.ropeDim)
                    (buf.valueRow + h * m.valueDim).update(from: src + m.noPositionDim, count: m.valueDim)
                }
                try caches[rows[r].sequence]!.store(layer: l, position: rows[r].position, k: buf.keyRow, v: buf.valueRow)
            }
            try attend(l, buf.q, width: qw, keyOffset: { $0 * qw }, valuesInKeys: false, valueOffset: { $0 * m.valueDim }, valueWidth: m.valueDim,
                       into: buf.attn, rows: rows, caches: caches, config: c, pool: pool)
        }
        try MatMul.multiply(output, buf.attn, batch: t, into: buf.normed, pool: pool)
        for i in 0..<(t * e) { hidden[i] += buf.normed[i] }
    }

    /// Causal attention of every (row, head) over the cached positions 0...position, heads in parallel: the
    /// head's `width` query (at `queries + (row · heads + head) · width`) against the cached keys from
    /// `keyOffset(head)`, and the softmax-weighted sum of the values from `valueOffset(head)` (`valueWidth` of
    /// them, in the key rows when `valuesInKeys`: the latent) into `out` at `(row · heads + head) · valueWidth` —
    /// with ggml's roundings: the query and the weights meet the f16 cache as f16.
    private func attend(_ l: Int, _ queries: UnsafePointer<Float>, width: Int, keyOffset: @escaping @Sendable (Int) -> Int,
                        valuesInKeys: Bool, valueOffset: @escaping @Sendable (Int) -> Int, valueWidth: Int,
                        into out: UnsafeMutablePointer<Float>, rows: [BatchRow], caches: [Int: KVCache], config c: ModelConfig, pool: ThreadPool) throws {
        let heads = c.headCount, scale = c.attentionScale
        nonisolated(unsafe) let queries = queries, out = out
        let failure = FirstError()
        if valuesInKeys, rows.allSatisfy({ caches[$0.sequence]!.attendsLatentInOnePass }) {
            // Every head shares the one latent row per position: the one-pass kernel reads each cached row once
            // for a group of heads (ck_attend_f16), a row's heads split in groups so that every thread has one.
            let groups = max(1, min(heads, (pool.size + rows.count - 1) / rows.count)), per = (heads + groups - 1) / groups
            let fallback = Mutex(false)
            pool.parallelFor(rows.count * groups) { range in
                var work = [Float](), whole = [Float]()
                for item in range {
                    let r = item / groups, h0 = (item % groups) * per, g = min(per, heads - h0)
                    guard g > 0 else { continue }
                    let cache = caches[rows[r].sequence]!, n = rows[r].position + 1
                    let need = KVCache.attendWork(heads: g, width: width, count: n)
                    if work.count < need { work = [Float](repeating: 0, count: need) }
                    if whole.count < g * width { whole = [Float](repeating: 0, count: g * width) }
                    let ok = work.withUnsafeMutableBufferPointer { w in
                        whole.withUnsafeMutableBufferPointer { o in
                            cache.attendLatent(layer: l, count: n, heads: g, queries: queries + (r * heads + h0) * width, queryStride: width,
                                               scale: scale, work: w.baseAddress!, into: o.baseAddress!, outStride: width)
                        }
                    }
                    guard ok else { fallback.withLock { $0 = true }; continue }
                    whole.withUnsafeBufferPointer { o in
                        for k in 0..<g { (out + (r * heads + h0 + k) * valueWidth).update(from: o.baseAddress! + k * width, count: valueWidth) }
                    }
                }
            }
            // A shape the kernel does not take (it writes nothing then): every head the long way below.
            if !fallback.withLock({ $0 }) { return }
        }
        pool.parallelFor(rows.count * heads) { range in
            var scores = [Float]()
            var half = [UInt16]()
            for item in range {
                let r = item / heads, h = item % heads
                let cache = caches[rows[r].sequence]!, n = rows[r].position + 1
                if scores.count < n { scores = [Float](repeating: 0, count: n); half = [UInt16](repeating: 0, count: n) }
                let o = out + item * valueWidth
                o.initialize(repeating: 0, count: valueWidth)
                do {
                    let query = try KVCache.Query(queries + item * width, width: width, keyType: .f16)
                    try scores.withUnsafeMutableBufferPointer { s in
                        try cache.scores(layer: l, first: 0, count: n, offset: keyOffset(h), query: query, scale: scale, into: s.baseAddress!)
                        Ops.softmax(s.baseAddress!, count: n, sink: nil)
                        half.withUnsafeMutableBufferPointer { p in
                            Ops.toF16(s.baseAddress!, p.baseAddress!, count: n)
                            Ops.fromF16(p.baseAddress!, s.baseAddress!, count: n)
                        }
                        let (base, stride) = valuesInKeys ? (cache.key(l, 0), cache.keyWidth) : (cache.value(l, 0), cache.valueWidth)
                        Ops.weightedSumF16(rows: n, s.baseAddress!, base + valueOffset(h), stride: stride, o, count: valueWidth)
                    }
                } catch {
                    failure.record(error)
                }
            }
        }
        try failure.rethrow()
    }

    /// Working memory for a batch.
    final class Scratch {
        let normed, queryLow, q, kv, gather, absorbed, scored, latent, attn, decompressed, keyRow, valueRow: UnsafeMutablePointer<Float>
        init(t: Int, c: ModelConfig, _ m: LatentAttentionShape) {
            let h = c.headCount, row = m.latentRank + m.ropeDim
            normed = .allocate(capacity: t * c.embeddingLength)
            queryLow = .allocate(capacity: t * max(1, m.queryRank))
            q = .allocate(capacity: t * h * m.queryHeadDim)
            kv = .allocate(capacity: t * row)
            gather = .allocate(capacity: t * max(m.noPositionDim, m.latentRank))
            absorbed = .allocate(capacity: t * max(m.latentRank, m.valueDim))
            scored = .allocate(capacity: m.cachesLatent ? t * h * row : 1)
            latent = .allocate(capacity: m.cachesLatent ? t * h * m.latentRank : 1)
            attn = .allocate(capacity: t * h * m.valueDim)
            decompressed = .allocate(capacity: m.cachesLatent ? 1 : t * h * (m.noPositionDim + m.valueDim))
            keyRow = .allocate(capacity: h * m.queryHeadDim)
            valueRow = .allocate(capacity: h * m.valueDim)
        }
        func free() {
            for p in [normed, queryLow, q, kv, gather, absorbed, scored, latent, attn, decompressed, keyRow, valueRow] { p.deallocate() }
        }
    }
}

/// A layer's attention: the block its architecture's traits name.
public enum Attention: Sendable {
    case standard(AttentionBlock)
    case latent(LatentAttentionBlock)

    /// The tensors of layer `i`'s attention.
    public static func tensors(layer i: Int, _ d: LayerDimensions, _ t: ArchitectureTraits) -> [TensorSpec] {
        if t.attention == .latent, let m = d.latent { return LatentAttentionBlock.tensors(layer: i, d, m) }
        return AttentionBlock.tensors(layer: i, d, t)
    }

    static func bind(_ b: inout TensorBinder, layer i: Int, config c: ModelConfig) throws(ModelError) -> Attention {
        switch c.traits.attention {
        case .standard: return .standard(try AttentionBlock.bind(&b, layer: i, config: c))
        case .latent: return .latent(try LatentAttentionBlock.bind(&b, layer: i, config: c))
        }
    }

    func packed(in file: GGUFFile, config c: ModelConfig) throws(ModelError) -> Attention {
        switch self {
        case .standard(let a): return .standard(try a.packed(in: file))
        case .latent(let a): return .latent(try a.packed(in: file, config: c))
        }
    }

    func forward(layer l: Int, _ hidden: UnsafeMutablePointer<Float>, rows: [BatchRow], caches: [Int: KVCache],
                 config c: ModelConfig, pool: ThreadPool) throws {
        switch self {
        case .standard(let a): try a.forward(layer: l, hidden, rows: rows, caches: caches, config: c, pool: pool)
        case .latent(let a): try a.forward(layer: l, hidden, rows: rows, caches: caches, config: c, pool: pool)
        }
    }
}
