#if canImport(Glibc)
import Glibc
#endif
import CKernels
import GGUF
import Runtime

/// Measurements behind `conclave bench kernels`: the machine's read bandwidth and each weight type's matrix
/// products, in one run so that ratios between them are meaningful.
public enum KernelBench {
    public struct Result: Sendable {
        public let type: String
        public let op: String
        public let rows: Int, cols: Int, batch: Int, threads: Int
        /// Weight bytes streamed per second (for `bandwidth`: bytes read per second).
        public let gbps: Double
        public let gflops: Double?
        public let kernel: String
    }

    /// The benchmarks' timer: the machine's monotonic clock, never an injected one (they measure the machine).
    public static func now() -> Double { MonotonicClock.seconds() }

    /// Runs `body` repeatedly for at least `minSeconds` (and at least twice, the first as warm-up); returns the
    /// mean seconds per call. A mean, not a best: single calls of a few hundred microseconds are noisy, and the
    /// best of many would flatter a kernel with one lucky, partly cached call.
    static func time(minSeconds: Double, _ body: () -> Void) -> Double {
        body()
        var calls = 0
        let start = now()
        repeat {
            body()
            calls += 1
        } while now() - start < minSeconds
        return (now() - start) / Double(calls)
    }

    /// A buffer of `bytes` bytes, faulted in, page aligned.
    final class Buffer {
        let p: UnsafeMutableRawPointer
        let bytes: Int
        init(bytes: Int) {
            self.bytes = bytes
            p = .allocate(byteCount: bytes, alignment: 4096)
            memset(p, 1, bytes)
        }
        deinit { p.deallocate() }
    }

    /// STREAM-style read bandwidth over a buffer far larger than the caches, split across the pool.
    public static func bandwidth(pool: ThreadPool, bytes: Int = 1 << 30, minSeconds: Double = 1) -> Result {
        let buf = Buffer(bytes: bytes)
        let sink = UnsafeMutablePointer<UInt64>.allocate(capacity: pool.size)
        defer { sink.deallocate() }
        let chunk = bytes / pool.size / 4096 * 4096
        let seconds = time(minSeconds: minSeconds) {
            pool.run { i in sink[i] = ck_stream_read(buf.p + i * chunk, chunk) }
        }
        return Result(type: "-", op: "bandwidth", rows: 0, cols: 0, batch: 0, threads: pool.size,
                      gbps: Double(chunk * pool.size) / seconds / 1e9, gflops: nil, kernel: ISA.active.rawValue)
    }

    /// Matrix products of `type` weights (rows × cols) with `batch` activation rows. Weights are spread over
    /// enough copies to exceed the last-level cache several times, and the copies are taken in turn, so every
    /// call streams its weights from memory as decoding does. `packed` repacks the copies into the eight-row
    /// layout a model's Q4_0 and Q8_0 matrices are computed from (`Packing`; nil when the type has none here).
    public static func matmul(type: GGMLType, rows: Int, cols: Int, batch: Int, pool: ThreadPool, packed: Bool = false,
                              totalBytes: Int = 256 << 20, minSeconds: Double = 0.5) throws(KernelError) -> Result? {
        guard let rowBytes = type.rowBytes(elements: cols) else { throw KernelError("\(cols) is not a whole number of \(type.name) blocks") }
        let matrixBytes = rowBytes * rows
        let copies = max(2, totalBytes / matrixBytes)
        let buf = Buffer(bytes: matrixBytes * copies)
        fillRandom(type: type, buf.p, bytes: matrixBytes)
        for c in 1..<copies { memcpy(buf.p + c * matrixBytes, buf.p, matrixBytes) }
        var x = [Float](repeating: 0, count: batch * cols)
        var state: UInt64 = 0x1234_5678
        for i in x.indices { x[i] = Float(Int(next(&state) % 2001) - 1000) / 1000 }
        var y = [Float](repeating: 0, count: batch * rows)
        var matrices = try (0..<copies).map { c throws(KernelError) in try WeightMatrix(type: type, rows: rows, cols: cols, data: buf.p + c * matrixBytes) }
        if packed {
            guard Packing.canPack(matrices[0]) else { return nil }
            let scratch = UnsafeMutableRawPointer.allocate(byteCount: 8 * rowBytes, alignment: 64)
            defer { scratch.deallocate() }
            matrices = matrices.map { m in
                for g in stride(from: 0, to: rows, by: 8) {
                    Packing.packGroup(UnsafeMutableRawPointer(mutating: m.data) + g * rowBytes, type: type, rowStride: rowBytes, cols: cols, scratch: scratch)
                }
                return Packing.view(m)
            }
        }
        var turn = 0
        var failure: KernelError?
        // Activations are quantized once per call, as in a model where one input feeds one matrix.
        let seconds = x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                time(minSeconds: minSeconds) {
                    do throws(KernelError) {
                        try MatMul.multiply(matrices[turn % copies], xp.baseAddress!, batch: batch, into: yp.baseAddress!, pool: pool)
                    } catch { failure = error }
                    turn += 1
                }
            }
        }
        if let failure { throw failure }
        return Result(type: type.name, op: batch == 1 ? "matvec" : "matmul", rows: rows, cols: cols, batch: batch,
                      threads: pool.size, gbps: Double(matrixBytes) / seconds / 1e9,
                      gflops: 2 * Double(rows) * Double(cols) * Double(batch) / seconds / 1e9,
                      kernel: MatMul.hasKernel(type) ? ISA.active.rawValue + (packed ? " x8" : "") : "dequantize")
    }

    static func next(_ s: inout UInt64) -> UInt64 {
        s &+= 0x9E37_79B9_7F4A_7C15
        var z = s
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Random blocks with sane scales (`QuantFormat.f16Scales`); floats for the float types.
    static func fillRandom(type: GGMLType, _ p: UnsafeMutableRawPointer, bytes: Int) {
        var s: UInt64 = 42
        let words = p.bindMemory(to: UInt64.self, capacity: bytes / 8)
        for i in 0..<(bytes / 8) { words[i] = next(&s) }
        switch type {
        case .f32:
            let f = p.bindMemory(to: Float.self, capacity: bytes / 4)
            for i in 0..<(bytes / 4) { f[i] = Float(Int(next(&s) % 2001) - 1000) / 1000 }
        case .f16, .bf16:
            for i in 0..<(bytes / 2) {
                let v = Float(Int(next(&s) % 2001) - 1000) / 1000
                p.storeBytes(of: type == .f16 ? Scalars.toF16(v) : Scalars.toBF16(v), toByteOffset: 2 * i, as: UInt16.self)
            }
        default:
            let offsets = QuantFormat.of(type)?.f16Scales ?? []
            for b in 0..<(bytes / type.bytesPerBlock) {
                if type == .mxfp4 { p.storeBytes(of: UInt8(120), toByteOffset: b * type.bytesPerBlock, as: UInt8.self) }
                for o in offsets { p.storeBytes(of: Scalars.toF16(0.01), toByteOffset: b * type.bytesPerBlock + o, as: UInt16.self) }
            }
        }
    }
}
