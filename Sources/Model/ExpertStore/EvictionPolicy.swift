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
    public static let names = ["lru", "lfu-decay", "markov"]
    public static let defaultName = "markov"

    public static func make(_ name: String) -> EvictionPolicy? {
        switch name {
        case "lru": return LRUPolicy()
        case "lfu-decay": return DecayedFrequencyPolicy()
        case "markov": return MarkovPolicy()
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

/// A two-state model of each expert's use, learnt online: the probability that its layer's next turn uses it
/// when the last turn did (routers are sticky: 0.43–0.61 on the shipped model, against 0.25 at random) and when
/// the last turn did not, each a moving average over turns of its layer. The victim is the expert least likely
/// to be used within the next `horizon` turns of its layer, counting how soon its layer comes round (the next
/// layer's experts are needed before those of the layer that just ran). On the held-out trace at half the
/// experts cached: LRU 75.4%, `lfu-decay` 79.9%, this 80.7%, MIN 88.4% (`conclave bench offload --trace`);
/// horizons 1–3 turns were within 0.2 points of each other, 4 and more fell towards plain frequency.
/// An expert never seen has used nothing yet: probability 0, the first to go. Estimates survive eviction.
public final class MarkovPolicy: EvictionPolicy {
    public let name = "markov"
    let rate: Double
    let horizon: Double

    struct Estimate {
        var afterUse = 0.0, afterIdle = 0.0
        var usedLast = false
    }
    var estimates: [ExpertKey: Estimate] = [:]
    /// Per layer: the experts seen so far (each turn of the layer updates them all, used or not).
    var known: [Int: [ExpertKey]] = [:]
    /// Per layer: the turn still being accessed (its tick and experts), folded in once a later tick comes.
    var open: [Int: (tick: Int, used: Set<ExpertKey>)] = [:]
    /// Layers in order, and the latest folded turn: where the cycle of layers stands.
    var layers: [Int] = []
    var last: (layer: Int, tick: Int)?

    /// `rate`: weight of each turn in the moving averages; `horizon`: in turns of the expert's layer.
    public init(rate: Double = 1.0 / 32, horizon: Double = 2) {
        self.rate = rate
        self.horizon = horizon
    }

    public func accessed(_ key: ExpertKey, now: Int) {
        if let o = open[key.layer], o.tick != now { fold(key.layer) }
        if estimates[key] == nil {
            estimates[key] = Estimate()
            known[key.layer, default: []].append(key)
            if !layers.contains(key.layer) { layers.append(key.layer); layers.sort() }
        }
        open[key.layer, default: (now, [])].used.insert(key)
    }

    public func removed(_ key: ExpertKey) {}

    public func victim(among candidates: [ExpertKey], now: Int) -> ExpertKey {
        for (layer, turn) in open.sorted(by: { $0.value.tick < $1.value.tick }) where turn.tick < now { fold(layer) }
        return candidates.min { (useProbability($0), $1) < (useProbability($1), $0) }!
    }

    /// Folds a finished turn of `layer` into its experts' estimates.
    func fold(_ layer: Int) {
        guard let turn = open.removeValue(forKey: layer) else { return }
        for key in known[layer] ?? [] {
            var e = estimates[key]!
            let used = turn.used.contains(key)
            let x = used ? 1.0 : 0.0
            if e.usedLast { e.afterUse += (x - e.afterUse) * rate } else { e.afterIdle += (x - e.afterIdle) * rate }
            e.usedLast = used
            estimates[key] = e
        }
        if last == nil || turn.tick > last!.tick { last = (layer, turn.tick) }
    }

    /// P(used within the horizon): its layer's next turn uses it with the estimate for its last state, each
    /// later one with the estimate after an idle turn; the turns still to come before its layer's next one
    /// shorten the horizon by that fraction of a cycle.
    func useProbability(_ key: ExpertKey) -> Double {
        guard let e = estimates[key] else { return 0 }
        let next = e.usedLast ? e.afterUse : e.afterIdle
        var h = horizon
        if let last, let i = layers.firstIndex(of: key.layer), let j = layers.firstIndex(of: last.layer) {
            let n = layers.count
            h -= Double(((i - j - 1) % n + n) % n) / Double(n)
        }
        return 1 - (1 - next) * pow(1 - e.afterIdle, max(0, h - 1))
    }
}
