import GGUF

/// Where each block format keeps its f16 scale fields; lets benchmarks and tests build random but well-formed
/// blocks (random scale bits would include NaNs and subnormals, which no quantizer writes).
public enum BlockScales {
    public static func f16Offsets(_ type: GGMLType) -> [Int] {
        switch type {
        case .q4_0, .q5_0, .q8_0, .iq4_NL, .iq4_XS: return [0]
        case .q4_1, .q5_1, .q4_K, .q5_K: return [0, 2]
        case .q2_K: return [80, 82]
        case .q3_K: return [108]
        case .q6_K: return [208]
        default: return []
        }
    }
}
