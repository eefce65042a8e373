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

/// Frequency with exponential decay: each use adds 1 to an expert's score, and scores halve every `halfLife`
/// ticks. MoE routers have persistent favourites per layer, which plain recency forgets after one unlucky
/// stretch; the decay lets the favourites change with the text. Scores survive eviction (they are a few bytes
/// per expert), so an expert that comes back keeps its history — that is what LRU cannot do.
public final class DecayedFrequencyPolicy: EvictionPolicy {
    public let name = "lfu-decay"
    let lambda: Double
    var score: [ExpertKey: (value: Double, at: Int)] = [:]

    /// `halfLife` in ticks (one tick per layer access group; a few tokens' worth of layers by default).
    public init(halfLife: Double = 256) { lambda = log(2) / halfLife }

    func current(_ key: ExpertKey, _ now: Int) -> Double {
        guard let s = score[key] else { return 0 }
        return s.value * exp(-lambda * Double(now - s.at))
    }

    public func accessed(_ key: ExpertKey, now: Int) {
        score[key] = (current(key, now) + 1, now)
    }

    public func removed(_ key: ExpertKey) {}

    public func victim(among candidates: [ExpertKey], now: Int) -> ExpertKey {
        candidates.min { (current($0, now), $0) < (current($1, now), $1) }!
    }
}
