#if canImport(Glibc)
import Glibc
#endif
import CKernels
import GGUF
import Runtime

/// A quantized weight matrix in ggml layout: `rows` rows of `cols` values, each row `rowBytes` long.
public struct WeightMatrix: @unchecked Sendable {
    public let type: GGMLType
    public let rows: Int
    public let cols: Int
    public let data: UnsafeRawPointer
    public let rowStride: Int
    /// Rows repacked in groups of eight (`Packing`); the data is then no longer ggml's row layout.
    public let packed: Bool

    public init(type: GGMLType, rows: Int, cols: Int, data: UnsafeRawPointer, rowStride: Int? = nil, packed: Bool = false) throws(KernelError) {
        guard let rb = type.rowBytes(elements: cols) else {
            throw KernelError("a row of \(cols) values is not a whole number of \(type.name) blocks")
        }
        self.type = type
        self.rows = rows
        self.cols = cols
        self.data = data
        self.rowStride = rowStride ?? rb
        self.packed = packed
    }

    /// Rows `range` as a matrix of their own (one expert of a stacked tensor, one stage's slice).
    public func rows(_ range: Range<Int>) -> WeightMatrix {
        precondition(!packed || (range.lowerBound % 8 == 0 && range.count % 8 == 0), "a packed matrix is sliced in groups of eight rows")
        return try! WeightMatrix(type: type, rows: range.count, cols: cols, data: data + range.lowerBound * rowStride, rowStride: rowStride, packed: packed)
    }
}

/// Q4_0 and Q8_0 matrices rewritten once into groups of eight rows (ggml's 8-row interleaved layout: per block
/// the eight scales, then the quants of the eight rows interleaved four bytes at a time; Q8_0's stored as q + 128),
/// which the kernels read without transposing rows or gathering scales at every product. Packed Q4_0 gives the
/// bits of the row layout; packed Q8_0 sums in another order (within float rounding), the same for any batch.
public enum Packing {
    /// The packed kernel and its packing for a type on this CPU, if any (`QuantFormat`'s C cells).
    static func kernels(for type: GGMLType) -> (rows: ck_rows_fn, pack: ck_pack_fn)? {
        let k = ck_kernels(Int32(type.rawValue), ISA.active.level)
        guard let rows = k.rows_x8, let pack = k.pack_x8 else { return nil }
        return (rows, pack)
    }
    static func kernel(for type: GGMLType) -> ck_rows_fn? { kernels(for: type)?.rows }

    /// Whether `w` can be packed: whole groups of eight contiguous rows of a type with a packed kernel here.
    public static func canPack(_ w: WeightMatrix) -> Bool {
        !w.packed && w.rows % 8 == 0 && w.rowStride == w.type.rowBytes(elements: w.cols) && kernel(for: w.type) != nil
    }

    /// Packs the eight rows at `group` in place (through a scratch copy of `8 · rowStride` bytes).
    public static func packGroup(_ group: UnsafeMutableRawPointer, type: GGMLType, rowStride: Int, cols: Int, scratch: UnsafeMutableRawPointer) {
        guard let pack = kernels(for: type)?.pack else { preconditionFailure("\(type.name) has no packed form here; ask canPack first") }
        scratch.copyMemory(from: group, byteCount: 8 * rowStride)
        pack(scratch, rowStride, Int32(cols / type.blockSize), group)
    }

    /// The same matrix, marked packed (after its groups were packed).
    public static func view(_ w: WeightMatrix) -> WeightMatrix {
        try! WeightMatrix(type: w.type, rows: w.rows, cols: w.cols, data: w.data, rowStride: w.rowStride, packed: true)
    }
}

/// Activations quantized once to the format a weight type's kernel consumes, reusable across matrices of that
/// type (the gate and up projections of an expert share one).
public final class QuantizedActivations: @unchecked Sendable {
    public let format: GGMLType
    public let cols: Int
    public let batch: Int
    let rowStride: Int
    let data: UnsafeMutableRawPointer
    /// Per Q8_0 block its scale and scale·Σqs (see `ck_q8_0_aux`), computed once for every row of every matrix.
    let aux: UnsafeMutablePointer<Float>?
    let auxStride: Int

    /// `x` holds `batch` rows of `cols` floats, `xStride` floats apart.
    public init(_ x: UnsafePointer<Float>, cols: Int, batch: Int, xStride: Int? = nil, format: GGMLType, pool: ThreadPool? = nil) throws(KernelError) {
        guard let rb = format.rowBytes(elements: cols) else {
            throw KernelError("\(cols) activations is not a whole number of \(format.name) blocks")
        }
        self.format = format
        self.cols = cols
        self.batch = batch
        rowStride = (rb + 63) & ~63
        data = .allocate(byteCount: max(1, rowStride * batch), alignment: 64)
        auxStride = format == .q8_0 ? 2 * cols / 32 : 0
        aux = format == .q8_0 ? .allocate(capacity: max(1, auxStride * batch)) : nil
        let stride = xStride ?? cols
        var failure: KernelError?
        let work: (Range<Int>) -> Void = { [data, rowStride, aux, auxStride] range in
            for t in range {
                // The fused C path gives the same bytes as the Swift reference (tested) in one pass.
                if let aux, ck_quantize_q8_0(Int32(cols), x + t * stride, data + t * rowStride, aux + t * auxStride) != 0 { continue }
                do throws(KernelError) {
                    try ActivationQuant.quantize(x + t * stride, count: cols, to: format, data + t * rowStride)
                } catch { failure = error }
                if let aux { ck_q8_0_aux(Int32(cols), data + t * rowStride, aux + t * auxStride) }
            }
        }
        if let pool, batch > 1 { pool.parallelFor(batch, work) } else { work(0..<batch) }
        if let failure { throw failure }
    }

    /// Rows already quantized to `format` (`rows[i]` of `source`, each `sourceStride` bytes apart), as an expert
    /// call carries them: the bytes are copied as they are, so a product over them is bit for bit the one over
    /// the floats they were quantized from.
    public init(gathering rows: [Int], from source: UnsafeRawPointer, sourceStride: Int, cols: Int, format: GGMLType) throws(KernelError) {
        guard let rb = format.rowBytes(elements: cols), sourceStride >= rb else {
            throw KernelError("\(cols) activations is not a whole number of \(format.name) blocks")
        }
        self.format = format
        self.cols = cols
        batch = rows.count
        rowStride = (rb + 63) & ~63
        data = .allocate(byteCount: max(1, rowStride * batch), alignment: 64)
        auxStride = format == .q8_0 ? 2 * cols / 32 : 0
        aux = format == .q8_0 ? .allocate(capacity: max(1, auxStride * batch)) : nil
        for (t, r) in rows.enumerated() {
            (data + t * rowStride).copyMemory(from: source + r * sourceStride, byteCount: rb)
            if let aux { ck_q8_0_aux(Int32(cols), data + t * rowStride, aux + t * auxStride) }
        }
    }

    /// Row `t`'s bytes (`format.rowBytes(cols)` of them).
    public func row(_ t: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: data + t * rowStride, count: format.rowBytes(elements: cols)!)
    }

    deinit {
        data.deallocate()
        aux?.deallocate()
    }
}

/// Matrix products over quantized weights: y = W·x for one activation row (matvec) or many (matmul).
public enum MatMul {
    /// Which kernel runs a weight type on the active ISA, or nil when only the dequantizing fallback can.
    static func kernel(for type: GGMLType) -> ck_rows_fn? {
        ck_rows_kernel(Int32(type.rawValue), ISA.active.level)
    }

    /// The kernel for a matrix: the packed kernel for packed data.
    static func kernel(for w: WeightMatrix) -> ck_rows_fn? {
        w.packed ? Packing.kernel(for: w.type) : kernel(for: w.type)
    }

    /// Whether a type has a fused quantized kernel (as opposed to dequantize-then-dot).
    public static func hasKernel(_ type: GGMLType) -> Bool { kernel(for: type) != nil }

    /// y[t * yStride + r] = Σ_c W[r, c] · x[t, c] for all rows r and tokens t < batch.
    public static func multiply(_ w: WeightMatrix, _ x: UnsafePointer<Float>, batch: Int, xStride: Int? = nil,
                                into y: UnsafeMutablePointer<Float>, yStride: Int? = nil, pool: ThreadPool) throws(KernelError) {
        guard let format = ActivationQuant.vecDotType(for: w.type), kernel(for: w) != nil else {
            return try dequantizingMultiply(w, x, batch: batch, xStride: xStride ?? w.cols, into: y, yStride: yStride ?? w.rows, pool: pool)
        }
        let a = try QuantizedActivations(x, cols: w.cols, batch: batch, xStride: xStride, format: format, pool: pool)
        try multiply(w, a, into: y, yStride: yStride, pool: pool)
    }

    /// The same with activations already quantized (to `ActivationQuant.vecDotType(for: w.type)`).
    public static func multiply(_ w: WeightMatrix, _ a: QuantizedActivations, into y: UnsafeMutablePointer<Float>,
                                yStride: Int? = nil, pool: ThreadPool) throws(KernelError) {
        guard a.cols == w.cols else { throw KernelError("activations have \(a.cols) values, the matrix \(w.cols) columns") }
        guard a.format == ActivationQuant.vecDotType(for: w.type), let fn = kernel(for: w) else {
            throw KernelError("no \(w.type.name) kernel for \(a.format.name) activations")
        }
        let ys = yStride ?? w.rows
        pool.parallelFor(w.rows, granularity: 8) { range in
            fn(Int32(w.cols), w.data + range.lowerBound * w.rowStride, w.rowStride, Int32(range.count),
               a.data, a.rowStride, a.aux, a.auxStride, Int32(a.batch), y + range.lowerBound, ys)
        }
    }

    /// y[r] = dot(W row r, activation row `t`) for every row, on the calling thread: attention's scores over a
    /// quantized key cache (rows are cached positions), computed inside a loop that is already parallel.
    public static func rowDots(_ w: WeightMatrix, _ a: QuantizedActivations, row t: Int = 0, into y: UnsafeMutablePointer<Float>) throws(KernelError) {
        guard a.cols == w.cols, t < a.batch else { throw KernelError("activations have \(a.cols) values, the matrix \(w.cols) columns") }
        guard a.format == ActivationQuant.vecDotType(for: w.type), let fn = kernel(for: w) else {
            throw KernelError("no \(w.type.name) kernel for \(a.format.name) activations")
        }
        guard w.rows > 0 else { return }
        fn(Int32(w.cols), w.data, w.rowStride, Int32(w.rows), a.data + t * a.rowStride, a.rowStride,
           a.aux.map { $0 + t * a.auxStride }, a.auxStride, 1, y, w.rows)
    }

    /// One product of a grouped call: weights, their quantized input, where the result rows go.
    public struct Job {
        public let weights: WeightMatrix
        public let input: QuantizedActivations
        public let output: UnsafeMutablePointer<Float>
        public let outputStride: Int
        public init(_ weights: WeightMatrix, _ input: QuantizedActivations, into output: UnsafeMutablePointer<Float>, stride: Int? = nil) {
            self.weights = weights
            self.input = input
            self.output = output
            self.outputStride = stride ?? weights.rows
        }
    }

    /// Several products in one parallel dispatch: the rows of all jobs are split evenly over the threads. For
    /// MoE decoding, where each of eight experts is a small matrix, this replaces many short dispatches (each a
    /// wake-up and a barrier) with one, and balances the threads across experts.
    public static func multiply(_ jobs: [Job], pool: ThreadPool) throws(KernelError) {
        var fns: [ck_rows_fn] = []
        var starts: [Int] = []
        var total = 0
        for j in jobs {
            guard j.input.cols == j.weights.cols else { throw KernelError("activations have \(j.input.cols) values, the matrix \(j.weights.cols) columns") }
            guard j.input.format == ActivationQuant.vecDotType(for: j.weights.type), let fn = kernel(for: j.weights) else {
                throw KernelError("no \(j.weights.type.name) kernel for \(j.input.format.name) activations")
            }
            fns.append(fn)
            starts.append(total)
            total += j.weights.rows
        }
        starts.append(total)
        pool.parallelFor(total, granularity: 8) { range in
            var k = 0
            while k < jobs.count && starts[k + 1] <= range.lowerBound { k += 1 }
            var row = range.lowerBound
            while row < range.upperBound && k < jobs.count {
                let j = jobs[k], w = j.weights, a = j.input
                let lo = row - starts[k], hi = min(range.upperBound, starts[k + 1]) - starts[k]
                fns[k](Int32(w.cols), w.data + lo * w.rowStride, w.rowStride, Int32(hi - lo),
                       a.data, a.rowStride, a.aux, a.auxStride, Int32(a.batch), j.output + lo, j.outputStride)
                row = starts[k] + hi
                k += 1
            }
        }
    }

    /// For types without a fused kernel: each thread dequantizes its rows one at a time and takes F32 dots.
    static func dequantizingMultiply(_ w: WeightMatrix, _ x: UnsafePointer<Float>, batch: Int, xStride: Int,
                                     into y: UnsafeMutablePointer<Float>, yStride: Int, pool: ThreadPool) throws(KernelError) {
        guard Dequantize.supported.contains(w.type), !w.packed else { throw KernelError("no kernel for \(w.type.name) weights") }
        let dot = ck_rows_kernel(Int32(GGMLType.f32.rawValue), ISA.active.level)!
        pool.parallelFor(w.rows, granularity: 8) { range in
            let row = UnsafeMutablePointer<Float>.allocate(capacity: w.cols)
            defer { row.deallocate() }
            for r in range {
                try! Dequantize.row(w.type, w.data + r * w.rowStride, row, count: w.cols)
                dot(Int32(w.cols), row, 0, 1, x, xStride * 4, nil, 0, Int32(batch), y + r, yStride)
            }
        }
    }
}
