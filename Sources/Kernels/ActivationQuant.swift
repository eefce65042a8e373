import GGUF

/// Quantization of activations to the int8 formats the integer dot products consume, bit for bit as ggml's CPU
/// backend does it on x86 (`quantize_row_q8_0/q8_1` in ggml-cpu/arch/x86/quants.c, `quantize_row_q8_K_ref`).
///
/// The x86 paths differ from ggml's reference quantizers: they scale by `127/amax` and round half to even
/// (`_mm256_round_ps`), where the reference scales by `1/d` and rounds half away from zero. We follow what
/// llama.cpp actually runs, so our activations and therefore our dot products match its own.
public enum ActivationQuant {
    /// The activation format each weight type's dot product takes (ggml's `vec_dot_type`; `QuantFormat`'s row).
    public static func vecDotType(for weight: GGMLType) -> GGMLType? { QuantFormat.of(weight)?.activation }

    /// Quantizes `count` floats into `type` blocks at `dst` (which must hold `type.rowBytes(count)` bytes).
    public static func quantize(_ x: UnsafePointer<Float>, count: Int, to type: GGMLType, _ dst: UnsafeMutableRawPointer) throws(KernelError) {
        guard count % type.blockSize == 0 else {
            throw KernelError("\(count) activations is not a whole number of \(type.name) blocks")
        }
        guard let f = QuantFormat.of(type)?.quantizeActivation else { throw KernelError("\(type.name) is not an activation format") }
        f(x, dst, count)
    }

    /// Q8_0 `{half d; i8 qs[32]}` and Q8_1 `{half d; half s; i8 qs[32]}` where `s = d * Σ qs`.
    static func q8(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, withSum: Bool) {
        var amax: Float = 0
        for j in 0..<32 { amax = max(amax, abs(x[j])) }
        let d = amax / 127
        let id: Float = amax != 0 ? 127 / amax : 0
        y.storeBytes(of: Scalars.toF16(d), as: UInt16.self)
        let qs = y + (withSum ? 4 : 2)
        var sum: Int32 = 0
        for j in 0..<32 {
            let q = Int8((x[j] * id).rounded(.toNearestOrEven))
            qs.storeBytes(of: q, toByteOffset: j, as: Int8.self)
            sum += Int32(q)
        }
        if withSum { y.storeBytes(of: Scalars.toF16(d * Float(sum)), toByteOffset: 2, as: UInt16.self) }
    }

    /// Q8_K `{float d; i8 qs[256]; i16 bsums[16]}`: scale from the signed extreme, sums of each 16 for the K-quant mins.
    static func q8_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var amax: Float = 0, maxv: Float = 0
        for j in 0..<256 where abs(x[j]) > amax {
            amax = abs(x[j])
            maxv = x[j]
        }
        if amax == 0 {
            y.initializeMemory(as: UInt8.self, repeating: 0, count: 292)
            return
        }
        let iscale = -127 / maxv
        let qs = y + 4
        for j in 0..<256 {
            let v = Scalars.nearestInt(iscale * x[j])
            qs.storeBytes(of: Int8(min(127, v)), toByteOffset: j, as: Int8.self)
        }
        for g in 0..<16 {
            var sum: Int16 = 0
            for i in 0..<16 { sum += Int16(qs.load(fromByteOffset: 16 * g + i, as: Int8.self)) }
            y.storeBytes(of: sum, toByteOffset: 260 + 2 * g, as: Int16.self)
        }
        y.storeBytes(of: 1 / iscale, as: Float.self)
    }
}
