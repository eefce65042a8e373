#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The whole model's routing activity as the server sees it: per (layer, expert), the rows routed there since
/// start and a recent figure that halves every `halfLife` seconds (what the heat map shows: where the traffic
/// is now, not where it was an hour ago). Fed with the growth of stages' `ExpertHeat` counters — from each
/// worker's heartbeats in a cluster, from the engine's own stage in one process.
public final class ExpertActivity: Sendable {
    public let layerCount: Int
    public let experts: Int
    public let halfLife: Double

    public struct Snapshot: Sendable, Equatable {
        /// Rows routed to each expert since start: [layer][expert].
        public var total: [[UInt64]]
        /// The decayed counts at the snapshot's time: [layer][expert].
        public var recent: [[Double]]
    }

    private struct State {
        var total: [UInt64]
        var recent: [Double]
        var at: Double?
    }
    private let state: Mutex<State>

    public init(layers: Int, experts: Int, halfLife: Double = 60) {
        layerCount = layers
        self.experts = experts
        self.halfLife = halfLife
        state = Mutex(State(total: [UInt64](repeating: 0, count: layers * experts), recent: [Double](repeating: 0, count: layers * experts)))
    }

    /// Why `deltas` from a stage starting at `firstLayer` with `experts` per layer cannot be taken (another model,
    /// a cell out of range), or nil. Checked before anything is added, so a bad message changes nothing.
    public func problem(firstLayer: Int, experts: Int, deltas: [(index: Int, delta: UInt64)]) -> String? {
        guard experts == self.experts else { return "counts for \(experts) experts per layer, but the model has \(self.experts)" }
        guard firstLayer >= 0, firstLayer < layerCount else { return "counts from layer \(firstLayer), but the model has \(layerCount) layers" }
        let cells = (layerCount - firstLayer) * experts
        if let bad = deltas.first(where: { $0.index < 0 || $0.index >= cells }) {
            return "count cell \(bad.index) is past the \(cells) cells of layers \(firstLayer)..<\(layerCount)"
        }
        return nil
    }

    /// Adds the growth of a stage's counters (cell index relative to `firstLayer`, as `ExpertHeat.takeDeltas`
    /// gives it) at time `now` (seconds, the server's clock). Cells out of range are ignored; check with `problem`.
    public func add(firstLayer: Int, deltas: [(index: Int, delta: UInt64)], now: Double) {
        let base = firstLayer * experts, cells = layerCount * experts
        state.withLock { s in
            decay(&s, to: now)
            for (i, d) in deltas where base + i >= 0 && base + i < cells {
                s.total[base + i] &+= d
                s.recent[base + i] += Double(d)
            }
        }
    }

    /// The counts at time `now`.
    public func snapshot(now: Double) -> Snapshot {
        state.withLock { s in
            decay(&s, to: now)
            let rows = (0..<layerCount).map { $0 * experts ..< ($0 + 1) * experts }
            return Snapshot(total: rows.map { Array(s.total[$0]) }, recent: rows.map { Array(s.recent[$0]) })
        }
    }

    private func decay(_ s: inout State, to now: Double) {
        defer { s.at = max(s.at ?? now, now) }
        guard let at = s.at, now > at, halfLife > 0 else { return }
        let f = exp2(-(now - at) / halfLife)
        for i in s.recent.indices { s.recent[i] *= f }
    }
}

extension ExpertActivity.Snapshot {
    /// Each layer's imbalance: the busiest holder's share of the layer's recent routed rows, where `holder`
    /// names who computes (layer, expert). 1/holders is even; 1.0 means one holder takes every row (expert
    /// parallelism then gains nothing there). Nil for a layer with no recent rows.
    public func imbalance(holder: (Int, Int) -> String) -> [Double?] {
        recent.enumerated().map { l, row in
            let sum = row.reduce(0, +)
            guard sum > 0 else { return nil }
            var byHolder: [String: Double] = [:]
            for (x, v) in row.enumerated() { byHolder[holder(l, x), default: 0] += v }
            return (byHolder.values.max() ?? 0) / sum
        }
    }

    /// How often a token chose each expert lately, per layer: its recent choices ÷ the layer's recent rows (a row
    /// sums to `expertsUsed`), as planning takes a routing trace's; an empty row for a layer without recent rows.
    public func expertUse(expertsUsed: Int) -> [[Double]] {
        recent.map { row in
            let rows = row.reduce(0, +) / Double(max(1, expertsUsed))
            return rows > 0 ? row.map { $0 / rows } : []
        }
    }

    /// The mean of the layers' imbalances (`imbalance`) over the layers with recent rows, nil when none has.
    public func meanImbalance(holder: (Int, Int) -> String) -> Double? {
        let known = imbalance(holder: holder).compactMap { $0 }
        return known.isEmpty ? nil : known.reduce(0, +) / Double(known.count)
    }
}
