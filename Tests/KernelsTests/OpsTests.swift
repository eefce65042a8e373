import CKernels
import Foundation
import GGUF
import Testing
import TestSupport
@testable import Kernels

/// Each operator against a plain double-precision reference, on odd sizes.
struct OpsTests {
    var rng = SplitMix(state: 99)

    mutating func randoms(_ n: Int, _ range: ClosedRange<Float> = -2...2) -> [Float] {
        (0..<n).map { _ in Float.random(in: range, using: &rng) }
    }

    @Test mutating func rmsNorm() {
        for n in [1, 7, 256, 1000] {
            let x = randoms(n), w = randoms(n)
            var y = [Float](repeating: 0, count: n)
            Ops.rmsNorm(x, weight: w, count: n, eps: 1e-6, into: &y)
            let ms = x.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(n)
            for i in 0..<n {
                let want = Double(x[i]) / (ms + 1e-6).squareRoot() * Double(w[i])
                #expect(abs(Double(y[i]) - want) <= 1e-5 * max(1, abs(want)), "n \(n) [\(i)]")
            }
        }
    }

    @Test mutating func ropeBothModes() {
        let headDim = 12, dims = 8, heads = 3
        for mode in [Ops.RopeMode.normal, .neox] {
            for p in [0, 1, 17, 511] {
                let x = randoms(heads * headDim)
                var y = x
                let a = Ops.ropeAngles(position: p, dims: dims, freqBase: 10000)
                y.withUnsafeMutableBufferPointer { Ops.rope($0.baseAddress!, heads: heads, headDim: headDim, dims: dims, angles: a, mode: mode) }
                for h in 0..<heads {
                    for i in 0..<(dims / 2) {
                        let theta = Double(p) * pow(10000, -2 * Double(i) / Double(dims))
                        let (i0, i1) = mode == .normal ? (2 * i, 2 * i + 1) : (i, i + dims / 2)
                        let x0 = Double(x[h * headDim + i0]), x1 = Double(x[h * headDim + i1])
                        #expect(abs(Double(y[h * headDim + i0]) - (x0 * cos(theta) - x1 * sin(theta))) < 1e-3)
                        #expect(abs(Double(y[h * headDim + i1]) - (x0 * sin(theta) + x1 * cos(theta))) < 1e-3)
                    }
                    // Dimensions past `dims` are not rotated.
                    for i in dims..<headDim { #expect(y[h * headDim + i] == x[h * headDim + i]) }
                }
            }
        }
    }

    @Test mutating func softmaxSwigluTopK() {
        for n in [1, 5, 64, 129] {
            let x = randoms(n, -30...30)
            var s = x
            s.withUnsafeMutableBufferPointer { Ops.softmax($0.baseAddress!, count: n) }
            let m = x.max()!
            let z = x.reduce(0.0) { $0 + exp(Double($1 - m)) }
            for i in 0..<n { #expect(abs(Double(s[i]) - exp(Double(x[i] - m)) / z) < 1e-6) }

            var g = randoms(n)
            let u = randoms(n), g0 = g
            g.withUnsafeMutableBufferPointer { Ops.swiglu(gate: $0.baseAddress!, up: u, count: n) }
            for i in 0..<n {
                let want = Double(g0[i]) / (1 + exp(-Double(g0[i]))) * Double(u[i])
                #expect(abs(Double(g[i]) - want) < 1e-5)
            }

            for k in [1, min(2, n), min(8, n)] {
                let top = Ops.topK(x, count: n, k: k)
                let want = x.indices.sorted { x[$0] != x[$1] ? x[$0] > x[$1] : $0 < $1 }.prefix(k)
                #expect(top == Array(want))
            }
        }
        // Ties keep the lower index first.
        #expect(Ops.topK([1, 3, 3, 2, 3], count: 5, k: 2) == [1, 2])
    }

    @Test mutating func f16KVCacheOps() {
        let n = 37
        var x = randoms(n, -70000...70000) + [0, -0, 1e-8, 6.1e-5, 65504, 65520, .infinity, 5.96e-8, 2.98e-8]
        x += randoms(n, -1...1)
        var h = [UInt16](repeating: 0, count: x.count), p = h
        Ops.toF16(x, &h, count: x.count)
        ck_f32_to_f16_portable(Int32(x.count), x, &p)
        for i in x.indices {
            #expect(h[i] == Float16(x[i]).bitPattern, "F16C \(x[i])")
            #expect(p[i] == Float16(x[i]).bitPattern, "portable \(x[i])")
        }
        var back = [Float](repeating: 0, count: x.count)
        Ops.fromF16(h, &back, count: x.count)
        for i in x.indices { #expect(back[i] == Float(Float16(bitPattern: h[i]))) }

        let q = randoms(n), kv = randoms(n)
        var k16 = [UInt16](repeating: 0, count: n)
        Ops.toF16(kv, &k16, count: n)
        let want = zip(q, k16).reduce(0.0) { $0 + Double($1.0) * Double(Float(Float16(bitPattern: $1.1))) }
        #expect(abs(Double(Ops.dotF16(q, k16, count: n)) - want) < 1e-4)
        var acc = q
        Ops.axpyF16(0.5, k16, &acc, count: n)
        for i in 0..<n { #expect(abs(acc[i] - (q[i] + 0.5 * Float(Float16(bitPattern: k16[i])))) < 1e-6) }
    }

    /// Attention's weighted sums over cached rows: f16 rows give exactly the axpy of each row in order; Q8_0 and
    /// Q4_0 rows give the sum of their dequantized values (what llama.cpp's flash attention adds).
    @Test mutating func weightedSumsOverCachedRows() throws {
        let rows = 37, n = 160, stride16 = n + 32
        let x = randoms(rows * stride16), w = randoms(rows), y0 = randoms(n)
        var x16 = [UInt16](repeating: 0, count: x.count)
        Ops.toF16(x, &x16, count: x.count)
        var one = y0, all = y0
        for j in 0..<rows { x16.withUnsafeBufferPointer { Ops.axpyF16(w[j], $0.baseAddress! + j * stride16, &one, count: n) } }
        Ops.weightedSumF16(rows: rows, w, x16, stride: stride16, &all, count: n)
        #expect(one == all)
        for type in [GGMLType.q8_0, .q4_0] {
            let rb = type.rowBytes(elements: n)!, stride = rb + 6
            var q = [UInt8](repeating: 0, count: rows * stride)
            try q.withUnsafeMutableBytes { b in
                for j in 0..<rows { try Quantize.row(x.withUnsafeBufferPointer { $0.baseAddress! + j * stride16 }, count: n, to: type, b.baseAddress! + j * stride) }
            }
            var want = y0.map(Double.init), row = [Float](repeating: 0, count: n)
            for j in 0..<rows {
                try q.withUnsafeBytes { try Dequantize.row(type, $0.baseAddress! + j * stride, &row, count: n) }
                for i in 0..<n { want[i] += Double(w[j]) * Double(row[i]) }
            }
            var got = y0
            let done = q.withUnsafeBytes { Ops.weightedSum(type, rows: rows, w, $0.baseAddress!, stride: stride, &got, count: n) }
            #expect(done)
            for i in 0..<n { #expect(abs(Double(got[i]) - want[i]) < 1e-4, "\(type.name) [\(i)]") }
        }
    }

    /// The one-pass f16 attention against a double-precision reference (query rounded to f16 as ggml's K·Q takes
    /// it): head groups of every size the loops block by, head widths with and without a 16-column tail, position
    /// counts off the 8-key tile, sinks, and strides wider than a head (several KV heads per cache row). With
    /// `roundWeights` (deepseek2's latent attention, as ggml without flash attention), the normalised weights are
    /// rounded to f16 before they meet the values, and the reference rounds them the same way.
    @Test(arguments: [false, true]) mutating func attentionInOnePassMatchesTheReference(roundWeights: Bool) throws {
        guard Ops.attendsF16InOnePass else { return }
        for (g, d, n, sink) in [(1, 64, 1, false), (4, 64, 37, false), (4, 128, 200, true), (6, 72, 9, true), (8, 64, 1000, false),
                                (2, 128, 8, true), (5, 16, 3, false), (16, 576, 40, false)] {
            let kvStride = 2 * d + 8, qStride = d + 4, outStride = d + 12
            let keys = randoms(n * kvStride), values = randoms(n * kvStride), queries = randoms(g * qStride), sinks = randoms(g)
            var k16 = [UInt16](repeating: 0, count: keys.count), v16 = k16
            Ops.toF16(keys, &k16, count: keys.count)
            Ops.toF16(values, &v16, count: values.count)
            let scale: Float = 1 / Float(d).squareRoot()
            var out = [Float](repeating: .nan, count: g * outStride)
            var work = [Float](repeating: 0, count: Ops.attendF16Work(heads: g, width: d, count: n))
            let offset = d  // the second KV head of each row
            let done = k16.withUnsafeBufferPointer { k in v16.withUnsafeBufferPointer { v in
                Ops.attendF16(heads: g, width: d, count: n, queries: queries, queryStride: qStride, keys: k.baseAddress! + offset,
                              keyStride: kvStride, values: v.baseAddress! + offset, valueStride: kvStride, scale: scale,
                              sinks: sink ? sinks : nil, roundWeights: roundWeights, work: &work, into: &out, outStride: outStride)
            } }
            #expect(done)
            for h in 0..<g {
                let q = (0..<d).map { Double(Float(Float16(queries[h * qStride + $0]))) }
                let s = (0..<n).map { j in Double(scale) * (0..<d).reduce(0.0) { $0 + q[$1] * Double(Float(Float16(keys[j * kvStride + offset + $1]))) } }
                let m = max(s.max()!, sink ? Double(sinks[h]) : -.infinity)
                let e = s.map { exp($0 - m) }
                let total = e.reduce(0, +) + (sink ? exp(Double(sinks[h]) - m) : 0)
                let p = e.map { roundWeights ? Double(Float(Float16(Float($0 / total)))) : $0 / total }
                for c in 0..<d {
                    let want = (0..<n).reduce(0.0) { $0 + p[$1] * Double(Float(Float16(values[$1 * kvStride + offset + c]))) }
                    #expect(abs(Double(out[h * outStride + c]) - want) < 2e-5 * max(1, abs(want)), "g \(g) d \(d) n \(n) head \(h) [\(c)]")
                }
            }
        }
    }
}
