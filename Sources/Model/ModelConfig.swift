#if canImport(Glibc)
import Glibc
#endif
import GGUF
import Kernels

/// How an architecture differs from the common decoder: data, not branches scattered through the forward pass.
public struct ArchitectureTraits: Sendable {
    /// RMS normalisation of Q and K before RoPE.
    public enum QKNorm: Sendable {
        case none
        /// Each head separately, weight of head size (qwen3, qwen3moe).
        case perHead
        /// The whole projection at once, weight of projection size (olmoe).
        case whole
    }

    /// Which attention block a layer has.
    public enum Attention: Sendable, Equatable {
        /// Q, K, V projections per head over a cache of keys and values (`AttentionBlock`).
        case standard
        /// DeepSeek's multi-head latent attention over a cache of compressed latents (`LatentAttentionBlock`).
        case latent
    }

    /// An expert every token goes through besides the routed ones.
    public enum SharedExpert: Sendable, Equatable {
        case none
        /// Scaled by sigmoid(w·x), width `expert_shared_feed_forward_length` (qwen2moe).
        case gated
        /// Added as it is, width `expert_shared_count` × the routed experts' (deepseek2).
        case ungated
    }

    /// Whether a layer has a tensor.
    public enum Presence: Sendable, Equatable {
        case never, always
        /// When the file has it (llama.cpp's TENSOR_NOT_REQUIRED).
        case ifPresent
    }

    public let name: String
    public let ropeMode: Ops.RopeMode
    public let qkNorm: QKNorm
    /// Q, K and V projections carry biases (qwen2moe).
    public let attentionBias: Bool
    /// How router logits become routes, before a file's keys adjust it (see `ModelConfig.routing`).
    public let routing: RoutingRule
    public let sharedExpert: SharedExpert
    /// Layers may be dense (no `expert_count`): llama, whose MoE form is Mixtral's.
    public var allowsDense = false
    /// The attention output projection carries a bias (gpt-oss).
    public var attentionOutputBias = false
    /// A learned logit per head that joins each softmax's denominator and attends to nothing (gpt-oss's sinks).
    public var attentionSinks = false
    /// Every `slidingWindowPattern`-th layer attends to everything, the others only to the last
    /// `attention.sliding_window` positions (llama.cpp's set_swa_pattern; 0: no sliding window).
    public var slidingWindowPattern = 0
    /// The feed-forward block's input norm (gpt-oss calls it post_attention_norm).
    public var ffnNormRole: TensorRole = .ffnNorm
    /// A per-expert bias added to the routing probabilities for choosing only (DeepSeek-V3's exp_probs_b).
    public var expertSelectionBias = Presence.never
    /// The router and the experts' projections carry biases (gpt-oss).
    public var routerBias = false
    public var expertBias = false
    /// What joins an expert's gate and up projections.
    public var expertActivation: ExpertActivation = .swiglu
    /// Without `expert_feed_forward_length`, an expert's width is `feed_forward_length` ÷ experts used
    /// (qwen2moe's converter wrote the total); otherwise it is `feed_forward_length` itself.
    public var feedForwardIsPerToken = false
    public var attention = Attention.standard
    /// The first `leading_dense_block_count` layers have a dense FFN instead of experts (deepseek2).
    public var leadingDenseLayers = false
    /// YaRN's `rope.scaling.yarn_log_multiplier` is also the rope's own mscale when it is not 1 (llama.cpp's
    /// special case for DeepSeek-V2, TAG_DEEPSEEK2_YARN_LOG_MUL_FIX).
    public var yarnLogMultiplierScalesRope = false

    /// The registered architectures. Adding one is adding a row here (and its tensors to `TensorNames`).
    public static let registry: [String: ArchitectureTraits] = [
        "qwen3moe": ArchitectureTraits(name: "qwen3moe", ropeMode: .neox, qkNorm: .perHead, attentionBias: false,
                                       routing: RoutingRule(probabilities: .softmax, normalize: true), sharedExpert: .none),
        "qwen2moe": ArchitectureTraits(name: "qwen2moe", ropeMode: .neox, qkNorm: .none, attentionBias: true,
                                       routing: RoutingRule(probabilities: .softmax, normalize: false), sharedExpert: .gated, feedForwardIsPerToken: true),
        "olmoe": ArchitectureTraits(name: "olmoe", ropeMode: .neox, qkNorm: .whole, attentionBias: false,
                                    routing: RoutingRule(probabilities: .softmax, normalize: false), sharedExpert: .none),
        // llama: dense when expert_count is 0, Mixtral-style MoE otherwise.
        "llama": ArchitectureTraits(name: "llama", ropeMode: .normal, qkNorm: .none, attentionBias: false,
                                    routing: RoutingRule(probabilities: .softmax, normalize: true), sharedExpert: .none, allowsDense: true),
        // OpenAI's gpt-oss (llama.cpp's LLM_ARCH_OPENAI_MOE).
        "gpt-oss": ArchitectureTraits(name: "gpt-oss", ropeMode: .neox, qkNorm: .none, attentionBias: true,
                                      routing: RoutingRule(probabilities: .softmaxOverChosen, normalize: false), sharedExpert: .none,
                                      attentionOutputBias: true, attentionSinks: true, slidingWindowPattern: 2, ffnNormRole: .postAttentionNorm,
                                      routerBias: true, expertBias: true, expertActivation: .swigluOAI(alpha: 1.702, limit: 7)),
        // DeepSeek-V2/V3, Kimi K2: latent attention, dense layers first, shared experts, softmax or sigmoid routing.
        "deepseek2": ArchitectureTraits(name: "deepseek2", ropeMode: .normal, qkNorm: .none, attentionBias: false,
                                        routing: RoutingRule(probabilities: .softmax, normalize: false), sharedExpert: .ungated,
                                        expertSelectionBias: .ifPresent, attention: .latent, leadingDenseLayers: true,
                                        yarnLogMultiplierScalesRope: true),
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
    /// Experts each token is routed to: the file's `expert_used_count`, or fewer (`selecting`).
    public private(set) var expertsUsed: Int
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
    /// Positions a sliding-window layer attends to (its own and the ones before), 0 when no layer slides.
    public let slidingWindow: Int
    /// YaRN context extension (`rope.scaling.type` = yarn), nil for plain or linear RoPE.
    public let yarn: Ops.Yarn?
    /// How router logits become routes: the traits' rule, adjusted by the file's `expert_gating_func`,
    /// `expert_weights_norm`, `expert_weights_scale` and expert groups where it has them.
    public private(set) var routing: RoutingRule
    /// Multi-head latent attention's sizes (deepseek2), nil for standard attention.
    public let latent: LatentAttentionShape?
    /// Layers before this one have a dense FFN (deepseek2's `leading_dense_block_count`).
    public let leadingDenseLayers: Int
    /// Whether the MoE layers add a selection bias to the routing probabilities (`exp_probs_b`).
    public let selectionBias: Bool
    /// What attention scores are multiplied by before the softmax: 1/√(key size), with YaRN's mscale² for
    /// latent attention as llama.cpp pre-scales it.
    public let attentionScale: Float

    /// Whether layer `l` has routed experts.
    public func hasExperts(layer l: Int) -> Bool { isMoE && l >= leadingDenseLayers }

    /// Elements one position of one layer caches: keys and values of every KV head (standard attention, and
    /// latent attention decompressed from an unsplit attn_kv_b), or the latent followed by the rope key and no
    /// separate value (latent attention reads its values from the latent, as llama.cpp).
    public var cacheKeyWidth: Int {
        guard let m = latent else { return kvDim }
        return m.cachesLatent ? m.latentRank + m.ropeDim : headCount * m.queryHeadDim
    }
    public var cacheValueWidth: Int {
        guard let m = latent else { return kvDim }
        return m.cachesLatent ? 0 : headCount * m.valueDim
    }

    /// Whether layer `l` attends only to the last `slidingWindow` positions.
    public func slides(layer l: Int) -> Bool {
        let n = traits.slidingWindowPattern
        return n > 0 && slidingWindow > 0 && l % n < n - 1
    }

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
        func key(_ k: ModelKey) -> String { k.name(arch) }
        func int(_ k: ModelKey, default d: Int? = nil, min lo: Int = 1) throws(ModelError) -> Int {
            guard let v = file.int(key(k)) ?? d else { throw ModelError("\(file.path): missing '\(key(k))'") }
            guard v >= lo else { throw ModelError("\(file.path): '\(key(k))' = \(v) must be at least \(lo)") }
            return v
        }
        func float(_ k: ModelKey, default d: Double) throws(ModelError) -> Float {
            let v = file.double(key(k)) ?? d
            guard v.isFinite, v > 0 else { throw ModelError("\(file.path): '\(key(k))' = \(v) must be a positive number") }
            return Float(v)
        }
        self.traits = traits
        layerCount = try int(.blockCount)
        embeddingLength = try int(.embeddingLength)
        headCount = try int(.headCount)
        headCountKV = try int(.headCountKV, default: headCount)
        guard headCount % headCountKV == 0 else {
            throw ModelError("\(file.path): '\(key(.headCount))' = \(headCount) is not a multiple of '\(key(.headCountKV))' = \(headCountKV)")
        }
        headDim = try int(.keyLength, default: embeddingLength / headCount)
        valueDim = try int(.valueLength, default: headDim)
        guard valueDim == headDim || traits.attention == .latent else { throw ModelError("\(file.path): key and value head sizes differ (\(headDim) vs \(valueDim)); not supported") }
        expertCount = try int(.expertCount, default: 0, min: 0)
        expertsUsed = try int(.expertUsedCount, default: 0, min: 0)
        guard expertsUsed <= expertCount, expertCount == 0 || expertsUsed > 0 else {
            throw ModelError("\(file.path): '\(key(.expertUsedCount))' = \(expertsUsed) must be between 1 and '\(key(.expertCount))' = \(expertCount)")
        }
        feedForward = try int(.feedForwardLength, default: 0, min: 0)
        let expertFFDefault = expertsUsed > 0 && feedForward > 0 ? feedForward / (traits.feedForwardIsPerToken ? expertsUsed : 1) : nil
        expertFeedForward = expertCount > 0 ? try int(.expertFeedForwardLength, default: expertFFDefault) : 0
        switch traits.sharedExpert {
        case .none: sharedExpertFeedForward = 0
        case .gated: sharedExpertFeedForward = try int(.expertSharedFeedForwardLength, default: feedForward)
        case .ungated: sharedExpertFeedForward = expertFeedForward * (try int(.expertSharedCount, min: 0))
        }
        leadingDenseLayers = traits.leadingDenseLayers ? try int(.leadingDenseBlockCount, default: 0, min: 0) : 0
        guard leadingDenseLayers <= layerCount else {
            throw ModelError("\(file.path): '\(key(.leadingDenseBlockCount))' = \(leadingDenseLayers) is more than the \(layerCount) layers")
        }
        guard leadingDenseLayers == 0 || feedForward > 0 else { throw ModelError("\(file.path): '\(key(.feedForwardLength))' is missing (the dense layers' width)") }
        contextLength = try int(.contextLength)
        ropeFreqBase = try float(.ropeFreqBase, default: 10000)
        let scale = try float(.ropeScalingFactor, default: 1)
        ropeFreqScale = 1 / scale
        ropeDims = try int(.ropeDimensionCount, default: headDim)
        guard ropeDims <= headDim, ropeDims % 2 == 0 else {
            throw ModelError("\(file.path): '\(key(.ropeDimensionCount))' = \(ropeDims) must be even and at most the head size \(headDim)")
        }
        rmsEpsilon = try float(.rmsEpsilon, default: 1e-5)
        if traits.attention == .latent {
            let rank = try int(.keyValueLoraRank), queryRank = try int(.queryLoraRank, default: 0, min: 0)
            if let keyMLA = file.int(key(.keyLengthMLA)), let valueMLA = file.int(key(.valueLengthMLA)) {
                latent = LatentAttentionShape(queryRank: queryRank, latentRank: rank, noPositionDim: keyMLA - ropeDims, ropeDim: ropeDims, valueDim: valueMLA)
                // llama.cpp's MLA cache: one "head" of the latent and the rope key, whose first `rank` are the values.
                guard headCountKV == 1, headDim == rank + ropeDims, valueDim == rank, keyMLA > ropeDims, valueMLA >= 1 else {
                    throw ModelError("\(file.path): latent attention needs '\(key(.headCountKV))' = 1, '\(key(.keyLength))' = '\(key(.keyValueLoraRank))' + '\(key(.ropeDimensionCount))' (\(rank + ropeDims)), '\(key(.valueLength))' = \(rank) and '\(key(.keyLengthMLA))' > \(ropeDims); the file has \(headCountKV), \(headDim), \(valueDim) and \(keyMLA)")
                }
            } else {
                // An older file with the unsplit attn_kv_b: K and V per head, as its key and value lengths say.
                latent = LatentAttentionShape(queryRank: queryRank, latentRank: rank, noPositionDim: headDim - ropeDims, ropeDim: ropeDims,
                                              valueDim: valueDim, cachesLatent: false)
                guard headCountKV == headCount, headDim > ropeDims else {
                    throw ModelError("\(file.path): a DeepSeek file without '\(key(.keyLengthMLA))' (unsplit attn_kv_b) needs '\(key(.headCountKV))' = '\(key(.headCount))' and '\(key(.keyLength))' > '\(key(.ropeDimensionCount))'; the file has \(headCountKV), \(headCount), \(headDim), \(ropeDims)")
                }
            }
        } else {
            latent = nil
        }
        slidingWindow = traits.slidingWindowPattern > 0 ? try int(.slidingWindow) : 0
        var rule = traits.routing
        if let f = file.int(key(.expertGatingFunc)) {
            switch f {
            case 1: rule.probabilities = .softmax
            case 2: rule.probabilities = .sigmoid
            case 3: rule.probabilities = .softmaxOverChosen
            default: throw ModelError("\(file.path): '\(key(.expertGatingFunc))' = \(f) is not a gating function (1 softmax, 2 sigmoid, 3 softmax over the chosen)")
            }
        }
        if let norm = file.bool(key(.expertWeightsNorm)) { rule.normalize = norm }
        // llama.cpp scales only by a value other than 0 and 1 (0 is its "unset").
        if let w = file.double(key(.expertWeightsScale)), w != 0 { rule.scale = try float(.expertWeightsScale, default: 1) }
        rule.groupCount = try int(.expertGroupCount, default: 0, min: 0)
        rule.groupsUsed = try int(.expertGroupUsedCount, default: 0, min: 0)
        guard rule.groupCount <= 1 || (expertCount % rule.groupCount == 0 && rule.groupsUsed >= 1 && rule.groupsUsed <= rule.groupCount
                                       && rule.groupsUsed * (expertCount / rule.groupCount) >= expertsUsed) else {
            throw ModelError("\(file.path): '\(key(.expertGroupCount))' = \(rule.groupCount) must divide '\(key(.expertCount))' = \(expertCount), and '\(key(.expertGroupUsedCount))' = \(rule.groupsUsed) groups must hold the \(expertsUsed) experts used")
        }
        routing = rule
        // RoPE's magnitude factor and YaRN, as llama_context derives them from the file: the YaRN mix is 1 and its
        // betas 32 and 1 whatever the file says (llama.cpp reads those keys for grok only), and the attention factor
        // is YaRN's mscale ratio divided by the factor ggml's rope multiplies in again, times rope.scaling.attn_factor.
        let factor = 1 / ropeFreqScale
        let logMultiplier = traits.attention == .latent ? Float(file.double(key(.ropeScalingYarnLogMultiplier)) ?? 0) / 0.1 : 0
        var attnFactor: Float = 1
        if let type = file.string(key(.ropeScalingType)), type != "none", type != "linear" {
            guard type == "yarn" else { throw ModelError("\(file.path): '\(key(.ropeScalingType))' = \(type) is not supported (none, linear, yarn)") }
            let original = try int(.ropeScalingOriginalContext)
            func mscale(_ m: Float) -> Float { factor <= 1 ? 1 : 0.1 * m * logf(factor) + 1 }
            if logMultiplier != 0 {
                let m = traits.yarnLogMultiplierScalesRope && logMultiplier != 1 ? logMultiplier : 1
                attnFactor = mscale(m) / mscale(logMultiplier)
            } else {
                attnFactor = mscale(1)
            }
            attnFactor /= 1 + 0.1 * logf(factor)
            attnFactor *= Float(file.double(key(.ropeScalingAttnFactor)) ?? 1)
            yarn = Ops.Yarn(extFactor: 1, attnFactor: attnFactor, dims: ropeDims, originalContext: original, freqBase: ropeFreqBase,
                            betaFast: 32, betaSlow: 1)
        } else {
            yarn = nil
        }
        if let l = latent {
            // deepseek2's kq_scale: the original attention factor times YaRN's log-multiplier mscale, squared.
            let original = attnFactor * (1 + 0.1 * logf(factor))
            let m = original * (1 + 0.1 * logMultiplier * logf(factor))
            attentionScale = m * m / Float(l.noPositionDim + l.ropeDim).squareRoot()
        } else {
            attentionScale = 1 / Float(headDim).squareRoot()
        }
        vocabSize = try int(.vocabSize, default: file.array("tokenizer.ggml.tokens")?.count)
        guard expertCount > 0 || traits.allowsDense else {
            throw ModelError("\(file.path): '\(key(.expertCount))' is missing or 0; \(arch) models need experts")
        }
        guard expertCount > 0 || feedForward > 0 else { throw ModelError("\(file.path): '\(key(.feedForwardLength))' is missing") }
        switch traits.expertSelectionBias {
        case .never: selectionBias = false
        case .always: selectionBias = expertCount > 0
        case .ifPresent: selectionBias = expertCount > 0 && layerCount > leadingDenseLayers
            && file.tensorInfo(named: TensorName.block(leadingDenseLayers, .expertProbBias, "bias").description) != nil
        }
    }

    /// This model routing as `selection` says (fewer experts per token, or skipping small weights); the file's
    /// routing for `.file`.
    public func selecting(_ selection: ExpertSelection) throws(ModelError) -> ModelConfig {
        if let problem = selection.problem(fileUsed: expertsUsed, expertCount: expertCount) { throw ModelError(problem) }
        var c = self
        if let used = selection.used { c.expertsUsed = used }
        c.routing.minWeight = selection.minWeight
        return c
    }
}
