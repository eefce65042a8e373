import GGUF
import Kernels

/// Binds tensor names to views of the mapped file, strictly: a missing tensor, a wrong shape, or a tensor
/// of the bound layers left unused is an error naming it.
struct TensorBinder {
    let file: GGUFFile
    private(set) var used: Set<String> = []

    init(file: GGUFFile) { self.file = file }

    mutating func tensor(_ name: TensorName, shape: [Int]) throws(ModelError) -> GGUFTensor {
        let n = name.description
        guard let t = file.tensor(named: n) else { throw ModelError("\(file.path): missing tensor '\(n)'") }
        // Trailing dimensions of 1 are dropped by some writers; compare without them.
        func trimmed(_ s: [Int]) -> [Int] {
            var s = s
            while s.count > 1 && s.last == 1 { s.removeLast() }
            return s
        }
        guard trimmed(t.shape) == trimmed(shape) else {
            throw ModelError("\(file.path): tensor '\(n)' has shape \(t.shape), expected \(shape)")
        }
        used.insert(n)
        return t
    }

    mutating func matrix(_ name: TensorName, cols: Int, rows: Int) throws(ModelError) -> WeightMatrix {
        let t = try tensor(name, shape: [cols, rows])
        return try matrix(t, cols: cols, rows: rows)
    }

    func matrix(_ t: GGUFTensor, cols: Int, rows: Int) throws(ModelError) -> WeightMatrix {
        do {
            return try WeightMatrix(type: t.type, rows: rows, cols: cols, data: t.data)
        } catch {
            throw ModelError("\(file.path): tensor '\(t.name)': \(error)")
        }
    }

    /// A small vector (norm weights) read into floats whatever its stored type.
    mutating func vector(_ name: TensorName, count: Int) throws(ModelError) -> [Float] {
        let t = try tensor(name, shape: [count])
        do {
            return try Dequantize.toFloats(t.type, t.bytes, count: count)
        } catch {
            throw ModelError("\(file.path): tensor '\(t.name)': \(error)")
        }
    }

    /// Errors on any tensor of `layers` (and, if `global`, of no layer) that was not bound.
    func checkAllUsed(layers: Range<Int>, global: Bool) throws(ModelError) {
        for info in file.tensorInfos where !used.contains(info.name) {
            let parsed = TensorName(parsing: info.name)
            let mine = parsed.map { $0.layer.map { layers.contains($0) } ?? global } ?? global
            if mine { throw ModelError("\(file.path): tensor '\(info.name)' is not used by the \(file.architecture ?? "") architecture; the file does not match what Conclave expects") }
        }
    }
}

/// Expert weights of one MoE layer: the three stacked 3-D tensors, sliced per expert without copying.
public struct ExpertWeights: Sendable {
    public let gate: WeightMatrix  // (expertCount · expertFF) rows × embd
    public let up: WeightMatrix
    public let down: WeightMatrix  // (expertCount · embd) rows × expertFF
    public let expertFF: Int
    public let embd: Int
    /// Every expert's biases, stacked as the tensors store them (gpt-oss): gate and up expertCount × expertFF,
    /// down expertCount × embd. Small, so read into memory whatever holds the matrices.
    public var biases: (gate: [Float], up: [Float], down: [Float])?
    public var activation: ExpertActivation = .swiglu

    public init(gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix, expertFF: Int, embd: Int) {
        self.gate = gate
        self.up = up
        self.down = down
        self.expertFF = expertFF
        self.embd = embd
    }

    public var expertCount: Int { gate.rows / expertFF }
    public func gate(_ e: Int) -> WeightMatrix { gate.rows((e * expertFF)..<((e + 1) * expertFF)) }
    public func up(_ e: Int) -> WeightMatrix { up.rows((e * expertFF)..<((e + 1) * expertFF)) }
    public func down(_ e: Int) -> WeightMatrix { down.rows((e * embd)..<((e + 1) * embd)) }
    public func matrices(_ e: Int) -> ExpertMatrices { matrices(e, gate: gate(e), up: up(e), down: down(e)) }

    /// Expert `e`'s matrices given where their bytes are, with its biases and the activation.
    public func matrices(_ e: Int, gate g: WeightMatrix, up u: WeightMatrix, down d: WeightMatrix) -> ExpertMatrices {
        let f = expertFF
        let bias = biases.map { b in
            ExpertBias(gate: b.gate[(e * f)..<((e + 1) * f)], up: b.up[(e * f)..<((e + 1) * f)], down: b.down[(e * embd)..<((e + 1) * embd)])
        }
        return ExpertMatrices(gate: g, up: u, down: d, bias: bias, activation: activation)
    }

    /// The same experts with their matrices elsewhere (packed), biases and activation kept.
    func with(gate g: WeightMatrix, up u: WeightMatrix, down d: WeightMatrix) -> ExpertWeights {
        var w = ExpertWeights(gate: g, up: u, down: d, expertFF: expertFF, embd: embd)
        w.biases = biases
        w.activation = activation
        return w
    }

    static func bind(_ b: inout TensorBinder, layer i: Int, config c: ModelConfig) throws(ModelError) -> ExpertWeights {
        let spec = FeedForwardBlock.tensors(layer: i, c.dimensions, c.traits)
        var w = ExpertWeights(gate: try b.matrix(.block(i, .expertGate), in: spec), up: try b.matrix(.block(i, .expertUp), in: spec),
                              down: try b.matrix(.block(i, .expertDown), in: spec), expertFF: c.expertFeedForward, embd: c.embeddingLength)
        if c.traits.expertBias {
            w.biases = (try b.vector(.block(i, .expertGate, "bias"), in: spec), try b.vector(.block(i, .expertUp, "bias"), in: spec),
                        try b.vector(.block(i, .expertDown, "bias"), in: spec))
        }
        w.activation = c.traits.expertActivation
        return w
    }

    /// The stacked expert tensors of one layer of a model file, unpacked views of the mapping.
    public static func bind(file: GGUFFile, config: ModelConfig, layer: Int) throws(ModelError) -> ExpertWeights {
        guard config.hasExperts(layer: layer) else { throw ModelError("layer \(layer) of \(file.path) has no routed experts") }
        var binder = TensorBinder(file: file)
        return try bind(&binder, layer: layer, config: config)
    }
}

/// A shared expert: a SwiGLU FFN every token goes through, scaled by sigmoid(gateInput · x) where it has a gate
/// (qwen2moe) and added as it is otherwise (deepseek2).
public struct SharedExpertWeights: Sendable {
    public let gateInput: [Float]?  // embd: the scalar gate's weights
    public let gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix
}

/// The feed-forward half of a layer: routed experts (with an optional shared expert) or a dense FFN.
public enum FeedForwardWeights: Sendable {
    case moe(router: WeightMatrix, experts: ExpertWeights, shared: SharedExpertWeights?)
    case dense(gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix)

    public var experts: ExpertWeights? {
        if case .moe(_, let e, _) = self { return e }
        return nil
    }
}

/// Weights of one transformer layer: its attention block and its feed-forward block.
public struct LayerWeights: Sendable {
    public let attention: Attention
    public let feedForward: FeedForwardBlock
    public var ffn: FeedForwardWeights { feedForward.weights }

    /// The tensors of layer `i`, as the blocks declare them (what the binder checks and `conclave synth` writes).
    public static func tensors(layer i: Int, _ d: LayerDimensions, _ t: ArchitectureTraits) -> [TensorSpec] {
        Attention.tensors(layer: i, d, t) + FeedForwardBlock.tensors(layer: i, d, t)
    }

    static func bind(_ b: inout TensorBinder, layer i: Int, config c: ModelConfig) throws(ModelError) -> LayerWeights {
        LayerWeights(attention: try Attention.bind(&b, layer: i, config: c), feedForward: try FeedForwardBlock.bind(&b, layer: i, config: c))
    }
}

/// The tensors outside the layers: token embedding, final norm, output head.
public struct GlobalWeights: Sendable {
    public let tokenEmbedding: WeightMatrix  // vocab rows × embd
    public let outputNorm: [Float]
    public let output: WeightMatrix  // vocab rows × embd (the embedding itself when the model ties them)

    static func bind(_ b: inout TensorBinder, config c: ModelConfig) throws(ModelError) -> GlobalWeights {
        let embd = try b.matrix(.global(.tokenEmbedding), cols: c.embeddingLength, rows: c.vocabSize)
        let norm = try b.vector(.global(.outputNorm), count: c.embeddingLength)
        let out = b.file.tensorInfo(named: TensorName.global(.output).description) != nil
            ? try b.matrix(.global(.output), cols: c.embeddingLength, rows: c.vocabSize) : embd
        return GlobalWeights(tokenEmbedding: embd, outputNorm: norm, output: out)
    }
}
