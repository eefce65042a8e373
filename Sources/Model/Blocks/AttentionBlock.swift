import GGUF
import Runtime
import Kernels

/// The attention half of a layer: RMS norm, the Q/K/V projections (with the architecture's biases and Q/K
/// norms), RoPE, the sequence's KV cache (`KVCache`: K and V of `kvDim` per position per layer), causal
/// attention over it and the output projection, added to the residual. What differs between architectures is
/// read from `ArchitectureTraits`; its tensors are the table `tensors(layer:_:_:)`, which the binder and
/// `conclave synth` both read.
public struct AttentionBlock: Sendable {
    public let norm: [Float]
    public let q: WeightMatrix, k: WeightMatrix, v: WeightMatrix, o: WeightMatrix
    public let qBias: [Float]?, kBias: [Float]?, vBias: [Float]?
    public let qNorm: [Float]?, kNorm: [Float]?
    /// The output projection's bias and each head's sink logit (gpt-oss).
    public var oBias: [Float]?
    public var sinks: [Float]?

    /// The tensors of layer `i`'s attention.
    public static func tensors(layer i: Int, _ d: LayerDimensions, _ t: ArchitectureTraits) -> [TensorSpec] {
        var out = [TensorSpec(.block(i, .attnNorm), [d.embedding]), TensorSpec(.block(i, .attnQ), [d.embedding, d.qDim]),
                   TensorSpec(.block(i, .attnK), [d.embedding, d.kvDim]), TensorSpec(.block(i, .attnV), [d.embedding, d.kvDim]),
                   TensorSpec(.block(i, .attnOutput), [d.qDim, d.embedding])]
        switch t.qkNorm {
        case .none: break
        case .perHead: out += [TensorSpec(.block(i, .attnQNorm), [d.headDim]), TensorSpec(.block(i, .attnKNorm), [d.headDim])]
        case .whole: out += [TensorSpec(.block(i, .attnQNorm), [d.qDim]), TensorSpec(.block(i, .attnKNorm), [d.kvDim])]
        }
        if t.attentionBias {
            out += [TensorSpec(.block(i, .attnQ, "bias"), [d.qDim]), TensorSpec(.block(i, .attnK, "bias"), [d.kvDim]),
                    TensorSpec(.block(i, .attnV, "bias"), [d.kvDim])]
        }
        if t.attentionOutputBias { out.append(TensorSpec(.block(i, .attnOutput, "bias"), [d.embedding])) }
        if t.attentionSinks { out.append(TensorSpec(.block(i, .attnSinks), [d.heads])) }
        return out
    }

    static func bind(_ b: inout TensorBinder, layer i: Int, config c: ModelConfig) throws(ModelError) -> AttentionBlock {
        let spec = tensors(layer: i, c.dimensions, c.traits)
        func optional(_ role: TensorRole, _ suffix: String = "weight") throws(ModelError) -> [Float]? {
            let name = TensorName.block(i, role, suffix)
            return spec.contains { $0.name == name } ? try b.vector(name, in: spec) : nil
        }
        var block = AttentionBlock(norm: try b.vector(.block(i, .attnNorm), in: spec),
                              q: try b.matrix(.block(i, .attnQ), in: spec), k: try b.matrix(.block(i, .attnK), in: spec),
                              v: try b.matrix(.block(i, .attnV), in: spec), o: try b.matrix(.block(i, .attnOutput), in: spec),
                              qBias: try optional(.attnQ, "bias"), kBias: try optional(.attnK, "bias"),
                              vBias: try optional(.attnV, "bias"), qNorm: try optional(.attnQNorm), kNorm: try optional(.attnKNorm))
        block.oBias = try optional(.attnOutput, "bias")
        block.sinks = try optional(.attnSinks)
        return block
    }

    /// The matrices repacked for this host's kernels.
    func packed(in file: GGUFFile) throws(ModelError) -> AttentionBlock {
        var block = AttentionBlock(norm: norm, q: try file.packed(q), k: try file.packed(k), v: try file.packed(v), o: try file.packed(o),
                                   qBias: qBias, kBias: kBias, vBias: vBias, qNorm: qNorm, kNorm: kNorm)
        block.oBias = oBias
        block.sinks = sinks
        return block
    }

    /// hidden += O · attention(norm(hidden)) for the batch's rows, storing their K and V in their caches.
    func forward(layer l: Int, _ hidden: UnsafeMutablePointer<Float>, rows: [BatchRow], caches: [Int: KVCache],
                 config c: ModelConfig, pool: ThreadPool) throws {
        let t = rows.count, e = c.embeddingLength
        let buf = Scratch(t: t, c: c)
        defer { buf.free() }
        for r in 0..<t { Ops.rmsNorm(hidden + r * e, weight: norm, count: e, eps: c.rmsEpsilon, into: buf.normed + r * e) }
        let a = try QuantizedActivations(buf.normed, cols: e, batch: t, format: ActivationQuant.vecDotType(for: q.type) ?? .f32, pool: pool)
        if [q, k, v].allSatisfy({ a.format == ActivationQuant.vecDotType(for: $0.type) && MatMul.hasKernel($0.type) }) {
            // Q, K and V in one dispatch: one wake-up and one barrier instead of three.
            try MatMul.multiply([MatMul.Job(q, a, into: buf.q), MatMul.Job(k, a, into: buf.k), MatMul.Job(v, a, into: buf.v)], pool: pool)
        } else {
            try project(q, buf.normed, a, into: buf.q, t, pool)
            try project(k, buf.normed, a, into: buf.k, t, pool)
            try project(v, buf.normed, a, into: buf.v, t, pool)
        }
        for r in 0..<t {
            if let b = qBias { for i in 0..<c.qDim { buf.q[r * c.qDim + i] += b[i] } }
            if let b = kBias { for i in 0..<c.kvDim { buf.k[r * c.kvDim + i] += b[i] } }
            if let b = vBias { for i in 0..<c.kvDim { buf.v[r * c.kvDim + i] += b[i] } }
            if let qn = qNorm, let kn = kNorm {
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
            let angles = Ops.ropeAngles(position: rows[r].position, dims: c.ropeDims, freqBase: c.ropeFreqBase, freqScale: c.ropeFreqScale, yarn: c.yarn)
            Ops.rope(buf.q + r * c.qDim, heads: c.headCount, headDim: c.headDim, dims: c.ropeDims, angles: angles, mode: c.traits.ropeMode)
            Ops.rope(buf.k + r * c.kvDim, heads: c.headCountKV, headDim: c.headDim, dims: c.ropeDims, angles: angles, mode: c.traits.ropeMode)
            try caches[rows[r].sequence]!.store(layer: l, position: rows[r].position, k: buf.k + r * c.kvDim, v: buf.v + r * c.kvDim)
        }
        try attend(l, buf, rows: rows, caches: caches, config: c, pool: pool)
        try MatMul.multiply(o, buf.attn, batch: t, into: buf.normed, pool: pool)
        if let b = oBias { for r in 0..<t { for i in 0..<e { buf.normed[r * e + i] += b[i] } } }
        for i in 0..<(t * e) { hidden[i] += buf.normed[i] }
    }

    private func project(_ m: WeightMatrix, _ x: UnsafePointer<Float>, _ a: QuantizedActivations, into y: UnsafeMutablePointer<Float>,
                         _ t: Int, _ pool: ThreadPool) throws {
        if a.format == ActivationQuant.vecDotType(for: m.type), MatMul.hasKernel(m.type) {
            try MatMul.multiply(m, a, into: y, pool: pool)
        } else {
            try MatMul.multiply(m, x, batch: t, into: y, pool: pool)
        }
    }

    /// Causal attention of each row over its sequence's cached positions 0...position (in a sliding-window layer
    /// only the last `slidingWindow` of them: llama.cpp masks p − j ≥ window); a head's sink, if any, joins its
    /// softmax. The work is (row, KV head) items — the query heads that share a KV head read its cache together,
    /// in one kernel call where the cache is f16 (`KVCache.attend`) — split into single heads when there are
    /// fewer items than threads (one row of a decode step). Other cache types compute each product as llama.cpp
    /// does for them, head by head.
    private func attend(_ l: Int, _ buf: Scratch, rows: [BatchRow], caches: [Int: KVCache], config c: ModelConfig, pool: ThreadPool) throws {
        let group = c.headCount / c.headCountKV
        let scale = c.attentionScale
        let window = c.slides(layer: l) ? c.slidingWindow : Int.max
        let perItem = rows.count * c.headCountKV >= pool.size ? group : 1
        let itemsPerRow = c.headCount / perItem
        let longest = rows.map { $0.position + 1 }.max() ?? 1
        let failure = FirstError()
        let sinkValues = sinks
        pool.parallelFor(rows.count * itemsPerRow) { range in
            var scores = [Float](repeating: 0, count: 0)
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: c.headDim)
            let work = UnsafeMutablePointer<Float>.allocate(capacity: KVCache.attendWork(heads: perItem, width: c.headDim, count: min(longest, window)))
            defer { scratch.deallocate(); work.deallocate() }
            for item in range {
                let r = item / itemsPerRow, h0 = (item % itemsPerRow) * perItem
                let row = rows[r], cache = caches[row.sequence]!
                let first = max(0, row.position + 1 - window), n = row.position + 1 - first
                let kvOff = (h0 / group) * c.headDim
                let queries = buf.q + r * c.qDim + h0 * c.headDim
                let out = buf.attn + r * c.qDim + h0 * c.headDim
                let fused = sinkValues.withOptionalPointer(at: h0) { sink in
                    cache.attend(layer: l, first: first, count: n, offset: kvOff, heads: perItem, width: c.headDim, queries: queries,
                                 queryStride: c.headDim, scale: scale, sinks: sink, work: work, into: out, outStride: c.headDim)
                }
                if fused { continue }
                if scores.count < n { scores = [Float](repeating: 0, count: n) }
                for h in h0..<(h0 + perItem) {
                    let out = buf.attn + r * c.qDim + h * c.headDim
                    out.initialize(repeating: 0, count: c.headDim)
                    do {
                        let query = try KVCache.Query(buf.q + r * c.qDim + h * c.headDim, width: c.headDim, keyType: cache.types.key)
                        try scores.withUnsafeMutableBufferPointer { s in
                            try cache.scores(layer: l, first: first, count: n, offset: kvOff, query: query, scale: scale, into: s.baseAddress!)
                            Ops.softmax(s.baseAddress!, count: n, sink: sinkValues?[h])
                            try cache.accumulate(layer: l, first: first, count: n, offset: kvOff, width: c.headDim, weights: s.baseAddress!,
                                                 into: out, scratch: scratch)
                        }
                    } catch {
                        failure.record(error)
                    }
                }
            }
        }
        try failure.rethrow()
    }

    /// Working memory for a batch.
    final class Scratch {
        let normed, q, k, v, attn: UnsafeMutablePointer<Float>
        init(t: Int, c: ModelConfig) {
            normed = .allocate(capacity: t * max(c.embeddingLength, c.qDim))
            q = .allocate(capacity: t * c.qDim)
            k = .allocate(capacity: t * c.kvDim)
            v = .allocate(capacity: t * c.kvDim)
            attn = .allocate(capacity: t * c.qDim)
        }
        func free() {
            for p in [normed, q, k, v, attn] { p.deallocate() }
        }
    }
}

private extension Optional where Wrapped == [Float] {
    /// `body` with a pointer to element `i` of the array, or nil when there is none.
    func withOptionalPointer<R>(at i: Int, _ body: (UnsafePointer<Float>?) -> R) -> R {
        guard let a = self else { return body(nil) }
        return a.withUnsafeBufferPointer { body($0.baseAddress! + i) }
    }
}
