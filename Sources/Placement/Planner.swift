import Model
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
    /// Bytes each worker will hold (weights + KV + offload slots), by index into `workers`.
    public let bytes: [Int]
    /// paged[layer][expert]: the expert's worker reads it from its local GGUF on use instead of keeping it.
    public let paged: [[Bool]]
    /// Offload cache slots per worker (0: it pages nothing).
    public let slots: [Int]

    /// Whether any expert is paged (the cluster cannot hold the whole model in memory).
    public var offloads: Bool { slots.contains { $0 > 0 } }

    public func stage(ofLayer l: Int) -> Stage? { stages.first { $0.layers.contains(l) } }

    /// Whether the worker named `name` holds anything (a stage, or experts); a spare holds nothing.
    public func uses(_ name: String) -> Bool {
        guard let i = workers.firstIndex(where: { $0.name == name }) else { return false }
        return stages.contains { $0.worker == name } || experts.contains { $0.contains(i) }
    }

    /// The name of the worker that computes (layer, expert), "?" outside the plan.
    public func holder(layer l: Int, expert x: Int) -> String {
        l < experts.count && x < experts[l].count ? workers[experts[l][x]].name : "?"
    }

    /// Experts a worker computes (resident or paged), as (layer, expert) pairs.
    public func experts(of worker: Int) -> [(layer: Int, expert: Int)] {
        experts.enumerated().flatMap { l, row in row.enumerated().filter { $0.element == worker }.map { (l, $0.offset) } }
    }

    /// The worker's experts it keeps in memory, or (`paged: true`) reads on use.
    public func experts(of worker: Int, paged: Bool) -> [(layer: Int, expert: Int)] {
        experts(of: worker).filter { self.paged[$0.layer][$0.expert] == paged }
    }

    /// The worker's part as the budget formula (`ShardBudget`) reads it: its layers, resident and paged experts, slots.
    public func shard(of worker: Int) -> ShardBudget.Shard {
        let layers = stages.first { $0.worker == workers[worker].name }?.layers ?? 0..<0
        func set(_ pairs: [(layer: Int, expert: Int)]) -> ExpertSet {
            ExpertSet(Dictionary(grouping: pairs, by: \.layer).mapValues { $0.map(\.expert) })
        }
        return ShardBudget.Shard(layers: layers, resident: set(experts(of: worker, paged: false)), paged: set(experts(of: worker, paged: true)),
                                 slots: slots[worker])
    }
}

/// The planner: a pure function of the model's footprint and the cluster file.
public enum Planner {
    /// When the whole cluster's memory cannot hold the model, experts are paged: memory anywhere in the
    /// cluster is used first (an expert another worker holds is computed there), and only what no worker can
    /// hold is read from disk, by a worker that reserves cache slots for it. Refused only when even the
    /// layers' fixed bytes (attention, norms, router, KV) and the minimum slots do not fit.
    /// Spares hold nothing: they are left out (a re-plan after a failure passes them with a role of their own).
    public static func plan(_ model: ModelFootprint, cluster: ClusterFile) throws(PlacementError) -> Plan {
        let workers = cluster.active.workers
        let L = model.layerCount, E = model.expertCount
        var used = [Int](repeating: 0, count: workers.count)
        let capacity = workers.reduce(0) { $0 + $1.memory }
        // Scratch every worker needs for a micro-batch: stages theirs, every worker that may compute experts its own.
        let stageCount = min(L, workers.filter { $0.role != .experts }.count)
        let scratch = stageCount * model.stageScratchBytes + workers.filter { $0.role != .stage }.count * model.expertScratchBytes
        let offload = model.totalBytes + scratch > capacity && E > 0
        let reserve = model.minSlots * model.slotBytes
        let use = (0..<L).map { l in (0..<E).map { model.use(layer: l, expert: $0) } }

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

        // The layers' fixed bytes (and embedding/head) must fit on their stage worker, with the minimum slots of
        // an 'any' worker when the cluster must page.
        var reserved = [Int](repeating: 0, count: workers.count)
        for (k, s) in stages.enumerated() {
            let w = usable[k]
            var need = s.layers.reduce(0) { $0 + model.layerBytes[$1] }
            if s.layers.lowerBound == 0 { need += model.embeddingBytes }
            if s.layers.upperBound == L { need += model.headBytes }
            need += model.stageScratchBytes + (workers[w].role == .any ? model.expertScratchBytes : 0)
            if offload, workers[w].role == .any, need + reserve <= workers[w].memory { reserved[w] = reserve }
            guard need <= workers[w].memory else {
                throw PlacementError("worker '\(workers[w].name)' holds layers \(s.layers.lowerBound)..<\(s.layers.upperBound), which need \(human(need)) before any expert (attention, norms, routers, KV), but its budget is \(human(workers[w].memory))")
            }
            used[w] += need
        }
        // An experts-only worker sets its scratch aside before its first expert.
        for w in workers.indices where workers[w].role == .experts && workers[w].memory >= model.expertScratchBytes {
            used[w] += model.expertScratchBytes
        }
        func free(_ w: Int) -> Int { workers[w].memory - used[w] - reserved[w] }

        // 2. Experts in memory. A layer whose stage worker may hold experts ('any') while experts-only workers
        // exist is split between them by their rates and round trips (`split`; equal shares when nobody
        // measured them): its experts
        // then compute on all of them at once, which is what makes one stream decode faster on several hosts
        // (expert parallelism). Each one's share is spread evenly over the split layers its memory must cover,
        // so no layer is left wholly local or wholly remote. Any other layer keeps its experts with its stage
        // worker while it has room. What is left goes to the expert-capable worker with the most free memory
        // (ties: the earlier worker in the file).
        var experts = [[Int]](repeating: [Int](repeating: -1, count: E), count: L)
        var paged = [[Bool]](repeating: [Bool](repeating: false, count: E), count: L)
        var unplaced: [(layer: Int, expert: Int, owner: Int)] = []
        let helpers = workers.indices.filter { workers[$0].role == .experts }
        // Split layers still to place, per worker that takes part in them.
        var splitLayersLeft = [Int](repeating: 0, count: workers.count)
        if !helpers.isEmpty, E > 0 {
            for (k, s) in stages.enumerated() where workers[usable[k]].role == .any {
                splitLayersLeft[usable[k]] += s.layers.count
                for h in helpers { splitLayersLeft[h] += s.layers.count }
            }
        }
        for (k, s) in stages.enumerated() {
            let owner = usable[k]
            let group = !helpers.isEmpty && workers[owner].role == .any ? [owner] + helpers : []
            for l in s.layers {
                let size = model.expertBytes[l]
                // A split layer: each expert's member, for even expected time per token, within the memory left for
                // this many layers.
                var member = [Int](repeating: -1, count: E)
                if !group.isEmpty {
                    let room = Dictionary(uniqueKeysWithValues: group.map { w in
                        (w, size > 0 ? max(0, free(w)) / size / max(1, splitLayersLeft[w]) : E)
                    })
                    member = Self.split(use: use[l], among: group, room: room, secondsPerUse: { w in
                        Double(size) / workers[w].effectiveReadRate
                    }, roundTrip: { w in w == owner ? 0 : workers[w].roundTrip ?? 0 })
                    for w in group { splitLayersLeft[w] -= 1 }
                }
                // The most used experts first: they get the memory, the least used are paged when it runs out.
                for e in (0..<E).sorted(by: { (-use[l][$0], $0) < (-use[l][$1], $1) }) {
                    var pick = member[e] >= 0 && size <= free(member[e]) ? member[e] : -1
                    // A layer that is not split: its stage worker while it has room ('stage' workers hold layers only).
                    if pick < 0, group.isEmpty, workers[owner].role == .any, size <= free(owner) { pick = owner }
                    if pick < 0 {
                        for w in workers.indices where (w != owner || !group.isEmpty) && workers[w].role != .stage && size <= free(w) {
                            if pick < 0 || free(w) > free(pick) { pick = w }
                        }
                    }
                    guard pick >= 0 else {
                        guard offload else {
                            // Roles, not memory, when no worker may hold experts at all (the experts worker is gone).
                            if !workers.contains(where: { $0.role != .stage }) {
                                throw PlacementError("expert \(e) of layer \(l) has no worker to go to: every worker has role 'stage' (layers only); an experts worker is needed (start one, or give a worker role 'any' or 'experts')")
                            }
                            let most = workers.indices.filter { workers[$0].role != .stage }.map(free).max() ?? 0
                            throw PlacementError("expert \(e) of layer \(l) (\(human(size))) fits on no worker: the most free memory left on an expert-capable worker is \(human(max(0, most))); add memory or workers with role 'any' or 'experts'")
                        }
                        unplaced.append((l, e, owner))
                        continue
                    }
                    experts[l][e] = pick
                    used[pick] += size
                }
            }
        }

        // 3. What no memory holds is paged: by the layer's stage worker when it reserved slots, else by the
        // expert-capable worker with the most room for slots.
        for u in unplaced {
            var pager = reserved[u.owner] > 0 ? u.owner : -1
            if pager < 0 {
                for w in workers.indices where workers[w].role != .stage && (reserved[w] > 0 || free(w) >= reserve) {
                    if pager < 0 || free(w) + reserved[w] > free(pager) + reserved[pager] { pager = w }
                }
                if pager >= 0 && reserved[pager] == 0 { reserved[pager] = reserve }
            }
            guard pager >= 0, model.slotBytes > 0 else {
                throw PlacementError("the cluster cannot hold the model even when paging experts: expert \(u.expert) of layer \(u.layer) needs a worker with room for \(model.minSlots) cache slots (\(human(reserve))) beside its layers; add memory or a worker with role 'any' or 'experts'")
            }
            experts[u.layer][u.expert] = pager
            paged[u.layer][u.expert] = true
        }
        // Each pager turns its reservation and whatever memory is left into slots, no more than it pages.
        var slots = [Int](repeating: 0, count: workers.count)
        for w in workers.indices where reserved[w] > 0 {
            let count = paged.indices.reduce(0) { l, layer in l + paged[layer].indices.filter { paged[layer][$0] && experts[layer][$0] == w }.count }
            guard count > 0 else { continue }
            slots[w] = min(count, (workers[w].memory - used[w]) / model.slotBytes)
            used[w] += slots[w] * model.slotBytes
        }
        return Plan(workers: workers, stages: stages, experts: experts, bytes: used, paged: paged, slots: slots)
    }

    /// Which member of `among` computes each of a split layer's experts so that a token's expected time in the
    /// layer is even: a member's time is its round trip (none for the layer's own worker) plus, for each expert it
    /// holds, how often a token uses it (`use`) times the seconds to read it at its rate (`secondsPerUse`). The
    /// most used experts go first, each to the member that would finish first with it (longest processing time
    /// first), never beyond a member's `room` (-1: nobody had room). With uniform use and no round trips this is
    /// the split in proportion to rates; with round trips the owner keeps more, as a remote expert costs the call
    /// as well; with a routing trace the hot experts are spread and the cold ones fill in.
    static func split(use: [Double], among group: [Int], room: [Int: Int],
                      secondsPerUse: (Int) -> Double, roundTrip: (Int) -> Double) -> [Int] {
        var count = Dictionary(uniqueKeysWithValues: group.map { ($0, 0) })
        var time = Dictionary(uniqueKeysWithValues: group.map { ($0, roundTrip($0)) })
        var member = [Int](repeating: -1, count: use.count)
        for e in use.indices.sorted(by: { (-use[$0], $0) < (-use[$1], $1) }) {
            var best = -1, bestTime = Double.infinity
            for w in group where count[w]! < room[w, default: 0] {
                let t = time[w]! + use[e] * secondsPerUse(w)
                if t < bestTime - 1e-15 { best = w; bestTime = t }
            }
            guard best >= 0 else { continue }
            member[e] = best
            count[best]! += 1
            time[best] = bestTime
        }
        return member
    }

    static func human(_ n: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(n), u = 0
        while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
        return u == 0 ? "\(n) B" : "\((v * 100).rounded() / 100) \(units[u])"
    }
}

extension Plan {
    /// This placement on the workers still `available` (each with its current budget; a spare with the role it
    /// would take): every worker of the plan that is available keeps its shard, and each one that is gone is
    /// replaced by an available worker outside the plan that can hold exactly its shard (the smallest budget
    /// that fits, its role allowing layers or experts as the shard needs). After a failure this moves only the
    /// lost worker's shard — to a spare, or back to the same worker restarted — where planning afresh would
    /// re-balance, and reload, everyone. A lost worker that held only experts (none paged) and has no taker
    /// has its experts spread, given `expertBytes` (per layer), over the plan's other expert holders with room:
    /// each to the one with the most memory left. Nil when some shard has no taker (then plan anew).
    public func keeping(on available: [ClusterFile.Worker], expertBytes: [Int]? = nil) -> Plan? {
        var taken = Set<String>()
        var takers: [ClusterFile.Worker?] = []
        for (i, w) in self.workers.enumerated() {
            let hasLayers = stages.contains { $0.worker == w.name }
            let hasExperts = experts.contains { $0.contains(i) }
            func fits(_ c: ClusterFile.Worker) -> Bool {
                c.memory >= bytes[i] && !taken.contains(c.name)
                    && !(hasLayers && (c.role == .experts || c.role == .spare)) && !(hasExperts && (c.role == .stage || c.role == .spare))
            }
            let same = available.first { $0.name == w.name }
            let outside = available.filter { c in !self.workers.contains { $0.name == c.name } }
            if let taker = same.flatMap({ fits($0) ? $0 : nil }) ?? outside.filter(fits).min(by: { ($0.memory, $0.name) < ($1.memory, $1.name) }) {
                taken.insert(taker.name)
                takers.append(taker)
            } else if !hasLayers, expertBytes != nil, !paged.enumerated().contains(where: { l, row in row.indices.contains { experts[l][$0] == i && row[$0] } }) {
                takers.append(nil)  // spread below
            } else {
                return nil
            }
        }
        // Old index → new index; the spread workers leave the plan.
        var index: [Int?] = []
        var workers: [ClusterFile.Worker] = []
        for t in takers { index.append(t.map { _ in workers.count }); if let t { workers.append(t) } }
        var newBytes = zip(self.bytes, takers).compactMap { $1 == nil ? nil : $0 }
        let slots = zip(self.slots, takers).compactMap { $1 == nil ? nil : $0 }
        let holders = workers.indices.filter { n in workers[n].role != .stage && self.experts.contains { $0.contains { index[$0] == n } } }
        var newExperts = self.experts
        for l in newExperts.indices {
            for e in newExperts[l].indices {
                if let n = index[newExperts[l][e]] { newExperts[l][e] = n; continue }
                let size = expertBytes![l]
                guard let to = holders.filter({ workers[$0].memory - newBytes[$0] >= size })
                    .max(by: { (workers[$0].memory - newBytes[$0], workers[$1].name) < (workers[$1].memory - newBytes[$1], workers[$0].name) }) else { return nil }
                newExperts[l][e] = to
                newBytes[to] += size
            }
        }
        let renamed = stages.map { s in Stage(worker: workers[index[self.workers.firstIndex { $0.name == s.worker }!]!].name, layers: s.layers) }
        return Plan(workers: workers, stages: renamed, experts: newExperts, bytes: newBytes, paged: paged, slots: slots)
    }
}
