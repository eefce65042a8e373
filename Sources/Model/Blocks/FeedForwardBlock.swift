#if canImport(Glibc)
import Glibc
#endif
import GGUF
import Runtime
import Kernels

/// The feed-forward half of a layer: RMS norm, then routed experts (through the stage's `ExpertProvider`,
/// wherever they live, plus qwen2moe's shared expert) or a dense SwiGLU FFN, added to the residual. Its
/// tensors are the table `tensors(layer:_:_:)`, which the binder and `conclave synth` both read.
public struct FeedForwardBlock: Sendable {
    public let norm: [Float]
    public let weights: FeedForwardWeights
    /// Added to the router's logits before gating (gpt-oss).
    public var routerBias: [Float]?
    /// Added to the routing probabilities for choosing experts only (DeepSeek-V3).
    public var selectionBias: [Float]?

    /// The tensors of layer `i`'s feed-forward half: routed experts when the model has them, else a dense FFN.
    public static func tensors(layer i: Int, _ d: LayerDimensions, _ t: ArchitectureTraits) -> [TensorSpec] {
        let e = d.embedding
        var out = [TensorSpec(.block(i, t.ffnNormRole), [e])]
        if d.hasExperts(layer: i) {
            let f = d.expertFeedForward, n = d.experts
            out += [TensorSpec(.block(i, .router), [e, n]), TensorSpec(.block(i, .expertGate), [e, f, n]),
                    TensorSpec(.block(i, .expertUp), [e, f, n]), TensorSpec(.block(i, .expertDown), [f, e, n])]
            if t.routerBias { out.append(TensorSpec(.block(i, .router, "bias"), [n])) }
            if d.selectionBias { out.append(TensorSpec(.block(i, .expertProbBias, "bias"), [n])) }
            if t.expertBias {
                out += [TensorSpec(.block(i, .expertGate, "bias"), [f, n]), TensorSpec(.block(i, .expertUp, "bias"), [f, n]),
                        TensorSpec(.block(i, .expertDown, "bias"), [e, n])]
            }
            let s = d.sharedFeedForward
            if t.sharedExpert == .gated { out.append(TensorSpec(.block(i, .sharedExpertRouter), [e])) }
            if t.sharedExpert != .none {
                out += [TensorSpec(.block(i, .sharedGate), [e, s]), TensorSpec(.block(i, .sharedUp), [e, s]), TensorSpec(.block(i, .sharedDown), [s, e])]
            }
        } else {
            let f = d.denseFeedForward
            out += [TensorSpec(.block(i, .ffnGate), [e, f]), TensorSpec(.block(i, .ffnUp), [e, f]), TensorSpec(.block(i, .ffnDown), [f, e])]
        }
        return out
    }

    static func bind(_ b: inout TensorBinder, layer i: Int, config c: ModelConfig) throws(ModelError) -> FeedForwardBlock {
        let spec = tensors(layer: i, c.dimensions, c.traits)
        let norm = try b.vector(.block(i, c.traits.ffnNormRole), in: spec)
        guard c.hasExperts(layer: i) else {
            return FeedForwardBlock(norm: norm, weights: .dense(gate: try b.matrix(.block(i, .ffnGate), in: spec), up: try b.matrix(.block(i, .ffnUp), in: spec),
                                                                down: try b.matrix(.block(i, .ffnDown), in: spec)))
        }
        var shared: SharedExpertWeights?
        if c.traits.sharedExpert != .none {
            shared = SharedExpertWeights(gateInput: c.traits.sharedExpert == .gated ? try b.vector(.block(i, .sharedExpertRouter), in: spec) : nil, gate: try b.matrix(.block(i, .sharedGate), in: spec),
                                         up: try b.matrix(.block(i, .sharedUp), in: spec), down: try b.matrix(.block(i, .sharedDown), in: spec))
        }
        var block = FeedForwardBlock(norm: norm, weights: .moe(router: try b.matrix(.block(i, .router), in: spec),
                                                               experts: try ExpertWeights.bind(&b, layer: i, config: c), shared: shared))
        if c.traits.routerBias { block.routerBias = try b.vector(.block(i, .router, "bias"), in: spec) }
        if c.selectionBias { block.selectionBias = try b.vector(.block(i, .expertProbBias, "bias"), in: spec) }
        return block
    }

    /// The matrices repacked for this host's kernels; of the routed experts only `heldExperts`.
    func packed(in file: GGUFFile, heldExperts: [Int]) throws(ModelError) -> FeedForwardBlock {
        switch weights {
        case .moe(let router, let experts, let shared):
            var s: SharedExpertWeights?
            if let sh = shared {
                s = SharedExpertWeights(gateInput: sh.gateInput, gate: try file.packed(sh.gate), up: try file.packed(sh.up), down: try file.packed(sh.down))
            }
            var block = FeedForwardBlock(norm: norm, weights: .moe(router: router, experts: try experts.packed(in: file, held: heldExperts), shared: s))
            block.routerBias = routerBias
            block.selectionBias = selectionBias
            return block
        case .dense(let gate, let up, let down):
            return FeedForwardBlock(norm: norm, weights: .dense(gate: try file.packed(gate), up: try file.packed(up), down: try file.packed(down)))
        }
    }

    /// `t` rows of `hidden` normed with this block's norm, into `normed`.
    func normalize(_ hidden: UnsafePointer<Float>, _ t: Int, config c: ModelConfig, into normed: UnsafeMutablePointer<Float>) {
        let e = c.embeddingLength
        for r in 0..<t { Ops.rmsNorm(hidden + r * e, weight: norm, count: e, eps: c.rmsEpsilon, into: normed + r * e) }
    }

    /// The router's choice for `t` normed rows: logits, then the architecture's gating rule. Nil for a dense block.
    func route(_ x: UnsafePointer<Float>, _ t: Int, config c: ModelConfig, pool: ThreadPool) throws -> [Route]? {
        guard case .moe(let router, _, _) = weights else { return nil }
        let n = c.expertCount, k = c.expertsUsed
        let logits = UnsafeMutablePointer<Float>.allocate(capacity: t * n)
        defer { logits.deallocate() }
        try MatMul.multiply(router, x, batch: t, into: logits, pool: pool)
        if let b = routerBias { for r in 0..<t { for j in 0..<n { logits[r * n + j] += b[j] } } }
        return (0..<t).map { r in
            selectionBias.map { b in b.withUnsafeBufferPointer { Gating.route(logits + r * n, count: n, k: k, rule: c.routing, selectionBias: $0.baseAddress!) } }
                ?? Gating.route(logits + r * n, count: n, k: k, rule: c.routing)
        }
    }

    /// hidden += FFN(norm(hidden)) for the batch's rows: layer `l`'s routed experts through `experts` (counted in
    /// `heat`; after
    /// `beforeExperts`, the stage's moment to read the next layer's experts ahead) plus the shared expert, or
    /// the dense FFN.
    func forward(layer l: Int, _ hidden: UnsafeMutablePointer<Float>, rows t: Int, config c: ModelConfig, experts: ExpertProvider,
                 heat: ExpertHeat? = nil, pool: ThreadPool, beforeExperts: () throws -> Void) throws {
        let e = c.embeddingLength
        let normed = UnsafeMutablePointer<Float>.allocate(capacity: t * e), out = UnsafeMutablePointer<Float>.allocate(capacity: t * e)
        defer { normed.deallocate(); out.deallocate() }
        normalize(hidden, t, config: c, into: normed)
        out.initialize(repeating: 0, count: t * e)
        switch weights {
        case .moe(_, _, let shared):
            let routes = try route(normed, t, config: c, pool: pool)!
            heat?.record(layer: l, routes: routes)
            try beforeExperts()
            try experts.apply(layer: l, input: normed, rows: t, embedding: e, routes: routes, output: out)
            if let shared { try sharedExpert(shared, normed, t, config: c, pool: pool, into: out) }
        case .dense(let gate, let up, let down):
            try Self.swiglu(gate: gate, up: up, down: down, normed, t, pool: pool, into: out)
        }
        for i in 0..<(t * e) { hidden[i] += out[i] }
    }

    /// down(silu(gate·x) ⊙ up·x) for t rows, written to `out`.
    static func swiglu(gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix, _ x: UnsafePointer<Float>, _ t: Int, pool: ThreadPool,
                       into out: UnsafeMutablePointer<Float>) throws {
        let ff = gate.rows
        let g = UnsafeMutablePointer<Float>.allocate(capacity: t * ff), u = UnsafeMutablePointer<Float>.allocate(capacity: t * ff)
        defer { g.deallocate(); u.deallocate() }
        try MatMul.multiply(gate, x, batch: t, into: g, pool: pool)
        try MatMul.multiply(up, x, batch: t, into: u, pool: pool)
        Ops.swiglu(gate: g, up: u, count: t * ff)
        try MatMul.multiply(down, g, batch: t, into: out, pool: pool)
    }

    /// The shared expert, scaled per row by sigmoid(gateInput · x) where it has a gate (qwen2moe), added to `out`.
    private func sharedExpert(_ s: SharedExpertWeights, _ x: UnsafePointer<Float>, _ t: Int, config c: ModelConfig, pool: ThreadPool,
                              into out: UnsafeMutablePointer<Float>) throws {
        let e = c.embeddingLength
        let y = UnsafeMutablePointer<Float>.allocate(capacity: t * e)
        defer { y.deallocate() }
        try Self.swiglu(gate: s.gate, up: s.up, down: s.down, x, t, pool: pool, into: y)
        for r in 0..<t {
            var scale: Float = 1
            if let g = s.gateInput {
                var dot: Float = 0
                for i in 0..<e { dot += g[i] * x[r * e + i] }
                scale = 1 / (1 + expf(-dot))
            }
            for i in 0..<e { out[r * e + i] += y[r * e + i] * scale }
        }
    }
}
