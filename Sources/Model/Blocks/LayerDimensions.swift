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

    public var qDim: Int { heads * headDim }
    public var kvDim: Int { kvHeads * headDim }
    public var isMoE: Bool { experts > 0 }

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
        LayerDimensions(embedding: embeddingLength, headDim: headDim, heads: headCount, kvHeads: headCountKV, experts: expertCount,
                        expertFeedForward: expertFeedForward, sharedFeedForward: sharedExpertFeedForward, denseFeedForward: feedForward)
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
