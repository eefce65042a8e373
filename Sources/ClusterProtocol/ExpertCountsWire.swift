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

public extension Array where Element == Conclave_V1_LayerHeat {
    /// A status reply's heat rows: each layer's recent choices, choices since start and imbalance.
    init(_ snapshot: ExpertActivity.Snapshot, holder: (Int, Int) -> String) {
        let imbalance = snapshot.imbalance(holder: holder)
        self = snapshot.recent.indices.map { l in
            var row = Conclave_V1_LayerHeat()
            row.recent = snapshot.recent[l].map(Float.init)
            row.choices = snapshot.total[l].reduce(0, +)
            row.imbalance = imbalance[l] ?? -1
            return row
        }
    }

    /// Why these rows cannot be drawn (too many, non-finite values), or nil: a client checks what it shows.
    var problem: String? {
        guard count <= 4096 else { return "\(count) layers of expert heat" }
        for (l, row) in enumerated() {
            guard row.recent.count <= 65536, row.recent.allSatisfy({ $0.isFinite && $0 >= 0 }), row.imbalance.isFinite, row.imbalance <= 1 else {
                return "layer \(l)'s expert heat is out of range"
            }
        }
        return nil
    }
}
