#if canImport(Glibc)
import Glibc
#endif
import GGUF

/// Weight quantization, float → blocks, bit for bit as ggml's reference quantizers (`quantize_row_*_ref` in
/// ggml-quants.c), which is what `llama-quantize` runs when no importance matrix is given.
///
/// Bit-exactness rests on doing the same float operations in the same order: Swift never fuses a multiply
/// and an add on its own, and neither does ggml's base library (built without FMA), so each expression below
/// keeps ggml's shape, parentheses included.
public enum Quantize {
    /// The types with a weight quantizer (rows of `QuantFormat` that have one).
    public static let supported: Set<GGMLType> = Set(QuantFormat.rows.filter { $0.quantize != nil }.map(\.type))

    /// Quantizes `count` floats (a whole number of blocks) into `dst`.
    public static func row(_ x: UnsafePointer<Float>, count: Int, to type: GGMLType, _ dst: UnsafeMutableRawPointer) throws(KernelError) {
        guard let f = QuantFormat.of(type)?.quantize else { throw KernelError("quantizing to \(type.name) is not supported") }
        guard count % type.blockSize == 0 else { throw KernelError("\(count) values is not a whole number of \(type.name) blocks") }
        f(x, dst, count)
    }

    static let groupMaxEps: Float = 1e-15

    @inline(__always) static func putF16(_ p: UnsafeMutableRawPointer, _ at: Int, _ v: Float) {
        p.storeBytes(of: Scalars.toF16(v), toByteOffset: at, as: UInt16.self)
    }
    @inline(__always) static func getF16(_ p: UnsafeMutableRawPointer, _ at: Int) -> Float {
        Scalars.f16(p.loadUnaligned(fromByteOffset: at, as: UInt16.self))
    }
    @inline(__always) static func put(_ p: UnsafeMutableRawPointer, _ at: Int, _ v: UInt8) {
        p.storeBytes(of: v, toByteOffset: at, as: UInt8.self)
    }
    @inline(__always) static func get(_ p: UnsafeMutableRawPointer, _ at: Int) -> UInt8 { p.load(fromByteOffset: at, as: UInt8.self) }
    /// C's `(int8_t)f`: truncation toward zero (callers keep f well inside the range).
    @inline(__always) static func truncI8(_ f: Float) -> Int8 { Int8(truncatingIfNeeded: Int32(f)) }

    // MARK: 32-blocks

    /// ggml's quantize_row_mxfp4_ref: a shared E8M0 exponent two below the block's largest magnitude's, then each
    /// value's nearest E2M1 code (ties to the lower code), low halves in the low nibbles.
    static func mxfp4(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var amax: Float = 0
        for j in 0..<32 where amax < abs(x[j]) { amax = abs(x[j]) }
        let e: UInt8 = amax > 0 ? UInt8(truncatingIfNeeded: Int(floorf(log2f(amax)) - 2 + 127)) : 0
        let d = Scalars.e8m0Half(e)
        func best(_ v: Float) -> UInt8 {
            var index = 0, err = abs(Float(Dequantize.mxfp4Values[0]) * d - v)
            for i in 1..<16 {
                let e = abs(Float(Dequantize.mxfp4Values[i]) * d - v)
                if e < err { index = i; err = e }
            }
            return UInt8(index)
        }
        put(y, 0, e)
        for j in 0..<16 { put(y, 1 + j, best(x[j]) | best(x[16 + j]) << 4) }
    }

    static func q8_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var amax: Float = 0
        for j in 0..<32 { amax = max(amax, abs(x[j])) }
        let d = amax / 127
        let id: Float = d != 0 ? 1 / d : 0
        putF16(y, 0, d)
        for j in 0..<32 { y.storeBytes(of: Int8((x[j] * id).rounded()), toByteOffset: 2 + j, as: Int8.self) }
    }

    /// The value of largest magnitude (the first, on ties): quantizers scale from the signed extreme so that it
    /// maps to the most negative level (−8 for Q4_0, −16 for Q5_0, …).
    static func signedMax(_ x: UnsafePointer<Float>, count n: Int = 32) -> Float {
        var amax: Float = 0, maxv: Float = 0
        for j in 0..<n where amax < abs(x[j]) {
            amax = abs(x[j])
            maxv = x[j]
        }
        return maxv
    }

    static func q4_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        let d = signedMax(x) / -8
        let id: Float = d != 0 ? 1 / d : 0
        putF16(y, 0, d)
        for j in 0..<16 {
            let x0 = x[j] * id, x1 = x[16 + j] * id
            let q0 = UInt8(min(15, truncI8(x0 + 8.5))), q1 = UInt8(min(15, truncI8(x1 + 8.5)))
            put(y, 2 + j, q0 | (q1 << 4))
        }
    }

    static func minMax(_ x: UnsafePointer<Float>) -> (Float, Float) {
        var lo = Float.greatestFiniteMagnitude, hi = -Float.greatestFiniteMagnitude
        for j in 0..<32 {
            if x[j] < lo { lo = x[j] }
            if x[j] > hi { hi = x[j] }
        }
        return (lo, hi)
    }

    static func q4_1(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        let (lo, hi) = minMax(x)
        let d = (hi - lo) / 15
        let id: Float = d != 0 ? 1 / d : 0
        putF16(y, 0, d)
        putF16(y, 2, lo)
        for j in 0..<16 {
            let x0 = (x[j] - lo) * id, x1 = (x[16 + j] - lo) * id
            let q0 = UInt8(min(15, truncI8(x0 + 0.5))), q1 = UInt8(min(15, truncI8(x1 + 0.5)))
            put(y, 4 + j, q0 | (q1 << 4))
        }
    }

    static func q5_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        let d = signedMax(x) / -16
        let id: Float = d != 0 ? 1 / d : 0
        putF16(y, 0, d)
        var qh: UInt32 = 0
        for j in 0..<16 {
            let x0 = x[j] * id, x1 = x[16 + j] * id
            let q0 = UInt8(min(31, truncI8(x0 + 16.5))), q1 = UInt8(min(31, truncI8(x1 + 16.5)))
            put(y, 6 + j, (q0 & 0x0F) | ((q1 & 0x0F) << 4))
            qh |= UInt32((q0 & 0x10) >> 4) << UInt32(j)
            qh |= UInt32((q1 & 0x10) >> 4) << UInt32(j + 16)
        }
        y.storeBytes(of: qh.littleEndian, toByteOffset: 2, as: UInt32.self)
    }

    static func q5_1(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        let (lo, hi) = minMax(x)
        let d = (hi - lo) / 31
        let id: Float = d != 0 ? 1 / d : 0
        putF16(y, 0, d)
        putF16(y, 2, lo)
        var qh: UInt32 = 0
        for j in 0..<16 {
            let x0 = (x[j] - lo) * id, x1 = (x[16 + j] - lo) * id
            let q0 = UInt8(truncatingIfNeeded: Int32(x0 + 0.5)), q1 = UInt8(truncatingIfNeeded: Int32(x1 + 0.5))
            put(y, 8 + j, (q0 & 0x0F) | ((q1 & 0x0F) << 4))
            qh |= UInt32((q0 & 0x10) >> 4) << UInt32(j)
            qh |= UInt32((q1 & 0x10) >> 4) << UInt32(j + 16)
        }
        y.storeBytes(of: qh.littleEndian, toByteOffset: 4, as: UInt32.self)
    }
}
