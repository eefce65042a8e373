import Foundation
import CurveKeys
import Runtime
import Testing
import TestSupport
import GGUF
import Kernels
import Model
import Wire
@testable import Placement

struct PlannerTests {
    func footprint(layers: Int = 8, experts: Int = 8, layer: Int = 100, expert: Int = 50, embd: Int = 300, head: Int = 300) -> ModelFootprint {
        ModelFootprint(layerBytes: Array(repeating: layer, count: layers), expertBytes: Array(repeating: expert, count: layers),
                       expertCount: experts, embeddingBytes: embd, headBytes: head)
    }

    func cluster(_ ws: [(Int, ClusterFile.Role)], speeds: [Double] = []) -> ClusterFile {
        ClusterFile(coordinator: "tcp://127.0.0.1:7000", workers: ws.enumerated().map { i, w in
            .init(name: "w\(i)", endpoint: "tcp://127.0.0.1:\(7100 + i)", memory: w.0, role: w.1, speed: i < speeds.count ? speeds[i] : 1)
        })
    }

    /// Only 'stage' workers left (the experts worker is gone): the refusal names roles, not memory, however
    /// much memory they have.
    @Test func onlyStageWorkersIsARoleProblemNotAMemoryOne() {
        do {
            _ = try Planner.plan(footprint(), cluster: cluster([(1 << 30, .stage), (1 << 30, .stage)]))
            Issue.record("a plan without any worker that may hold experts")
        } catch {
            #expect("\(error)".contains("every worker has role 'stage'") && !"\(error)".contains("free memory"), "\(error)")
        }
    }

    /// The invariants every plan must hold.
    func checkInvariants(_ p: Plan, _ f: ModelFootprint) {
        // Every layer in exactly one stage, stages contiguous and in order.
        var next = 0
        for s in p.stages {
            #expect(s.layers.lowerBound == next && !s.layers.isEmpty)
            next = s.layers.upperBound
        }
        #expect(next == f.layerCount)
        // Every expert of every layer on exactly one worker that may hold experts.
        #expect(p.experts.count == f.layerCount)
        for row in p.experts {
            #expect(row.count == f.expertCount)
            for w in row { #expect(w >= 0 && p.workers[w].role != .stage) }
        }
        // Budgets respected, and the accounting adds up to the model, scratch, and slots for what is paged.
        for (i, w) in p.workers.enumerated() { #expect(p.bytes[i] <= w.memory, "\(w.name)") }
        let scratch = p.stages.count * f.stageScratchBytes + p.workers.filter { $0.role != .stage }.count * f.expertScratchBytes
        let pagedBytes = zip(p.paged, f.expertBytes).reduce(0) { $0 + $1.0.filter { $0 }.count * $1.1 }
        #expect(p.bytes.reduce(0, +) == f.totalBytes + scratch - pagedBytes + p.slots.reduce(0, +) * f.slotBytes)
        // Paged experts live on workers with slots, at least the minimum, never more than they page.
        for (i, slots) in p.slots.enumerated() {
            let paged = p.experts(of: i, paged: true).count
            #expect(paged == 0 ? slots == 0 : slots >= min(paged, f.minSlots) && slots <= paged, "\(p.workers[i].name)")
        }
    }

    @Test func evenClusterSplitsLayersAndKeepsExpertsLocal() throws {
        let f = footprint()
        let p = try Planner.plan(f, cluster: cluster([(10_000, .any), (10_000, .any)]))
        checkInvariants(p, f)
        #expect(p.stages.map(\.layers) == [0..<4, 4..<8])
        for l in 0..<8 { #expect(Set(p.experts[l]) == [l < 4 ? 0 : 1]) }
    }

    @Test func tightStagesSpillExpertsToTheExpertWorker() throws {
        let f = footprint()
        let p = try Planner.plan(f, cluster: cluster([(1_500, .any), (1_500, .any), (2_000, .experts)]))
        checkInvariants(p, f)
        #expect(p.experts(of: 2).count > 0)
        // The experts-only worker holds no layers.
        #expect(p.stages.allSatisfy { $0.worker != "w2" })
    }

    /// After a failure the placement is kept: each lost worker's shard goes whole to a worker outside the plan
    /// that can hold it (or back to the same worker, restarted), and nothing else moves; without a taker, nil.
    @Test func keepingMovesOnlyTheLostShard() throws {
        let f = footprint()
        let c = cluster([(1_500, .stage), (1_500, .stage), (5_000, .experts)])
        let p = try Planner.plan(f, cluster: c)
        let (a, b, x) = (c.workers[0], c.workers[1], c.workers[2])
        func spare(_ name: String, _ memory: Int) -> ClusterFile.Worker { .init(name: name, endpoint: "tcp://127.0.0.1:7200", memory: memory, role: .any) }
        // All back (a restart keeps its name): the same plan.
        #expect(p.keeping(on: [a, b, x]) == p)
        // The second stage lost: the spare with room takes exactly its layers; the small one is passed over.
        let q = try #require(p.keeping(on: [a, x, spare("small", 100), spare("big", 1_500)]))
        checkInvariants(q, f)
        #expect(q.workers.map(\.name) == ["w0", "big", "w2"])
        #expect(q.stages.map(\.layers) == p.stages.map(\.layers) && q.stages.map(\.worker) == ["w0", "big"])
        #expect(q.experts == p.experts && q.bytes == p.bytes)
        // The experts worker lost and no worker outside can hold its experts: plan anew.
        #expect(p.keeping(on: [a, b, spare("small", 100)]) == nil)
        // The experts worker lost and nobody outside can take its whole shard: given the experts' sizes, they
        // spread over the expert holders with room (here the two others, restarted with more memory), and
        // nothing else moves.
        let c2 = cluster([(1_500, .any), (1_500, .any), (5_000, .experts)])
        let p2 = try Planner.plan(f, cluster: c2)
        #expect(p2.experts(of: 2).count > 0)
        let bigger = c2.workers.prefix(2).map { ClusterFile.Worker(name: $0.name, endpoint: $0.endpoint, memory: 10_000, role: $0.role) }
        let s2 = try #require(p2.keeping(on: bigger, expertBytes: f.expertBytes), "bytes \(p2.bytes)")
        checkInvariants(s2, f)
        #expect(s2.workers.map(\.name) == ["w0", "w1"] && s2.stages == p2.stages)
        for l in 0..<8 { for e in 0..<8 where p2.experts[l][e] != 2 { #expect(s2.experts[l][e] == p2.experts[l][e]) } }
        // Without the sizes, or without room, plan anew.
        #expect(p2.keeping(on: bigger) == nil)
        #expect(p2.keeping(on: Array(c2.workers.prefix(2)), expertBytes: f.expertBytes) == nil)
        // A stage-only worker cannot take an experts shard.
        #expect(p.keeping(on: [a, b, .init(name: "s", endpoint: "tcp://127.0.0.1:7300", memory: 10_000, role: .stage)]) == nil)
    }

    /// A stage worker that may hold experts beside experts-only workers splits every one of its layers with
    /// them by speed (expert parallelism), its memory spread evenly over its layers, never over a budget.
    @Test func expertParallelLayersAreSplitBySpeed() throws {
        let f = footprint()
        let even = try Planner.plan(f, cluster: cluster([(10_000, .any), (10_000, .experts)]))
        checkInvariants(even, f)
        for l in 0..<8 { #expect(even.experts[l].filter { $0 == 0 }.count == 4, "layer \(l): \(even.experts[l])") }
        // Interleaved, not the first half of the experts on one worker.
        #expect(even.experts[0] == [0, 1, 0, 1, 0, 1, 0, 1])
        // A worker three times as fast gets three times the experts.
        let fast = try Planner.plan(f, cluster: cluster([(10_000, .any), (10_000, .experts)], speeds: [1, 3]))
        checkInvariants(fast, f)
        for l in 0..<8 { #expect(fast.experts[l].filter { $0 == 1 }.count == 6) }
        // Two experts workers: a third each (8 experts: 3, 3, 2 in some order).
        let three = try Planner.plan(f, cluster: cluster([(10_000, .any), (10_000, .experts), (10_000, .experts)]))
        checkInvariants(three, f)
        for l in 0..<8 { #expect(Set((0..<3).map { w in three.experts[l].filter { $0 == w }.count }) == [2, 3]) }
        // A stage worker with room for only some of its share: what it holds is spread over its layers evenly.
        // 1 900 = 1 400 of layers and ends + 500 for experts: ten experts of 50 over eight layers.
        let tight = try Planner.plan(f, cluster: cluster([(1_900, .any), (10_000, .experts)]))
        checkInvariants(tight, f)
        let local = (0..<8).map { l in tight.experts[l].filter { $0 == 0 }.count }
        #expect(local.max()! - local.min()! <= 1 && local.reduce(0, +) >= 8, "\(local)")
        // Deterministic.
        #expect(try Planner.plan(f, cluster: cluster([(1_900, .any), (10_000, .experts)])) == tight)
    }

    /// With measured rates and round trips, a split layer's experts are shared so that a token's expected time
    /// is even: a remote expert costs the call too, so the stage worker keeps more; a slow helper takes fewer;
    /// never beyond memory; the same inputs give the same plan.
    @Test func expertParallelLayersAreBalancedForTime() throws {
        // 8 experts of 50 bytes, 2 used per token: one expert held costs 2/8 · 50 / rate seconds per token.
        let f = ModelFootprint(layerBytes: Array(repeating: 100, count: 8), expertBytes: Array(repeating: 50, count: 8),
                               expertCount: 8, embeddingBytes: 300, headBytes: 300, expertsUsed: 2)
        func measured(rates: [Double], trips: [Double?], memory: [Int] = [10_000, 10_000]) -> ClusterFile {
            var c = cluster([(memory[0], .any), (memory[1], .experts)])
            c = ClusterFile(coordinator: c.coordinator, workers: c.workers.enumerated().map { i, w in
                var w = w
                w.readRate = rates[i]
                w.roundTrip = trips[i]
                return w
            })
            return c
        }
        func owned(_ p: Plan) -> [Int] { (0..<8).map { l in p.experts[l].filter { $0 == 0 }.count } }
        // No round trip, equal rates: half each, as by speed.
        #expect(owned(try Planner.plan(f, cluster: measured(rates: [1, 1], trips: [nil, nil]))) == Array(repeating: 4, count: 8))
        // A round trip worth 3.6 experts' time (12.5 per expert at rate 1): the helper's share costs the trip as
        // well, so the stage worker takes 6 (6 · 12.5 = 75 against 45 + 2 · 12.5 = 70; 5 local would leave 82.5).
        let trip = try Planner.plan(f, cluster: measured(rates: [1, 1], trips: [nil, 45]))
        checkInvariants(trip, f)
        #expect(owned(trip) == Array(repeating: 6, count: 8))
        // A round trip longer than all the layer's experts take: the stage worker keeps them all.
        #expect(owned(try Planner.plan(f, cluster: measured(rates: [1, 1], trips: [nil, 1_000]))) == Array(repeating: 8, count: 8))
        // A helper three times as fast and no trip: it takes 6 of 8.
        #expect(owned(try Planner.plan(f, cluster: measured(rates: [1, 3], trips: [nil, nil]))) == Array(repeating: 2, count: 8))
        // The stage worker's memory caps its share whatever the balance asks (1 900 - 1 400 = ten experts).
        let tight = try Planner.plan(f, cluster: measured(rates: [1, 1], trips: [nil, 1_000], memory: [1_900, 10_000]))
        checkInvariants(tight, f)
        #expect(owned(tight).reduce(0, +) <= 10)
        #expect(try Planner.plan(f, cluster: measured(rates: [1, 1], trips: [nil, 45])) == trip)
        // The estimate: stages 1 100 at rate 1, then per layer the slower of 6/8 · 100 here and 45 + 2/8 · 100
        // there: 1 100 + 8 · 75 against one host's 1 900. (Halves would take 1 100 + 8 · 95: 1.02×.)
        let e = DecodeEstimate(plan: trip, weights: f)
        let expected: [Double] = [1_700, 560]
        #expect(e.secondsPerWorker == expected)
        #expect(abs(e.expectedSpeedup - 1_900.0 / 1_700) < 1e-9)
    }

    /// Given how often each expert is chosen (a routing trace), a split layer's hot experts are spread so the
    /// expected time is even (not the expert count), the estimate counts the skew, and when the cluster must
    /// page it pages the least used experts.
    @Test func routingTraceWeightsTheSplitAndThePaging() throws {
        // Two used per token: expert 0 by every token, expert 1 by 60%, the rest rarely.
        let skew: [Double] = [1.0, 0.6, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05]
        var f = footprint()
        f.expertUse = Array(repeating: skew, count: 8)
        let traced = try Planner.plan(f, cluster: cluster([(10_000, .any), (10_000, .experts)]))
        checkInvariants(traced, f)
        // Longest first to whoever finishes first: the stage worker takes expert 0 (1.0), the helper the other seven (1.0).
        for l in 0..<8 { #expect(traced.experts[l] == [0, 1, 1, 1, 1, 1, 1, 1], "layer \(l): \(traced.experts[l])") }
        let uniform = try Planner.plan(footprint(), cluster: cluster([(10_000, .any), (10_000, .experts)]))
        #expect(uniform.experts[0] == [0, 1, 0, 1, 0, 1, 0, 1])
        // Under the skewed routing the busiest holder reads 1.0 · 50 per layer with the traced plan, 1.2 · 50
        // (experts 0, 2, 4, 6) with the uniform one.
        #expect(abs(DecodeEstimate(plan: traced, weights: f).busiestExpertBytes - 400) < 1e-9)
        #expect(abs(DecodeEstimate(plan: uniform, weights: f).busiestExpertBytes - 480) < 1e-9)
        #expect(abs(DecodeEstimate(plan: uniform, weights: f).expertBytes - 800) < 1e-9)
        // Paging: one worker with room for six experts beside its layers and four slots. Layer 0 gets the memory
        // first; with the trace reversed, experts 0-3 are the least used (0.05 each; ties by index), so 2 and 3 are paged.
        var cold = footprint()
        cold.expertUse = Array(repeating: Array(skew.reversed()), count: 8)
        let paging = try Planner.plan(cold, cluster: cluster([(1_900, .any)]))
        #expect(paging.offloads)
        #expect(paging.paged[0] == [false, false, true, true, false, false, false, false], "\(paging.paged[0])")
        #expect(try Planner.plan(footprint(), cluster: cluster([(1_900, .any)])).paged[0] == [false, false, false, false, false, false, true, true])
        // Deterministic.
        #expect(try Planner.plan(f, cluster: cluster([(10_000, .any), (10_000, .experts)])) == traced)
    }

    /// The decode bound a plan allows: stages read their layers in turn, each layer waits for its busiest holder.
    @Test func decodeEstimateOfASplitPlan() throws {
        let f = footprint()  // 8 layers of 100, experts of 50, head 300
        let p = try Planner.plan(f, cluster: cluster([(10_000, .any), (10_000, .experts)]))
        let e = DecodeEstimate(plan: p, weights: f)
        #expect(e.stageBytes == 1_100 && e.expertBytes == 800 && e.busiestExpertBytes == 400)
        #expect(e.bytesPerWorker == [1_500, 400])
        #expect(abs(e.speedup - 1_900.0 / 1_500) < 1e-12)
        // One host holding everything: no speedup.
        let one = try Planner.plan(f, cluster: cluster([(10_000, .any)]))
        #expect(DecodeEstimate(plan: one, weights: f).speedup == 1)
    }

    @Test func stageRoleHoldsNoExperts() throws {
        let f = footprint(layers: 4)
        let p = try Planner.plan(f, cluster: cluster([(2_000, .stage), (3_000, .experts)]))
        checkInvariants(p, f)
        #expect(p.experts(of: 0).isEmpty)
        #expect(p.experts(of: 1).count == 32)
    }

    @Test func impossibleFitsAreRefusedWithAReason() {
        let f = footprint()
        do {
            // The layers' fixed bytes alone (700 per stage) exceed each worker.
            _ = try Planner.plan(f, cluster: cluster([(600, .any), (600, .any)]))
            Issue.record("planned a model larger than the cluster")
        } catch {
            #expect(error.description.contains("w0") && error.description.contains("before any expert"))
        }
        do {
            // Layers fit, but no worker has room for the minimum slots (4 × 50) to page the experts.
            _ = try Planner.plan(f, cluster: cluster([(750, .any), (750, .any)]))
            Issue.record("planned paging without room for slots")
        } catch {
            #expect(error.description.contains("cache slots"), "\(error)")
        }
        // Enough memory in total, but a stage cannot hold its layers' fixed part.
        do {
            _ = try Planner.plan(footprint(layer: 900), cluster: cluster([(1_500, .any), (20_000, .experts)]))
            Issue.record("planned layers onto a worker too small for them")
        } catch {
            #expect(error.description.contains("w0") && error.description.contains("before any expert"))
        }
    }

    /// A model larger than the cluster's memory: memory anywhere holds what it can, the rest is paged by a
    /// worker with slots; nothing is refused while the fixed parts and the minimum slots fit.
    @Test func offloadPagesOnlyWhatNoMemoryHolds() throws {
        let f = footprint()  // 8 layers × 8 experts × 50 + layers 800 + ends 600 = 4600
        let p = try Planner.plan(f, cluster: cluster([(1_500, .any), (1_500, .any)]))
        checkInvariants(p, f)
        #expect(p.offloads)
        let paged = p.paged.flatMap { $0 }.filter { $0 }.count
        // Memory left after layers and minimum slots: 1500 − 700 − 200 each, so 12 experts resident per worker.
        #expect(paged == 64 - 24, "\(paged) paged")
        #expect(p.slots.allSatisfy { $0 >= f.minSlots })
        // When it all fits, nothing is paged.
        let roomy = try Planner.plan(f, cluster: cluster([(5_000, .any), (5_000, .any)]))
        #expect(!roomy.offloads && roomy.paged.flatMap { $0 }.allSatisfy { !$0 })
        // An experts worker with room is used before anything is paged.
        let spill = try Planner.plan(f, cluster: cluster([(1_500, .any), (1_500, .any), (2_500, .experts)]))
        checkInvariants(spill, f)
        #expect(spill.paged.flatMap { $0 }.filter { $0 }.count < paged)
    }

    @Test func deterministic() throws {
        let f = footprint(layers: 13, experts: 16, layer: 77, expert: 33)
        let c = cluster([(2_500, .any), (4_000, .any), (1_500, .experts), (2_500, .any)])
        let a = try Planner.plan(f, cluster: c), b = try Planner.plan(f, cluster: c)
        #expect(a == b)
        checkInvariants(a, f)
    }

    /// A deepseek2 model's layers carry the latent cache llama.cpp keeps (latent 64 + rope key 16 f16 values per
    /// position, no values), and its dense first layer no expert bytes.
    @Test func latentCacheInTheFootprint() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        var shape = ModelSynthesizer.Shape()
        shape.architecture = "deepseek2"
        shape.layers = 3
        let path = dir.appendingPathComponent("ds.gguf").path
        _ = try ModelSynthesizer(shape: shape, fileType: .q8_0, seed: 1, vocabulary: try GGUFFile(path: Fixtures.shippedModel))
            .write(to: path, pool: ThreadPool(threads: 2))
        let file = try GGUFFile(path: path)
        let config = try ModelConfig(file: file)
        let small = ModelFootprint(file: file, config: config, context: 1000), large = ModelFootprint(file: file, config: config, context: 2000)
        #expect(zip(large.layerBytes, small.layerBytes).allSatisfy { $0 - $1 == 1000 * (64 + 16) * 2 })
        #expect(small.expertBytes[0] == 0 && small.expertBytes[1] > 0)
    }

    /// The shipped model on cluster/local.yaml: two stages, and experts of the second stage on the experts worker.
    @Test func shippedModelOnLocalCluster() throws {
        let file = try GGUFFile(path: Fixtures.shippedModel)
        let config = try ModelConfig(file: file)
        let f = ModelFootprint(file: file, config: config, context: 512)
        // Each layer's KV: 512 rows of K and V (f16), a page of rounding for each and a row (`KVRoom`'s overhead).
        #expect(f.totalBytes == file.tensorInfos.reduce(0) { $0 + $1.byteCount } + 4 * (2 * 2 * config.kvDim * 513 + 2 * KVCache.pageSize))
        let p = try Planner.plan(f, cluster: ClusterFile(path: Fixtures.root.appendingPathComponent("cluster/local.yaml").path))
        checkInvariants(p, f)
        #expect(p.stages.map(\.worker) == ["stage-a", "stage-b"])
        #expect(!p.experts(of: 2).isEmpty)
    }
}

struct ClusterFileTests {
    @Test func keysAreAllOrNothingAndLoopbackIsKnown() throws {
        let c = try CurveKeyPair.generate().publicKey, w = try CurveKeyPair.generate().publicKey, cl = try CurveKeyPair.generate().publicKey
        let j = try CurveKeyPair.generate().publicKey
        let yaml = """
        coordinator: tcp://10.0.0.1:7000
        coordinator_key: "\(c.z85)"
        client_keys: ["\(cl.z85)"]
        join_keys: ["\(j.z85)"]
        workers:
          - name: a
            endpoint: tcp://10.0.0.2:7070
            memory: 1GiB
            key: "\(w.z85)"
        """
        let f = try ClusterFile(yaml: yaml)
        #expect(f.authenticated && f.coordinatorKey == c && f.clientKeys == [cl] && f.joinKeys == [j] && f.workers[0].key == w)
        #expect(!f.loopbackOnly && f.active.coordinatorKey == c && f.workers[0].with(role: .spare).key == w)
        // A worker without a key in an authenticated file, keys without the coordinator's, a key that is no key.
        #expect(throws: PlacementError.self) { _ = try ClusterFile(yaml: yaml.replacingOccurrences(of: "    key: \"\(w.z85)\"", with: "")) }
        #expect(throws: PlacementError.self) { _ = try ClusterFile(yaml: yaml.replacingOccurrences(of: "coordinator_key: \"\(c.z85)\"", with: "")) }
        #expect(throws: PlacementError.self) { _ = try ClusterFile(yaml: yaml.replacingOccurrences(of: w.z85, with: "not-a-key")) }
        #expect(throws: PlacementError.self) { _ = try ClusterFile(yaml: yaml.replacingOccurrences(of: j.z85, with: "not-a-key")) }
        // Join keys alone still need the coordinator's key (they are CurveZMQ keys).
        let joinOnly = yaml.replacingOccurrences(of: "coordinator_key: \"\(c.z85)\"\nclient_keys: [\"\(cl.z85)\"]\n", with: "")
            .replacingOccurrences(of: "    key: \"\(w.z85)\"", with: "")
        #expect(throws: PlacementError.self) { _ = try ClusterFile(yaml: joinOnly) }
        #expect(ClusterFile.isLoopback("tcp://127.0.0.1:7000") && ClusterFile.isLoopback("tcp://localhost:7") && ClusterFile.isLoopback("ipc:///tmp/x"))
        #expect(!ClusterFile.isLoopback("tcp://0.0.0.0:7070") && !ClusterFile.isLoopback("tcp://10.77.0.11:7070"))
        #expect(try ClusterFile(path: Fixtures.root.appendingPathComponent("cluster/local.yaml").path).loopbackOnly)
        // What a command writes for the processes it starts reads back the same, keys and all.
        #expect(try ClusterFile(yaml: f.yaml) == f)
        let spare = ClusterFile(coordinator: "tcp://127.0.0.1:7000", workers: [.init(name: "a b", endpoint: "tcp://127.0.0.1:7001", memory: 123_456_789, role: .stage),
                                                                              .init(name: "s", endpoint: "tcp://127.0.0.1:7002", memory: 1 << 30, role: .spare)])
        #expect(try ClusterFile(yaml: spare.yaml) == spare)
    }

    @Test func parsesTheShippedFiles() throws {
        for name in ["local", "netns", "example-3-hosts"] {
            let c = try ClusterFile(path: Fixtures.root.appendingPathComponent("cluster/\(name).yaml").path)
            #expect(c.workers.count == 3)
            #expect(c.workers.last?.role == .experts)
        }
        let big = try ClusterFile(path: Fixtures.root.appendingPathComponent("cluster/example-3-hosts.yaml").path)
        #expect(big.workers[0].memory == 48 << 30)
        #expect(big.coordinator == "tcp://10.0.0.1:7000")
    }

    @Test func sizes() {
        #expect(ClusterFile.parseBytes("48GiB") == 48 << 30)
        #expect(ClusterFile.parseBytes("512 MiB") == 512 << 20)
        #expect(ClusterFile.parseBytes("6GB") == 6_000_000_000)
        #expect(ClusterFile.parseBytes("1024") == 1024)
        #expect(ClusterFile.parseBytes("lots") == nil)
        #expect(ClusterFile.parseBytes("12 parsecs") == nil)
    }

    @Test func speedIsReadAndWrittenBack() throws {
        let c = try ClusterFile(yaml: "coordinator: tcp://127.0.0.1:7000\nworkers:\n  - name: a\n    endpoint: tcp://127.0.0.1:1\n    memory: 1GiB\n    speed: 1.5\n  - name: b\n    endpoint: tcp://127.0.0.1:2\n    memory: 1GiB\n    role: experts")
        #expect(c.workers.map(\.speed) == [1.5, 1])
        #expect(try ClusterFile(yaml: c.yaml) == c)
    }

    @Test func badFilesGetReadableErrors() {
        let cases: [(String, String)] = [
            ("workers: []", "coordinator"),
            ("coordinator: tcp://127.0.0.1:7000\nworkers: []", "no worker"),
            ("coordinator: tcp://127.0.0.1:7000\nworkers:\n  - name: a\n    endpoint: tcp://127.0.0.1:1\n    memory: 1GiB\n    role: boss", "role 'boss'"),
            ("coordinator: tcp://127.0.0.1:7000\nworkers:\n  - name: a\n    endpoint: tcp://127.0.0.1:1\n    memory: huge", "'memory'"),
            ("coordinator: tcp://127.0.0.1:7000\nworkers:\n  - name: a\n    endpoint: 127.0.0.1\n    memory: 1GiB", "'endpoint'"),
            ("coordinator: tcp://127.0.0.1:7000\nworkers:\n  - name: a\n    endpoint: tcp://127.0.0.1:1\n    memory: 1GiB\n  - name: a\n    endpoint: tcp://127.0.0.1:2\n    memory: 1GiB", "used twice"),
            ("coordinator: tcp://127.0.0.1:7000\nworkers:\n  - name: a\n    endpoint: tcp://127.0.0.1:1\n    memory: 1GiB\n    role: experts", "at least one must hold layers"),
            ("coordinator: [unclosed", "not a valid cluster file"),
            ("coordinator: tcp://127.0.0.1:7000\nworkers:\n  - name: a\n    endpoint: tcp://127.0.0.1:1\n    memory: 1GiB\n    speed: 0", "'speed'"),
            ("coordinator: tcp://127.0.0.1:7000\nworkers:\n  - name: a\n    endpoint: tcp://127.0.0.1:1\n    memory: 1GiB\n    speed: fast", "not a valid cluster file"),
        ]
        for (yaml, phrase) in cases {
            do {
                _ = try ClusterFile(yaml: yaml)
                Issue.record("accepted: \(yaml)")
            } catch {
                #expect(error.description.contains(phrase), "\(error.description) should mention \(phrase)")
            }
        }
    }
}

/// The planner's accounting (per-layer bytes, scratch, slots in `ModelFootprint`) and the worker's admission
/// (`ShardBudget`) must agree: whatever plan the planner accepts, every worker admits its part within its budget.
/// Over clusters of one to three workers of the shipped model, every role mix, budgets from 6 to 48 MiB, two
/// micro-batch sizes and two cache types.
struct PlanWithinShardBudgetTests {
    static let file = try! GGUFFile(path: Fixtures.shippedModel)
    static let config = try! ModelConfig(file: file)

    @Test func everyAcceptedPlanFitsEveryWorkersShardBudget() throws {
        let mib = 1 << 20
        let budgets = [6, 9, 12, 16, 24, 48].map { $0 * mib }
        let roles: [[ClusterFile.Role]] = [[.any], [.any, .any], [.stage, .experts], [.any, .experts], [.stage, .stage, .experts], [.any, .any, .any]]
        var accepted = 0, refused = 0
        for ubatch in [64, 512] {
            for types in [CacheTypes.f16, try CacheTypes(key: "q8_0", value: "q4_0")] {
                let footprint = ModelFootprint(file: Self.file, config: Self.config, context: 256, cacheTypes: types, ubatch: ubatch)
                for mix in roles {
                    for k in budgets.indices {
                        // Uneven budgets too: each worker's differs by a step.
                        let ws = mix.enumerated().map { i, role in
                            ClusterFile.Worker(name: "w\(i)", endpoint: "tcp://127.0.0.1:\(7100 + i)", memory: budgets[(k + i) % budgets.count], role: role)
                        }
                        let plan: Plan
                        do { plan = try Planner.plan(footprint, cluster: ClusterFile(coordinator: "tcp://127.0.0.1:7000", workers: ws)) } catch {
                            refused += 1
                            continue
                        }
                        accepted += 1
                        for (i, w) in plan.workers.enumerated() {
                            let layers = plan.stages.first { $0.worker == w.name }?.layers ?? 0..<0
                            func set(_ pairs: [(layer: Int, expert: Int)]) -> ExpertSet {
                                ExpertSet(Dictionary(grouping: pairs, by: \.layer).mapValues { $0.map(\.expert) })
                            }
                            let shard = ShardBudget.Shard(layers: layers, resident: set(plan.experts(of: i, paged: false)),
                                                          paged: set(plan.experts(of: i, paged: true)), slots: plan.slots[i])
                            let budget = ShardBudget(file: Self.file, config: Self.config, shard: shard, context: 256, ubatch: ubatch, cacheTypes: types)
                            #expect(throws: Never.self, "\(mix) ubatch \(ubatch): \(w.name) with \(w.memory) bytes") { try budget.check(memory: w.memory) }
                        }
                    }
                }
            }
        }
        #expect(accepted > 20 && refused > 0, "accepted \(accepted), refused \(refused): the grid should cover both")
    }
}
