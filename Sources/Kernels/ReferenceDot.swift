import GGUF

/// The reference dot product of one quantized weight row with one quantized activation row.
///
/// Both sides are dequantized exactly and multiplied in double precision, so this is the true value of the
/// product of what is stored; ggml's integer kernels and ours must land within rounding of it.
public enum ReferenceDot {
    public static func dot(weight: GGMLType, _ w: UnsafeRawPointer, activation: GGMLType, _ a: UnsafeRawPointer, count: Int) throws(KernelError) -> Double {
        var wf = [Float](repeating: 0, count: count)
        var af = [Float](repeating: 0, count: count)
        try wf.withUnsafeMutableBufferPointer { (p: inout UnsafeMutableBufferPointer<Float>) throws(KernelError) in
            try Dequantize.row(weight, w, p.baseAddress!, count: count)
        }
        try af.withUnsafeMutableBufferPointer { (p: inout UnsafeMutableBufferPointer<Float>) throws(KernelError) in
            try dequantizeActivation(activation, a, p.baseAddress!, count: count)
        }
        var sum = 0.0
        for i in 0..<count { sum += Double(wf[i]) * Double(af[i]) }
        return sum
    }

    /// Q8_1's value is `d * q` like Q8_0's (its `s` is a cached sum); every other format dequantizes as usual.
    static func dequantizeActivation(_ type: GGMLType, _ a: UnsafeRawPointer, _ out: UnsafeMutablePointer<Float>, count: Int) throws(KernelError) {
        guard type == .q8_1 else { return try Dequantize.row(type, a, out, count: count) }
        for b in 0..<(count / 32) {
            let d = Dequantize.h(a, 36 * b)
            for j in 0..<32 { out[32 * b + j] = Float(a.load(fromByteOffset: 36 * b + 4 + j, as: Int8.self)) * d }
        }
    }
}
