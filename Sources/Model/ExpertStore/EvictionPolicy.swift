#if canImport(Glibc)
import Glibc
#endif

/// One routed expert of one layer: what the offload cache holds in a slot.
public struct ExpertKey: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let layer: Int
    public let expert: Int
    public init(layer: Int, expert: Int) {
        self.layer = layer
        self.expert = expert
    }
    public static func < (a: ExpertKey, b: ExpertKey) -> Bool { (a.layer, a.expert) < (b.layer, b.expert) }
    public var description: String { "\(layer):\(expert)" }
}

/// Which cached expert to give up when a slot is needed. The same objects drive the real cache
/// (`BudgetedExperts`) and the offline simulator (`CacheSimulator`), so what is measured on traces is what runs.
///
/// `now` is a logical clock: one tick per access group (one layer's experts for one batch).
public protocol EvictionPolicy: AnyObject {
    var name: String { get }
    /// `key` was used at `now` (a hit, or right after its load).
    func accessed(_ key: ExpertKey, now: Int)
    /// `key` left the cache.
    func removed(_ key: ExpertKey)
    /// The candidate to evict first (candidates is never empty).
    func victim(among candidates: [ExpertKey], now: Int) -> ExpertKey
}

/// The policies by name, for `--policy` and the simulator. `default` is what the cache uses unless told.
public enum EvictionPolicies {
    public static let names = ["lru", "lfu-decay"]
    public static let defaultName = "lfu-decay"

    public static func make(_ name: String) -> EvictionPolicy? {
        switch name {
        case "lru": return LRUPolicy()
        case "lfu-decay": return DecayedFrequencyPolicy()
        default: return nil
        }
    }
}

/// Least recently used: the baseline every cache paper compares against.
public final class LRUPolicy: EvictionPolicy {
    public let name = "lru"
    var last: [ExpertKey: Int] = [:]
    public init() {}
    public func accessed(_ key: ExpertKey, now: Int) { last[key] = now }
    public func removed(_ key: ExpertKey) { last[key] = nil }
    public func victim(among candidates: [ExpertKey], now: Int) -> ExpertKey {
        candidates.min { (last[$0] ?? Int.min, $0) < (last[$1] ?? Int.min, $1) }!
    }
}

/// Frequency with exponential decay, on each layer's own clock: each use adds 1 to an expert's score, and
/// scores halve every `halfLife` uses of the expert's layer (tokens, in decode). MoE routers have persistent
/// favourites per layer, which plain recency forgets after one unlucky stretch; the decay lets the favourites
/// change with the text. Counting time per layer matters: layers run in turn, so a global clock makes the
/// experts of the layer that ran last look fresher than equally hot ones of the next layer. Among equal scores
/// the expert whose layer comes round last is evicted (what Belady's optimum would do). Scores survive
/// eviction (a few bytes per expert), so an expert that comes back keeps its history — LRU cannot. (A second,
/// short time scale added only 0.3 points on the held-out trace and let bursts of one-off experts push the
/// favourites out again, so one scale it is.)
public final class DecayedFrequencyPolicy: EvictionPolicy {
    public let name = "lfu-decay"
    let lambda: Double
    var score: [ExpertKey: (value: Double, at: Int)] = [:]
    /// Per layer: groups accessed so far, and the tick of the last one.
    var clock: [Int: (count: Int, tick: Int)] = [:]

    /// `halfLife` in uses of the expert's layer.
    public init(halfLife: Double = 16) { lambda = log(2) / halfLife }

    func current(_ key: ExpertKey) -> Double {
        guard let s = score[key] else { return 0 }
        return s.value * exp(-lambda * Double((clock[key.layer]?.count ?? 0) - s.at))
    }

    public func accessed(_ key: ExpertKey, now: Int) {
        var c = clock[key.layer] ?? (0, Int.min)
        if c.tick != now { c = (c.count + 1, now) }
        clock[key.layer] = c
        score[key] = (current(key) + 1, c.count)
    }

    public func removed(_ key: ExpertKey) {}

    public func victim(among candidates: [ExpertKey], now: Int) -> ExpertKey {
        candidates.max { (expectedNextUse($0), $1) < (expectedNextUse($1), $0) }!
    }

    /// When `key` is expected to be used next, in ticks: its layer comes round again one cycle (one tick per
    /// layer) after it last ran, and then each cycle uses the expert with probability p, estimated from the
    /// decayed score (in steady state score = p / (1 − d) for a per-use decay d). Evicting the latest expected
    /// use is Belady's rule with the future replaced by this estimate.
    func expectedNextUse(_ key: ExpertKey) -> Double {
        let cycle = Double(max(1, clock.count))
        let p = min(1, max(1e-9, current(key) * (1 - exp(-lambda))))
        return Double(clock[key.layer]?.tick ?? 0) + cycle / p
    }
}
