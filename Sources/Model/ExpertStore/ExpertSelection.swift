/// Fewer routed experts per token than the file asks for: speed for some quality, off by default. Decode reads
/// each chosen expert's weights, so the experts a token skips are bytes not read (ktransformers runs DeepSeek with
/// 6 of its 8; dynamic-routing work skips experts whose weight is small).
/// - `used`: route each token to this many experts instead of the file's `expert_used_count` (at most that);
/// - `minWeight`: after routing, skip a chosen expert whose share of the chosen weights is below this; the
///   best-weighted one always stays, and the kept weights are scaled back to the chosen ones' sum, so the layer's
///   output keeps its size.
public struct ExpertSelection: Sendable, Equatable, CustomStringConvertible {
    public var used: Int?
    public var minWeight: Float

    public init(used: Int? = nil, minWeight: Float = 0) {
        self.used = used
        self.minWeight = minWeight
    }

    /// The file's routing as it is.
    public static let file = ExpertSelection()
    public var isFile: Bool { used == nil && minWeight == 0 }

    public var description: String {
        isFile ? "the file's experts" : [used.map { "\($0) experts per token" }, minWeight > 0 ? "skipping experts under \(minWeight) of a token's weight" : nil]
            .compactMap { $0 }.joined(separator: ", ")
    }

    /// Why this cannot apply to a model routing `fileUsed` of `expertCount` experts (nil: it can).
    public func problem(fileUsed: Int, expertCount: Int) -> String? {
        if let used {
            guard expertCount > 0 else { return "--experts-used \(used): the model has no routed experts" }
            guard used >= 1, used <= fileUsed else { return "--experts-used \(used) must be between 1 and the \(fileUsed) experts the model routes each token to" }
        }
        guard minWeight.isFinite, minWeight >= 0, minWeight < 1 else { return "--expert-min-weight \(minWeight) must be at least 0 and below 1 (a share of a token's expert weights)" }
        if minWeight > 0, expertCount == 0 { return "--expert-min-weight: the model has no routed experts" }
        return nil
    }

    /// Drops the experts of `route` under `minWeight` of its weights (see the type's comment); what `Gating`
    /// does with a rule's `minWeight`.
    static func thin(_ route: Route, minWeight: Float) -> Route {
        guard minWeight > 0, route.experts.count > 1 else { return route }
        let total = route.weights.reduce(Float(0), +)
        guard total > 0 else { return route }
        let best = route.weights.indices.max { route.weights[$0] < route.weights[$1] }!
        let kept = route.weights.indices.filter { $0 == best || route.weights[$0] / total >= minWeight }
        guard kept.count < route.experts.count else { return route }
        let keptSum = kept.reduce(Float(0)) { $0 + route.weights[$1] }
        // Same order as the router ranked them, so the sum over experts keeps its order.
        return Route(experts: kept.map { route.experts[$0] }, weights: kept.map { route.weights[$0] * total / keptSum })
    }
}
