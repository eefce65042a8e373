/// The ggml tensor element types, with the ids llama.cpp's `ggml.h` gives them.
///
/// The table is complete for every id a GGUF file can carry today, including types we have no kernel for,
/// so that any file can be inspected and its byte sizes checked. Ids 4, 5, 31–33 and 36–38 were removed
/// from ggml and are rejected as unknown, as llama.cpp does.
public enum GGMLType: UInt32, Sendable, CaseIterable, Hashable {
    case f32 = 0
    case f16 = 1
    case q4_0 = 2
    case q4_1 = 3
    case q5_0 = 6
    case q5_1 = 7
    case q8_0 = 8
    case q8_1 = 9
    case q2_K = 10
    case q3_K = 11
    case q4_K = 12
    case q5_K = 13
    case q6_K = 14
    case q8_K = 15
    case iq2_XXS = 16
    case iq2_XS = 17
    case iq3_XXS = 18
    case iq1_S = 19
    case iq4_NL = 20
    case iq3_S = 21
    case iq2_S = 22
    case iq4_XS = 23
    case i8 = 24
    case i16 = 25
    case i32 = 26
    case i64 = 27
    case f64 = 28
    case iq1_M = 29
    case bf16 = 30
    case tq1_0 = 34
    case tq2_0 = 35
    case mxfp4 = 39
    case nvfp4 = 40
    case q1_0 = 41
    case q2_0 = 42

    /// Layout facts of one type: how many elements one block holds and how many bytes it takes.
    public struct Traits: Sendable, Hashable {
        public let name: String
        public let blockSize: Int
        public let bytesPerBlock: Int
    }

    /// The one table of block sizes; sizes follow the block structs of ggml-common.h.
    public var traits: Traits {
        switch self {
        case .f32: return Traits(name: "F32", blockSize: 1, bytesPerBlock: 4)
        case .f16: return Traits(name: "F16", blockSize: 1, bytesPerBlock: 2)
        case .q4_0: return Traits(name: "Q4_0", blockSize: 32, bytesPerBlock: 18)
        case .q4_1: return Traits(name: "Q4_1", blockSize: 32, bytesPerBlock: 20)
        case .q5_0: return Traits(name: "Q5_0", blockSize: 32, bytesPerBlock: 22)
        case .q5_1: return Traits(name: "Q5_1", blockSize: 32, bytesPerBlock: 24)
        case .q8_0: return Traits(name: "Q8_0", blockSize: 32, bytesPerBlock: 34)
        case .q8_1: return Traits(name: "Q8_1", blockSize: 32, bytesPerBlock: 36)
        case .q2_K: return Traits(name: "Q2_K", blockSize: 256, bytesPerBlock: 84)
        case .q3_K: return Traits(name: "Q3_K", blockSize: 256, bytesPerBlock: 110)
        case .q4_K: return Traits(name: "Q4_K", blockSize: 256, bytesPerBlock: 144)
        case .q5_K: return Traits(name: "Q5_K", blockSize: 256, bytesPerBlock: 176)
        case .q6_K: return Traits(name: "Q6_K", blockSize: 256, bytesPerBlock: 210)
        case .q8_K: return Traits(name: "Q8_K", blockSize: 256, bytesPerBlock: 292)
        case .iq2_XXS: return Traits(name: "IQ2_XXS", blockSize: 256, bytesPerBlock: 66)
        case .iq2_XS: return Traits(name: "IQ2_XS", blockSize: 256, bytesPerBlock: 74)
        case .iq3_XXS: return Traits(name: "IQ3_XXS", blockSize: 256, bytesPerBlock: 98)
        case .iq1_S: return Traits(name: "IQ1_S", blockSize: 256, bytesPerBlock: 50)
        case .iq4_NL: return Traits(name: "IQ4_NL", blockSize: 32, bytesPerBlock: 18)
        case .iq3_S: return Traits(name: "IQ3_S", blockSize: 256, bytesPerBlock: 110)
        case .iq2_S: return Traits(name: "IQ2_S", blockSize: 256, bytesPerBlock: 82)
        case .iq4_XS: return Traits(name: "IQ4_XS", blockSize: 256, bytesPerBlock: 136)
        case .i8: return Traits(name: "I8", blockSize: 1, bytesPerBlock: 1)
        case .i16: return Traits(name: "I16", blockSize: 1, bytesPerBlock: 2)
        case .i32: return Traits(name: "I32", blockSize: 1, bytesPerBlock: 4)
        case .i64: return Traits(name: "I64", blockSize: 1, bytesPerBlock: 8)
        case .f64: return Traits(name: "F64", blockSize: 1, bytesPerBlock: 8)
        case .iq1_M: return Traits(name: "IQ1_M", blockSize: 256, bytesPerBlock: 56)
        case .bf16: return Traits(name: "BF16", blockSize: 1, bytesPerBlock: 2)
        case .tq1_0: return Traits(name: "TQ1_0", blockSize: 256, bytesPerBlock: 54)
        case .tq2_0: return Traits(name: "TQ2_0", blockSize: 256, bytesPerBlock: 66)
        case .mxfp4: return Traits(name: "MXFP4", blockSize: 32, bytesPerBlock: 17)
        case .nvfp4: return Traits(name: "NVFP4", blockSize: 64, bytesPerBlock: 36)
        case .q1_0: return Traits(name: "Q1_0", blockSize: 128, bytesPerBlock: 18)
        case .q2_0: return Traits(name: "Q2_0", blockSize: 64, bytesPerBlock: 18)
        }
    }

    /// The name as llama.cpp's gguf-py spells it (`"Q4_K"`, `"F32"`).
    public var name: String { traits.name }
    public var blockSize: Int { traits.blockSize }
    public var bytesPerBlock: Int { traits.bytesPerBlock }
    public var isQuantized: Bool { traits.blockSize > 1 }

    /// Looks a type up by name, case-insensitively (`q4_k`, `Q4_K`).
    public init?(name: String) {
        let upper = name.uppercased()
        guard let found = GGMLType.allCases.first(where: { $0.name == upper }) else { return nil }
        self = found
    }

    /// Bytes taken by one row of `elements` values, or nil when `elements` is not a whole number of blocks.
    public func rowBytes(elements: Int) -> Int? {
        guard elements >= 0, elements % blockSize == 0 else { return nil }
        let (bytes, overflow) = (elements / blockSize).multipliedReportingOverflow(by: bytesPerBlock)
        return overflow ? nil : bytes
    }
}
