/// Where everything lives: contiguous layer ranges per stage worker (pipeline parallelism) and, per MoE layer,
/// which worker holds each expert (expert parallelism). Deterministic; checked before anything loads.
public struct Plan: Sendable, Equatable {
    public struct Stage: Sendable, Equatable {
        public let worker: String
        public let layers: Range<Int>
    }

    public let workers: [ClusterFile.Worker]
    public let stages: [Stage]
    /// experts[layer][expert] = index into `workers`.
    public let experts: [[Int]]
    /// Bytes each worker will hold (weights + KV), by index into `workers`.
    public let bytes: [Int]

    public func stage(ofLayer l: Int) -> Stage? { stages.first { $0.layers.contains(l) } }

    /// Experts a worker holds, as (layer, expert) pairs.
    public func experts(of worker: Int) -> [(layer: Int, expert: Int)] {
        experts.enumerated().flatMap { l, row in row.enumerated().filter { $0.element == worker }.map { (l, $0.offset) } }
    }
}

/// The planner: a pure function of the model's footprint and the cluster file.
public enum Planner {
    public static func plan(_ model: ModelFootprint, cluster: ClusterFile) throws(PlacementError) -> Plan {
        let workers = cluster.workers
        let L = model.layerCount, E = model.expertCount
        var used = [Int](repeating: 0, count: workers.count)
        let total = model.totalBytes
        let capacity = workers.reduce(0) { $0 + $1.memory }
        guard total <= capacity else {
            throw PlacementError("the model needs \(human(total)) (weights + KV) but the cluster's budgets add up to \(human(capacity)); add \(human(total - capacity)) of worker memory or use a smaller quantization")
        }

        // 1. Layers: contiguous ranges over the stage-capable workers, sized by their budgets.
        let stageWorkers = workers.indices.filter { workers[$0].role != .experts }
        let usable = Array(stageWorkers.prefix(L))
        let full = (0..<L).map { model.layerBytes[$0] + model.expertBytes[$0] * E }
        let budget = usable.reduce(0) { $0 + workers[$1].memory }
        var stages: [Plan.Stage] = []
        var start = 0
        var acc = 0.0
        let fullTotal = Double(full.reduce(0, +) + model.embeddingBytes + model.headBytes)
        for (k, w) in usable.enumerated() {
            let remainingStages = usable.count - k - 1
            acc += fullTotal * Double(workers[w].memory) / Double(budget)
            var end = start
            var sum = Double(model.embeddingBytes) + Double(full[0..<start].reduce(0, +))
            // Take layers while the running total stays within this worker's cumulative share, leaving at
            // least one layer for each worker after it.
            while end < L - remainingStages && (end == start || sum + Double(full[end]) <= acc) {
                sum += Double(full[end])
                end += 1
            }
            if k == usable.count - 1 { end = L }
            stages.append(Plan.Stage(worker: workers[w].name, layers: start..<end))
            start = end
        }

        // The layers' fixed bytes (and embedding/head) must fit on their stage worker.
        for (k, s) in stages.enumerated() {
            let w = usable[k]
            var need = s.layers.reduce(0) { $0 + model.layerBytes[$1] }
            if s.layers.lowerBound == 0 { need += model.embeddingBytes }
            if s.layers.upperBound == L { need += model.headBytes }
            guard need <= workers[w].memory else {
                throw PlacementError("worker '\(workers[w].name)' holds layers \(s.layers.lowerBound)..<\(s.layers.upperBound), which need \(human(need)) before any expert (attention, norms, routers, KV), but its budget is \(human(workers[w].memory))")
            }
            used[w] += need
        }

        // 2. Experts: with their layer's stage worker while it has room, then on the expert-capable worker
        // with the most free memory (ties: the earlier worker in the file).
        var experts = [[Int]](repeating: [Int](repeating: -1, count: E), count: L)
        for (k, s) in stages.enumerated() {
            let owner = usable[k]
            for l in s.layers {
                let size = model.expertBytes[l]
                for e in 0..<E {
                    // A 'stage' worker holds layers only; an 'any' worker keeps its layers' experts while it has room.
                    if workers[owner].role == .any, used[owner] + size <= workers[owner].memory {
                        experts[l][e] = owner
                        used[owner] += size
                        continue
                    }
                    var best = -1
                    for w in workers.indices where w != owner && workers[w].role != .stage && used[w] + size <= workers[w].memory {
                        if best < 0 || workers[w].memory - used[w] > workers[best].memory - used[best] { best = w }
                    }
                    guard best >= 0 else {
                        let free = workers.indices.filter { workers[$0].role != .stage }.map { workers[$0].memory - used[$0] }.max() ?? 0
                        throw PlacementError("expert \(e) of layer \(l) (\(human(size))) fits on no worker: the most free memory left on an expert-capable worker is \(human(max(0, free))); add memory or workers with role 'any' or 'experts'")
                    }
                    experts[l][e] = best
                    used[best] += size
                }
            }
        }
        return Plan(workers: workers, stages: stages, experts: experts, bytes: used)
    }

    static func human(_ n: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(n), u = 0
        while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
        return u == 0 ? "\(n) B" : "\((v * 100).rounded() / 100) \(units[u])"
    }
}
