/// The one table of llama.cpp tensor names (src/llama-arch.cpp), and what each tensor is for.
///
/// Per-layer tensors are named `blk.{i}.{base}.{suffix}` (suffix `weight`, `bias`, or none); global ones
/// `{base}.{suffix}`. Every other module that needs a tensor asks this table, so a name is spelled once.
public enum TensorRole: String, Sendable, CaseIterable {
    // Global
    case tokenEmbedding = "token_embd"
    case outputNorm = "output_norm"
    case output = "output"
    case ropeFreqs = "rope_freqs"
    // Attention
    case attnNorm = "attn_norm"
    case attnQ = "attn_q"
    case attnK = "attn_k"
    case attnV = "attn_v"
    case attnQKV = "attn_qkv"
    case attnOutput = "attn_output"
    case attnQNorm = "attn_q_norm"
    case attnKNorm = "attn_k_norm"
    case attnSinks = "attn_sinks"
    // Multi-head latent attention (deepseek2): Q through a low-rank pair (or a plain attn_q), K and V through
    // a compressed latent with a separate rope key; k_b/v_b are the per-head halves of the older attn_kv_b.
    case attnQA = "attn_q_a"
    case attnQANorm = "attn_q_a_norm"
    case attnQB = "attn_q_b"
    case attnKVAMQA = "attn_kv_a_mqa"
    case attnKVANorm = "attn_kv_a_norm"
    case attnKVB = "attn_kv_b"
    case attnKB = "attn_k_b"
    case attnVB = "attn_v_b"
    // Feed-forward: norms, dense FFN, router, routed experts, shared expert
    case ffnNorm = "ffn_norm"
    case postAttentionNorm = "post_attention_norm"
    case postFFNNorm = "post_ffw_norm"
    case ffnGate = "ffn_gate"
    case ffnUp = "ffn_up"
    case ffnDown = "ffn_down"
    case router = "ffn_gate_inp"
    case expertProbBias = "exp_probs_b"
    case expertGate = "ffn_gate_exps"
    case expertUp = "ffn_up_exps"
    case expertDown = "ffn_down_exps"
    case sharedExpertRouter = "ffn_gate_inp_shexp"
    case sharedGate = "ffn_gate_shexp"
    case sharedUp = "ffn_up_shexp"
    case sharedDown = "ffn_down_shexp"

    /// What part of the model a tensor belongs to; used for per-layer byte accounting and placement.
    public enum Category: String, Sendable, CaseIterable {
        case embedding, head, norm, attention, denseFFN = "dense_ffn", router, experts
        case sharedExpert = "shared_expert"
    }

    public var category: Category {
        switch self {
        case .tokenEmbedding, .ropeFreqs: return .embedding
        case .output: return .head
        case .outputNorm, .attnNorm, .ffnNorm, .postAttentionNorm, .postFFNNorm, .attnQNorm, .attnKNorm, .attnQANorm, .attnKVANorm: return .norm
        case .attnQ, .attnK, .attnV, .attnQKV, .attnOutput, .attnSinks, .attnQA, .attnQB, .attnKVAMQA, .attnKVB, .attnKB, .attnVB: return .attention
        case .ffnGate, .ffnUp, .ffnDown: return .denseFFN
        case .router, .expertProbBias: return .router
        case .expertGate, .expertUp, .expertDown: return .experts
        case .sharedExpertRouter, .sharedGate, .sharedUp, .sharedDown: return .sharedExpert
        }
    }

    public var isPerLayer: Bool {
        switch self {
        case .tokenEmbedding, .outputNorm, .output, .ropeFreqs: return false
        default: return true
        }
    }
}

/// A tensor name taken apart: which layer (nil for global tensors), which role, which suffix.
public struct TensorName: Sendable, Hashable, CustomStringConvertible {
    public let layer: Int?
    public let role: TensorRole
    public let suffix: String

    public init(layer: Int?, role: TensorRole, suffix: String = "weight") {
        self.layer = layer
        self.role = role
        self.suffix = suffix
    }

    public static func global(_ role: TensorRole, _ suffix: String = "weight") -> TensorName {
        TensorName(layer: nil, role: role, suffix: suffix)
    }

    public static func block(_ layer: Int, _ role: TensorRole, _ suffix: String = "weight") -> TensorName {
        TensorName(layer: layer, role: role, suffix: suffix)
    }

    /// The name as it appears in a GGUF file.
    public var description: String {
        let base = layer.map { "blk.\($0).\(role.rawValue)" } ?? role.rawValue
        return suffix.isEmpty ? base : "\(base).\(suffix)"
    }

    private static let roleByBase: [String: TensorRole] =
        Dictionary(uniqueKeysWithValues: TensorRole.allCases.map { ($0.rawValue, $0) })

    /// Parses a GGUF tensor name; nil for a name this table does not know.
    public init?(parsing name: String) {
        var parts = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        var layer: Int?
        if parts.count >= 2, parts[0] == "blk" {
            guard let l = Int(parts[1]), l >= 0 else { return nil }
            layer = l
            parts.removeFirst(2)
        }
        guard let first = parts.first, let role = Self.roleByBase[first], role.isPerLayer == (layer != nil) else { return nil }
        let suffix = parts.dropFirst().joined(separator: ".")
        self.init(layer: layer, role: role, suffix: suffix)
    }
}
