/// Conversions of the small floating-point formats ggml stores scales and weights in.
public enum Scalars {
    /// IEEE half to float; exact (every half is a float).
    @inline(__always)
    public static func f16(_ bits: UInt16) -> Float { Float(Float16(bitPattern: bits)) }

    /// Float to IEEE half with round-to-nearest-even, as F16C's `vcvtps2ph` and ggml do.
    @inline(__always)
    public static func toF16(_ x: Float) -> UInt16 { Float16(x).bitPattern }

    /// bfloat16 is the top half of a float.
    @inline(__always)
    public static func bf16(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

    /// Float to bfloat16 with round-to-nearest-even; NaN stays a quiet NaN (ggml_compute_fp32_to_bf16).
    @inline(__always)
    public static func toBF16(_ x: Float) -> UInt16 {
        let u = x.bitPattern
        if u & 0x7FFF_FFFF > 0x7F80_0000 { return UInt16(truncatingIfNeeded: (u >> 16) | 64) }
        return UInt16(truncatingIfNeeded: (u &+ (0x7FFF &+ ((u >> 16) & 1))) >> 16)
    }

    /// An E8M0 exponent byte as half its power of two (2^(e-128)): MXFP4 stores its values doubled.
    @inline(__always)
    public static func e8m0Half(_ e: UInt8) -> Float {
        let bits: UInt32 = e < 2 ? 0x0020_0000 << UInt32(e) : UInt32(e - 1) << 23
        return Float(bitPattern: bits)
    }

    /// A UE4M3 scale byte (NVFP4): 4-bit exponent with bias 7, 3-bit mantissa, no sign; 0x7F is NaN → 0.
    @inline(__always)
    public static func ue4m3(_ x: UInt8) -> Float {
        let v = x & 0x7F
        if v == 0 || v == 0x7F { return 0 }
        let exp = Int(v >> 3), man = Float(v & 7)
        return exp == 0 ? man * 0x1p-9 : (1 + man / 8) * Float(sign: .plus, exponent: exp - 7, significand: 1)
    }

    /// Rounds like ggml's `nearest_int`: to nearest, ties to even (the magic-number trick).
    @inline(__always)
    public static func nearestInt(_ x: Float) -> Int32 {
        let v = x + 12_582_912
        return Int32(bitPattern: v.bitPattern & 0x007F_FFFF) - 0x0040_0000
    }
}
