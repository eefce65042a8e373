import GGUF

/// What a GGUF file holds, read leniently: every field is optional, so any file — a vocabulary-only file, an
/// architecture we do not run yet — can be described. `ModelConfig` is the strict counterpart used to run a model.
public struct ModelSummary: Sendable {
    public struct Hyperparameters: Sendable, Equatable {
        public var blockCount: Int?
        public var embeddingLength: Int?
        public var feedForwardLength: Int?
        public var headCount: Int?
        public var headCountKV: Int?
        public var keyLength: Int?
        public var valueLength: Int?
        public var expertCount: Int?
        public var expertUsedCount: Int?
        public var expertFeedForwardLength: Int?
        public var expertSharedFeedForwardLength: Int?
        public var contextLength: Int?
        public var ropeFreqBase: Double?
        public var ropeDimensionCount: Int?
        public var ropeScalingType: String?
        public var ropeScalingFactor: Double?
        public var rmsEpsilon: Double?
        public var vocabSize: Int?
    }

    /// Bytes of one layer's tensors (or the global ones), split by what they are for.
    public struct Bytes: Sendable, Equatable {
        public var byCategory: [TensorRole.Category: Int] = [:]
        public var total: Int { byCategory.values.reduce(0, +) }
        public subscript(_ c: TensorRole.Category) -> Int { byCategory[c, default: 0] }
    }

    public let architecture: String?
    public let name: String?
    public let hyperparameters: Hyperparameters
    public let tokenizerModel: String?
    public let tokenizerPre: String?
    public let tokenCount: Int?
    public let tensorCount: Int
    /// ggml type name → number of tensors of that type.
    public let tensorTypes: [String: Int]
    public let tensorBytes: Int
    public let fileBytes: Int
    public let parameters: Int
    /// Indexed by layer number; tensors of layers beyond `blockCount` still get a row.
    public let layers: [Bytes]
    /// Tensors that belong to no layer: embedding, output norm, head.
    public let global: Bytes
    /// Tensors the name table does not know; listed so an unfamiliar file is visible, not hidden.
    public let unknownTensors: [String]

    public init(file: GGUFFile) {
        let arch = file.architecture
        func key(_ suffix: String) -> String { "\(arch ?? "").\(suffix)" }
        var h = Hyperparameters()
        h.blockCount = file.int(key("block_count"))
        h.embeddingLength = file.int(key("embedding_length"))
        h.feedForwardLength = file.int(key("feed_forward_length"))
        h.headCount = file.int(key("attention.head_count"))
        h.headCountKV = file.int(key("attention.head_count_kv"))
        h.keyLength = file.int(key("attention.key_length"))
        h.valueLength = file.int(key("attention.value_length"))
        h.expertCount = file.int(key("expert_count"))
        h.expertUsedCount = file.int(key("expert_used_count"))
        h.expertFeedForwardLength = file.int(key("expert_feed_forward_length"))
        h.expertSharedFeedForwardLength = file.int(key("expert_shared_feed_forward_length"))
        h.contextLength = file.int(key("context_length"))
        h.ropeFreqBase = file.double(key("rope.freq_base"))
        h.ropeDimensionCount = file.int(key("rope.dimension_count"))
        h.ropeScalingType = file.string(key("rope.scaling.type"))
        h.ropeScalingFactor = file.double(key("rope.scaling.factor"))
        h.rmsEpsilon = file.double(key("attention.layer_norm_rms_epsilon"))
        let tokens = file.array("tokenizer.ggml.tokens")
        h.vocabSize = file.int(key("vocab_size")) ?? tokens?.count

        architecture = arch
        name = file.string("general.name")
        hyperparameters = h
        tokenizerModel = file.string("tokenizer.ggml.model")
        tokenizerPre = file.string("tokenizer.ggml.pre")
        tokenCount = tokens?.count

        var types = [String: Int]()
        var layers = [Bytes]()
        var global = Bytes()
        var unknown = [String]()
        var parameters = 0
        var bytes = 0
        for info in file.tensorInfos {
            types[info.type.name, default: 0] += 1
            parameters += info.elementCount
            bytes += info.byteCount
            guard let parsed = TensorName(parsing: info.name) else {
                unknown.append(info.name)
                continue
            }
            if let layer = parsed.layer {
                while layers.count <= layer { layers.append(Bytes()) }
                layers[layer].byCategory[parsed.role.category, default: 0] += info.byteCount
            } else {
                global.byCategory[parsed.role.category, default: 0] += info.byteCount
            }
        }
        tensorCount = file.tensorCount
        tensorTypes = types
        tensorBytes = bytes
        fileBytes = file.fileSize
        self.parameters = parameters
        self.layers = layers
        self.global = global
        unknownTensors = unknown
    }
}
