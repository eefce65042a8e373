import GGUF
import Kernels

/// One row's routing decision: which experts, with what weights, in the order the router ranked them.
public struct Route: Sendable, Equatable {
    public var experts: [Int]
    public var weights: [Float]
    /// Each expert's position in the row's full route (the summation order); nil means 0, 1, 2, …. A provider
    /// handed part of a route (the experts it holds) keeps their original slots.
    public var slots: [Int]?
    public init(experts: [Int], weights: [Float], slots: [Int]? = nil) {
        self.experts = experts
        self.weights = weights
        self.slots = slots
    }
    public func slot(_ i: Int) -> Int { slots?[i] ?? i }

    /// Adds each row's weighted expert outputs (at `(row · slotsPerRow + slot) · embedding` in `results`) into
    /// `output` in route order (slot 0, 1, …), as llama.cpp adds them. Every provider sums through here, which is
    /// what keeps a distributed run bit-identical to a single process.
    public static func accumulate(_ routes: [Route], results: UnsafePointer<Float>, slotsPerRow k: Int, embedding e: Int,
                                  into output: UnsafeMutablePointer<Float>) {
        for (r, route) in routes.enumerated() {
            let out = output + r * e
            for s in (0..<route.experts.count).map(route.slot).sorted() {
                let src = results + (r * k + s) * e
                for c in 0..<e { out[c] += src[c] }
            }
        }
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
    /// layer → experts this process may compute; nil: every expert of `weights`.
    let held: [Int: Set<Int>]?

    public init(weights: [Int: ExpertWeights], pool: ThreadPool, held: [Int: [Int]]? = nil) {
        self.weights = weights
        self.pool = pool
        self.held = held?.mapValues(Set.init)
    }

    /// The experts `held` (layer → expert ids) of a model file, for a worker that holds experts of layers it
    /// does not run: binds the layers' stacked expert tensors and faults in only the held experts' slices.
    public static func load(file: GGUFFile, config: ModelConfig, held: [Int: [Int]], pool: ThreadPool) throws(ModelError) -> (ResidentExperts, residentBytes: Int) {
        var binder = TensorBinder(file: file)
        var w: [Int: ExpertWeights] = [:]
        for l in held.keys.sorted() {
            guard l >= 0 && l < config.layerCount else { throw ModelError("layer \(l) is outside the model's 0..<\(config.layerCount)") }
            guard let e = try LayerWeights.bind(&binder, layer: l, config: config).ffn.experts else {
                throw ModelError("layer \(l) of \(file.path) has no routed experts")
            }
            for x in held[l]! where x < 0 || x >= config.expertCount {
                throw ModelError("expert \(x) of layer \(l) is outside the model's \(config.expertCount) experts")
            }
            w[l] = try e.packed(in: file, held: held[l]!)
        }
        let bytes = prefault(file: file, config: config, held: held)
        return (ResidentExperts(weights: w, pool: pool, held: held), bytes)
    }

    /// Faults in the held experts' rows of each layer's stacked gate, up and down tensors; returns their bytes.
    @discardableResult
    static func prefault(file: GGUFFile, config: ModelConfig, held: [Int: [Int]]) -> Int {
        var bytes = 0
        for (l, experts) in held {
            for role in [TensorRole.expertGate, .expertUp, .expertDown] {
                guard let t = file.tensor(named: TensorName.block(l, role).description) else { continue }
                let per = t.info.byteCount / max(1, config.expertCount)
                for e in experts {
                    file.mapping.prefault(offset: t.fileOffset + e * per, count: per)
                    bytes += per
                }
            }
        }
        return bytes
    }

    public func apply(layer: Int, input x: UnsafePointer<Float>, rows: Int, routes: [Route], output: UnsafeMutablePointer<Float>) throws {
        guard let w = weights[layer] else { throw ModelError("layer \(layer) has no resident experts here") }
        let k = routes.map { r in (0..<r.experts.count).map { r.slot($0) + 1 }.max() ?? 0 }.max() ?? 0
        let results = UnsafeMutablePointer<Float>.allocate(capacity: max(1, rows * k * w.embd))
        defer { results.deallocate() }
        try weightedOutputs(layer: layer, input: x, routes: routes, slotsPerRow: k, into: results)
        Route.accumulate(routes, results: results, slotsPerRow: k, embedding: w.embd, into: output)
    }

    /// w · FFN_e(x) for every (row, slot) of `routes`, written at `(row · slotsPerRow + slot) · embd`. Each vector
    /// is the same whatever else is in the batch (the kernels are batch-invariant), so results computed by
    /// different workers sum to exactly what one process computes.
    public func weightedOutputs(layer: Int, input x: UnsafePointer<Float>, routes: [Route], slotsPerRow k: Int,
                                into results: UnsafeMutablePointer<Float>) throws {
        guard let w = weights[layer] else { throw ModelError("layer \(layer) has no resident experts here") }
        let embd = w.embd, ff = w.expertFF
        // (row, slot) pairs per expert, experts in ascending order.
        var byExpert: [Int: [(row: Int, slot: Int)]] = [:]
        let mine = held.map { $0[layer] ?? [] }
        for (r, route) in routes.enumerated() {
            for (i, e) in route.experts.enumerated() {
                guard e >= 0 && e * ff < w.gate.rows else { throw ModelError("expert \(e) does not exist in layer \(layer)") }
                if let mine, !mine.contains(e) { throw ModelError("expert \(e) of layer \(layer) is not held here") }
                byExpert[e, default: []].append((r, i))
            }
        }
        let chosen = byExpert.keys.sorted()
        let members = chosen.map { byExpert[$0]! }
        let total = members.reduce(0) { $0 + $1.count }
        // Per expert, its rows' inputs gathered, then gate, up, down results — one contiguous arena.
        let xs = UnsafeMutablePointer<Float>.allocate(capacity: max(1, total * embd))
        let gate = UnsafeMutablePointer<Float>.allocate(capacity: max(1, total * ff))
        let up = UnsafeMutablePointer<Float>.allocate(capacity: max(1, total * ff))
        let down = UnsafeMutablePointer<Float>.allocate(capacity: max(1, total * embd))
        defer { xs.deallocate(); gate.deallocate(); up.deallocate(); down.deallocate() }
        var offsets: [Int] = []
        var o = 0
        for m in members {
            offsets.append(o)
            for (i, item) in m.enumerated() { (xs + (o + i) * embd).update(from: x + item.row * embd, count: embd) }
            o += m.count
        }

        let fused = chosen.allSatisfy { e in
            let g = w.gate(e), u = w.up(e), d = w.down(e)
            return g.type == u.type && MatMul.hasKernel(g.type) && MatMul.hasKernel(d.type)
        }
        if fused, let inFormat = ActivationQuant.vecDotType(for: w.gate.type), let midFormat = ActivationQuant.vecDotType(for: w.down.type) {
            // Phase 1: every chosen expert's gate and up projections in one dispatch (inputs quantized once).
            var jobs: [MatMul.Job] = []
            for (i, e) in chosen.enumerated() {
                let n = members[i].count, off = offsets[i]
                let a = try QuantizedActivations(xs + off * embd, cols: embd, batch: n, format: inFormat, pool: pool)
                jobs.append(MatMul.Job(w.gate(e), a, into: gate + off * ff))
                jobs.append(MatMul.Job(w.up(e), a, into: up + off * ff))
            }
            try MatMul.multiply(jobs, pool: pool)
            Ops.swiglu(gate: gate, up: up, count: total * ff)
            // Phase 2: every down projection in one dispatch.
            jobs.removeAll()
            for (i, e) in chosen.enumerated() {
                let n = members[i].count, off = offsets[i]
                let a = try QuantizedActivations(gate + off * ff, cols: ff, batch: n, format: midFormat, pool: pool)
                jobs.append(MatMul.Job(w.down(e), a, into: down + off * embd))
            }
            try MatMul.multiply(jobs, pool: pool)
        } else {
            for (i, e) in chosen.enumerated() {
                let n = members[i].count, off = offsets[i]
                try MatMul.multiply(w.gate(e), xs + off * embd, batch: n, into: gate + off * ff, pool: pool)
                try MatMul.multiply(w.up(e), xs + off * embd, batch: n, into: up + off * ff, pool: pool)
                Ops.swiglu(gate: gate + off * ff, up: up + off * ff, count: n * ff)
                try MatMul.multiply(w.down(e), gate + off * ff, batch: n, into: down + off * embd, pool: pool)
            }
        }

        for (i, m) in members.enumerated() {
            for (j, item) in m.enumerated() {
                let route = routes[item.row]
                let weight = route.weights[item.slot]
                let dst = results + (item.row * k + route.slot(item.slot)) * embd, src = down + (offsets[i] + j) * embd
                for c in 0..<embd { dst[c] = src[c] * weight }
            }
        }
    }
}
