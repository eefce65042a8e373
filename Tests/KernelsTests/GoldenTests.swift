import Testing
import TestSupport
import CKernels
import GGUF
@testable import Kernels

/// Bit-exact agreement with ggml on its own vectors, for every common type.
struct GoldenTests {
    @Test(arguments: Golden.all)
    func dequantizeIsBitExact(g: Golden) throws {
        let q = g.bytes("quantized")
        let expected = g.floats("dequantized_f32")
        #expect(q.count == Golden.rows * g.rowBytes)
        let got = try q.withUnsafeBytes { try Dequantize.toFloats(g.type, $0, count: Golden.rows * Golden.cols) }
        let mismatches = zip(got, expected).enumerated().filter { $0.element.0.bitPattern != $0.element.1.bitPattern }
        #expect(mismatches.isEmpty, "\(g.name): \(mismatches.count) values differ, first at \(mismatches.first.map { "\($0.offset): \($0.element.0) vs \($0.element.1)" } ?? "")")
    }

    @Test(arguments: Golden.all)
    func activationQuantizationIsBitExact(g: Golden) throws {
        let x = g.floats("activation_f32")
        let expected = g.bytes("activation_quantized")
        var got = [UInt8](repeating: 0xAA, count: g.dotType.rowBytes(elements: Golden.cols)!)
        try x.withUnsafeBufferPointer { xp in
            try got.withUnsafeMutableBytes { try ActivationQuant.quantize(xp.baseAddress!, count: Golden.cols, to: g.dotType, $0.baseAddress!) }
        }
        #expect(got.count == expected.count)
        let first = zip(got, expected).enumerated().first { $0.element.0 != $0.element.1 }
        #expect(first == nil, "\(g.name) → \(g.dotType.name): first differing byte \(first.map { "\($0.offset): \($0.element.0) vs \($0.element.1)" } ?? "")")
    }

    @Test(arguments: Golden.all)
    func referenceDotMatchesGGML(g: Golden) throws {
        let q = g.bytes("quantized"), a = g.bytes("activation_quantized"), expected = g.floats("dot_f32")
        for r in 0..<Golden.rows {
            let got = try q.withUnsafeBytes { qp in
                try a.withUnsafeBytes { ap in
                    try ReferenceDot.dot(weight: g.type, qp.baseAddress! + r * g.rowBytes, activation: g.dotType, ap.baseAddress!, count: Golden.cols)
                }
            }
            let want = Double(expected[r])
            #expect(abs(got - want) <= max(1e-4 * abs(want), 2e-3), "\(g.name) row \(r): \(got) vs ggml \(want)")
        }
    }
}

/// Weight quantization bit-exact with ggml's reference quantizers (what llama-quantize runs without an imatrix).
struct QuantizeGoldenTests {
    @Test(arguments: Golden.all.filter { Quantize.supported.contains($0.type) })
    func quantizeIsBitExact(g: Golden) throws {
        let w = g.floats("weights_f32")
        let expected = g.bytes("quantized")
        var got = [UInt8](repeating: 0xAA, count: expected.count)
        try w.withUnsafeBufferPointer { wp in
            try got.withUnsafeMutableBytes { try Quantize.row(wp.baseAddress!, count: w.count, to: g.type, $0.baseAddress!) }
        }
        let diffs = zip(got, expected).enumerated().filter { $0.element.0 != $0.element.1 }
        #expect(diffs.isEmpty, "\(g.name): \(diffs.count) bytes differ, first at \(diffs.first.map { "\($0.offset) (block \($0.offset / g.type.bytesPerBlock), byte \($0.offset % g.type.bytesPerBlock)): \($0.element.0) vs \($0.element.1)" } ?? "")")
    }
}

extension GoldenTests {
    /// The fused C quantizer of Q8_0 activations gives the reference's bytes and its (d, d·Σq) pairs.
    @Test func fusedQ8_0QuantizerMatchesReference() throws {
        var rng = SplitMix(state: 31)
        for n in [32, 64, 4096, 14336] {
            var x = (0..<n).map { _ in Float.random(in: -3...3, using: &rng) }
            x[0] = 0; if n > 64 { for i in 32..<64 { x[i] = 0 } }  // an all-zero block
            var ref = [UInt8](repeating: 0, count: n / 32 * 34), fused = ref
            var refAux = [Float](repeating: 0, count: n / 16), fusedAux = refAux
            try x.withUnsafeBufferPointer { xp in
                try ref.withUnsafeMutableBytes { try ActivationQuant.quantize(xp.baseAddress!, count: n, to: .q8_0, $0.baseAddress!) }
                ref.withUnsafeBytes { ck_q8_0_aux(Int32(n), $0.baseAddress!, &refAux) }
                let done = fused.withUnsafeMutableBytes { ck_quantize_q8_0(Int32(n), xp.baseAddress!, $0.baseAddress!, &fusedAux) }
                if done == 0 { fused = ref; fusedAux = refAux }  // no AVX2 here: nothing to compare
            }
            #expect(fused == ref, "n \(n)")
            #expect(fusedAux == refAux, "n \(n)")
        }
    }
}
