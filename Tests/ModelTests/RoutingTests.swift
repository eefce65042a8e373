import Foundation
import Runtime
import Testing
import Kernels
@testable import Model

/// Each architecture's gating rule on hand-made router weights.
struct RoutingTests {
    let qwen3moe = ArchitectureTraits.registry["qwen3moe"]!

    /// Router rows one-hot over the input dimensions: with a one-hot input, each expert's logit is exactly the
    /// value placed in its row, so the chosen experts and their weights are known in closed form.
    func routeOneHot(values: [Float], k: Int, traits: ArchitectureTraits) throws -> Route {
        let n = values.count, embd = n
        var router = [Float](repeating: 0, count: n * embd)
        for e in 0..<n { router[e * embd + e] = values[e] }  // expert e reads input dimension e
        var x = [Float](repeating: 1, count: embd)  // all ones: logit_e = values[e]
        x[0] = 1
        var logits = [Float](repeating: 0, count: n)
        try router.withUnsafeBytes { r in
            let m = try WeightMatrix(type: .f32, rows: n, cols: embd, data: r.baseAddress!)
            try MatMul.multiply(m, x, batch: 1, into: &logits, pool: ThreadPool(threads: 1))
        }
        #expect(logits == values)
        return Gating.route(logits, count: n, k: k, traits: traits)
    }

    @Test func softmaxThenTopKNormalised() throws {
        // Logits ln 4, ln 2, ln 1, −∞-ish: softmax ∝ 4, 2, 1; the top two renormalised are 4/6 and 2/6.
        let r = try routeOneHot(values: [log(2), log(4), -20, log(1), -20, -20, -20, -20], k: 2, traits: qwen3moe)
        #expect(r.experts == [1, 0])
        #expect(abs(r.weights[0] - 4.0 / 6) < 1e-6 && abs(r.weights[1] - 2.0 / 6) < 1e-6)
        #expect(abs(r.weights.reduce(0, +) - 1) < 1e-6)
    }

    @Test func tiesGoToTheLowerExpert() throws {
        let r = try routeOneHot(values: [0, 3, 1, 3, 3, 0, 0, 0], k: 2, traits: qwen3moe)
        #expect(r.experts == [1, 3])
        #expect(r.weights == [0.5, 0.5])
    }

    @Test func singleExpertGetsWeightOne() throws {
        let r = try routeOneHot(values: [0, 0, 0, 0, 0, 9, 0, 0], k: 1, traits: qwen3moe)
        #expect(r.experts == [5] && r.weights == [1])
    }
}

extension RoutingTests {
    /// qwen2moe and olmoe keep the softmax probabilities of the chosen experts as they are.
    @Test(arguments: ["qwen2moe", "olmoe"])
    func softmaxThenTopKUnnormalised(arch: String) throws {
        let traits = ArchitectureTraits.registry[arch]!
        let r = try routeOneHot(values: [log(2), log(4), log(1), log(1), -20, -20, -20, -20], k: 2, traits: traits)
        #expect(r.experts == [1, 0])
        // softmax ∝ 4, 2, 1, 1 (and ~0): 4/8 and 2/8.
        #expect(abs(r.weights[0] - 0.5) < 1e-6 && abs(r.weights[1] - 0.25) < 1e-6)
    }

    @Test func mixtralNormalises() throws {
        let r = try routeOneHot(values: [log(2), log(4), log(1), log(1), -20, -20, -20, -20], k: 2, traits: ArchitectureTraits.registry["llama"]!)
        #expect(r.experts == [1, 0])
        #expect(abs(r.weights[0] - 4.0 / 6) < 1e-6 && abs(r.weights[1] - 2.0 / 6) < 1e-6)
    }
}

/// DeepSeek-V3's routing rules (llama.cpp's build_moe_ffn): sigmoid probabilities, a selection bias that picks
/// but does not weigh, renormalisation and scale, and group-limited choice.
struct RoutingRuleTests {
    func route(_ logits: [Float], k: Int, _ rule: RoutingRule, bias: [Float]? = nil) -> Route {
        logits.withUnsafeBufferPointer { l in
            bias.map { b in b.withUnsafeBufferPointer { Gating.route(l.baseAddress!, count: logits.count, k: k, rule: rule, selectionBias: $0.baseAddress!) } }
                ?? Gating.route(l.baseAddress!, count: logits.count, k: k, rule: rule)
        }
    }

    @Test func sigmoidWithSelectionBiasAndScale() {
        let logits: [Float] = [0, 1, 2, -1]
        let s = logits.map { 1 / (1 + expf(-$0)) }
        // The bias makes expert 0 chosen (0.5 + 3 beats every other), but its weight is its own probability.
        let raw = route(logits, k: 2, RoutingRule(probabilities: .sigmoid, normalize: false, scale: 2.5), bias: [3, 0, 0, 0])
        #expect(raw.experts == [0, 2])
        #expect(raw.weights == [s[0] * 2.5, s[2] * 2.5])
        let normed = route(logits, k: 2, RoutingRule(probabilities: .sigmoid, normalize: true, scale: 2.5), bias: [3, 0, 0, 0])
        let sum = Float(Double(s[0]) + Double(s[2]))
        #expect(normed.weights == [s[0] / sum * 2.5, s[2] / sum * 2.5])
        // Without the bias the two largest sigmoids win.
        #expect(route(logits, k: 2, RoutingRule(probabilities: .sigmoid, normalize: false)).experts == [2, 1])
    }

    @Test func groupLimitedChoice() {
        // Four groups of two, scored by their two best: 9 − 5 = 4, 3 + 3 = 6, 2.5 + 2.5 = 5, 0. The best two groups
        // (1 and 2) exclude expert 0 although its logit is the largest.
        let logits: [Float] = [9, -5, 3, 3, 2.5, 2.5, 0, 0]
        let grouped = route(logits, k: 2, RoutingRule(probabilities: .softmaxOverChosen, normalize: false, groupCount: 4, groupsUsed: 2))
        #expect(grouped.experts == [2, 3])
        #expect(grouped.weights == [0.5, 0.5])
        #expect(route(logits, k: 2, RoutingRule(probabilities: .softmaxOverChosen, normalize: false)).experts == [0, 2])
        // Three groups used: group 0 is back and expert 0 with it.
        #expect(route(logits, k: 2, RoutingRule(probabilities: .softmaxOverChosen, normalize: false, groupCount: 4, groupsUsed: 3)).experts == [0, 2])
    }

    /// The rules the registered architectures start from.
    @Test func traitsGiveTheirRules() {
        #expect(ArchitectureTraits.registry["qwen3moe"]!.routing == RoutingRule(probabilities: .softmax, normalize: true))
        #expect(ArchitectureTraits.registry["olmoe"]!.routing == RoutingRule(probabilities: .softmax, normalize: false))
        #expect(ArchitectureTraits.registry["gpt-oss"]!.routing == RoutingRule(probabilities: .softmaxOverChosen, normalize: false))
    }
}
