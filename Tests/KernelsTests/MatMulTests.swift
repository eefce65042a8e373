import CKernels
import Testing
import Runtime
import TestSupport
import GGUF
@testable import Kernels

struct MatMulTests {
    static let fused: [GGMLType] = [.f32, .f16, .q8_0, .q4_0, .q4_K, .q6_K]
    /// Types with an AVX2 kernel but no scalar C one (the scalar ISA dequantizes them in Swift).
    static let avx2Only: [GGMLType] = [.bf16, .q4_1, .q5_0, .q5_1, .q2_K, .q3_K, .q5_K, .iq4_NL, .iq4_XS, .mxfp4]

    /// Each C kernel on each ISA this CPU has, against ggml's own dot on ggml's vectors.
    @Test(arguments: Golden.all.filter { fused.contains($0.type) || avx2Only.contains($0.type) })
    func cKernelsMatchGGMLDot(g: Golden) throws {
        let q = g.bytes("quantized"), a = g.bytes("activation_quantized"), expected = g.floats("dot_f32")
        var aux = [Float](repeating: 0, count: 2 * Golden.cols / 32)
        if g.dotType == .q8_0 { a.withUnsafeBytes { ck_q8_0_aux(Int32(Golden.cols), $0.baseAddress!, &aux) } }
        for isa in ISA.allCases where isa <= ISA.detected && (isa != .scalar || Self.fused.contains(g.type)) {
            let fn = try #require(ck_rows_kernel(Int32(g.type.rawValue), isa.level), "\(g.name) has no \(isa) kernel")
            var y = [Float](repeating: .nan, count: Golden.rows)
            q.withUnsafeBytes { qp in
                a.withUnsafeBytes { ap in
                    fn(Int32(Golden.cols), qp.baseAddress!, g.rowBytes, Int32(Golden.rows), ap.baseAddress!, 0, aux, 0, 1, &y, Golden.rows)
                }
            }
            for r in 0..<Golden.rows {
                let want = expected[r]
                #expect(abs(y[r] - want) <= max(1e-4 * abs(want), 2e-3), "\(g.name) \(isa) row \(r): \(y[r]) vs ggml \(want)")
            }
        }
    }

    /// Random matrices of odd shapes through the public API, at 1, 2 and 3 threads, matvec and batched.
    @Test(arguments: [GGMLType.q8_0, .q4_0, .q4_K, .q6_K, .f16, .f32, .bf16, .q4_1, .q5_0, .q5_1, .q2_K, .q3_K, .q5_K, .iq4_NL, .iq4_XS, .mxfp4])
    func multiplyMatchesReference(type: GGMLType) throws {
        var rng = SplitMix(state: UInt64(type.rawValue) &* 7919)
        let cols = type.blockSize == 256 ? 512 : 96
        for (rows, batch) in [(1, 1), (7, 1), (13, 3), (33, 5)] {
            let w = randomWeights(type: type, rows: rows, cols: cols, rng: &rng)
            let x = (0..<(batch * cols)).map { _ in Float.random(in: -1...1, using: &rng) }
            let want = try reference(type: type, w: w, x: x, rows: rows, cols: cols, batch: batch)
            for threads in 1...3 {
                let pool = ThreadPool(threads: threads)
                var y = [Float](repeating: .nan, count: rows * batch)
                try w.withUnsafeBytes { wp in
                    let m = try WeightMatrix(type: type, rows: rows, cols: cols, data: wp.baseAddress!)
                    try x.withUnsafeBufferPointer { xp in
                        try y.withUnsafeMutableBufferPointer { yp in
                            try MatMul.multiply(m, xp.baseAddress!, batch: batch, into: yp.baseAddress!, pool: pool)
                        }
                    }
                }
                for i in 0..<(rows * batch) {
                    #expect(abs(Double(y[i]) - want[i]) <= max(2e-3 * abs(want[i]), 2e-3),
                            "\(type.name) \(rows)×\(cols) batch \(batch) threads \(threads) [\(i)]: \(y[i]) vs \(want[i])")
                }
            }
        }
    }

    /// What the kernels must compute: the quantized weights times the activations quantized the way the kernel
    /// consumes them, in double precision.
    func reference(type: GGMLType, w: [UInt8], x: [Float], rows: Int, cols: Int, batch: Int) throws -> [Double] {
        let fmt = MatMul.hasKernel(type) ? ActivationQuant.vecDotType(for: type)! : .f32
        let ab = fmt.rowBytes(elements: cols)!
        var out = [Double](repeating: 0, count: rows * batch)
        for t in 0..<batch {
            var aq = [UInt8](repeating: 0, count: ab)
            try x.withUnsafeBufferPointer { xp in
                try aq.withUnsafeMutableBytes { try ActivationQuant.quantize(xp.baseAddress! + t * cols, count: cols, to: fmt, $0.baseAddress!) }
            }
            for r in 0..<rows {
                out[t * rows + r] = try w.withUnsafeBytes { wp in
                    try aq.withUnsafeBytes { ap in
                        try ReferenceDot.dot(weight: type, wp.baseAddress! + r * type.rowBytes(elements: cols)!, activation: fmt, ap.baseAddress!, count: cols)
                    }
                }
            }
        }
        return out
    }
}

/// Random weights of any type: random bytes with every f16 scale field replaced by a small sane value.
func randomWeights(type: GGMLType, rows: Int, cols: Int, rng: inout SplitMix) -> [UInt8] {
    let rb = type.rowBytes(elements: cols)!
    if type == .f32 {
        return (0..<(rows * cols)).flatMap { _ in withUnsafeBytes(of: Float.random(in: -1...1, using: &rng)) { Array($0) } }
    }
    if type == .f16 || type == .bf16 {
        return (0..<(rows * cols)).flatMap { _ in
            let v = Float.random(in: -1...1, using: &rng)
            return withUnsafeBytes(of: type == .f16 ? Scalars.toF16(v) : Scalars.toBF16(v)) { Array($0) }
        }
    }
    var bytes = (0..<(rows * rb)).map { _ in UInt8.random(in: 0...255, using: &rng) }
    let blocks = rows * rb / type.bytesPerBlock
    for b in 0..<blocks {
        if type == .mxfp4 { bytes[b * type.bytesPerBlock] = UInt8.random(in: 118...124, using: &rng) }  // E8M0 exponent
        for offset in QuantFormat.of(type)?.f16Scales ?? [] {
            let v = Scalars.toF16(Float.random(in: 0.001...0.02, using: &rng))
            bytes[b * type.bytesPerBlock + offset] = UInt8(v & 0xFF)
            bytes[b * type.bytesPerBlock + offset + 1] = UInt8(v >> 8)
        }
    }
    return bytes
}


extension MatMulTests {
    /// A token's result does not depend on how it was batched (prefill and decode must agree exactly).
    @Test(arguments: [GGMLType.q4_0, .q8_0, .q4_K, .q6_K, .f16])
    func batchInvariance(type: GGMLType) throws {
        var rng = SplitMix(state: 4242)
        let cols = type.blockSize == 256 ? 768 : 224, rows = 9, batch = 7
        let w = randomWeights(type: type, rows: rows, cols: cols, rng: &rng)
        let x = (0..<(batch * cols)).map { _ in Float.random(in: -1...1, using: &rng) }
        let pool = ThreadPool(threads: 2)
        try w.withUnsafeBytes { wp in
            let m = try WeightMatrix(type: type, rows: rows, cols: cols, data: wp.baseAddress!)
            var all = [Float](repeating: 0, count: rows * batch)
            try MatMul.multiply(m, x, batch: batch, into: &all, pool: pool)
            for t in 0..<batch {
                var one = [Float](repeating: 0, count: rows)
                try x.withUnsafeBufferPointer { try MatMul.multiply(m, $0.baseAddress! + t * cols, batch: 1, into: &one, pool: pool) }
                #expect(one == Array(all[(t * rows)..<((t + 1) * rows)]), "\(type.name) token \(t)")
            }
        }
    }
}

extension MatMulTests {
    /// Runs `body` with `w` as a plain matrix and as a packed copy; skipped when this CPU has no packed kernel.
    func withPacked(_ w: [UInt8], type: GGMLType, rows: Int, cols: Int, _ body: (WeightMatrix, WeightMatrix, [UInt8]) throws -> Void) throws {
        var packedBytes = w
        try w.withUnsafeBytes { wp in
            let plain = try WeightMatrix(type: type, rows: rows, cols: cols, data: wp.baseAddress!)
            guard Packing.canPack(plain) else { return }
            try packedBytes.withUnsafeMutableBytes { pp in
                let scratch = UnsafeMutableRawPointer.allocate(byteCount: 8 * plain.rowStride, alignment: 64)
                defer { scratch.deallocate() }
                for g in stride(from: 0, to: rows, by: 8) {
                    Packing.packGroup(pp.baseAddress! + g * plain.rowStride, type: type, rowStride: plain.rowStride, cols: cols, scratch: scratch)
                }
                try body(plain, Packing.view(try WeightMatrix(type: type, rows: rows, cols: cols, data: pp.baseAddress!)), Array(pp))
            }
        }
    }

    /// Q4_0 packed in groups of eight rows gives exactly the bits of the row layout, for any batch, alone or in
    /// a grouped call, and a packed slice of whole groups is the slice of the packed matrix.
    @Test func packedQ4_0IsBitIdentical() throws {
        var rng = SplitMix(state: 777)
        let rows = 24, cols = 320
        let w = randomWeights(type: .q4_0, rows: rows, cols: cols, rng: &rng)
        let pool = ThreadPool(threads: 2)
        try withPacked(w, type: .q4_0, rows: rows, cols: cols) { plain, packed, bytes in
            #expect(bytes != w, "packing changed nothing")
            for batch in 1...7 {
                let x = (0..<(batch * cols)).map { _ in Float.random(in: -1...1, using: &rng) }
                var a = [Float](repeating: 0, count: rows * batch), b = a
                try MatMul.multiply(plain, x, batch: batch, into: &a, pool: pool)
                try MatMul.multiply(packed, x, batch: batch, into: &b, pool: pool)
                #expect(a == b, "batch \(batch)")
                // A slice (two groups) inside a grouped call.
                let q = try QuantizedActivations(x, cols: cols, batch: batch, format: .q8_0)
                var c = [Float](repeating: 0, count: 16 * batch)
                try c.withUnsafeMutableBufferPointer { try MatMul.multiply([MatMul.Job(packed.rows(8..<24), q, into: $0.baseAddress!)], pool: pool) }
                for t in 0..<batch { #expect(Array(c[(t * 16)..<(t * 16 + 16)]) == Array(a[(t * rows + 8)..<(t * rows + 24)]), "slice, token \(t)") }
            }
        }
    }

    /// Packed Q8_0 (VNNI only) matches the row layout within float rounding, and a token's result does not depend
    /// on its batch.
    @Test func packedQ8_0MatchesAndIsBatchInvariant() throws {
        var rng = SplitMix(state: 4711)
        let rows = 16, cols = 320, batch = 7
        let w = randomWeights(type: .q8_0, rows: rows, cols: cols, rng: &rng)
        let pool = ThreadPool(threads: 2)
        let x = (0..<(batch * cols)).map { _ in Float.random(in: -1...1, using: &rng) }
        try withPacked(w, type: .q8_0, rows: rows, cols: cols) { plain, packed, _ in
            var a = [Float](repeating: 0, count: rows * batch), b = a
            try MatMul.multiply(plain, x, batch: batch, into: &a, pool: pool)
            try MatMul.multiply(packed, x, batch: batch, into: &b, pool: pool)
            for i in a.indices { #expect(abs(a[i] - b[i]) <= 1e-4 * max(1, abs(a[i])), "[\(i)] \(a[i]) vs \(b[i])") }
            for t in 0..<batch {
                var one = [Float](repeating: 0, count: rows)
                try x.withUnsafeBufferPointer { try MatMul.multiply(packed, $0.baseAddress! + t * cols, batch: 1, into: &one, pool: pool) }
                #expect(one == Array(b[(t * rows)..<((t + 1) * rows)]), "token \(t)")
            }
        }
    }
}

extension MatMulTests {
    /// `bench kernels` measures the packed layout a model runs (Q4_0 here whenever the CPU has the packed kernel)
    /// and skips types without one, rather than reporting the row layout under the packed name.
    @Test func kernelBenchMeasuresThePackedLayout() throws {
        let pool = ThreadPool(threads: 1)
        let hasPacked = Packing.canPack(try WeightMatrix(type: .q4_0, rows: 8, cols: 64, data: UnsafeRawPointer(bitPattern: 64)!))
        let packed = try KernelBench.matmul(type: .q4_0, rows: 64, cols: 256, batch: 1, pool: pool, packed: true, totalBytes: 1 << 20, minSeconds: 0.01)
        #expect((packed != nil) == hasPacked)
        if let packed { #expect(packed.kernel.hasSuffix(" x8") && packed.gbps > 0) }
        #expect(try KernelBench.matmul(type: .q6_K, rows: 64, cols: 256, batch: 1, pool: pool, packed: true, totalBytes: 1 << 20, minSeconds: 0.01) == nil)
        let plain = try #require(try KernelBench.matmul(type: .q4_0, rows: 64, cols: 256, batch: 1, pool: pool, totalBytes: 1 << 20, minSeconds: 0.01))
        #expect(!plain.kernel.hasSuffix(" x8"))
    }
}
