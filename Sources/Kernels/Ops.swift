#if canImport(Glibc)
import Glibc
#endif
import CKernels

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

    /// ggml's `rope_cache_init` without YaRN: θ_i = p · base^(−2i/dims) · freqScale, accumulated by repeated
    /// multiplication exactly as ggml does (so angles match to the last bit, not just approximately).
    public static func ropeAngles(position p: Int, dims: Int, freqBase: Float, freqScale: Float = 1,
                                  freqFactors: UnsafePointer<Float>? = nil) -> RopeAngles {
        let thetaScale = powf(freqBase, -2 / Float(dims))
        var theta = Float(p)
        var c = [Float](repeating: 0, count: dims / 2), s = [Float](repeating: 0, count: dims / 2)
        for i in 0..<(dims / 2) {
            let ff = freqFactors?[i] ?? 1
            let t = freqScale * (theta / ff)
            c[i] = cosf(t)
            s[i] = sinf(t)
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
    public static func softmax(_ x: UnsafeMutablePointer<Float>, count n: Int) {
        guard n > 0 else { return }
        var m = -Float.infinity
        for i in 0..<n { m = max(m, x[i]) }
        var sum = 0.0
        for i in 0..<n {
            let e = expf(x[i] - m)
            x[i] = e
            sum += Double(e)
        }
        let inv = Float(1 / sum)
        for i in 0..<n { x[i] *= inv }
    }

    @inline(__always) public static func silu(_ x: Float) -> Float { x / (1 + expf(-x)) }

    /// SwiGLU: gate[i] ← silu(gate[i]) · up[i].
    public static func swiglu(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count n: Int) {
        for i in 0..<n { gate[i] = silu(gate[i]) * up[i] }
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
        for i in 0..<n {
            // Insertion into a short sorted list: k is small (experts used per token, sampler top-k).
            if best.count == k, x[i] <= x[best[k - 1]] { continue }
            var at = best.count
            while at > 0 && x[best[at - 1]] < x[i] { at -= 1 }
            best.insert(i, at: at)
            if best.count > k { best.removeLast() }
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
}
