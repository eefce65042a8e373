#if canImport(Glibc)
import Glibc
#endif
import Kernels

/// One row's routing decision: which experts, with what weights, in the order the router ranked them.
public struct Route: Sendable, Equatable {
    public var experts: [Int]
    public var weights: [Float]
    /// Each expert's position in the row's full route (the summation order); nil means 0, 1, 2, …. A provider
    /// handed part of a route (the experts it holds) keeps their original slots.
    public var slots: [Int]?
    public init(experts: [Int], weights: [Float], slots: [Int]? = nil) {
        self.experts = experts
        self.weights = weights
        self.slots = slots
    }
    public func slot(_ i: Int) -> Int { slots?[i] ?? i }

    /// An empty part of a route, to which a splitter appends the experts it hands one provider.
    public static var emptyPart: Route { Route(experts: [], weights: [], slots: []) }

    /// Appends expert `expert` with `weight` at summation slot `slot`.
    public mutating func append(_ expert: Int, weight: Float, slot: Int) {
        experts.append(expert)
        weights.append(weight)
        slots = (slots ?? Array(0..<(experts.count - 1))) + [slot]
    }

    /// Slots per row a results buffer needs for these routes (one past the largest slot).
    public static func slotsPerRow(_ routes: [Route]) -> Int {
        routes.map { r in (0..<r.experts.count).map { r.slot($0) + 1 }.max() ?? 0 }.max() ?? 0
    }

    /// Adds each row's weighted expert outputs (at `(row · slotsPerRow + slot) · embedding` in `results`) into
    /// `output` in route order (slot 0, 1, …), as llama.cpp adds them. Every provider sums through here, which is
    /// what keeps a distributed or offloaded run bit-identical to a single process.
    public static func accumulate(_ routes: [Route], results: UnsafePointer<Float>, slotsPerRow k: Int, embedding e: Int,
                                  into output: UnsafeMutablePointer<Float>) {
        for (r, route) in routes.enumerated() {
            let out = output + r * e
            for s in (0..<route.experts.count).map(route.slot).sorted() {
                let src = results + (r * k + s) * e
                for c in 0..<e { out[c] += src[c] }
            }
        }
    }
}

/// How a layer turns router logits into a route, as llama.cpp's build_moe_ffn does: the logits become
/// probabilities (softmax, sigmoid, or left as they are for a softmax over the chosen), a selection bias may be
/// added for choosing only (DeepSeek-V3's exp_probs_b), the choice may be limited to the best groups of experts
/// (each group scored by its two best), the top k are chosen, and their weights are the probabilities, then
/// renormalised and scaled as the model asks.
public struct RoutingRule: Sendable, Equatable {
    public enum Probabilities: Sendable, Equatable {
        /// softmax over all experts (LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX).
        case softmax
        /// each logit's sigmoid (…_SIGMOID, DeepSeek-V3).
        case sigmoid
        /// the logits themselves; the chosen k's weights are a softmax over them (…_SOFTMAX_WEIGHT, gpt-oss).
        case softmaxOverChosen
    }
    public var probabilities: Probabilities
    /// Divide the chosen weights by their sum (clamped away from zero as llama.cpp does).
    public var normalize: Bool
    /// Multiply the chosen weights by this (`expert_weights_scale`).
    public var scale: Float = 1
    /// Experts fall into this many equal groups; only the best `groupsUsed` groups may be chosen (0: no groups).
    public var groupCount = 0
    public var groupsUsed = 0
    /// Skip a chosen expert under this share of the chosen weights (`ExpertSelection.minWeight`; 0: none).
    public var minWeight: Float = 0

    public init(probabilities: Probabilities, normalize: Bool, scale: Float = 1, groupCount: Int = 0, groupsUsed: Int = 0) {
        self.probabilities = probabilities
        self.normalize = normalize
        self.scale = scale
        self.groupCount = groupCount
        self.groupsUsed = groupsUsed
    }
}

/// Expert selection: router logits → a route, by the layer's `RoutingRule`.
public enum Gating {
    public static func route(_ logits: UnsafePointer<Float>, count n: Int, k: Int, traits: ArchitectureTraits) -> Route {
        route(logits, count: n, k: k, rule: traits.routing)
    }

    /// `selectionBias` (n values) is added to the probabilities for choosing, not to the weights.
    public static func route(_ logits: UnsafePointer<Float>, count n: Int, k: Int, rule: RoutingRule,
                             selectionBias: UnsafePointer<Float>? = nil) -> Route {
        var p = Array(UnsafeBufferPointer(start: logits, count: n))
        switch rule.probabilities {
        case .softmax: p.withUnsafeMutableBufferPointer { Ops.softmax($0.baseAddress!, count: n) }
        case .sigmoid: for i in 0..<n { p[i] = 1 / (1 + expf(-p[i])) }
        case .softmaxOverChosen: break
        }
        var selection = p
        if let b = selectionBias { for i in 0..<n { selection[i] += b[i] } }
        if rule.groupCount > 1, rule.groupsUsed < rule.groupCount, n % rule.groupCount == 0 {
            // Each group scored by the sum of its two best; the other groups' experts cannot be chosen.
            let size = n / rule.groupCount
            let scores = (0..<rule.groupCount).map { g -> Float in
                let best = selection.withUnsafeBufferPointer { Ops.topK($0.baseAddress! + g * size, count: size, k: min(2, size)) }
                return best.reduce(Float(0)) { $0 + selection[g * size + $1] }
            }
            let kept = Set(scores.withUnsafeBufferPointer { Ops.topK($0.baseAddress!, count: rule.groupCount, k: rule.groupsUsed) })
            for g in 0..<rule.groupCount where !kept.contains(g) {
                for i in (g * size)..<((g + 1) * size) { selection[i] = -.infinity }
            }
        }
        let top = selection.withUnsafeBufferPointer { Ops.topK($0.baseAddress!, count: n, k: k) }
        var w = top.map { p[$0] }
        if rule.probabilities == .softmaxOverChosen { w.withUnsafeMutableBufferPointer { Ops.softmax($0.baseAddress!, count: k) } }
        if rule.normalize {
            // ggml_sum_rows sums in double; llama.cpp clamps the sum away from zero before dividing.
            let sum = max(Float(w.reduce(0.0) { $0 + Double($1) }), 6.103515625e-5)
            w = w.map { $0 / sum }
        }
        if rule.scale != 1 { w = w.map { $0 * rule.scale } }
        return ExpertSelection.thin(Route(experts: top, weights: w), minWeight: rule.minWeight)
    }
}
