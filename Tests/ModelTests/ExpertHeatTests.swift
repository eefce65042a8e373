import Foundation
import Testing
import TestSupport
import GGUF
@testable import Model

/// The routers' counts the dashboard shows: exact against a routing trace of the same tokens, shipped as deltas,
/// decayed by time, checked before they are taken.
struct ExpertHeatTests {
    /// Serving a prompt and a few decode steps counts, per (layer, expert), exactly the rows `trace-experts`
    /// records for the same tokens.
    @Test func countsEqualTheRoutingTraceOfTheSameTokens() throws {
        let tokens = try OffloadTests.tokens(90)
        let engine = try Engine(file: OffloadTests.file, threads: 2)
        let seq = engine.newSequence(capacity: 128)
        _ = try engine.evaluate(Array(tokens[0..<80]), in: seq)
        for t in tokens[80..<90] { _ = try engine.evaluate([t], in: seq) }
        let heat = try #require(engine.stages.first?.heat)
        let c = OffloadTests.config
        #expect(heat.layers == 0..<c.layerCount && heat.experts == c.expertCount)
        // Layer passes and the distinct experts they read: the prompt's pass reads every expert some row chose,
        // each decode step's pass its one row's k.
        let afterPrompt = try Engine(file: OffloadTests.file, threads: 2)
        _ = try afterPrompt.evaluate(Array(tokens[0..<80]), in: afterPrompt.newSequence(capacity: 128))
        let prompt = try #require(afterPrompt.stages.first?.heat)
        let promptReads = (0..<c.layerCount).reduce(UInt64(0)) { sum, l in sum + UInt64(prompt.totals[(l * c.expertCount)..<((l + 1) * c.expertCount)].filter { $0 > 0 }.count) }
        #expect(prompt.reads.passes == UInt64(c.layerCount) && prompt.reads.experts == promptReads)
        #expect(heat.reads.passes == UInt64(11 * c.layerCount))
        #expect(heat.reads.experts == promptReads + UInt64(10 * c.layerCount * c.expertsUsed))

        let trace = try RoutingTrace.record(file: OffloadTests.file, threads: 2, tokens: tokens, chunk: 200)
        var want = [UInt64](repeating: 0, count: c.layerCount * c.expertCount)
        for e in trace.events { for x in e.experts { want[e.layer * c.expertCount + x] += 1 } }
        #expect(heat.totals == want)
        #expect(want.reduce(0, +) == UInt64(tokens.count * c.layerCount * c.expertsUsed))

        // The deltas add up to the totals, then nothing until more is routed.
        let deltas = heat.takeDeltas()
        #expect(deltas.reduce(0) { $0 + $1.delta } == want.reduce(0, +))
        #expect(deltas.allSatisfy { want[$0.index] == $0.delta })
        #expect(heat.takeDeltas().isEmpty)
        _ = try engine.evaluate([tokens[0]], in: seq)
        #expect(heat.takeDeltas().reduce(0) { $0 + $1.delta } == UInt64(c.layerCount * c.expertsUsed))
    }

    /// The recent counts halve every half-life; totals do not; a stage's deltas land at its first layer.
    @Test func activityDecaysAndPlacesAStagesCounts() {
        let a = ExpertActivity(layers: 4, experts: 3, halfLife: 10)
        a.add(firstLayer: 2, deltas: [(0, 8), (5, 4)], now: 100)
        var s = a.snapshot(now: 100)
        #expect(s.total == [[0, 0, 0], [0, 0, 0], [8, 0, 0], [0, 0, 4]])
        #expect(s.recent[2][0] == 8 && s.recent[3][2] == 4)
        s = a.snapshot(now: 120)
        #expect(s.total[2][0] == 8)
        #expect(abs(s.recent[2][0] - 2) < 1e-9 && abs(s.recent[3][2] - 1) < 1e-9)
        a.add(firstLayer: 0, deltas: [(1, 3)], now: 120)
        s = a.snapshot(now: 120)
        #expect(s.recent[0][1] == 3)
        // Imbalance: the busiest holder's share of a layer's recent rows.
        let holder = { (l: Int, x: Int) in x == 0 ? "a" : "b" }
        let imbalance = s.imbalance(holder: holder)
        #expect(imbalance[0] == 1.0 && imbalance[1] == nil && imbalance[2] == 1.0 && imbalance[3] == 1.0)
        a.add(firstLayer: 2, deltas: [(1, 2)], now: 120)
        #expect(a.snapshot(now: 120).imbalance(holder: holder)[2] == 0.5)
    }

    /// Counts from another model or out of range are refused before anything changes.
    @Test func countsThatDoNotFitTheModelAreRefused() {
        let a = ExpertActivity(layers: 4, experts: 3)
        #expect(a.problem(firstLayer: 0, experts: 4, deltas: [])?.contains("3") == true)
        #expect(a.problem(firstLayer: 4, experts: 3, deltas: []) != nil)
        #expect(a.problem(firstLayer: 3, experts: 3, deltas: [(3, 1)]) != nil)
        #expect(a.problem(firstLayer: 3, experts: 3, deltas: [(-1, 1)]) != nil)
        #expect(a.problem(firstLayer: 3, experts: 3, deltas: [(2, 1)]) == nil)
    }
}
