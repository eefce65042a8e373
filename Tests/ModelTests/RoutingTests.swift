import Foundation
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
