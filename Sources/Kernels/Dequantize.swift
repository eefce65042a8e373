import GGUF

/// Errors a kernel call can raise on bad input; never a crash.
public struct KernelError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Block layouts and their dequantization to float, bit for bit as ggml's `to_float` (ggml-quants.c).
///
/// This is the reference every fast kernel is tested against, written for clarity: one function per format,
/// reading the block struct field by field. Multiplications keep ggml's order so the results are identical.
public enum Dequantize {
    /// The types with a dequantizer (rows of `QuantFormat` that have one).
    public static let supported: Set<GGMLType> = Set(QuantFormat.rows.filter { $0.dequantize != nil }.map(\.type))

    /// Dequantizes `count` consecutive values (a whole number of blocks) starting at `src`.
    public static func row(_ type: GGMLType, _ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) throws(KernelError) {
        guard count % type.blockSize == 0 else {
            throw KernelError("\(count) values is not a whole number of \(type.name) blocks of \(type.blockSize)")
        }
        guard let f = QuantFormat.of(type)?.dequantize else { throw KernelError("no dequantizer for \(type.name) yet") }
        f(src, dst, count)
    }

    /// Convenience: a whole tensor's bytes to an array of floats.
    public static func toFloats(_ type: GGMLType, _ bytes: UnsafeRawBufferPointer, count: Int) throws(KernelError) -> [Float] {
        guard let need = type.rowBytes(elements: count), need <= bytes.count else {
            throw KernelError("\(bytes.count) bytes do not hold \(count) \(type.name) values")
        }
        var out = [Float](repeating: 0, count: count)
        var failure: KernelError?
        out.withUnsafeMutableBufferPointer { o in
            do throws(KernelError) { try row(type, bytes.baseAddress!, o.baseAddress!, count: count) } catch { failure = error }
        }
        if let failure { throw failure }
        return out
    }

    @inline(__always) static func h(_ p: UnsafeRawPointer, _ at: Int) -> Float {
        Scalars.f16(p.loadUnaligned(fromByteOffset: at, as: UInt16.self))
    }
    @inline(__always) static func u8(_ p: UnsafeRawPointer, _ at: Int) -> UInt8 { p.load(fromByteOffset: at, as: UInt8.self) }
    @inline(__always) static func i8(_ p: UnsafeRawPointer, _ at: Int) -> Int8 { p.load(fromByteOffset: at, as: Int8.self) }

    // block_q4_0 { half d; u8 qs[16] }: low nibbles are values 0..15, high nibbles 16..31.
    static func q4_0(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = h(b, 0)
        for j in 0..<16 {
            let q = u8(b, 2 + j)
            y[j] = Float(Int(q & 0x0F) - 8) * d
            y[j + 16] = Float(Int(q >> 4) - 8) * d
        }
    }

    // block_q4_1 { half d; half m; u8 qs[16] }
    static func q4_1(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = h(b, 0), m = h(b, 2)
        for j in 0..<16 {
            let q = u8(b, 4 + j)
            y[j] = Float(q & 0x0F) * d + m
            y[j + 16] = Float(q >> 4) * d + m
        }
    }

    // block_q5_0 { half d; u8 qh[4]; u8 qs[16] }: qh holds the fifth bit of each of the 32 values.
    static func q5_0(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = h(b, 0)
        let qh = b.loadUnaligned(fromByteOffset: 2, as: UInt32.self).littleEndian
        for j in 0..<16 {
            let q = u8(b, 6 + j)
            let h0 = UInt8(truncatingIfNeeded: ((qh >> UInt32(j)) << 4) & 0x10)
            let h1 = UInt8(truncatingIfNeeded: (qh >> UInt32(j + 12)) & 0x10)
            y[j] = Float(Int32((q & 0x0F) | h0) - 16) * d
            y[j + 16] = Float(Int32((q >> 4) | h1) - 16) * d
        }
    }

    // block_q5_1 { half d; half m; u8 qh[4]; u8 qs[16] }
    static func q5_1(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = h(b, 0), m = h(b, 2)
        let qh = b.loadUnaligned(fromByteOffset: 4, as: UInt32.self).littleEndian
        for j in 0..<16 {
            let q = u8(b, 8 + j)
            let h0 = UInt8(truncatingIfNeeded: ((qh >> UInt32(j)) << 4) & 0x10)
            let h1 = UInt8(truncatingIfNeeded: (qh >> UInt32(j + 12)) & 0x10)
            y[j] = Float((q & 0x0F) | h0) * d + m
            y[j + 16] = Float((q >> 4) | h1) * d + m
        }
    }

    // block_q8_0 { half d; i8 qs[32] }
    static func q8_0(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = h(b, 0)
        for j in 0..<32 { y[j] = Float(i8(b, 2 + j)) * d }
    }

    // block_q8_K { float d; i8 qs[256]; i16 bsums[16] } (activations only)
    /// Q8_1 `{half d; half s; i8 qs[32]}`: the value is d·q (s is a cached d·Σq).
    static func q8_1(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = h(b, 0)
        for j in 0..<32 { y[j] = Float(i8(b, 4 + j)) * d }
    }

    static func q8_K(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = b.loadUnaligned(as: Float.self)
        for j in 0..<256 { y[j] = d * Float(i8(b, 4 + j)) }
    }

    // block_q2_K { u8 scales[16]; u8 qs[64]; half d; half dmin }: 16 groups of 16, 4-bit scale and min each.
    static func q2_K(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = h(b, 80), dmin = h(b, 82)
        var out = 0, scale = 0
        for half in 0..<2 {
            let q = 16 + 32 * half
            for shift in stride(from: 0, to: 8, by: 2) {
                for part in 0..<2 {
                    let sc = u8(b, scale)
                    scale += 1
                    let dl = d * Float(sc & 0xF), ml = dmin * Float(sc >> 4)
                    for l in 0..<16 {
                        y[out] = dl * Float((u8(b, q + 16 * part + l) >> UInt8(shift)) & 3) - ml
                        out += 1
                    }
                }
            }
        }
    }

    /// Unpacks Q3_K's twelve bytes of 6-bit scales into sixteen signed scales (ggml's kmask shuffle).
    static func q3_KScales(_ b: UnsafeRawPointer) -> [Int8] {
        let k1: UInt32 = 0x0303_0303, k2: UInt32 = 0x0F0F_0F0F
        var aux = (0..<3).map { b.loadUnaligned(fromByteOffset: 96 + 4 * $0, as: UInt32.self).littleEndian } + [0]
        let tmp = aux[2]
        aux[2] = ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4)
        aux[3] = ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4)
        aux[0] = (aux[0] & k2) | (((tmp >> 0) & k1) << 4)
        aux[1] = (aux[1] & k2) | (((tmp >> 2) & k1) << 4)
        var out = [Int8]()
        out.reserveCapacity(16)
        for word in aux { for k in 0..<4 { out.append(Int8(truncatingIfNeeded: word >> UInt32(8 * k))) } }
        return out
    }

    // block_q3_K { u8 hmask[32]; u8 qs[64]; u8 scales[12]; half d }: 2 low bits in qs, the third in hmask (inverted).
    static func q3_K(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = h(b, 108)
        let scales = q3_KScales(b)
        var out = 0, s = 0
        var m: UInt8 = 1
        for half in 0..<2 {
            let q = 32 + 32 * half
            for shift in stride(from: 0, to: 8, by: 2) {
                for part in 0..<2 {
                    let dl = d * Float(Int(scales[s]) - 32)
                    s += 1
                    for l in 0..<16 {
                        let low = Int8((u8(b, q + 16 * part + l) >> UInt8(shift)) & 3)
                        let high: Int8 = (u8(b, 16 * part + l) & m) != 0 ? 0 : 4
                        y[out] = dl * Float(low - high)
                        out += 1
                    }
                }
                m <<= 1
            }
        }
    }

    /// Q4_K/Q5_K pack eight 6-bit scales and eight 6-bit mins into twelve bytes.
    @inline(__always)
    static func scaleMinK4(_ j: Int, _ q: UnsafeRawPointer) -> (UInt8, UInt8) {
        if j < 4 { return (u8(q, j) & 63, u8(q, j + 4) & 63) }
        let d = (u8(q, j + 4) & 0xF) | ((u8(q, j - 4) >> 6) << 4)
        let m = (u8(q, j + 4) >> 4) | ((u8(q, j) >> 6) << 4)
        return (d, m)
    }

    // block_q4_K { half d; half dmin; u8 scales[12]; u8 qs[128] }: 8 groups of 32.
    static func q4_K(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = h(b, 0), dmin = h(b, 2)
        let sc = b + 4
        var out = 0
        for g in 0..<4 {
            let (s1, m1) = scaleMinK4(2 * g, sc), (s2, m2) = scaleMinK4(2 * g + 1, sc)
            let d1 = d * Float(s1), mm1 = dmin * Float(m1), d2 = d * Float(s2), mm2 = dmin * Float(m2)
            let q = 16 + 32 * g
            for l in 0..<32 { y[out + l] = d1 * Float(u8(b, q + l) & 0xF) - mm1 }
            for l in 0..<32 { y[out + 32 + l] = d2 * Float(u8(b, q + l) >> 4) - mm2 }
            out += 64
        }
    }

    // block_q5_K { half d; half dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }
    static func q5_K(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = h(b, 0), dmin = h(b, 2)
        let sc = b + 4
        var out = 0
        var u1: UInt8 = 1, u2: UInt8 = 2
        for g in 0..<4 {
            let (s1, m1) = scaleMinK4(2 * g, sc), (s2, m2) = scaleMinK4(2 * g + 1, sc)
            let d1 = d * Float(s1), mm1 = dmin * Float(m1), d2 = d * Float(s2), mm2 = dmin * Float(m2)
            let ql = 48 + 32 * g
            for l in 0..<32 {
                let hb: UInt8 = (u8(b, 16 + l) & u1) != 0 ? 16 : 0
                y[out + l] = d1 * Float((u8(b, ql + l) & 0xF) + hb) - mm1
            }
            for l in 0..<32 {
                let hb: UInt8 = (u8(b, 16 + l) & u2) != 0 ? 16 : 0
                y[out + 32 + l] = d2 * Float((u8(b, ql + l) >> 4) + hb) - mm2
            }
            out += 64
            u1 <<= 2
            u2 <<= 2
        }
    }

    // block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; half d }
    static func q6_K(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = h(b, 208)
        for half in 0..<2 {
            let ql = 64 * half, qh = 128 + 32 * half, sc = 192 + 8 * half
            let out = y + 128 * half
            for l in 0..<32 {
                let s = l / 16
                let hq = u8(b, qh + l)
                let q1 = Int8(bitPattern: (u8(b, ql + l) & 0xF) | ((hq & 3) << 4)) - 32
                let q2 = Int8(bitPattern: (u8(b, ql + l + 32) & 0xF) | (((hq >> 2) & 3) << 4)) - 32
                let q3 = Int8(bitPattern: (u8(b, ql + l) >> 4) | (((hq >> 4) & 3) << 4)) - 32
                let q4 = Int8(bitPattern: (u8(b, ql + l + 32) >> 4) | (((hq >> 6) & 3) << 4)) - 32
                out[l] = d * Float(i8(b, sc + s)) * Float(q1)
                out[l + 32] = d * Float(i8(b, sc + s + 2)) * Float(q2)
                out[l + 64] = d * Float(i8(b, sc + s + 4)) * Float(q3)
                out[l + 96] = d * Float(i8(b, sc + s + 6)) * Float(q4)
            }
        }
    }

    /// The non-linear 4-bit codebook of IQ4_NL and IQ4_XS.
    public static let iq4Values: [Int8] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]
    /// E2M1 values doubled, MXFP4's codebook.
    public static let mxfp4Values: [Int8] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]

    // block_iq4_nl { half d; u8 qs[16] }
    static func iq4_NL(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = h(b, 0)
        for j in 0..<16 {
            let q = u8(b, 2 + j)
            y[j] = d * Float(iq4Values[Int(q & 0xF)])
            y[j + 16] = d * Float(iq4Values[Int(q >> 4)])
        }
    }

    // block_iq4_xs { half d; u16 scales_h; u8 scales_l[4]; u8 qs[128] }: 8 groups of 32 with 6-bit scales.
    static func iq4_XS(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = h(b, 0)
        let sh = b.loadUnaligned(fromByteOffset: 2, as: UInt16.self).littleEndian
        for ib in 0..<8 {
            let low = (u8(b, 4 + ib / 2) >> UInt8(4 * (ib % 2))) & 0xF
            let ls = Int(low) | Int((sh >> UInt16(2 * ib)) & 3) << 4
            let dl = d * Float(ls - 32)
            let qs = 8 + 16 * ib
            for j in 0..<16 {
                let q = u8(b, qs + j)
                y[32 * ib + j] = dl * Float(iq4Values[Int(q & 0xF)])
                y[32 * ib + j + 16] = dl * Float(iq4Values[Int(q >> 4)])
            }
        }
    }

    // block_mxfp4 { u8 e; u8 qs[16] }
    static func mxfp4(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Scalars.e8m0Half(u8(b, 0))
        for j in 0..<16 {
            let q = u8(b, 1 + j)
            y[j] = Float(mxfp4Values[Int(q & 0xF)]) * d
            y[j + 16] = Float(mxfp4Values[Int(q >> 4)]) * d
        }
    }
}
