import Model
import Wire

public extension Conclave_V1_ExpertCounts {
    /// What grew in a stage's `ExpertHeat` since the last heartbeat.
    init(heat: ExpertHeat, deltas: [(index: Int, delta: UInt64)]) {
        self.init()
        firstLayer = UInt32(heat.layers.lowerBound)
        experts = UInt32(heat.experts)
        index = deltas.map { UInt32($0.index) }
        delta = deltas.map(\.delta)
    }

    /// The counts for `activity`, checked: one delta per index, cells within the model's layers and experts.
    func checked(for activity: ExpertActivity) throws(WireError) -> (firstLayer: Int, deltas: [(index: Int, delta: UInt64)]) {
        guard index.count == delta.count else {
            throw WireError(.malformed, "expert counts list \(index.count) cells but \(delta.count) counts")
        }
        let deltas = zip(index, delta).map { (index: Int($0), delta: $1) }
        if let problem = activity.problem(firstLayer: Int(firstLayer), experts: Int(experts), deltas: deltas) {
            throw WireError(.malformed, "expert counts: \(problem)")
        }
        return (Int(firstLayer), deltas)
    }
}
