import GGUF
import Kernels

/// The sizes a layer's tensors are made of: what the blocks' tensor tables need, from a model file's config or
/// from the shape `conclave synth` is asked to write, so both read one table.
public struct LayerDimensions: Sendable, Equatable {
    public var embedding: Int
    public var headDim: Int
    public var heads: Int
    public var kvHeads: Int
    public var experts: Int
    public var expertFeedForward: Int
    /// The shared expert's width (0: none).
    public var sharedFeedForward: Int
    /// The dense FFN's width (layers without routed experts).
    public var denseFeedForward: Int
    /// Latent attention's sizes (deepseek2), nil for standard attention.
    public var latent: LatentAttentionShape?
    /// Layers before this one are dense even in an MoE model.
    public var leadingDense = 0
    /// The MoE layers carry `exp_probs_b`.
    public var selectionBias = false

    public var qDim: Int { heads * headDim }
    public var kvDim: Int { kvHeads * headDim }
    public var isMoE: Bool { experts > 0 }
    public func hasExperts(layer l: Int) -> Bool { isMoE && l >= leadingDense }

    public init(embedding: Int, headDim: Int, heads: Int, kvHeads: Int, experts: Int, expertFeedForward: Int,
                sharedFeedForward: Int, denseFeedForward: Int) {
        self.embedding = embedding
        self.headDim = headDim
        self.heads = heads
        self.kvHeads = kvHeads
        self.experts = experts
        self.expertFeedForward = expertFeedForward
        self.sharedFeedForward = sharedFeedForward
        self.denseFeedForward = denseFeedForward
    }
}

/// Multi-head latent attention's sizes (DeepSeek-V2/V3): Q through a rank-`queryRank` pair (0: one plain
/// projection), K and V through a `latentRank` latent that is all a position caches besides its `ropeDim` rope key.
public struct LatentAttentionShape: Sendable, Equatable {
    public var queryRank: Int
    public var latentRank: Int
    /// Per head: the part of Q·K without position, the rope part, and the value.
    public var noPositionDim: Int
    public var ropeDim: Int
    public var valueDim: Int
    /// The cache holds the latent (files with `attn_k_b`/`attn_v_b`); false for files with the older unsplit
    /// `attn_kv_b`, which llama.cpp decompresses into K and V per head and caches as standard attention does.
    public var cachesLatent = true
    /// One head's query: its no-position part then its rope part.
    public var queryHeadDim: Int { noPositionDim + ropeDim }

    public init(queryRank: Int, latentRank: Int, noPositionDim: Int, ropeDim: Int, valueDim: Int, cachesLatent: Bool = true) {
        self.cachesLatent = cachesLatent
        self.queryRank = queryRank
        self.latentRank = latentRank
        self.noPositionDim = noPositionDim
        self.ropeDim = ropeDim
        self.valueDim = valueDim
    }
}

/// One tensor a block binds: its name and its shape in ggml order.
public struct TensorSpec: Sendable, Equatable {
    public let name: TensorName
    public let shape: [Int]
    public init(_ name: TensorName, _ shape: [Int]) {
        self.name = name
        self.shape = shape
    }
}

extension ModelConfig {
    public var dimensions: LayerDimensions {
        var d = LayerDimensions(embedding: embeddingLength, headDim: headDim, heads: headCount, kvHeads: headCountKV, experts: expertCount,
                                expertFeedForward: expertFeedForward, sharedFeedForward: sharedExpertFeedForward, denseFeedForward: feedForward)
        d.latent = latent
        d.leadingDense = leadingDenseLayers
        d.selectionBias = selectionBias
        return d
    }
}

extension TensorBinder {
    /// Binds the tensor `name` of `specs` with the shape the table gives it.
    mutating func tensor(_ name: TensorName, in specs: [TensorSpec]) throws(ModelError) -> GGUFTensor {
        guard let s = specs.first(where: { $0.name == name }) else { throw ModelError("internal: no tensor spec for '\(name)'") }
        return try tensor(name, shape: s.shape)
    }

    /// A 2-D weight of `specs` (ggml shape [cols, rows]).
    mutating func matrix(_ name: TensorName, in specs: [TensorSpec]) throws(ModelError) -> WeightMatrix {
        let t = try tensor(name, in: specs)
        return try matrix(t, cols: t.shape[0], rows: t.shape.dropFirst().reduce(1, *))
    }

    /// A vector (or a stack of them, as experts' biases) of `specs` read into floats whatever its stored type.
    mutating func vector(_ name: TensorName, in specs: [TensorSpec]) throws(ModelError) -> [Float] {
        let t = try tensor(name, in: specs)
        do {
            return try Dequantize.toFloats(t.type, t.bytes, count: t.info.elementCount)
        } catch {
            throw ModelError("\(file.path): tensor '\(t.name)': \(error)")
        }
    }
}
