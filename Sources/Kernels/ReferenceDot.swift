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
            try Dequantize.row(activation, a, p.baseAddress!, count: count)
        }
        var sum = 0.0
        for i in 0..<count { sum += Double(wf[i]) * Double(af[i]) }
        return sum
    }
}
