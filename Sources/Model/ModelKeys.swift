import GGUF

/// The one table of per-architecture GGUF keys (llama.cpp's LLM_KV_NAMES): `{architecture}.{key}`. The config
/// reads them and `conclave synth` writes them from here, so a key is spelled once.
public enum ModelKey: String, Sendable, CaseIterable {
    case contextLength = "context_length"
    case embeddingLength = "embedding_length"
    case blockCount = "block_count"
    case feedForwardLength = "feed_forward_length"
    case headCount = "attention.head_count"
    case headCountKV = "attention.head_count_kv"
    case keyLength = "attention.key_length"
    case valueLength = "attention.value_length"
    case rmsEpsilon = "attention.layer_norm_rms_epsilon"
    case ropeFreqBase = "rope.freq_base"
    case ropeScalingFactor = "rope.scaling.factor"
    case ropeDimensionCount = "rope.dimension_count"
    case expertCount = "expert_count"
    case expertUsedCount = "expert_used_count"
    case expertFeedForwardLength = "expert_feed_forward_length"
    case expertSharedFeedForwardLength = "expert_shared_feed_forward_length"
    case vocabSize = "vocab_size"
    case slidingWindow = "attention.sliding_window"
    case expertGatingFunc = "expert_gating_func"
    case expertWeightsNorm = "expert_weights_norm"
    case expertWeightsScale = "expert_weights_scale"
    case expertGroupCount = "expert_group_count"
    case expertGroupUsedCount = "expert_group_used_count"
    case ropeScalingType = "rope.scaling.type"
    case ropeScalingOriginalContext = "rope.scaling.original_context_length"
    case ropeScalingAttnFactor = "rope.scaling.attn_factor"
    case ropeScalingYarnLogMultiplier = "rope.scaling.yarn_log_multiplier"
    case leadingDenseBlockCount = "leading_dense_block_count"
    case expertSharedCount = "expert_shared_count"
    case queryLoraRank = "attention.q_lora_rank"
    case keyValueLoraRank = "attention.kv_lora_rank"
    case keyLengthMLA = "attention.key_length_mla"
    case valueLengthMLA = "attention.value_length_mla"

    /// The key as a file spells it for `architecture`.
    public func name(_ architecture: String) -> String { "\(architecture).\(rawValue)" }
}
