import GGUF

/// Which experts each layer chose at each position of a text: what the offload cache's policies are judged on.
/// `conclave trace-experts` writes it (one JSON object a line: `{"layer", "position", "experts"}`), and
/// `CacheSimulator` replays it.
public struct RoutingTrace: Sendable, Equatable {
    public struct Event: Sendable, Equatable, Codable {
        public let layer: Int
        public let position: Int
        public let experts: [Int]
        public init(layer: Int, position: Int, experts: [Int]) {
            self.layer = layer
            self.position = position
            self.experts = experts
        }
    }
    /// In decode order: positions ascending, layers ascending within a position.
    public let events: [Event]

    public init(events: [Event]) {
        self.events = events.sorted { ($0.position, $0.layer) < ($1.position, $1.layer) }
    }

    /// Distinct (layer, expert) pairs the trace uses.
    public var keys: Set<ExpertKey> { Set(events.flatMap { e in e.experts.map { ExpertKey(layer: e.layer, expert: $0) } }) }

    /// How often a token chooses each expert, per layer: its picks ÷ the positions traced in that layer (a row
    /// sums to the experts used per token). A layer the trace does not cover has an empty row. Throws when the
    /// trace names a layer or expert the model does not have (a trace of another model).
    public func expertUse(layers: Int, experts: Int) throws -> [[Double]] {
        var picks = [[Double]](repeating: [], count: layers)
        var positions = [Int](repeating: 0, count: layers)
        for e in events {
            guard e.layer < layers, e.experts.allSatisfy({ $0 < experts }) else {
                throw ModelError("the routing trace names layer \(e.layer) experts \(e.experts), but the model has \(layers) layers of \(experts) experts: was it traced on another model?")
            }
            if picks[e.layer].isEmpty { picks[e.layer] = [Double](repeating: 0, count: experts) }
            for x in e.experts { picks[e.layer][x] += 1 }
            positions[e.layer] += 1
        }
        return zip(picks, positions).map { row, n in row.map { $0 / Double(max(1, n)) } }
    }

    /// Runs `tokens` through the model in chunks of `chunk` (each chunk a fresh sequence, as perplexity does)
    /// and records every row's route. Routing is batch-invariant, so this is what token-by-token decode chooses.
    public static func record(file: GGUFFile, threads: Int, tokens: [Int32], chunk: Int,
                              progress: (Int, Int) -> Void = { _, _ in }) throws -> RoutingTrace {
        let config = try ModelConfig(file: file)
        guard config.isMoE else { throw ModelError("\(file.path) has no routed experts to trace") }
        var recorder: RecordingExperts?
        let engine = try Engine(file: file, threads: threads) { pool in
            let all = ExpertSet.every(layers: 0..<config.layerCount, expertCount: config.expertCount)
            let r = RecordingExperts(inner: try ResidentExperts.load(file: file, config: config, held: all, pool: pool).0)
            recorder = r
            return r
        }
        engine.maxBatch = max(1, chunk)
        var events: [Event] = []
        var start = 0
        while start < tokens.count {
            let part = Array(tokens[start..<min(tokens.count, start + engine.maxBatch)])
            recorder!.calls.removeAll()
            _ = try engine.evaluate(part, in: engine.newSequence(capacity: part.count))
            for (layer, routes) in recorder!.calls {
                for (r, route) in routes.enumerated() { events.append(Event(layer: layer, position: start + r, experts: route.experts)) }
            }
            start += part.count
            progress(start, tokens.count)
        }
        return RoutingTrace(events: events)
    }
}

/// A provider that computes with `inner` and remembers each call's routes (for tracing).
final class RecordingExperts: ExpertProvider, @unchecked Sendable {
    let inner: ExpertProvider
    var calls: [(layer: Int, routes: [Route])] = []
    init(inner: ExpertProvider) { self.inner = inner }
    func weightedOutputs(layer: Int, input x: ExpertInput, routes: [Route], slotsPerRow k: Int,
                         into results: UnsafeMutablePointer<Float>) throws {
        calls.append((layer, routes))
        try inner.weightedOutputs(layer: layer, input: x, routes: routes, slotsPerRow: k, into: results)
    }
}

/// Replays a routing trace against a cache of `capacity` experts, one access group per (position, layer) as
/// decode makes them: the experts of a group must all be cached at once (they are pinned while it computes).
public enum CacheSimulator {
    public struct Result: Sendable, Equatable {
        public let hits: Int
        public let misses: Int
        public var hitRate: Double { hits + misses > 0 ? Double(hits) / Double(hits + misses) : 0 }
    }

    /// With an eviction policy, exactly as `BudgetedExperts` uses it in decode.
    public static func run(_ trace: RoutingTrace, capacity: Int, policy: EvictionPolicy) -> Result {
        var cached: Set<ExpertKey> = []
        var hits = 0, misses = 0
        for (now, event) in trace.events.enumerated() {
            let group = event.experts.map { ExpertKey(layer: event.layer, expert: $0) }
            for key in group {
                if cached.contains(key) {
                    hits += 1
                } else {
                    misses += 1
                    if cached.count >= capacity {
                        let candidates = cached.filter { !group.contains($0) }.sorted()
                        guard !candidates.isEmpty else { continue }
                        let victim = policy.victim(among: candidates, now: now)
                        cached.remove(victim)
                        policy.removed(victim)
                    }
                    cached.insert(key)
                }
                policy.accessed(key, now: now)
            }
        }
        return Result(hits: hits, misses: misses)
    }

    /// Belady's optimal replacement (MIN): on a miss, evict the cached expert used again furthest in the future.
    /// No policy can do better on the same trace and capacity, so it is the ceiling the others are measured by.
    public static func optimal(_ trace: RoutingTrace, capacity: Int) -> Result {
        let groups = trace.events.map { e in e.experts.map { ExpertKey(layer: e.layer, expert: $0) } }
        // nextUse[g][i]: the next group after g that uses groups[g][i] (Int.max: never again).
        var nextUse = groups.map { [Int](repeating: Int.max, count: $0.count) }
        var seen: [ExpertKey: Int] = [:]
        for g in groups.indices.reversed() {
            for (i, key) in groups[g].enumerated() { nextUse[g][i] = seen[key] ?? Int.max }
            for key in groups[g] { seen[key] = g }
        }
        var cached: [ExpertKey: Int] = [:]  // key → its next use
        var hits = 0, misses = 0
        for (g, group) in groups.enumerated() {
            for (i, key) in group.enumerated() {
                if cached[key] != nil {
                    hits += 1
                } else {
                    misses += 1
                    if cached.count >= capacity {
                        let candidates = cached.filter { !group.contains($0.key) }
                        guard let victim = candidates.max(by: { ($0.value, $0.key) < ($1.value, $1.key) }) else { continue }
                        cached[victim.key] = nil
                    }
                }
                cached[key] = nextUse[g][i]
            }
        }
        return Result(hits: hits, misses: misses)
    }
}
