import Kernels

/// One row's routing decision: which experts, with what weights, in the order the router ranked them.
public struct Route: Sendable, Equatable {
    public var experts: [Int]
    public var weights: [Float]
    public init(experts: [Int], weights: [Float]) {
        self.experts = experts
        self.weights = weights
    }
}

/// Computes Σ_k w_k · FFN_{e_k}(x) for the rows of a batch routed to experts of one layer.
///
/// The MoE block does not know where experts live: resident in this process, behind a memory-budgeted cache,
/// or on another worker. Implementations must add into `output` in each row's route order, so that every
/// provider gives bit-identical sums.
public protocol ExpertProvider: AnyObject, Sendable {
    func apply(layer: Int, input x: UnsafePointer<Float>, rows: Int, routes: [Route], output: UnsafeMutablePointer<Float>) throws
}

/// Experts whose weights are mapped in this process. Rows are grouped by expert so each expert's weights
/// stream from memory once per batch, however many rows chose it.
public final class ResidentExperts: ExpertProvider, @unchecked Sendable {
    let weights: [Int: ExpertWeights]
    let pool: ThreadPool

    public init(weights: [Int: ExpertWeights], pool: ThreadPool) {
        self.weights = weights
        self.pool = pool
    }

    public func apply(layer: Int, input x: UnsafePointer<Float>, rows: Int, routes: [Route], output: UnsafeMutablePointer<Float>) throws {
        guard let w = weights[layer] else { throw ModelError("layer \(layer) has no resident experts here") }
        let embd = w.embd, ff = w.expertFF
        let k = routes.first?.experts.count ?? 0
        // (row, slot) pairs per expert.
        var byExpert: [Int: [(row: Int, slot: Int)]] = [:]
        for (r, route) in routes.enumerated() {
            for (s, e) in route.experts.enumerated() { byExpert[e, default: []].append((r, s)) }
        }
        // Each (row, slot) result lands in its own place, then rows are summed in slot order.
        let results = UnsafeMutablePointer<Float>.allocate(capacity: max(1, rows * k * embd))
        defer { results.deallocate() }
        for e in byExpert.keys.sorted() {
            let members = byExpert[e]!
            let n = members.count
            let xs = UnsafeMutablePointer<Float>.allocate(capacity: n * embd)
            let gate = UnsafeMutablePointer<Float>.allocate(capacity: n * ff)
            let up = UnsafeMutablePointer<Float>.allocate(capacity: n * ff)
            let down = UnsafeMutablePointer<Float>.allocate(capacity: n * embd)
            defer { xs.deallocate(); gate.deallocate(); up.deallocate(); down.deallocate() }
            for (i, m) in members.enumerated() { (xs + i * embd).update(from: x + m.row * embd, count: embd) }
            let g = w.gate(e), u = w.up(e)
            guard let format = ActivationQuant.vecDotType(for: g.type), MatMul.hasKernel(g.type), g.type == u.type else {
                try MatMul.multiply(g, xs, batch: n, into: gate, pool: pool)
                try MatMul.multiply(u, xs, batch: n, into: up, pool: pool)
                try finish(w, e, n, gate, up, down, members, routes, results, k)
                continue
            }
            // Gate and up read the same input: quantize it once.
            let a = try QuantizedActivations(xs, cols: embd, batch: n, format: format, pool: pool)
            try MatMul.multiply(g, a, into: gate, pool: pool)
            try MatMul.multiply(u, a, into: up, pool: pool)
            try finish(w, e, n, gate, up, down, members, routes, results, k)
        }
        for r in 0..<rows {
            let out = output + r * embd
            for s in 0..<routes[r].experts.count {
                let src = results + (r * k + s) * embd
                for j in 0..<embd { out[j] += src[j] }
            }
        }
    }

    private func finish(_ w: ExpertWeights, _ e: Int, _ n: Int, _ gate: UnsafeMutablePointer<Float>, _ up: UnsafeMutablePointer<Float>,
                        _ down: UnsafeMutablePointer<Float>, _ members: [(row: Int, slot: Int)], _ routes: [Route],
                        _ results: UnsafeMutablePointer<Float>, _ k: Int) throws {
        Ops.swiglu(gate: gate, up: up, count: n * w.expertFF)
        try MatMul.multiply(w.down(e), gate, batch: n, into: down, pool: pool)
        for (i, m) in members.enumerated() {
            let weight = routes[m.row].weights[m.slot]
            let dst = results + (m.row * k + m.slot) * w.embd, src = down + i * w.embd
            for j in 0..<w.embd { dst[j] = src[j] * weight }
        }
    }
}
