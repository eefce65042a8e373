import Foundation
import GGUF
import Testing
@testable import Model
import TestSupport

/// Fewer experts per token (`--experts-used`, `--expert-min-weight`): what a route keeps, the config's checks, and
/// on the shipped model that the file's own count changes nothing while fewer experts change the logits.
struct ExpertSelectionTests {
    func route(_ logits: [Float], k: Int, _ rule: RoutingRule) -> Route {
        logits.withUnsafeBufferPointer { Gating.route($0.baseAddress!, count: logits.count, k: k, rule: rule) }
    }

    /// Softmax over ln 6, ln 3, ln 1 (k = 3, normalised): weights 0.6, 0.3, 0.1. Under 0.2 of the sum, the third
    /// goes and the other two are scaled back to the sum (1): 0.6/0.9 and 0.3/0.9, in the router's order.
    @Test func smallWeightsAreSkippedAndTheRestKeepTheSum() {
        var rule = RoutingRule(probabilities: .softmax, normalize: true)
        let logits: [Float] = [log(3), -30, log(6), log(1)]
        let all = route(logits, k: 3, rule)
        #expect(all.experts == [2, 0, 3])
        rule.minWeight = 0.2
        let thin = route(logits, k: 3, rule)
        #expect(thin.experts == [2, 0])
        #expect(abs(thin.weights[0] - 0.6 / 0.9) < 1e-6 && abs(thin.weights[1] - 0.3 / 0.9) < 1e-6)
        // A threshold above every share keeps the best one alone, with the whole sum.
        rule.minWeight = 0.95
        let one = route(logits, k: 3, rule)
        #expect(one.experts == [2] && abs(one.weights[0] - 1) < 1e-6)
        // Unnormalised weights (olmoe, deepseek2) keep their unnormalised sum.
        var raw = RoutingRule(probabilities: .softmax, normalize: false)
        let before = route(logits, k: 3, raw)
        raw.minWeight = 0.2
        let after = route(logits, k: 3, raw)
        #expect(after.experts == [2, 0])
        #expect(abs(after.weights.reduce(0, +) - before.weights.reduce(0, +)) < 1e-6)
    }

    @Test func selectionsAModelCannotTakeAreRefused() throws {
        let config = try ModelConfig(file: GGUFFile(path: Fixtures.shippedModel))
        #expect(config.expertsUsed == 2)
        #expect(try config.selecting(ExpertSelection(used: 1)).expertsUsed == 1)
        #expect(try config.selecting(ExpertSelection(minWeight: 0.3)).routing.minWeight == 0.3)
        #expect(try config.selecting(.file).routing == config.routing)
        for bad in [ExpertSelection(used: 3), ExpertSelection(used: 0), ExpertSelection(minWeight: 1), ExpertSelection(minWeight: -0.1), ExpertSelection(minWeight: .nan)] {
            #expect(throws: ModelError.self, "\(bad)") { try config.selecting(bad) }
        }
    }

    /// The file's own count (or a threshold no weight is under) is bit-identical to no selection; one expert per
    /// token, or a threshold that skips some, changes the logits.
    @Test func theFilesCountChangesNothingAndFewerExpertsChangeTheLogits() throws {
        let ids: [Int32] = [1, 450, 4996, 17354, 1701, 432, 10772, 975, 278, 17366, 11203, 29889]
        func logits(_ s: ExpertSelection) throws -> [Float] {
            let engine = try Engine(path: Fixtures.shippedModel, threads: 1, selection: s)
            return try engine.evaluate(ids, in: engine.newSequence(capacity: 32), all: true)
        }
        let file = try logits(.file)
        #expect(try logits(ExpertSelection(used: 2)) == file)
        #expect(try logits(ExpertSelection(minWeight: 1e-9)) == file)
        let one = try logits(ExpertSelection(used: 1))
        let thin = try logits(ExpertSelection(minWeight: 0.45))
        #expect(one != file && thin != file)
        #expect(one.allSatisfy(\.isFinite) && thin.allSatisfy(\.isFinite))
        // One expert per token is skipping the second at a threshold above any second share (at most 0.5 of two
        // normalised weights); the kept weight is 1 there up to rounding.
        let half = try logits(ExpertSelection(minWeight: 0.5))
        #expect(zip(half, one).map { abs($0 - $1) }.max()! < 1e-3)
    }
}
