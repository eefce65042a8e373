import Foundation
import Testing
import TestSupport
import GGUF
import Kernels
@testable import Model

/// `conclave prune`'s core: the experts a calibration text used least are dropped, the rest copied byte for byte.
@Suite final class PruneTests {
    let dir = Fixtures.temporaryDirectory()
    deinit { try? FileManager.default.removeItem(at: dir) }

    func use() throws -> [[Double]] {
        let file = try GGUFFile(path: Fixtures.shippedModel)
        let config = try ModelConfig(file: file)
        let trace = try RoutingTrace.record(file: file, threads: 2, tokens: try OffloadTests.tokens(400), chunk: 200)
        return try trace.expertUse(layers: config.layerCount, experts: config.expertCount)
    }

    /// Keeping every expert writes the very file.
    @Test func keepingEveryExpertIsTheIdentity() throws {
        let out = dir.appendingPathComponent("all.gguf").path
        try ModelPruner.write(source: Fixtures.shippedModel, kept: ModelPruner.choose(use: try use(), keep: 8, expertCount: 8), to: out)
        #expect(FileManager.default.contents(atPath: out) == FileManager.default.contents(atPath: Fixtures.shippedModel))
    }

    /// Keeping four: the most used four of each layer, their slices of the stacked tensors and router rows as they
    /// were, expert_count 4, and the model runs.
    @Test func keepingFourSlicesTheExpertsAndTheRouter() throws {
        let use = try use()
        let kept = ModelPruner.choose(use: use, keep: 4, expertCount: 8)
        for (l, k) in kept.enumerated() {
            #expect(k.count == 4 && k == k.sorted())
            // No dropped expert was used more than a kept one.
            let least = k.map { use[l][$0] }.min()!
            #expect((0..<8).filter { !k.contains($0) }.allSatisfy { use[l][$0] <= least })
        }
        let out = dir.appendingPathComponent("four.gguf").path
        try ModelPruner.write(source: Fixtures.shippedModel, kept: kept, to: out)
        let original = try GGUFFile(path: Fixtures.shippedModel), pruned = try GGUFFile(path: out)
        let config = try ModelConfig(file: pruned)
        #expect(config.expertCount == 4 && config.expertsUsed == 2)
        for l in 0..<config.layerCount {
            for name in ["blk.\(l).ffn_gate_exps.weight", "blk.\(l).ffn_down_exps.weight", "blk.\(l).ffn_gate_inp.weight"] {
                let a = try #require(original.tensor(named: name)), b = try #require(pruned.tensor(named: name))
                #expect(b.shape.last == 4)
                let part = a.info.byteCount / 8
                for (i, e) in kept[l].enumerated() {
                    #expect(Data(bytes: a.data + e * part, count: part) == Data(bytes: b.data + i * part, count: part), "\(name) expert \(e)")
                }
            }
        }
        #expect(try #require(pruned.tensor(named: "blk.0.attn_q.weight")).bytes.elementsEqual(try #require(original.tensor(named: "blk.0.attn_q.weight")).bytes))
        let engine = try Engine(path: out, threads: 2)
        let logits = try engine.evaluate(Array(try OffloadTests.tokens(16)), in: engine.newSequence(capacity: 16), all: false)
        #expect(logits.allSatisfy(\.isFinite) && logits.contains { $0 != 0 })
    }

    @Test func keepMassTakesTheLargestLayersNeed() {
        // Layer 0 needs two experts for 90% (0.6 + 0.35), layer 1 three (0.4 + 0.3 + 0.25); at least the one used.
        let use: [[Double]] = [[0.6, 0.35, 0.05, 0], [0.4, 0.3, 0.25, 0.05]]
        #expect(ModelPruner.count(forMass: 0.9, use: use, minimum: 1, expertCount: 4) == 3)
        #expect(ModelPruner.count(forMass: 0.5, use: use, minimum: 1, expertCount: 4) == 2)
        #expect(ModelPruner.count(forMass: 0.5, use: use, minimum: 3, expertCount: 4) == 3)
        #expect(ModelPruner.count(forMass: 1, use: use, minimum: 1, expertCount: 4) == 4)
    }

    @Test func massCurveIsTheCumulativeShareOfTheMostUsed() {
        let use: [[Double]] = [[0.6, 0.35, 0.05, 0], [0.4, 0.3, 0.25, 0.05]]
        let curve = ModelPruner.massCurve(use: use, expertCount: 4)
        #expect(curve.map(\.experts) == [1, 2, 3, 4])
        #expect(abs(curve[0].min - 0.4) < 1e-12 && abs(curve[0].max - 0.6) < 1e-12)
        #expect(abs(curve[1].min - 0.7) < 1e-12 && abs(curve[1].max - 0.95) < 1e-12)
        #expect(abs(curve[3].min - 1) < 1e-12 && abs(curve[3].max - 1) < 1e-12)
    }
}
