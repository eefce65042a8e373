import JSON
import Model
import Telemetry

public extension ExpertActivity.Snapshot {
    /// `GET /v1/cluster/experts`: per layer, the rows routed to each expert since start (`total`; `choices` is
    /// their sum, rows × experts used per token) and lately (`recent`, halving every `halfLife` seconds), who
    /// computes each expert (`holder(layer, expert)`, a worker's name), the choices each holder took lately and
    /// the layer's imbalance (the busiest holder's share of the recent choices: what bounds expert parallelism
    /// there).
    func json(halfLife: Double, holder: (Int, Int) -> String) -> JSONValue {
        let imbalance = imbalance(holder: holder)
        let layers: [JSONValue] = total.indices.map { l in
            var byHolder: [(String, [Int], Double)] = []
            for x in total[l].indices {
                let h = holder(l, x)
                if let i = byHolder.firstIndex(where: { $0.0 == h }) {
                    byHolder[i].1.append(x)
                    byHolder[i].2 += recent[l][x]
                } else {
                    byHolder.append((h, [x], recent[l][x]))
                }
            }
            return .object([
                ("layer", .int(l)),
                ("choices", .uint(total[l].reduce(0, +))),
                ("total", .array(total[l].map { .uint($0) })),
                ("recent", .array(recent[l].map { .double(Self.round2($0)) })),
                ("holders", .array(byHolder.map { name, experts, rows in
                    .object([("worker", .string(name)), ("experts", .array(experts.map { .int($0) })), ("recent_choices", .double(Self.round2(rows)))])
                })),
                ("imbalance", imbalance[l].map { .double(Self.round2($0 * 1000) / 1000) } ?? .null),
            ])
        }
        return .object([("object", .string("cluster.experts")), ("experts_per_layer", .int(total.first?.count ?? 0)),
                        ("half_life_seconds", .double(halfLife)), ("layers", .array(layers))])
    }

    private static func round2(_ x: Double) -> Double { (x * 100).rounded() / 100 }

    /// The bounded /metrics view: one imbalance per layer, one counter of choices per holder.
    func mirror(into m: MetricsRegistry, holder: (Int, Int) -> String) {
        let c = ServingMetrics.catalog
        for (l, share) in imbalance(holder: holder).enumerated() {
            m.handle(c.expertImbalance, [MetricLabel("layer", String(l))]).set(share ?? 0)
        }
        var choices: [String: UInt64] = [:]
        for (l, row) in total.enumerated() { for (x, n) in row.enumerated() { choices[holder(l, x), default: 0] += n } }
        for (worker, n) in choices { m.handle(c.expertChoices, [MetricLabel("worker", worker)]).advance(toTotal: Double(n)) }
    }
}
