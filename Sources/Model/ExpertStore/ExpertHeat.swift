import Synchronization

/// How often each router chose each expert, counted where the routers run (a stage): one counter per (layer,
/// expert) of the stage's layers, one count per row a route sends to the expert. The dashboard's heat map and
/// `GET /v1/cluster/experts` are made of these; a worker ships what grew since its last heartbeat
/// (`takeDeltas`), so the message stays bounded by layers × experts whatever the traffic.
public final class ExpertHeat: Sendable {
    public let layers: Range<Int>
    public let experts: Int
    private struct Counts {
        var total: [UInt64]
        /// `total` when the deltas were last taken.
        var sent: [UInt64]
        /// Layer passes recorded, and the distinct experts they chose summed: what a pass reads of the layer's
        /// experts (each chosen expert once for all the rows that chose it), the bytes `bench serve`'s ceiling counts.
        var passes: UInt64 = 0
        var reads: UInt64 = 0
    }
    private let counts: Mutex<Counts>

    public init(layers: Range<Int>, experts: Int) {
        self.layers = layers
        self.experts = experts
        let zero = [UInt64](repeating: 0, count: layers.count * experts)
        counts = Mutex(Counts(total: zero, sent: zero))
    }

    /// One layer's routes of a step: each expert a row chose counts once.
    public func record(layer: Int, routes: [Route]) {
        guard layers.contains(layer) else { return }
        let base = (layer - layers.lowerBound) * experts, n = experts
        // One pass: each choice counted, and the distinct experts marked in a bit set.
        var chosen = [UInt64](repeating: 0, count: (n + 63) / 64)
        counts.withLock { c in
            for route in routes {
                for x in route.experts where x >= 0 && x < n {
                    c.total[base + x] += 1
                    chosen[x >> 6] |= 1 << UInt64(x & 63)
                }
            }
            if !routes.isEmpty {
                c.passes += 1
                c.reads += UInt64(chosen.reduce(0) { $0 + $1.nonzeroBitCount })
            }
        }
    }

    /// Layer passes recorded and the distinct experts they read, since start.
    public var reads: (passes: UInt64, experts: UInt64) { counts.withLock { ($0.passes, $0.reads) } }

    /// Counts since start, row-major: layer (from `layers.lowerBound`), then expert.
    public var totals: [UInt64] { counts.withLock { $0.total } }

    /// Every count that grew since the last call, as (index into `totals`, growth), and marks them taken.
    public func takeDeltas() -> [(index: Int, delta: UInt64)] {
        counts.withLock { c in
            var out: [(Int, UInt64)] = []
            for i in c.total.indices where c.total[i] != c.sent[i] { out.append((i, c.total[i] - c.sent[i])) }
            c.sent = c.total
            return out
        }
    }
}
