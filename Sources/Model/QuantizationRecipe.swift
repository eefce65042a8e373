import GGUF

/// The llama.cpp file types (`general.file_type`, `llama_ftype`) Conclave can write, and their default tensor type.
public enum FileType: Int, Sendable, CaseIterable {
    case allF32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q8_0 = 7, q5_0 = 8, q5_1 = 9, q2_K = 10
    case q3_K_S = 11, q3_K_M = 12, q3_K_L = 13, q4_K_S = 14, q4_K_M = 15, q5_K_S = 16, q5_K_M = 17, q6_K = 18
    case q2_K_S = 21, bf16 = 32

    /// Names as llama-quantize accepts them (`Q4_K_M`, `q8_0`, `F16`).
    public var name: String {
        switch self {
        case .allF32: return "F32"
        case .f16: return "F16"
        case .bf16: return "BF16"
        case .q4_0: return "Q4_0"
        case .q4_1: return "Q4_1"
        case .q5_0: return "Q5_0"
        case .q5_1: return "Q5_1"
        case .q8_0: return "Q8_0"
        case .q2_K: return "Q2_K"
        case .q2_K_S: return "Q2_K_S"
        case .q3_K_S: return "Q3_K_S"
        case .q3_K_M: return "Q3_K_M"
        case .q3_K_L: return "Q3_K_L"
        case .q4_K_S: return "Q4_K_S"
        case .q4_K_M: return "Q4_K_M"
        case .q5_K_S: return "Q5_K_S"
        case .q5_K_M: return "Q5_K_M"
        case .q6_K: return "Q6_K"
        }
    }

    public init?(name: String) {
        let upper = name.uppercased()
        guard let found = FileType.allCases.first(where: { $0.name == upper }) else { return nil }
        self = found
    }

    public var defaultType: GGMLType {
        switch self {
        case .allF32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        case .q4_0: return .q4_0
        case .q4_1: return .q4_1
        case .q5_0: return .q5_0
        case .q5_1: return .q5_1
        case .q8_0: return .q8_0
        case .q2_K, .q2_K_S: return .q2_K
        case .q3_K_S, .q3_K_M, .q3_K_L: return .q3_K
        case .q4_K_S, .q4_K_M: return .q4_K
        case .q5_K_S, .q5_K_M: return .q5_K
        case .q6_K: return .q6_K
        }
    }
}

/// Chooses each tensor's type the way `llama-quantize` does (llama-quant.cpp, `llama_tensor_get_type`), so a
/// file we write has the mixture users know by name: Q4_K_M keeps attention values at higher precision, bumps
/// some feed-forward-down layers to Q6_K, puts the head at Q6_K, and leaves norms and routers in F32.
public struct QuantizationRecipe: Sendable {
    public let fileType: FileType
    /// User overrides, first match wins: (regular expression on the tensor name, type).
    public let overrides: [(pattern: String, type: GGMLType)]
    /// Tensors matching this are written as F32 whatever the recipe says.
    public let keepF32: String?

    let expertCount: Int
    let gqa: Int
    let layerCount: Int
    let tiedEmbeddings: Bool
    let attentionVCount: Int

    /// The recipe for an existing file (what `conclave quantize` uses).
    public init(fileType: FileType, overrides: [(pattern: String, type: GGMLType)] = [], keepF32: String? = nil, file: GGUFFile) {
        let summary = ModelSummary(file: file)
        let h = summary.hyperparameters
        self.init(fileType: fileType, overrides: overrides, keepF32: keepF32,
                  expertCount: max(1, h.expertCount ?? 1),
                  gqa: (h.headCount ?? 1) / max(1, h.headCountKV ?? h.headCount ?? 1),
                  layerCount: h.blockCount ?? summary.layers.count,
                  tiedEmbeddings: file.tensorInfo(named: "output.weight") == nil,
                  attentionVCount: file.tensorInfos.filter { Self.category($0.name) == .attentionV }.count)
    }

    /// The recipe for a model described by its shape (what `conclave synth` uses).
    public init(fileType: FileType, overrides: [(pattern: String, type: GGMLType)] = [], keepF32: String? = nil,
                expertCount: Int, gqa: Int, layerCount: Int, tiedEmbeddings: Bool, attentionVCount: Int) {
        self.fileType = fileType
        self.overrides = overrides
        self.keepF32 = keepF32
        self.expertCount = expertCount
        self.gqa = gqa
        self.layerCount = layerCount
        self.tiedEmbeddings = tiedEmbeddings
        self.attentionVCount = attentionVCount
    }

    enum Category { case tokenEmbedding, output, attentionQKV, attentionKVB, attentionV, attentionK, attentionQ, attentionOutput, ffnUp, ffnGate, ffnDown, other }

    static func category(_ name: String) -> Category {
        if name == "output.weight" { return .output }
        if name == "token_embd.weight" || name == "per_layer_token_embd.weight" { return .tokenEmbedding }
        if name.contains("attn_qkv.weight") { return .attentionQKV }
        if name.contains("attn_kv_b.weight") { return .attentionKVB }
        if name.contains("attn_v.weight") { return .attentionV }
        if name.contains("attn_k.weight") { return .attentionK }
        if name.contains("attn_q.weight") { return .attentionQ }
        if name.contains("attn_output.weight") { return .attentionOutput }
        if name.contains("ffn_up") { return .ffnUp }
        if name.contains("ffn_gate") { return .ffnGate }
        if name.contains("ffn_down") { return .ffnDown }
        return .other
    }

    /// llama-quantize quantizes only 2-D and 3-D weights, never norms, routers or position embeddings.
    public static func allowsQuantization(_ info: GGUFTensorInfo) -> Bool {
        let name = info.name
        guard info.shape.count >= 2, name.hasSuffix("weight") else { return false }
        let excluded = ["_norm.weight", "ffn_gate_inp.weight", "ssm_conv1d", "attn_rel_b.weight", "position_embd", "token_types"]
        return !excluded.contains { name.contains($0) }
    }

    /// The type of every tensor, in file order. Stateful like llama.cpp's (it counts attention-V tensors).
    public func plan(_ infos: [GGUFTensorInfo]) throws -> [GGMLType] {
        var attentionVIndex = 0
        let compiled = try overrides.map { (try Regex($0.pattern), $0.type) }
        let keep = try keepF32.map { try Regex($0) }
        return try infos.map { info in
            if let keep, info.name.contains(keep) { return .f32 }
            guard Self.allowsQuantization(info) else { return info.type }
            let base = fileType.defaultType
            let category = Self.category(info.name)
            // The recipe's choice counts attention-V tensors whether or not an override replaces it.
            var type = base
            if base.isQuantized { type = try choose(base, info: info, category: category, attentionVIndex: attentionVIndex) }
            if [.attentionV, .attentionQKV, .attentionKVB].contains(category) { attentionVIndex += 1 }
            // An override names its type whatever the file type (llama-quantize's --tensor-type).
            if let (_, t) = compiled.first(where: { info.name.contains($0.0) }) { type = t } else if !base.isQuantized { return base }
            return fallback(type, cols: info.shape[0])
        }
    }

    private func useMoreBits(_ i: Int, _ n: Int) -> Bool { i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2 }

    private func layer(of name: String) throws -> Int {
        guard let parsed = TensorName(parsing: name), let l = parsed.layer else {
            throw ModelError("cannot tell the layer of tensor '\(name)' while choosing its quantization")
        }
        return l
    }

    private func choose(_ base: GGMLType, info: GGUFTensorInfo, category: Category, attentionVIndex: Int) throws -> GGMLType {
        let ft = fileType
        var t = base
        if category == .output || (tiedEmbeddings && category == .tokenEmbedding) {
            if info.shape[0] % base.blockSize != 0 { return .q8_0 }
            return base == .q8_0 ? .q8_0 : .q6_K
        }
        switch category {
        case .tokenEmbedding:
            break
        case .attentionV, .attentionQKV, .attentionKVB:
            if category == .attentionQKV {
                if [.q3_K_M, .q3_K_L].contains(ft) { t = .q4_K } else if ft == .q4_K_M { t = .q5_K } else if ft == .q5_K_M { t = .q6_K }
                break
            }
            switch ft {
            case .q2_K: t = gqa >= 4 ? .q4_K : .q3_K
            case .q2_K_S where gqa >= 4: t = .q4_K
            case .q3_K_M: t = attentionVIndex < 2 ? .q5_K : .q4_K
            case .q3_K_L: t = .q5_K
            case .q4_K_M, .q5_K_M: if useMoreBits(attentionVIndex, attentionVCount) { t = .q6_K }
            case .q4_K_S: if attentionVIndex < 4 { t = .q5_K }
            default: break
            }
            if expertCount == 8 { t = .q8_0 }
        case .attentionK:
            if expertCount == 8 { t = .q8_0 }
        case .ffnDown:
            let i = expertCount > 1 ? try layer(of: info.name) : 0
            let n = layerCount
            switch ft {
            case .q2_K: t = .q3_K
            case .q2_K_S: if i < n / 8 { t = .q4_K }
            case .q3_K_M: t = i < n / 16 ? .q5_K : .q4_K
            case .q3_K_L: t = .q5_K
            case .q4_K_M: if useMoreBits(i, n) { t = .q6_K }
            case .q5_K_M: if useMoreBits(i, n) { t = .q6_K }
            case .q4_K_S: if i < n / 8 { t = .q5_K }
            default: break
            }
        case .attentionOutput:
            if expertCount == 8 {
                if [.q2_K, .q3_K_S, .q3_K_M, .q4_K_S, .q4_K_M].contains(ft) { t = .q5_K }
            } else {
                switch ft {
                case .q2_K: t = .q3_K
                case .q3_K_M: t = .q4_K
                case .q3_K_L: t = .q5_K
                default: break
                }
            }
        default:
            break
        }
        return t
    }

    /// A row length that is not a whole number of the type's blocks falls back as llama-quantize does.
    private func fallback(_ t: GGMLType, cols: Int) -> GGMLType {
        guard cols % t.blockSize != 0 else { return t }
        let alt: GGMLType
        switch t {
        case .q2_K, .q3_K: alt = .q4_0
        case .q4_K: alt = .q5_0
        case .q5_K: alt = .q5_1
        case .q6_K: alt = .q8_0
        case .iq4_XS: alt = .iq4_NL
        default: alt = .f16
        }
        return cols % alt.blockSize == 0 ? alt : .f16
    }
}
