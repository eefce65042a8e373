#if canImport(Glibc)
import Glibc
#endif
import CKernels
import GGUF

/// The element-wise and row operators of a transformer layer, computed as ggml's CPU backend computes them
/// (same formulas and float/double choices) so that results track llama.cpp's.
public enum Ops {
    /// RMSNorm: y = x / sqrt(mean(x²) + eps) · w. ggml sums the squares in double (`ggml_float`).
    public static func rmsNorm(_ x: UnsafePointer<Float>, weight w: UnsafePointer<Float>?, count n: Int, eps: Float,
                               into y: UnsafeMutablePointer<Float>) {
        var sum = 0.0
        for i in 0..<n { sum += Double(x[i] * x[i]) }
        let mean = Float(sum / Double(n))
        let scale = 1 / (mean + eps).squareRoot()
        if let w {
            for i in 0..<n { y[i] = (x[i] * scale) * w[i] }
        } else {
            for i in 0..<n { y[i] = x[i] * scale }
        }
    }

    /// How RoPE pairs the dimensions of a head: adjacent (`normal`, llama) or split halves (`neox`, qwen/olmoe).
    public enum RopeMode: Sendable { case normal, neox }

    /// The rotation angles of one position: cos and sin for each of `dims / 2` pairs.
    public struct RopeAngles {
        public var cos: [Float]
        public var sin: [Float]
    }

    /// YaRN context extension as ggml's rope computes it: per pair a mix of the interpolated and the original
    /// angle (ramped between the correction dimensions) and a magnitude scale on cos and sin.
    public struct Yarn: Sendable, Equatable {
        public let extFactor: Float
        public let attnFactor: Float
        /// ggml_rope_yarn_corr_dims: the pair indices where the ramp starts and ends.
        public let low: Float, high: Float

        public init(extFactor: Float, attnFactor: Float, dims: Int, originalContext: Int, freqBase: Float, betaFast: Float, betaSlow: Float) {
            self.extFactor = extFactor
            self.attnFactor = attnFactor
            func corrDim(_ rotations: Float) -> Float {
                Float(dims) * logf(Float(originalContext) / (rotations * 2 * Float.pi)) / (2 * logf(freqBase))
            }
            low = max(0, floorf(corrDim(betaFast)))
            high = min(Float(dims - 1), ceilf(corrDim(betaSlow)))
        }
    }

    /// ggml's `rope_cache_init`: θ_i = p · base^(−2i/dims), accumulated by repeated multiplication, divided by the
    /// pair's frequency factor, scaled by freqScale — and with YaRN mixed with the unscaled angle and the result's
    /// magnitude scaled, as `rope_yarn` does.
    public static func ropeAngles(position p: Int, dims: Int, freqBase: Float, freqScale: Float = 1,
                                  freqFactors: UnsafePointer<Float>? = nil, yarn: Yarn? = nil) -> RopeAngles {
        let thetaScale = powf(freqBase, -2 / Float(dims))
        var theta = Float(p)
        var c = [Float](repeating: 0, count: dims / 2), s = [Float](repeating: 0, count: dims / 2)
        for i in 0..<(dims / 2) {
            let ff = freqFactors?[i] ?? 1
            let extrapolated = theta / ff
            var t = freqScale * extrapolated
            // Without YaRN the scale is 1, which leaves cos and sin exact.
            var mscale: Float = 1
            if let y = yarn {
                mscale = y.attnFactor
                if y.extFactor != 0 {
                    // rope_yarn_ramp(low, high, i0) with i0 = 2i: i0 / 2 is the pair index.
                    let ramp = 1 - min(1, max(0, (Float(i) - y.low) / max(0.001, y.high - y.low)))
                    let mix = ramp * y.extFactor
                    t = t * (1 - mix) + extrapolated * mix
                    mscale *= 1 + 0.1 * logf(1 / freqScale)
                }
            }
            c[i] = cosf(t) * mscale
            s[i] = sinf(t) * mscale
            theta *= thetaScale
        }
        return RopeAngles(cos: c, sin: s)
    }

    /// Rotates the first `dims` values of each of `heads` heads (each `headDim` long) in place.
    public static func rope(_ x: UnsafeMutablePointer<Float>, heads: Int, headDim: Int, dims: Int, angles a: RopeAngles, mode: RopeMode) {
        for h in 0..<heads {
            let v = x + h * headDim
            switch mode {
            case .normal:
                for i in 0..<(dims / 2) {
                    let x0 = v[2 * i], x1 = v[2 * i + 1]
                    v[2 * i] = x0 * a.cos[i] - x1 * a.sin[i]
                    v[2 * i + 1] = x0 * a.sin[i] + x1 * a.cos[i]
                }
            case .neox:
                let half = dims / 2
                for i in 0..<half {
                    let x0 = v[i], x1 = v[i + half]
                    v[i] = x0 * a.cos[i] - x1 * a.sin[i]
                    v[i + half] = x0 * a.sin[i] + x1 * a.cos[i]
                }
            }
        }
    }

    /// In-place softmax of `n` values (max subtracted first; the sum in double as ggml).
    /// With a `sink`, a logit that joins the max and the denominator but has no output of its own (ggml's
    /// soft_max_ext with sinks: added to the sum after the row's own terms).
    public static func softmax(_ x: UnsafeMutablePointer<Float>, count n: Int, sink: Float? = nil) {
        guard n > 0 else { return }
        var m = -Float.infinity
        for i in 0..<n { m = max(m, x[i]) }
        if let sink { m = max(m, sink) }
        var sum = 0.0
        for i in 0..<n {
            let e = expf(x[i] - m)
            x[i] = e
            sum += Double(e)
        }
        if let sink { sum += Double(expf(sink - m)) }
        let inv = Float(1 / sum)
        for i in 0..<n { x[i] *= inv }
    }

    @inline(__always) public static func silu(_ x: Float) -> Float { x / (1 + expf(-x)) }

    /// SwiGLU: gate[i] ← silu(gate[i]) · up[i].
    public static func swiglu(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count n: Int) {
        for i in 0..<n { gate[i] = silu(gate[i]) * up[i] }
    }

    /// gpt-oss's clamped SwiGLU (ggml_swiglu_oai): x = min(gate, limit), y = clamp(up, ±limit),
    /// gate ← x · σ(αx) · (y + 1).
    public static func swigluOAI(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count n: Int, alpha: Float, limit: Float) {
        for i in 0..<n {
            let x = min(gate[i], limit), y = max(min(up[i], limit), -limit)
            gate[i] = x / (1 + expf(alpha * -x)) * (y + 1)
        }
    }

    /// Indices of the `k` largest values, largest first; ties go to the lower index (a stable order).
    public static func topK(_ x: UnsafePointer<Float>, count n: Int, k: Int) -> [Int] {
        precondition(k <= n, "top-\(k) of \(n) values")
        // A large k (a sampler keeping every token) sorts instead: insertion would be O(n·k).
        if k > 64 {
            return Array((0..<n).sorted { x[$0] > x[$1] || (x[$0] == x[$1] && $0 < $1) }.prefix(k))
        }
        var best: [Int] = []
        best.reserveCapacity(k + 1)
        // The k-th value once the list is full: most of a 150k vocabulary fails this one comparison.
        var threshold = -Float.infinity
        var full = false
        for i in 0..<n {
            let v = x[i]
            if full, v <= threshold { continue }
            // Insertion into a short sorted list: k is small (experts used per token, sampler top-k).
            var at = best.count
            while at > 0 && x[best[at - 1]] < v { at -= 1 }
            best.insert(i, at: at)
            if best.count > k { best.removeLast() }
            if best.count == k { full = true; threshold = x[best[k - 1]] }
        }
        return best
    }

    /// Float → IEEE half with round-to-nearest-even (KV cache writes); F16C when the CPU has it.
    public static func toF16(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<UInt16>, count n: Int) {
        ck_f32_to_f16(Int32(n), src, dst)
    }

    /// IEEE half → float (KV cache reads).
    public static func fromF16(_ src: UnsafePointer<UInt16>, _ dst: UnsafeMutablePointer<Float>, count n: Int) {
        ck_f16_to_f32(Int32(n), src, dst)
    }

    /// Dot product of a float vector with an f16 vector (attention scores against the cached keys).
    public static func dotF16(_ x: UnsafePointer<Float>, _ y: UnsafePointer<UInt16>, count n: Int) -> Float {
        ck_dot_f32_f16(Int32(n), x, y)
    }

    /// y += a · x for an f16 x (attention output: weighted sum of the cached values).
    public static func axpyF16(_ a: Float, _ x: UnsafePointer<UInt16>, _ y: UnsafeMutablePointer<Float>, count n: Int) {
        ck_axpy_f16(Int32(n), a, x, y)
    }

    /// y[i] += Σ_j w[j] · x[j · stride + i] over `rows` f16 rows `stride` elements apart: the same bits as one
    /// `axpyF16` per row in order, faster (y stays in registers).
    public static func weightedSumF16(rows: Int, _ w: UnsafePointer<Float>, _ x: UnsafePointer<UInt16>, stride: Int,
                                      _ y: UnsafeMutablePointer<Float>, count n: Int) {
        ck_weighted_sum_f16(Int32(rows), Int32(n), w, x, stride, y)
    }

    /// Whether `attendF16` runs on this CPU (AVX2 and up, or what CONCLAVE_ISA leaves).
    public static var attendsF16InOnePass: Bool { ck_active_isa() >= CK_ISA_AVX2 }

    /// Floats of work space `attendF16` needs.
    public static func attendF16Work(heads: Int, width: Int, count: Int) -> Int { ck_attend_f16_work(Int32(heads), Int32(width), Int32(count)) }

    /// Attention of `heads` query heads sharing one KV head over `count` cached f16 positions in one pass
    /// (ck_attend_f16): scores against the keys, their softmax with each head's sink, the weighted sum of the
    /// values. Strides in elements. `roundWeights`: the normalised weights meet the values as f16 (ggml without
    /// flash attention) instead of being applied unnormalised and scaled once. False when the kernel does not take
    /// the shape or CPU (nothing written).
    public static func attendF16(heads: Int, width: Int, count: Int, queries: UnsafePointer<Float>, queryStride: Int,
                                 keys: UnsafePointer<UInt16>, keyStride: Int, values: UnsafePointer<UInt16>, valueStride: Int,
                                 scale: Float, sinks: UnsafePointer<Float>?, roundWeights: Bool = false, work: UnsafeMutablePointer<Float>,
                                 into out: UnsafeMutablePointer<Float>, outStride: Int) -> Bool {
        ck_attend_f16(Int32(heads), Int32(width), Int32(count), queries, queryStride, keys, keyStride, values, valueStride,
                      scale, sinks, roundWeights ? 1 : 0, work, out, outStride) != 0
    }

    /// The same over Q8_0 or Q4_0 rows `stride` bytes apart, each value dequantized first; false when this CPU
    /// or type has no such kernel.
    public static func weightedSum(_ type: GGMLType, rows: Int, _ w: UnsafePointer<Float>, _ x: UnsafeRawPointer, stride: Int,
                                   _ y: UnsafeMutablePointer<Float>, count n: Int) -> Bool {
        ck_weighted_sum_quant(Int32(type.rawValue), Int32(rows), Int32(n), w, x, stride, y) != 0
    }
}
