import Model
import Wire

public extension ExpertSet {
    /// The sets of an Assign (per layer, its experts).
    init(wire sets: [Conclave_V1_ExpertSet]) {
        var lists: [Int: [Int]] = [:]
        for set in sets { lists[Int(set.layer), default: []] += set.experts.map(Int.init) }
        self.init(lists)
    }
}

public extension Array where Element == Conclave_V1_ExpertSet {
    /// (layer, expert) pairs as an Assign's sets: one per layer, in layer order.
    init(pairs: [(layer: Int, expert: Int)]) {
        var held: [Int: [UInt32]] = [:]
        for (l, e) in pairs { held[l, default: []].append(UInt32(e)) }
        self = held.keys.sorted().map { l in
            var set = Conclave_V1_ExpertSet()
            set.layer = UInt32(l)
            set.experts = held[l]!
            return set
        }
    }
}
