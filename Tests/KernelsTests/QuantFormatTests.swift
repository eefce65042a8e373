import CKernels
import GGUF
import Testing
import TestSupport
@testable import Kernels

/// The per-type table in Swift and the `[type][isa]` table in C agree, and every cell of the C table at every
/// level this CPU runs gives what the Swift reference gives — not only the cells of the level in use.
struct QuantFormatTests {
    static let levels = ISA.allCases.filter { $0 <= ISA.detected }

    /// A type has a fused kernel exactly when the table names its activation format, that format is a row
    /// that can quantize and dequantize activations, and whatever can be quantized can be read back.
    @Test func theTwoTablesAgree() {
        for f in QuantFormat.rows {
            if let a = f.activation {
                let act = QuantFormat.of(a)
                #expect(act?.quantizeActivation != nil && act?.dequantize != nil, "\(f.type.name)'s activation format \(a.name) is a row")
                if ISA.detected >= .avx2 { #expect(f.kernels(.detected).rows != nil, "\(f.type.name) names an activation but has no kernel") }
            } else {
                #expect(f.kernels(.detected).rows == nil, "\(f.type.name) has a kernel but no activation format to feed it")
            }
            if f.quantize != nil { #expect(f.dequantize != nil, "\(f.type.name) quantizes but cannot be read back") }
            // A packed kernel never comes without its packing, nor a packing without its kernel.
            for isa in Self.levels { #expect((f.kernels(isa).rows_x8 == nil) == (f.kernels(isa).pack_x8 == nil)) }
        }
        for t in GGMLType.allCases where QuantFormat.of(t) == nil {
            #expect(ck_kernels(Int32(t.rawValue), ISA.detected.level).rows == nil, "\(t.name) has a C kernel but no Swift row")
        }
        #expect(ck_active_isa() == ISA.active.level, "Swift and C use one level")
    }

    /// F16's conversions and vector operations, Q8_0's activation quantizer and the quantized caches' weighted
    /// sums at each level: conversions and quantization bit for bit, sums within rounding of double precision.
    @Test func everyLevelsCellsMatchTheReference() throws {
        var rng = SplitMix(state: 7)
        let n = 160, rows = 9
        let x = (0..<(rows * n)).map { _ in Float.random(in: -3...3, using: &rng) }
        let w = (0..<rows).map { _ in Float.random(in: -1...1, using: &rng) }
        for isa in Self.levels {
            let f16 = ck_kernels(Int32(GGMLType.f16.rawValue), isa.level)
            var h = [UInt16](repeating: 0, count: x.count), back = [Float](repeating: 0, count: x.count)
            try #require(f16.quantize != nil && f16.to_f32 != nil && f16.dot_f32 != nil && f16.axpy != nil && f16.weighted_sum != nil, "\(isa)")
            f16.quantize(Int32(x.count), x, &h, nil)
            f16.to_f32(Int32(x.count), h, &back)
            for i in x.indices {
                #expect(h[i] == Float16(x[i]).bitPattern, "\(isa) f32→f16 [\(i)]")
                #expect(back[i] == Float(Float16(x[i])), "\(isa) f16→f32 [\(i)]")
            }
            let dot = f16.dot_f32(Int32(n), x, h)
            let want = (0..<n).reduce(0.0) { $0 + Double(x[$1]) * Double(back[$1]) }
            #expect(abs(Double(dot) - want) < 1e-3, "\(isa) dot")
            var one = [Float](repeating: 0.5, count: n), all = one
            for j in 0..<rows { h.withUnsafeBufferPointer { f16.axpy(Int32(n), w[j], $0.baseAddress! + j * n, &one) } }
            f16.weighted_sum(Int32(rows), Int32(n), w, h, 2 * n, &all)
            #expect(one == all, "\(isa): the weighted sum is the axpy of each row in order")

            let q8 = ck_kernels(Int32(GGMLType.q8_0.rawValue), isa.level)
            if let quantize = q8.quantize {
                var got = [UInt8](repeating: 0, count: 34 * n / 32), ref = got
                var aux = [Float](repeating: 0, count: 2 * n / 32), refAux = aux
                quantize(Int32(n), x, &got, &aux)
                try ref.withUnsafeMutableBytes { try ActivationQuant.quantize(x, count: n, to: .q8_0, $0.baseAddress!) }
                ck_q8_0_aux(Int32(n), ref, &refAux)
                #expect(got == ref && aux == refAux, "\(isa) Q8_0 activations")
            } else {
                #expect(isa == .scalar, "Q8_0's fused quantizer exists from AVX2 up")
            }
            for type in [GGMLType.q8_0, .q4_0] {
                guard let sum = ck_kernels(Int32(type.rawValue), isa.level).weighted_sum else {
                    #expect(isa == .scalar, "\(type.name)'s weighted sum exists from AVX2 up")
                    continue
                }
                let rb = type.rowBytes(elements: n)!
                var q = [UInt8](repeating: 0, count: rows * rb)
                try q.withUnsafeMutableBytes { b in for j in 0..<rows { try Quantize.row(x.withUnsafeBufferPointer { $0.baseAddress! + j * n }, count: n, to: type, b.baseAddress! + j * rb) } }
                var want = [Double](repeating: 0, count: n), row = [Float](repeating: 0, count: n)
                for j in 0..<rows {
                    try q.withUnsafeBytes { try Dequantize.row(type, $0.baseAddress! + j * rb, &row, count: n) }
                    for i in 0..<n { want[i] += Double(w[j]) * Double(row[i]) }
                }
                var got = [Float](repeating: 0, count: n)
                sum(Int32(rows), Int32(n), w, q, rb, &got)
                for i in 0..<n { #expect(abs(Double(got[i]) - want[i]) < 1e-4, "\(isa) \(type.name) [\(i)]") }
            }
        }
    }

    /// Every packed kernel at every level, over rows its own packing wrote, against the row kernel of the same
    /// level on the unpacked rows.
    @Test func everyLevelsPackedKernelMatchesItsRowKernel() throws {
        var rng = SplitMix(state: 11)
        let cols = 256, rows = 16, batch = 3
        let x = (0..<(rows * cols)).map { _ in Float.random(in: -2...2, using: &rng) }
        let a = (0..<(batch * cols)).map { _ in Float.random(in: -2...2, using: &rng) }
        var tried = 0
        for isa in Self.levels {
            for f in QuantFormat.rows {
                let k = f.kernels(isa)
                guard let packed = k.rows_x8, let pack = k.pack_x8, let plain = k.rows, let format = f.activation else { continue }
                tried += 1
                let rb = f.type.rowBytes(elements: cols)!
                var w = [UInt8](repeating: 0, count: rows * rb)
                try w.withUnsafeMutableBytes { b in for r in 0..<rows { try Quantize.row(x.withUnsafeBufferPointer { $0.baseAddress! + r * cols }, count: cols, to: f.type, b.baseAddress! + r * rb) } }
                var p = w
                w.withUnsafeBytes { src in p.withUnsafeMutableBytes { dst in
                    for g in 0..<(rows / 8) { pack(src.baseAddress! + g * 8 * rb, rb, Int32(cols / f.type.blockSize), dst.baseAddress! + g * 8 * rb) }
                } }
                let acts = try a.withUnsafeBufferPointer { try QuantizedActivations($0.baseAddress!, cols: cols, batch: batch, format: format) }
                var want = [Float](repeating: 0, count: rows * batch), got = want
                plain(Int32(cols), w, rb, Int32(rows), acts.data, acts.rowStride, acts.aux, acts.auxStride, Int32(batch), &want, rows)
                packed(Int32(cols), p, rb, Int32(rows), acts.data, acts.rowStride, acts.aux, acts.auxStride, Int32(batch), &got, rows)
                for i in want.indices { #expect(abs(got[i] - want[i]) <= 1e-4 * max(1, abs(want[i])), "\(isa) \(f.type.name) [\(i)]") }
            }
        }
        if ISA.detected >= .avx2 { #expect(tried > 0, "packed Q4_0 exists from AVX2 up") }
    }
}
