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

/// Expert selection rules, one per `ArchitectureTraits.Gating`.
public enum Gating {
    public static func route(_ logits: UnsafePointer<Float>, count n: Int, k: Int, traits: ArchitectureTraits) -> Route {
        switch traits.gating {
        case .softmaxThenTopK:
            var p = Array(UnsafeBufferPointer(start: logits, count: n))
            p.withUnsafeMutableBufferPointer { Ops.softmax($0.baseAddress!, count: n) }
            let top = p.withUnsafeBufferPointer { Ops.topK($0.baseAddress!, count: n, k: k) }
            var w = top.map { p[$0] }
            if traits.normalizeExpertWeights {
                // ggml_sum_rows sums in double; llama.cpp clamps the sum away from zero before dividing.
                let sum = max(Float(w.reduce(0.0) { $0 + Double($1) }), 6.103515625e-5)
                w = w.map { $0 / sum }
            }
            return Route(experts: top, weights: w)
        case .topKThenSoftmax:
            // ggml_top_k on the logits, then ggml_soft_max over the k chosen.
            let top = Ops.topK(logits, count: n, k: k)
            var w = top.map { logits[$0] }
            w.withUnsafeMutableBufferPointer { Ops.softmax($0.baseAddress!, count: k) }
            return Route(experts: top, weights: w)
        }
    }
}
