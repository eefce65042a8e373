import GGUF
import Runtime
import Kernels

/// Writes a random-weight model of any shape: benchmark models (the scaled-down Qwen3-30B-A3B of
/// ../shared/models/README.md § Speed) and test models for architectures with no shared file.
///
/// Weights are Gaussian-like with std gain/√fan_in, and the head is scaled up so next-token logits are peaked
/// rather than near-uniform — a comparison of top-1 tokens with llama.cpp then means something.
public struct ModelSynthesizer {
    public struct Shape: Sendable {
        /// The smallest MoE model worth running: one layer 64 wide, two experts — e.g. a draft that is cheap and
        /// (with random weights) always wrong.
        public static var minimal: Shape {
            var s = Shape()
            s.layers = 1
            s.embd = 64
            s.heads = 2
            s.kvHeads = 1
            s.experts = 2
            s.used = 1
            s.expertFF = 64
            return s
        }

        public var architecture = "qwen3moe"
        public var layers = 4
        public var embd = 256
        public var heads = 8
        public var kvHeads = 2
        public var headDim = 32
        public var experts = 8
        public var used = 2
        public var expertFF = 256
        /// The shared expert's width (qwen2moe).
        public var sharedFF = 512
        public var context = 4096
        public var ropeBase: Float = 1_000_000
        public var rmsEps: Float = 1e-6
        /// Positions a sliding-window layer attends to (architectures whose traits slide).
        public var slidingWindow = 128
        /// YaRN rope scaling: (factor, original context), nil for none.
        public var yarn: (factor: Float, originalContext: Int)?
        /// The routed experts' type when it differs from the file type's (gpt-oss ships MXFP4 experts).
        public var expertType: GGMLType?
        /// The dense FFN's width (leading dense layers, dense llama); nil: `expertFF`.
        public var denseFF: Int?
        /// Latent attention's sizes (deepseek2; `headDim` is then unused).
        public var latent = LatentAttentionShape(queryRank: 64, latentRank: 64, noPositionDim: 32, ropeDim: 16, valueDim: 32)
        /// Dense layers first, and shared experts of the routed experts' width (deepseek2).
        public var leadingDense = 1
        public var sharedExperts = 1
        /// Routing written to the file's keys (nil: the architecture's own): sigmoid writes an `exp_probs_b`.
        public var gating: RoutingRule.Probabilities?
        public var normalizeWeights: Bool?
        public var weightsScale: Float?
        /// Expert groups: (count, used), nil for none.
        public var groups: (count: Int, used: Int)?
        /// YaRN's `rope.scaling.yarn_log_multiplier` (deepseek2: 0.1 × mscale_all_dim).
        public var yarnLogMultiplier: Float?
        public init() {}

        /// The sizes the blocks' tensor tables read, for `traits`.
        func dimensions(_ traits: ArchitectureTraits) -> LayerDimensions {
            let latent = traits.attention == .latent ? self.latent : nil
            // The file's key/value lengths and KV heads: what the cache holds (see ModelConfig.cacheKeyWidth).
            let head = latent.map { $0.cachesLatent ? $0.latentRank + $0.ropeDim : $0.queryHeadDim } ?? headDim
            let kv = latent.map { $0.cachesLatent ? 1 : heads } ?? kvHeads
            var d = LayerDimensions(embedding: embd, headDim: head, heads: heads, kvHeads: kv, experts: experts, expertFeedForward: expertFF,
                                    sharedFeedForward: traits.sharedExpert == .ungated ? expertFF * sharedExperts : traits.sharedExpert == .gated ? sharedFF : 0,
                                    denseFeedForward: denseFF ?? expertFF)
            d.latent = latent
            d.leadingDense = traits.leadingDenseLayers ? leadingDense : 0
            d.selectionBias = traits.expertSelectionBias == .always || (traits.expertSelectionBias == .ifPresent && gating == .sigmoid)
            return d
        }
    }

    public let shape: Shape
    public let fileType: FileType
    public let seed: UInt64
    /// Where the tokenizer comes from (its `tokenizer.*` keys are copied); its vocabulary sets the model's.
    public let vocabulary: GGUFFile

    public init(shape: Shape, fileType: FileType, seed: UInt64, vocabulary: GGUFFile) {
        self.shape = shape
        self.fileType = fileType
        self.seed = seed
        self.vocabulary = vocabulary
    }

    /// Tensor names and shapes (ggml order) of the architecture, as llama.cpp's loader expects them: the
    /// blocks' own tables (`LayerWeights.tensors`), which the binder checks a file against.
    func tensors() throws -> [(TensorName, [Int])] {
        let s = shape, vocab = vocabulary.array("tokenizer.ggml.tokens")?.count ?? 32000
        guard let traits = ArchitectureTraits.registry[s.architecture] else {
            throw ModelError("synth writes \(Self.architectures.joined(separator: ", ")); '\(s.architecture)' is not supported")
        }
        let d = s.dimensions(traits)
        var out: [(TensorName, [Int])] = [(.global(.tokenEmbedding), [s.embd, vocab])]
        for i in 0..<s.layers { out += LayerWeights.tensors(layer: i, d, traits).map { ($0.name, $0.shape) } }
        out += [(.global(.outputNorm), [s.embd]), (.global(.output), [s.embd, vocab])]
        return out
    }

    /// Every registered architecture.
    public static let architectures = ArchitectureTraits.registry.keys.sorted()

    public func write(to path: String, pool: ThreadPool, progress: (Int, Int, String) -> Void = { _, _, _ in }) throws -> Int {
        let s = shape, a = s.architecture
        guard Self.architectures.contains(a) else {
            throw ModelError("synth writes \(Self.architectures.joined(separator: ", ")); '\(a)' is not supported")
        }
        guard s.used <= s.experts, s.heads % s.kvHeads == 0 else { throw ModelError("--used must be ≤ --experts and --heads a multiple of --kv-heads") }
        if let g = s.groups, g.count > 1 {
            guard s.experts % g.count == 0, g.used >= 1, g.used <= g.count, g.used * (s.experts / g.count) >= s.used else {
                throw ModelError("--groups \(g.count) must divide --experts \(s.experts), and --groups-used \(g.used) groups must hold the \(s.used) experts used")
            }
        }
        let list = try tensors()
        let infos = list.map { GGUFTensorInfo(name: $0.0.description, type: .f32, shape: $0.1, offset: 0, byteCount: 0) }
        let recipe = QuantizationRecipe(fileType: fileType, overrides: s.expertType.map { [(#"_exps\.weight"#, $0)] } ?? [],
                                        expertCount: s.experts, gqa: s.heads / s.kvHeads,
                                        layerCount: s.layers, tiedEmbeddings: false, attentionVCount: s.layers)
        let types = try recipe.plan(infos)

        let w = GGUFWriter(path: path)
        try w.set("general.architecture", .string(a))
        try w.set("general.name", .string("conclave-synth-\(a)-\(s.layers)L-\(s.embd)d-\(s.experts)x\(s.used)"))
        try w.set("general.file_type", .uint32(UInt32(fileType.rawValue)))
        try w.set("general.quantization_version", .uint32(2))
        let traits = ArchitectureTraits.registry[a]!, d = s.dimensions(traits)
        func u32(_ v: Int) -> GGUFValue { .uint32(UInt32(v)) }
        var keys: [(ModelKey, GGUFValue)] = [
            (.contextLength, u32(s.context)), (.embeddingLength, u32(s.embd)), (.blockCount, u32(s.layers)),
            (.feedForwardLength, u32(d.denseFeedForward)), (.headCount, u32(s.heads)), (.headCountKV, u32(d.kvHeads)),
            (.keyLength, u32(d.headDim)), (.valueLength, u32(d.latent.map { $0.cachesLatent ? $0.latentRank : $0.valueDim } ?? d.headDim)),
            (.rmsEpsilon, .float32(s.rmsEps)), (.ropeFreqBase, .float32(s.ropeBase)),
            (.expertCount, u32(s.experts)), (.expertUsedCount, u32(s.used)),
            (.expertFeedForwardLength, u32(s.expertFF)), (.ropeDimensionCount, u32(d.latent?.ropeDim ?? d.headDim)),
            (.vocabSize, u32(vocabulary.array("tokenizer.ggml.tokens")?.count ?? 32000)),
        ]
        if traits.sharedExpert == .gated { keys.append((.expertSharedFeedForwardLength, u32(s.sharedFF))) }
        if traits.sharedExpert == .ungated { keys.append((.expertSharedCount, u32(s.sharedExperts))) }
        if traits.slidingWindowPattern > 0 { keys.append((.slidingWindow, u32(s.slidingWindow))) }
        if traits.leadingDenseLayers { keys.append((.leadingDenseBlockCount, u32(d.leadingDense))) }
        if let m = d.latent {
            keys += [(.queryLoraRank, u32(m.queryRank)), (.keyValueLoraRank, u32(m.latentRank))]
            if m.cachesLatent { keys += [(.keyLengthMLA, u32(m.queryHeadDim)), (.valueLengthMLA, u32(m.valueDim))] }
        }
        if let y = s.yarn {
            keys += [(.ropeScalingType, .string("yarn")), (.ropeScalingFactor, .float32(y.factor)), (.ropeScalingOriginalContext, u32(y.originalContext))]
            if let m = s.yarnLogMultiplier { keys.append((.ropeScalingYarnLogMultiplier, .float32(m))) }
        }
        if let g = s.gating {
            // llama_expert_gating_func_type: 1 softmax, 2 sigmoid, 3 softmax over the chosen.
            keys.append((.expertGatingFunc, u32(g == .softmax ? 1 : g == .sigmoid ? 2 : 3)))
        }
        if let n = s.normalizeWeights { keys.append((.expertWeightsNorm, .bool(n))) }
        if let w = s.weightsScale { keys.append((.expertWeightsScale, .float32(w))) }
        if let g = s.groups { keys += [(.expertGroupCount, u32(g.count)), (.expertGroupUsedCount, u32(g.used))] }
        for (k, v) in keys { try w.set(k.name(a), v) }
        for (k, v) in vocabulary.metadata where k.hasPrefix("tokenizer.") { try w.set(k, v) }
        for (info, type) in zip(infos, types) { try w.addTensor(name: info.name, type: type, shape: info.shape) }

        var index = 0
        try w.write { out, sink in
            index += 1
            progress(index, infos.count, out.name)
            let (name, shape) = list[index - 1]
            try generate(name: name, shape: shape, type: out.type, seed: seed &+ UInt64(index) &* 0x9E37_79B9, sink: sink, pool: pool)
        }
        return (try? GGUFFile(path: path).fileSize) ?? 0
    }

    /// Values of one tensor, generated and quantized in chunks of rows.
    func generate(name: TensorName, shape: [Int], type: GGMLType, seed: UInt64, sink: TensorSink, pool: ThreadPool) throws {
        let cols = shape[0], rows = shape.dropFirst().reduce(1, *)
        let outRow = type.rowBytes(elements: cols)!
        let (mean, std): (Float, Float)
        switch name.role.category {
        case .norm: (mean, std) = (1, 0.05)
        case _ where name.suffix == "bias": (mean, std) = (0, 0.1)
        case _ where name.role == .attnSinks: (mean, std) = (0, 1)
        case .head: (mean, std) = (0, 4 / Float(cols).squareRoot())  // peaked logits
        case .embedding: (mean, std) = (0, 1)
        case .router: (mean, std) = (0, 2 / Float(cols).squareRoot())
        case _ where name.role == .sharedExpertRouter: (mean, std) = (0, 2 / Float(cols).squareRoot())
        default: (mean, std) = (0, 1 / Float(cols).squareRoot())
        }
        let chunk = 256
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: outRow * min(rows, chunk), alignment: 64)
        defer { buffer.deallocate() }
        var start = 0
        while start < rows {
            let n = min(chunk, rows - start)
            let base = start
            pool.parallelFor(n) { range in
                let x = UnsafeMutablePointer<Float>.allocate(capacity: cols)
                defer { x.deallocate() }
                for r in range {
                    var state = seed &+ UInt64(base + r) &* 0xD1B5_4A32_D192_ED03
                    for c in 0..<cols { x[c] = mean + std * Self.gaussian(&state) }
                    try! Quantize.row(x, count: cols, to: type, buffer + r * outRow)
                }
            }
            try sink.write(UnsafeRawBufferPointer(start: buffer, count: n * outRow))
            start += n
        }
    }

    /// An approximately normal value: the sum of four uniforms, rescaled (cheap, and plenty for random weights).
    @inline(__always) static func gaussian(_ s: inout UInt64) -> Float {
        var sum: Float = 0
        for _ in 0..<4 {
            s &+= 0x9E37_79B9_7F4A_7C15
            var z = s
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            sum += Float(z >> 40) / Float(1 << 24)
        }
        return (sum - 2) * 1.7320508  // variance of the sum of 4 U(0,1) is 1/3
    }
}
