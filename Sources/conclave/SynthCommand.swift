import ArgumentParser
import GGUF
import Runtime
import Kernels
import Model

struct SynthCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "synth",
        abstract: "Write a random-weight model of any shape (benchmarks, tests of architectures with no shared model).",
        discussion: """
        The benchmark model of ../shared/models/README.md § Speed:
          conclave synth --layers 16 --embd 2048 --heads 16 --kv-heads 4 --head-dim 128 --experts 64 --used 8 \\
                         --expert-ff 256 --ctx 4096 --type Q4_0 -o bench-q4_0.gguf
        Tensor types follow llama-quantize's recipe for --type (norms and routers F32, head Q6_K, …).
        A DeepSeek-V3-like model: latent attention, one dense layer first, a shared expert, sigmoid routing with
        a selection bias over 4 groups of which 2 may be chosen:
          conclave synth --arch deepseek2 --layers 3 --experts 16 --used 4 --gating sigmoid --norm-weights true \\
                         --weights-scale 2.5 --groups 4 --groups-used 2 --type F16 -o ds.gguf
        """
    )

    @Option(help: "Architecture: qwen3moe, qwen2moe, olmoe, llama (Mixtral-style), gpt-oss, deepseek2.") var arch = "qwen3moe"
    @Option(help: "Transformer layers.") var layers = 4
    @Option(help: "Embedding width.") var embd = 256
    @Option(help: "Query heads.") var heads = 8
    @Option(name: .customLong("kv-heads"), help: "Key/value heads.") var kvHeads = 2
    @Option(name: .customLong("head-dim"), help: "Head size.") var headDim = 32
    @Option(help: "Experts per MoE layer.") var experts = 8
    @Option(help: "Experts used per token.") var used = 2
    @Option(name: .customLong("expert-ff"), help: "Expert feed-forward width.") var expertFF = 256
    @Option(name: .customLong("shared-ff"), help: "Shared expert width (qwen2moe).") var sharedFF = 512
    @Option(help: "Context length.") var ctx = 4096
    @Option(name: .customLong("sliding-window"), help: "Positions a sliding-window layer attends to (gpt-oss: every other layer).") var slidingWindow = 128
    @Option(name: .customLong("rope-base"), help: "RoPE frequency base.") var ropeBase: Float = 1_000_000
    @Option(name: .customLong("yarn-factor"), help: "Write YaRN rope scaling with this factor (with --yarn-original-ctx); 0: none.") var yarnFactor: Float = 0
    @Option(name: .customLong("yarn-original-ctx"), help: "YaRN's original context length.") var yarnOriginalCtx = 4096
    @Option(help: "llama.cpp file type (F16, Q8_0, Q4_0, Q4_K_M, …).") var type = "Q4_0"
    @Option(name: .customLong("expert-type"), help: "The routed experts' tensor type when it should differ from --type (e.g. MXFP4, as gpt-oss ships).") var expertType: String?
    @Option(name: .customLong("dense-ff"), help: "Dense FFN width (deepseek2's leading dense layers; default --expert-ff).") var denseFF: Int?
    @Option(name: .customLong("q-lora-rank"), help: "deepseek2: rank of Q's low-rank pair (0: one plain attn_q).") var qLoraRank = 64
    @Option(name: .customLong("kv-lora-rank"), help: "deepseek2: width of the cached key-value latent.") var kvLoraRank = 64
    @Option(name: .customLong("nope-dim"), help: "deepseek2: per-head query/key size without rope.") var nopeDim = 32
    @Option(name: .customLong("rope-dim"), help: "deepseek2: per-head rope size (shared rope key).") var ropeDim = 16
    @Option(name: .customLong("value-dim"), help: "deepseek2: per-head value size.") var valueDim = 32
    @Flag(name: .customLong("unsplit-kv-b"), help: "deepseek2: write the older unsplit attn_kv_b (as files converted before 2025-04) instead of attn_k_b/attn_v_b.") var unsplitKVB = false
    @Option(name: .customLong("dense-layers"), help: "deepseek2: dense layers before the MoE ones (leading_dense_block_count).") var denseLayers = 1
    @Option(name: .customLong("shared-experts"), help: "deepseek2: shared experts (each --expert-ff wide).") var sharedExperts = 1
    @Option(help: "Routing: softmax, sigmoid (writes a selection bias exp_probs_b, deepseek2) or softmax-chosen; default: the architecture's.") var gating: String?
    @Option(name: .customLong("norm-weights"), help: "Write expert_weights_norm (true/false).") var normWeights: Bool?
    @Option(name: .customLong("weights-scale"), help: "Write expert_weights_scale.") var weightsScale: Float?
    @Option(help: "Expert groups (expert_group_count); with --groups-used.") var groups: Int?
    @Option(name: .customLong("groups-used"), help: "Groups a token's experts may come from.") var groupsUsed: Int?
    @Option(name: .customLong("yarn-log-multiplier"), help: "deepseek2: rope.scaling.yarn_log_multiplier (0.1 × mscale_all_dim).") var yarnLogMultiplier: Float?
    @Option(help: "Random seed.") var seed: UInt64 = 1
    @Option(name: .customLong("vocab-from"), help: "GGUF whose tokenizer to copy (default: the shipped model).")
    var vocabFrom: String = defaultModelPath
    @Option(name: .short, help: "Output .gguf file.") var output: String
    @Option(help: "Threads (default: every core).") var threads: Int = ThreadPool.availableCores

    func validate() throws {
        if let problem = ThreadPool.problem(threads: threads) { throw ValidationError(problem) }
        // GGUF stores each as uint32.
        for (name, v) in [("--layers", layers), ("--embd", embd), ("--heads", heads), ("--kv-heads", kvHeads), ("--head-dim", headDim),
                          ("--experts", experts), ("--used", used), ("--expert-ff", expertFF), ("--shared-ff", sharedFF), ("--ctx", ctx),
                          ("--sliding-window", slidingWindow), ("--yarn-original-ctx", yarnOriginalCtx)]
        where v < 1 || v > Int(UInt32.max) {
            throw ValidationError("\(name) \(v) is outside 1...\(UInt32.max)")
        }
        if used > experts { throw ValidationError("--used \(used) is more than --experts \(experts)") }
        for (name, v) in [("--q-lora-rank", qLoraRank), ("--dense-layers", denseLayers), ("--shared-experts", sharedExperts)] where v < 0 || v > 1 << 20 {
            throw ValidationError("\(name) \(v) is outside 0...\(1 << 20)")
        }
        for (name, v) in [("--kv-lora-rank", kvLoraRank), ("--nope-dim", nopeDim), ("--rope-dim", ropeDim), ("--value-dim", valueDim), ("--dense-ff", denseFF ?? 1)]
        where v < 1 || v > 1 << 20 {
            throw ValidationError("\(name) \(v) is outside 1...\(1 << 20)")
        }
        if ropeDim % 2 != 0 { throw ValidationError("--rope-dim must be even") }
        if arch == "deepseek2" && denseLayers > layers { throw ValidationError("--dense-layers \(denseLayers) is more than --layers \(layers)") }
        if (groups == nil) != (groupsUsed == nil) { throw ValidationError("give --groups and --groups-used together") }
        if let g = gating, !["softmax", "sigmoid", "softmax-chosen"].contains(g) { throw ValidationError("--gating is softmax, sigmoid or softmax-chosen") }
        if !(yarnFactor == 0 || yarnFactor >= 1) || !(ropeBase > 1) { throw ValidationError("--yarn-factor must be 0 or at least 1, --rope-base above 1") }
    }

    func run() throws {
        guard let ft = FileType(name: type) else {
            throw ValidationError("unknown type '\(type)'; one of \(FileType.allCases.map(\.name).joined(separator: ", "))")
        }
        var s = ModelSynthesizer.Shape()
        s.architecture = arch
        s.layers = layers
        s.embd = embd
        s.heads = heads
        s.kvHeads = kvHeads
        s.headDim = headDim
        s.experts = experts
        s.used = used
        s.expertFF = expertFF
        s.sharedFF = sharedFF
        s.context = ctx
        if let expertType {
            guard let t = GGMLType.allCases.first(where: { $0.name.lowercased() == expertType.lowercased() }), Quantize.supported.contains(t) else {
                throw ValidationError("--expert-type \(expertType) cannot be written; one of \(Quantize.supported.map(\.name).sorted().joined(separator: ", "))")
            }
            s.expertType = t
        }
        s.denseFF = denseFF
        s.latent = LatentAttentionShape(queryRank: qLoraRank, latentRank: kvLoraRank, noPositionDim: nopeDim, ropeDim: ropeDim, valueDim: valueDim,
                                       cachesLatent: !unsplitKVB)
        s.leadingDense = denseLayers
        s.sharedExperts = sharedExperts
        s.gating = gating.map { ["softmax": .softmax, "sigmoid": .sigmoid][$0] ?? .softmaxOverChosen }
        s.normalizeWeights = normWeights
        s.weightsScale = weightsScale
        s.groups = groups.map { ($0, groupsUsed ?? $0) }
        s.yarnLogMultiplier = yarnLogMultiplier
        s.slidingWindow = slidingWindow
        s.ropeBase = ropeBase
        s.yarn = yarnFactor > 0 ? (yarnFactor, yarnOriginalCtx) : nil
        let vocab = try openGGUF(vocabFrom)
        let start = MonotonicClock.seconds()
        do {
            let bytes = try ModelSynthesizer(shape: s, fileType: ft, seed: seed, vocabulary: vocab)
                .write(to: output, pool: ThreadPool(threads: threads)) { i, n, name in
                    if i == 1 || i == n || i % 12 == 0 { printError("[\(i)/\(n)] \(name)") }
                }
            printError("wrote \(output): \(formatBytes(bytes)) in \(fixed(MonotonicClock.seconds() - start, 1)) s")
        } catch {
            printError("error: \(error)")
            throw ExitCode(1)
        }
    }
}
