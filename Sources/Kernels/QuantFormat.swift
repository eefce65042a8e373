#if canImport(Glibc)
import Glibc
#endif
import CKernels
import GGUF

/// Everything Conclave does with one ggml type, in one row: the activation format its dot products take, its
/// dequantizer and quantizers, where its f16 scales sit, and (from C's `[type][isa]` table) its kernels.
///
/// Block sizes stay in `GGMLType.traits` (facts of the file format, needed to read any file); this table is
/// what we can compute with them. A new type is one row here and one cell per kernel in `ck_dispatch.c`.
public struct QuantFormat: Sendable {
    public typealias RowToFloats = @Sendable (UnsafeRawPointer, UnsafeMutablePointer<Float>, Int) -> Void
    public typealias RowFromFloats = @Sendable (UnsafePointer<Float>, UnsafeMutableRawPointer, Int) -> Void

    public let type: GGMLType
    /// The format activations are quantized to for this type's dot products (ggml's `vec_dot_type`).
    public let activation: GGMLType?
    /// `count` values to floats, bit for bit as ggml's `to_float` (ggml-quants.c).
    let dequantize: RowToFloats?
    /// Weights to blocks, bit for bit as ggml's reference quantizer (`quantize_row_*_ref`), what
    /// `llama-quantize` runs without an importance matrix.
    let quantize: RowFromFloats?
    /// For an activation format: floats to blocks as ggml's CPU backend quantizes activations on x86 (see
    /// `ActivationQuant`), which is not always the reference quantizer.
    let quantizeActivation: RowFromFloats?
    /// Byte offsets of the f16 scale fields in a block (benchmarks and tests build random but sane blocks).
    public let f16Scales: [Int]

    /// This type's kernels at `isa` (each the best written at or below that level).
    public func kernels(_ isa: ISA = .active) -> ck_type_kernels { ck_kernels(Int32(type.rawValue), isa.level) }

    /// The row's entry for `type`, or nil when Conclave can do nothing with it.
    public static func of(_ type: GGMLType) -> QuantFormat? { table[type] }

    public static let table: [GGMLType: QuantFormat] = Dictionary(uniqueKeysWithValues: rows.map { ($0.type, $0) })

    static let rows: [QuantFormat] = [
        QuantFormat(.f32, activation: .f32,
                    dequantize: { s, d, n in d.update(from: s.assumingMemoryBound(to: Float.self), count: n) },
                    quantize: { x, y, n in y.copyMemory(from: x, byteCount: 4 * n) }, activationQuantizer: true),
        QuantFormat(.f16, activation: .f16,
                    dequantize: { s, d, n in for i in 0..<n { d[i] = Scalars.f16(s.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) } },
                    quantize: { x, y, n in for i in 0..<n { y.storeBytes(of: Scalars.toF16(x[i]), toByteOffset: 2 * i, as: UInt16.self) } },
                    activationQuantizer: true),
        QuantFormat(.bf16, activation: .bf16,
                    dequantize: { s, d, n in for i in 0..<n { d[i] = Scalars.bf16(s.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) } },
                    quantize: { x, y, n in for i in 0..<n { y.storeBytes(of: Scalars.toBF16(x[i]), toByteOffset: 2 * i, as: UInt16.self) } },
                    activationQuantizer: true),
        QuantFormat(.q4_0, activation: .q8_0, blocks: Dequantize.q4_0, Quantize.q4_0, scales: [0]),
        QuantFormat(.q4_1, activation: .q8_1, blocks: Dequantize.q4_1, Quantize.q4_1, scales: [0, 2]),
        QuantFormat(.q5_0, activation: .q8_0, blocks: Dequantize.q5_0, Quantize.q5_0, scales: [0]),
        QuantFormat(.q5_1, activation: .q8_1, blocks: Dequantize.q5_1, Quantize.q5_1, scales: [0, 2]),
        QuantFormat(.q8_0, activation: .q8_0, blocks: Dequantize.q8_0, Quantize.q8_0, scales: [0],
                    activationQuantizer: { ActivationQuant.q8($0, $1, withSum: false) }),
        // Q8_1 exists only as an activation format: its value is d·q (s is a cached d·Σq).
        QuantFormat(.q8_1, activation: nil, blocks: Dequantize.q8_1, nil, scales: [0, 2],
                    activationQuantizer: { ActivationQuant.q8($0, $1, withSum: true) }),
        QuantFormat(.q2_K, activation: .q8_K, blocks: Dequantize.q2_K, Quantize.q2_K, scales: [80, 82]),
        QuantFormat(.q3_K, activation: .q8_K, blocks: Dequantize.q3_K, Quantize.q3_K, scales: [108]),
        QuantFormat(.q4_K, activation: .q8_K, blocks: Dequantize.q4_K, { Quantize.q4_K($0, $1, nmax: 15) }, scales: [0, 2]),
        QuantFormat(.q5_K, activation: .q8_K, blocks: Dequantize.q5_K, { Quantize.q4_K($0, $1, nmax: 31) }, scales: [0, 2]),
        QuantFormat(.q6_K, activation: .q8_K, blocks: Dequantize.q6_K, Quantize.q6_K, scales: [208]),
        QuantFormat(.q8_K, activation: nil, blocks: Dequantize.q8_K, nil, scales: [], activationQuantizer: ActivationQuant.q8_K),
        QuantFormat(.iq4_NL, activation: .q8_0, blocks: Dequantize.iq4_NL, nil, scales: [0]),
        QuantFormat(.iq4_XS, activation: .q8_K, blocks: Dequantize.iq4_XS, nil, scales: [0]),
        QuantFormat(.mxfp4, activation: .q8_0, blocks: Dequantize.mxfp4, Quantize.mxfp4, scales: []),
    ]

    /// A float type: whole rows, its own activation format when `activationQuantizer` (quantized as stored).
    init(_ type: GGMLType, activation: GGMLType?, dequantize: @escaping RowToFloats, quantize: @escaping RowFromFloats, activationQuantizer: Bool) {
        self.type = type
        self.activation = activation
        self.dequantize = dequantize
        self.quantize = quantize
        self.quantizeActivation = activationQuantizer ? quantize : nil
        f16Scales = []
    }

    /// A block type, from its per-block functions.
    init(_ type: GGMLType, activation: GGMLType?,
         blocks dequantizeBlock: @escaping @Sendable (UnsafeRawPointer, UnsafeMutablePointer<Float>) -> Void,
         _ quantizeBlock: (@Sendable (UnsafePointer<Float>, UnsafeMutableRawPointer) -> Void)?, scales: [Int],
         activationQuantizer: (@Sendable (UnsafePointer<Float>, UnsafeMutableRawPointer) -> Void)? = nil) {
        let size = type.blockSize, bytes = type.bytesPerBlock
        func rows(_ f: (@Sendable (UnsafePointer<Float>, UnsafeMutableRawPointer) -> Void)?) -> RowFromFloats? {
            guard let f else { return nil }
            let row: RowFromFloats = { x, y, n in
                for b in 0..<(n / size) { f(x + b * size, y + b * bytes) }
            }
            return row
        }
        self.type = type
        self.activation = activation
        let toFloats: RowToFloats = { s, d, n in
            for b in 0..<(n / size) { dequantizeBlock(s + b * bytes, d + b * size) }
        }
        dequantize = toFloats
        quantize = rows(quantizeBlock)
        quantizeActivation = rows(activationQuantizer)
        f16Scales = scales
    }
}

/// Instruction-set level in use. C owns the choice (`ck_active_isa`: what the CPU has, lowered by
/// `CONCLAVE_ISA=scalar|avx2|vnni`), so every kernel, in C or chosen from Swift, runs at the same level.
public enum ISA: String, Sendable, CaseIterable {
    case scalar, avx2, vnni

    public static let detected = ISA(level: ck_cpu_isa())
    public static let active = ISA(level: ck_active_isa())

    init(level: Int32) { self = ISA.allCases[Int(max(0, min(level, Int32(ISA.allCases.count - 1))))] }

    /// The level as C numbers it (CK_ISA_*).
    public var level: Int32 { Int32(ISA.allCases.firstIndex(of: self)!) }
}

extension ISA: Comparable {
    public static func < (a: ISA, b: ISA) -> Bool { a.level < b.level }
}
