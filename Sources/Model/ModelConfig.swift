import GGUF
import Kernels

/// How an architecture differs from the common decoder: data, not branches scattered through the forward pass.
public struct ArchitectureTraits: Sendable {
    /// How router logits become expert weights.
    public enum Gating: Sendable {
        /// softmax over all experts, keep the top k (llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX).
        case softmaxThenTopK
    }

    /// RMS normalisation of Q and K before RoPE.
    public enum QKNorm: Sendable {
        case none
        /// Each head separately, weight of head size (qwen3, qwen3moe).
        case perHead
        /// The whole projection at once, weight of projection size (olmoe).
        case whole
    }

    public let name: String
    public let ropeMode: Ops.RopeMode
    public let qkNorm: QKNorm
    /// Q, K and V projections carry biases (qwen2moe).
    public let attentionBias: Bool
    public let gating: Gating
    /// Renormalise the selected experts' weights to sum to one.
    public let normalizeExpertWeights: Bool
    /// A shared expert every token goes through, scaled by sigmoid(w·x) (qwen2moe).
    public let sharedExpert: Bool

    /// The registered architectures. Adding one is adding a row here (and its tensors to `TensorNames`).
    public static let registry: [String: ArchitectureTraits] = [
        "qwen3moe": ArchitectureTraits(name: "qwen3moe", ropeMode: .neox, qkNorm: .perHead, attentionBias: false,
                                       gating: .softmaxThenTopK, normalizeExpertWeights: true, sharedExpert: false),
        "qwen2moe": ArchitectureTraits(name: "qwen2moe", ropeMode: .neox, qkNorm: .none, attentionBias: true,
                                       gating: .softmaxThenTopK, normalizeExpertWeights: false, sharedExpert: true),
        "olmoe": ArchitectureTraits(name: "olmoe", ropeMode: .neox, qkNorm: .whole, attentionBias: false,
                                    gating: .softmaxThenTopK, normalizeExpertWeights: false, sharedExpert: false),
        // llama: dense when expert_count is 0, Mixtral-style MoE otherwise.
        "llama": ArchitectureTraits(name: "llama", ropeMode: .normal, qkNorm: .none, attentionBias: false,
                                    gating: .softmaxThenTopK, normalizeExpertWeights: true, sharedExpert: false),
    ]
}

/// Hyper-parameters of a model, read from GGUF keys and validated in one step; every error names the key.
public struct ModelConfig: Sendable {
    public let traits: ArchitectureTraits
    public let layerCount: Int
    public let embeddingLength: Int
    public let headCount: Int
    public let headCountKV: Int
    public let headDim: Int
    public let valueDim: Int
    public let expertCount: Int
    public let expertsUsed: Int
    public let expertFeedForward: Int
    /// Dense feed-forward width (dense layers, and llama without experts).
    public let feedForward: Int
    /// The shared expert's width (qwen2moe), 0 when there is none.
    public let sharedExpertFeedForward: Int
    public let contextLength: Int
    public let ropeFreqBase: Float
    public let ropeFreqScale: Float
    public let ropeDims: Int
    public let rmsEpsilon: Float
    public let vocabSize: Int

    public var architecture: String { traits.name }
    public var qDim: Int { headCount * headDim }
    public var kvDim: Int { headCountKV * headDim }
    public var isMoE: Bool { expertCount > 0 }

    public init(file: GGUFFile) throws(ModelError) {
        guard let arch = file.architecture else {
            throw ModelError("\(file.path): missing 'general.architecture'; is this a model file?")
        }
        guard let traits = ArchitectureTraits.registry[arch] else {
            let known = ArchitectureTraits.registry.keys.sorted().joined(separator: ", ")
            throw ModelError("\(file.path): architecture '\(arch)' is not supported (supported: \(known))")
        }
        func key(_ k: String) -> String { "\(arch).\(k)" }
        func int(_ k: String, default d: Int? = nil, min lo: Int = 1) throws(ModelError) -> Int {
            guard let v = file.int(key(k)) ?? d else { throw ModelError("\(file.path): missing '\(key(k))'") }
            guard v >= lo else { throw ModelError("\(file.path): '\(key(k))' = \(v) must be at least \(lo)") }
            return v
        }
        func float(_ k: String, default d: Double) throws(ModelError) -> Float {
            let v = file.double(key(k)) ?? d
            guard v.isFinite, v > 0 else { throw ModelError("\(file.path): '\(key(k))' = \(v) must be a positive number") }
            return Float(v)
        }
        self.traits = traits
        layerCount = try int("block_count")
        embeddingLength = try int("embedding_length")
        headCount = try int("attention.head_count")
        headCountKV = try int("attention.head_count_kv", default: headCount)
        guard headCount % headCountKV == 0 else {
            throw ModelError("\(file.path): '\(key("attention.head_count"))' = \(headCount) is not a multiple of '\(key("attention.head_count_kv"))' = \(headCountKV)")
        }
        headDim = try int("attention.key_length", default: embeddingLength / headCount)
        valueDim = try int("attention.value_length", default: headDim)
        guard valueDim == headDim else { throw ModelError("\(file.path): key and value head sizes differ (\(headDim) vs \(valueDim)); not supported") }
        expertCount = try int("expert_count", default: 0, min: 0)
        expertsUsed = try int("expert_used_count", default: 0, min: 0)
        guard expertsUsed <= expertCount, expertCount == 0 || expertsUsed > 0 else {
            throw ModelError("\(file.path): '\(key("expert_used_count"))' = \(expertsUsed) must be between 1 and '\(key("expert_count"))' = \(expertCount)")
        }
        feedForward = try int("feed_forward_length", default: 0, min: 0)
        let expertFFDefault = expertsUsed > 0 && feedForward > 0 ? feedForward / (arch == "qwen2moe" ? expertsUsed : 1) : nil
        expertFeedForward = expertCount > 0 ? try int("expert_feed_forward_length", default: expertFFDefault) : 0
        sharedExpertFeedForward = traits.sharedExpert ? try int("expert_shared_feed_forward_length", default: feedForward) : 0
        contextLength = try int("context_length")
        ropeFreqBase = try float("rope.freq_base", default: 10000)
        let scale = try float("rope.scaling.factor", default: 1)
        ropeFreqScale = 1 / scale
        ropeDims = try int("rope.dimension_count", default: headDim)
        guard ropeDims <= headDim, ropeDims % 2 == 0 else {
            throw ModelError("\(file.path): '\(key("rope.dimension_count"))' = \(ropeDims) must be even and at most the head size \(headDim)")
        }
        rmsEpsilon = try float("attention.layer_norm_rms_epsilon", default: 1e-5)
        vocabSize = try int("vocab_size", default: file.array("tokenizer.ggml.tokens")?.count)
        guard expertCount > 0 || arch == "llama" else {
            throw ModelError("\(file.path): '\(key("expert_count"))' is missing or 0; \(arch) models need experts")
        }
        guard expertCount > 0 || feedForward > 0 else { throw ModelError("\(file.path): '\(key("feed_forward_length"))' is missing") }
    }
}
