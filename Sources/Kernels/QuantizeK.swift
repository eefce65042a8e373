/// The K-quant reference quantizers (super-blocks of 256), as ggml's `quantize_row_q{2..6}_K_ref`.
extension Quantize {
    @inline(__always) static func nearest(_ x: Float) -> Int { Int(Scalars.nearestInt(x)) }

    /// ggml's `make_qx_quants`: a symmetric scale for n values in [-nmax, nmax-1], searched around max/nmax.
    static func makeQXQuants(_ n: Int, _ nmax: Int, _ x: UnsafePointer<Float>, _ L: UnsafeMutablePointer<Int8>,
                             rmseType: Int, weights qw: UnsafePointer<Float>?) -> Float {
        let maxv = signedMax(x, count: n)
        if abs(maxv) < groupMaxEps {
            for i in 0..<n { L[i] = 0 }
            return 0
        }
        let fmax = Float(nmax)
        var iscale = -fmax / maxv
        func weight(_ i: Int) -> Float {
            if let qw { return qw[i] }
            switch rmseType {
            case 1: return x[i] * x[i]
            case 2: return 1
            case 3: return abs(x[i])
            default: return abs(x[i]).squareRoot()
            }
        }
        if rmseType == 0 {
            for i in 0..<n { L[i] = Int8(nmax + max(-nmax, min(nmax - 1, nearest(iscale * x[i])))) }
            return 1 / iscale
        }
        var sumlx: Float = 0, suml2: Float = 0
        for i in 0..<n {
            let l = max(-nmax, min(nmax - 1, nearest(iscale * x[i])))
            L[i] = Int8(l + nmax)
            let w = weight(i), fl = Float(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        }
        var scale: Float = suml2 != 0 ? sumlx / suml2 : 0
        var best = scale * sumlx
        for step in -9...9 where step != 0 {
            iscale = -(fmax + 0.1 * Float(step)) / maxv
            sumlx = 0
            suml2 = 0
            for i in 0..<n {
                let l = max(-nmax, min(nmax - 1, nearest(iscale * x[i])))
                let w = weight(i), fl = Float(l)
                sumlx += w * x[i] * fl
                suml2 += w * fl * fl
            }
            if suml2 > 0 && sumlx * sumlx > best * suml2 {
                for i in 0..<n { L[i] = Int8(nmax + max(-nmax, min(nmax - 1, nearest(iscale * x[i])))) }
                scale = sumlx / suml2
                best = scale * sumlx
            }
        }
        return scale
    }

    /// ggml's `make_q3_quants` with its weighted refinement (do_rmse = true).
    static func makeQ3Quants(_ n: Int, _ nmax: Int, _ x: UnsafePointer<Float>, _ L: UnsafeMutablePointer<Int8>) -> Float {
        let maxv = signedMax(x, count: n)
        if abs(maxv) < groupMaxEps {
            for i in 0..<n { L[i] = 0 }
            return 0
        }
        let iscale = -Float(nmax) / maxv
        var sumlx: Float = 0, suml2: Float = 0
        for i in 0..<n {
            let l = max(-nmax, min(nmax - 1, nearest(iscale * x[i])))
            L[i] = Int8(l)
            let w = x[i] * x[i], fl = Float(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        }
        for _ in 0..<5 {
            var changed = 0
            for i in 0..<n {
                let w = x[i] * x[i]
                var slx = sumlx - w * x[i] * Float(L[i])
                if slx > 0 {
                    var sl2 = suml2 - w * Float(L[i]) * Float(L[i])
                    let newL = max(-nmax, min(nmax - 1, nearest(x[i] * sl2 / slx)))
                    if newL != Int(L[i]) {
                        slx += w * x[i] * Float(newL)
                        sl2 += w * Float(newL) * Float(newL)
                        if sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                            L[i] = Int8(newL)
                            sumlx = slx
                            suml2 = sl2
                            changed += 1
                        }
                    }
                }
            }
            if changed == 0 { break }
        }
        for i in 0..<n { L[i] += Int8(nmax) }
        return suml2 > 0 ? sumlx / suml2 : 0
    }

    /// ggml's `make_qkx2_quants`: an affine (scale, min) fit of n values to 0...nmax, weighted, with a search
    /// over `nstep + 1` candidate scales. Returns the scale; `theMin` receives −min (a non-negative offset).
    static func makeQKX2Quants(_ n: Int, _ nmax: Int, _ x: UnsafePointer<Float>, _ weights: UnsafePointer<Float>,
                               _ L: UnsafeMutablePointer<UInt8>, _ theMin: inout Float, _ Laux: UnsafeMutablePointer<UInt8>,
                               rmin: Float, rdelta: Float, nstep: Int, useMad: Bool) -> Float {
        var minv = x[0], maxv = x[0]
        var sumW = weights[0]
        var sumX = sumW * x[0]
        for i in 1..<n {
            if x[i] < minv { minv = x[i] }
            if x[i] > maxv { maxv = x[i] }
            let w = weights[i]
            sumW += w
            sumX += w * x[i]
        }
        if minv > 0 { minv = 0 }
        if maxv == minv {
            for i in 0..<n { L[i] = 0 }
            theMin = -minv
            return 0
        }
        let fmax = Float(nmax)
        var iscale = fmax / (maxv - minv)
        var scale = 1 / iscale
        var bestError: Float = 0
        for i in 0..<n {
            let l = nearest(iscale * (x[i] - minv))
            L[i] = UInt8(max(0, min(nmax, l)))
            var diff = scale * Float(L[i]) + minv - x[i]
            diff = useMad ? abs(diff) : diff * diff
            bestError += weights[i] * diff
        }
        if nstep < 1 {
            theMin = -minv
            return scale
        }
        for step in 0...nstep {
            iscale = (rmin + rdelta * Float(step) + fmax) / (maxv - minv)
            var sumL: Float = 0, sumL2: Float = 0, sumXL: Float = 0
            for i in 0..<n {
                let l = max(0, min(nmax, nearest(iscale * (x[i] - minv))))
                Laux[i] = UInt8(l)
                let w = weights[i], fl = Float(l)
                sumL += w * fl
                sumL2 += w * fl * fl
                sumXL += w * fl * x[i]
            }
            let D = sumW * sumL2 - sumL * sumL
            if D > 0 {
                var thisScale = (sumW * sumXL - sumX * sumL) / D
                var thisMin = (sumL2 * sumX - sumL * sumXL) / D
                if thisMin > 0 {
                    thisMin = 0
                    thisScale = sumXL / sumL2
                }
                var err: Float = 0
                for i in 0..<n {
                    var diff = thisScale * Float(Laux[i]) + thisMin - x[i]
                    diff = useMad ? abs(diff) : diff * diff
                    err += weights[i] * diff
                }
                if err < bestError {
                    for i in 0..<n { L[i] = Laux[i] }
                    bestError = err
                    scale = thisScale
                    minv = thisMin
                }
            }
        }
        theMin = -minv
        return scale
    }

    /// Packs 256 2-bit values the way Q2_K and Q3_K store them: byte l of each 32-run holds four values 32 apart.
    static func pack2Bit(_ L: UnsafePointer<UInt8>, _ qs: UnsafeMutableRawPointer) {
        for j in stride(from: 0, to: 256, by: 128) {
            for l in 0..<32 {
                put(qs, j / 4 + l, L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6))
            }
        }
    }

    // block_q2_K { u8 scales[16]; u8 qs[64]; half d; half dmin }
    static func q2_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var L = [UInt8](repeating: 0, count: 256), Laux = [UInt8](repeating: 0, count: 16)
        var weights = [Float](repeating: 0, count: 16), mins = [Float](repeating: 0, count: 16), scales = [Float](repeating: 0, count: 16)
        let q4scale: Float = 15
        var maxScale: Float = 0, maxMin: Float = 0
        for j in 0..<16 {
            for l in 0..<16 { weights[l] = abs(x[16 * j + l]) }
            scales[j] = weights.withUnsafeBufferPointer { w in
                L.withUnsafeMutableBufferPointer { lp in
                    Laux.withUnsafeMutableBufferPointer { la in
                        makeQKX2Quants(16, 3, x + 16 * j, w.baseAddress!, lp.baseAddress! + 16 * j, &mins[j], la.baseAddress!,
                                       rmin: -0.5, rdelta: 0.1, nstep: 15, useMad: true)
                    }
                }
            }
            if scales[j] > maxScale { maxScale = scales[j] }
            if mins[j] > maxMin { maxMin = mins[j] }
        }
        if maxScale > 0 {
            let iscale = q4scale / maxScale
            for j in 0..<16 { put(y, j, UInt8(truncatingIfNeeded: nearest(iscale * scales[j]))) }
            putF16(y, 80, maxScale / q4scale)
        } else {
            for j in 0..<16 { put(y, j, 0) }
            putF16(y, 80, 0)
        }
        if maxMin > 0 {
            let iscale = q4scale / maxMin
            for j in 0..<16 { put(y, j, get(y, j) | UInt8(truncatingIfNeeded: nearest(iscale * mins[j]) << 4)) }
            putF16(y, 82, maxMin / q4scale)
        } else {
            putF16(y, 82, 0)
        }
        for j in 0..<16 {
            let sc = get(y, j)
            let d = getF16(y, 80) * Float(sc & 0xF)
            if d == 0 { continue }
            let dm = getF16(y, 82) * Float(sc >> 4)
            for ii in 0..<16 { L[16 * j + ii] = UInt8(max(0, min(3, nearest((x[16 * j + ii] + dm) / d)))) }
        }
        L.withUnsafeBufferPointer { pack2Bit($0.baseAddress!, y + 16) }
    }

    // block_q3_K { u8 hmask[32]; u8 qs[64]; u8 scales[12]; half d }
    static func q3_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var L = [Int8](repeating: 0, count: 256)
        var scales = [Float](repeating: 0, count: 16)
        var maxScale: Float = 0, amax: Float = 0
        for j in 0..<16 {
            scales[j] = L.withUnsafeMutableBufferPointer { makeQ3Quants(16, 4, x + 16 * j, $0.baseAddress! + 16 * j) }
            let s = abs(scales[j])
            if s > amax {
                amax = s
                maxScale = scales[j]
            }
        }
        let sc = y + 96
        for j in 0..<12 { put(sc, j, 0) }
        if maxScale != 0 {
            let iscale = -32 / maxScale
            for j in 0..<16 {
                var l = Int8(truncatingIfNeeded: nearest(iscale * scales[j]))
                l = max(-32, min(31, l)) + 32
                if j < 8 { put(sc, j, UInt8(l) & 0xF) } else { put(sc, j - 8, get(sc, j - 8) | ((UInt8(l) & 0xF) << 4)) }
                l >>= 4
                put(sc, j % 4 + 8, get(sc, j % 4 + 8) | (UInt8(l) << UInt8(2 * (j / 4))))
            }
            putF16(y, 108, 1 / iscale)
        } else {
            putF16(y, 108, 0)
        }
        for j in 0..<16 {
            var s = j < 8 ? Int(get(sc, j) & 0xF) : Int(get(sc, j - 8) >> 4)
            s = (s | Int((get(sc, 8 + j % 4) >> UInt8(2 * (j / 4))) & 3) << 4) - 32
            let d = getF16(y, 108) * Float(s)
            if d == 0 { continue }
            for ii in 0..<16 { L[16 * j + ii] = Int8(max(-4, min(3, nearest(x[16 * j + ii] / d))) + 4) }
        }
        for j in 0..<32 { put(y, j, 0) }
        var m = 0
        var hm: UInt8 = 1
        for j in 0..<256 {
            if L[j] > 3 {
                put(y, m, get(y, m) | hm)
                L[j] -= 4
            }
            m += 1
            if m == 32 {
                m = 0
                hm <<= 1
            }
        }
        let U = L.map { UInt8(bitPattern: $0) }
        U.withUnsafeBufferPointer { pack2Bit($0.baseAddress!, y + 32) }
    }

    /// Q4_K (nmax 15) and Q5_K (nmax 31): eight 32-groups, each an affine fit with 6-bit scale and min.
    /// block_q4_K { half d; half dmin; u8 scales[12]; u8 qs[128] }, block_q5_K adds u8 qh[32] before qs.
    static func q4_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, nmax: Int) {
        var L = [UInt8](repeating: 0, count: 256), Laux = [UInt8](repeating: 0, count: 32)
        var weights = [Float](repeating: 0, count: 32), mins = [Float](repeating: 0, count: 8), scales = [Float](repeating: 0, count: 8)
        let five = nmax == 31
        var maxScale: Float = 0, maxMin: Float = 0
        for j in 0..<8 {
            var sumX2: Float = 0
            for l in 0..<32 { sumX2 += x[32 * j + l] * x[32 * j + l] }
            let avX = (sumX2 / 32).squareRoot()
            for l in 0..<32 { weights[l] = avX + abs(x[32 * j + l]) }
            scales[j] = weights.withUnsafeBufferPointer { w in
                L.withUnsafeMutableBufferPointer { lp in
                    Laux.withUnsafeMutableBufferPointer { la in
                        makeQKX2Quants(32, nmax, x + 32 * j, w.baseAddress!, lp.baseAddress! + 32 * j, &mins[j], la.baseAddress!,
                                       rmin: five ? -0.5 : -1, rdelta: 0.1, nstep: five ? 15 : 20, useMad: false)
                    }
                }
            }
            if scales[j] > maxScale { maxScale = scales[j] }
            if mins[j] > maxMin { maxMin = mins[j] }
        }
        let invScale: Float = maxScale > 0 ? 63 / maxScale : 0
        let invMin: Float = maxMin > 0 ? 63 / maxMin : 0
        let sc = y + 4
        for j in 0..<8 {
            let ls = min(63, UInt8(truncatingIfNeeded: nearest(invScale * scales[j])))
            let lm = min(63, UInt8(truncatingIfNeeded: nearest(invMin * mins[j])))
            if j < 4 {
                put(sc, j, ls)
                put(sc, j + 4, lm)
            } else {
                put(sc, j + 4, (ls & 0xF) | ((lm & 0xF) << 4))
                put(sc, j - 4, get(sc, j - 4) | ((ls >> 4) << 6))
                put(sc, j, get(sc, j) | ((lm >> 4) << 6))
            }
        }
        putF16(y, 0, maxScale / 63)
        putF16(y, 2, maxMin / 63)
        for j in 0..<8 {
            let (s, m) = Dequantize.scaleMinK4(j, UnsafeRawPointer(sc))
            let d = getF16(y, 0) * Float(s)
            if d == 0 { continue }
            let dm = getF16(y, 2) * Float(m)
            for ii in 0..<32 { L[32 * j + ii] = UInt8(max(0, min(nmax, nearest((x[32 * j + ii] + dm) / d)))) }
        }
        if !five {
            for j in stride(from: 0, to: 256, by: 64) {
                for l in 0..<32 { put(y, 16 + j / 2 + l, L[j + l] | (L[j + l + 32] << 4)) }
            }
            return
        }
        let qh = y + 16, ql = y + 48
        for j in 0..<32 { put(qh, j, 0) }
        var m1: UInt8 = 1, m2: UInt8 = 2
        for n in stride(from: 0, to: 256, by: 64) {
            for j in 0..<32 {
                var l1 = L[n + j], l2 = L[n + j + 32]
                if l1 > 15 {
                    l1 -= 16
                    put(qh, j, get(qh, j) | m1)
                }
                if l2 > 15 {
                    l2 -= 16
                    put(qh, j, get(qh, j) | m2)
                }
                put(ql, n / 2 + j, l1 | (l2 << 4))
            }
            m1 <<= 2
            m2 <<= 2
        }
    }

    // block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; half d }
    static func q6_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var L = [Int8](repeating: 0, count: 256)
        var scales = [Float](repeating: 0, count: 16)
        var maxScale: Float = 0, maxAbs: Float = 0
        for ib in 0..<16 {
            scales[ib] = L.withUnsafeMutableBufferPointer { makeQXQuants(16, 32, x + 16 * ib, $0.baseAddress! + 16 * ib, rmseType: 1, weights: nil) }
            if abs(scales[ib]) > maxAbs {
                maxAbs = abs(scales[ib])
                maxScale = scales[ib]
            }
        }
        if maxAbs < groupMaxEps {
            y.initializeMemory(as: UInt8.self, repeating: 0, count: 210)
            return
        }
        let iscale = -128 / maxScale
        putF16(y, 208, 1 / iscale)
        for ib in 0..<16 { y.storeBytes(of: Int8(truncatingIfNeeded: min(127, nearest(iscale * scales[ib]))), toByteOffset: 192 + ib, as: Int8.self) }
        for j in 0..<16 {
            let d = getF16(y, 208) * Float(y.load(fromByteOffset: 192 + j, as: Int8.self))
            if d == 0 { continue }
            for ii in 0..<16 { L[16 * j + ii] = Int8(max(-32, min(31, nearest(x[16 * j + ii] / d))) + 32) }
        }
        for (half, j) in stride(from: 0, to: 256, by: 128).enumerated() {
            let ql = 64 * half, qh = 128 + 32 * half
            for l in 0..<32 {
                let a = UInt8(L[j + l]), b = UInt8(L[j + l + 32]), c = UInt8(L[j + l + 64]), d = UInt8(L[j + l + 96])
                put(y, ql + l, (a & 0xF) | ((c & 0xF) << 4))
                put(y, ql + l + 32, (b & 0xF) | ((d & 0xF) << 4))
                put(y, qh + l, (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((d >> 4) << 6))
            }
        }
    }
}
