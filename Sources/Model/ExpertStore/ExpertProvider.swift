import GGUF
import Runtime
import Kernels

/// Which experts of which layers a process holds: every expert of every layer it binds, or an explicit list
/// per layer (a worker's share under expert parallelism; layers not listed hold none).
public struct ExpertSet: Sendable, Equatable, CustomStringConvertible {
    enum Storage: Sendable, Equatable {
        case all
        case listed([Int: [Int]])
    }
    let storage: Storage

    /// Every expert of every bound layer.
    public static let all = ExpertSet(storage: .all)
    /// No expert at all (a stage whose experts all live elsewhere).
    public static let none = ExpertSet(storage: .listed([:]))

    init(storage: Storage) { self.storage = storage }

    /// `layers[l]` lists layer l's experts (any order, duplicates dropped); empty lists are dropped.
    public init(_ layers: [Int: [Int]]) {
        storage = .listed(layers.filter { !$0.value.isEmpty }.mapValues { Array(Set($0)).sorted() })
    }

    /// Every expert of `layers`, listed (what a process that holds them all loads).
    public static func every(layers: Range<Int>, expertCount: Int) -> ExpertSet {
        ExpertSet(Dictionary(uniqueKeysWithValues: layers.map { ($0, Array(0..<expertCount)) }))
    }

    public var isAll: Bool { storage == .all }

    /// Whether the set lists no expert at all.
    public var isEmpty: Bool { storage == .listed([:]) }

    /// Layers with at least one listed expert (nil for `all`).
    public var listedLayers: [Int]? {
        if case .listed(let m) = storage { return m.keys.sorted() }
        return nil
    }

    /// Layer `layer`'s experts, ascending, given the model's `expertCount`.
    public func experts(inLayer layer: Int, of expertCount: Int) -> [Int] {
        switch storage {
        case .all: return Array(0..<expertCount)
        case .listed(let m): return m[layer] ?? []
        }
    }

    public func contains(layer: Int, expert: Int) -> Bool {
        switch storage {
        case .all: return true
        case .listed(let m): return m[layer]?.contains(expert) ?? false
        }
    }

    /// Number of (layer, expert) pairs over `layers`.
    public func count(layers: some Swift.Sequence<Int>, expertCount: Int) -> Int {
        layers.reduce(0) { $0 + experts(inLayer: $1, of: expertCount).count }
    }

    /// Restricted to `layers`.
    public func restricted(to layers: Range<Int>, expertCount: Int) -> ExpertSet {
        ExpertSet(Dictionary(uniqueKeysWithValues: layers.map { ($0, experts(inLayer: $0, of: expertCount)) }))
    }

    public var description: String {
        switch storage {
        case .all: return "all experts"
        case .listed(let m): return m.keys.sorted().map { "layer \($0): \(m[$0]!)" }.joined(separator: "; ")
        }
    }
}

/// The rows a provider computes experts for: floats as a stage holds them, or rows already quantized to the
/// activation format the layer's gate and up kernels consume, as an expert call carries them — the bytes the
/// local kernel would make from those floats, so the outputs are bit-identical and the call is 3.8× smaller.
public enum ExpertInput: @unchecked Sendable {
    case floats(UnsafePointer<Float>)
    /// Rows of `format` blocks, `rowBytes` apart.
    case quantized(UnsafeRawPointer, format: GGMLType, rowBytes: Int)

    /// The format experts with these weight types take their input in, when it may be quantized before it
    /// travels: their gate and up projections run as one fused pass over activations quantized once (see
    /// `ExpertCompute.run`), and the format can be read back to floats where a host lacks that kernel. Nil:
    /// the floats travel.
    public static func quantizedFormat(gate: GGMLType, up: GGMLType, down: GGMLType) -> GGMLType? {
        guard gate == up, MatMul.hasKernel(gate), MatMul.hasKernel(down), let f = ActivationQuant.vecDotType(for: gate),
              f == .q8_0 || f == .q8_K else { return nil }
        return f
    }

    /// Row `r` as floats into `dst` (`embedding` of them).
    func floats(row r: Int, embedding e: Int, into dst: UnsafeMutablePointer<Float>) throws(KernelError) {
        switch self {
        case .floats(let x): dst.update(from: x + r * e, count: e)
        case .quantized(let q, let format, let rowBytes): try Dequantize.row(format, q + r * rowBytes, dst, count: e)
        }
    }
}

/// Computes experts' outputs for the rows of a batch routed to experts of one layer.
///
/// The MoE block does not know where experts live: resident in this process, behind a memory-budgeted cache,
/// or on another worker. Every provider implements the one slot-addressed computation — each (row, slot)'s
/// weighted output, written where `Route.accumulate` reads it — and `apply` is derived from it once, so every
/// provider sums in the same order and gives bit-identical results.
public protocol ExpertProvider: AnyObject, Sendable {
    /// w · FFN_e(x) for every (row, slot) of `routes`, written at `(row · slotsPerRow + slot) · embedding` of
    /// `results`. Each vector is the same whatever else is in the batch (the kernels are batch-invariant), so
    /// results computed by different providers sum to exactly what one process computes.
    func weightedOutputs(layer: Int, input: ExpertInput, routes: [Route], slotsPerRow k: Int,
                         into results: UnsafeMutablePointer<Float>) throws

    /// A hint that `layer` will soon be computed for rows likely routed to `experts` (the next layer's router
    /// run on this layer's hidden state): a provider that pages its experts starts reading the missing ones.
    func prefetch(layer: Int, experts: Set<Int>)

    /// Whether some experts are read from disk on use (a stage then predicts the next layer's experts).
    var pagesExperts: Bool { get }
}

extension ExpertProvider {
    public func prefetch(layer: Int, experts: Set<Int>) {}
    public var pagesExperts: Bool { false }

    /// Σ_k w_k · FFN_{e_k}(x) added into `output` for each row, in route order.
    public func apply(layer: Int, input x: UnsafePointer<Float>, rows: Int, embedding e: Int, routes: [Route],
                      output: UnsafeMutablePointer<Float>) throws {
        let k = Route.slotsPerRow(routes)
        let results = UnsafeMutablePointer<Float>.allocate(capacity: max(1, rows * k * e))
        defer { results.deallocate() }
        try weightedOutputs(layer: layer, input: .floats(x), routes: routes, slotsPerRow: k, into: results)
        Route.accumulate(routes, results: results, slotsPerRow: k, embedding: e, into: output)
    }
}

/// What joins an expert's gate and up projections.
public enum ExpertActivation: Sendable, Equatable {
    /// silu(gate) · up.
    case swiglu
    /// gpt-oss's clamped form (`Ops.swigluOAI`).
    case swigluOAI(alpha: Float, limit: Float)

    func apply(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count n: Int) {
        switch self {
        case .swiglu: Ops.swiglu(gate: gate, up: up, count: n)
        case .swigluOAI(let alpha, let limit): Ops.swigluOAI(gate: gate, up: up, count: n, alpha: alpha, limit: limit)
        }
    }
}

/// One expert's biases (gpt-oss): added after its gate, up and down projections.
public struct ExpertBias: Sendable {
    public let gate: ArraySlice<Float>, up: ArraySlice<Float>, down: ArraySlice<Float>
}

/// One expert's three matrices, wherever their bytes are (the mapping, or a slot of the offload cache), with its
/// biases and the activation between the projections.
public struct ExpertMatrices: Sendable {
    public let gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix
    public let bias: ExpertBias?
    public let activation: ExpertActivation
    public init(gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix, bias: ExpertBias? = nil, activation: ExpertActivation = .swiglu) {
        self.gate = gate
        self.up = up
        self.down = down
        self.bias = bias
        self.activation = activation
    }
}

/// The expert FFN computation every local provider runs: rows grouped by expert so that each expert's weights
/// stream from memory once per batch, however many rows chose it.
enum ExpertCompute {
    /// The (row, slot) pairs routed to each expert, experts ascending; `check` vets each expert id first.
    static func group(_ routes: [Route], check: (Int) throws -> Void) rethrows -> [(expert: Int, members: [(row: Int, slot: Int)])] {
        var byExpert: [Int: [(row: Int, slot: Int)]] = [:]
        for (r, route) in routes.enumerated() {
            for (i, e) in route.experts.enumerated() {
                try check(e)
                byExpert[e, default: []].append((r, i))
            }
        }
        return byExpert.keys.sorted().map { ($0, byExpert[$0]!) }
    }

    /// Computes `experts` (each with its matrices and the (row, index-in-route) pairs routed to it) and writes
    /// every pair's weighted output into `results` as `ExpertProvider.weightedOutputs` specifies.
    static func run(_ experts: [(matrices: ExpertMatrices, members: [(row: Int, slot: Int)])], input: ExpertInput,
                    routes: [Route], slotsPerRow k: Int, embd: Int, ff: Int, pool: ThreadPool,
                    into results: UnsafeMutablePointer<Float>) throws {
        let total = experts.reduce(0) { $0 + $1.members.count }
        guard total > 0 else { return }
        let gate = UnsafeMutablePointer<Float>.allocate(capacity: total * ff)
        let up = UnsafeMutablePointer<Float>.allocate(capacity: total * ff)
        let down = UnsafeMutablePointer<Float>.allocate(capacity: total * embd)
        defer { gate.deallocate(); up.deallocate(); down.deallocate() }
        var offsets: [Int] = []
        var o = 0
        for (_, m) in experts {
            offsets.append(o)
            o += m.count
        }
        let fused = experts.allSatisfy { ex in
            let w = ex.matrices
            return w.gate.type == w.up.type && MatMul.hasKernel(w.gate.type) && MatMul.hasKernel(w.down.type)
        }
        if fused, let first = experts.first?.matrices,
           let inFormat = ActivationQuant.vecDotType(for: first.gate.type), let midFormat = ActivationQuant.vecDotType(for: first.down.type),
           experts.allSatisfy({ $0.matrices.gate.type == first.gate.type && $0.matrices.down.type == first.down.type }) {
            // Phase 1: every expert's gate and up projections in one dispatch (inputs quantized once — or
            // already quantized in this very format, by the worker that sent them).
            var jobs: [MatMul.Job] = []
            let gathered: (Int) throws -> QuantizedActivations
            if case .quantized(let q, let format, let rowBytes) = input, format == inFormat {
                gathered = { i in try QuantizedActivations(gathering: experts[i].members.map(\.row), from: q, sourceStride: rowBytes, cols: embd, format: format) }
            } else {
                let xs = try Self.gather(experts, input: input, total: total, embd: embd)
                defer { xs.deallocate() }
                let quantized = try experts.indices.map { i in
                    try QuantizedActivations(xs + offsets[i] * embd, cols: embd, batch: experts[i].members.count, format: inFormat, pool: pool)
                }
                gathered = { quantized[$0] }
            }
            for (i, ex) in experts.enumerated() {
                let a = try gathered(i), off = offsets[i]
                jobs.append(MatMul.Job(ex.matrices.gate, a, into: gate + off * ff))
                jobs.append(MatMul.Job(ex.matrices.up, a, into: up + off * ff))
            }
            try MatMul.multiply(jobs, pool: pool)
            for (i, ex) in experts.enumerated() {
                Self.addBias(ex.matrices.bias?.gate, rows: ex.members.count, width: ff, to: gate + offsets[i] * ff)
                Self.addBias(ex.matrices.bias?.up, rows: ex.members.count, width: ff, to: up + offsets[i] * ff)
                ex.matrices.activation.apply(gate: gate + offsets[i] * ff, up: up + offsets[i] * ff, count: ex.members.count * ff)
            }
            // Phase 2: every down projection in one dispatch.
            jobs.removeAll()
            for (i, ex) in experts.enumerated() {
                let n = ex.members.count, off = offsets[i]
                let a = try QuantizedActivations(gate + off * ff, cols: ff, batch: n, format: midFormat, pool: pool)
                jobs.append(MatMul.Job(ex.matrices.down, a, into: down + off * embd))
            }
            try MatMul.multiply(jobs, pool: pool)
        } else {
            let xs = try Self.gather(experts, input: input, total: total, embd: embd)
            defer { xs.deallocate() }
            for (i, ex) in experts.enumerated() {
                let n = ex.members.count, off = offsets[i], w = ex.matrices
                try MatMul.multiply(w.gate, xs + off * embd, batch: n, into: gate + off * ff, pool: pool)
                try MatMul.multiply(w.up, xs + off * embd, batch: n, into: up + off * ff, pool: pool)
                Self.addBias(w.bias?.gate, rows: n, width: ff, to: gate + off * ff)
                Self.addBias(w.bias?.up, rows: n, width: ff, to: up + off * ff)
                w.activation.apply(gate: gate + off * ff, up: up + off * ff, count: n * ff)
                try MatMul.multiply(w.down, gate + off * ff, batch: n, into: down + off * embd, pool: pool)
            }
        }
        for (i, ex) in experts.enumerated() { Self.addBias(ex.matrices.bias?.down, rows: ex.members.count, width: embd, to: down + offsets[i] * embd) }
        for (i, ex) in experts.enumerated() {
            for (j, item) in ex.members.enumerated() {
                let route = routes[item.row]
                let weight = route.weights[item.slot]
                let dst = results + (item.row * k + route.slot(item.slot)) * embd, src = down + (offsets[i] + j) * embd
                for c in 0..<embd { dst[c] = src[c] * weight }
            }
        }
    }

    /// `bias` added to each of `rows` rows of `width` (nothing without one).
    static func addBias(_ bias: ArraySlice<Float>?, rows: Int, width: Int, to x: UnsafeMutablePointer<Float>) {
        guard let bias else { return }
        bias.withUnsafeBufferPointer { b in
            for r in 0..<rows { for c in 0..<width { x[r * width + c] += b[c] } }
        }
    }

    /// Per expert, its rows' inputs as floats, one after another (the caller deallocates).
    static func gather(_ experts: [(matrices: ExpertMatrices, members: [(row: Int, slot: Int)])], input: ExpertInput,
                       total: Int, embd: Int) throws -> UnsafeMutablePointer<Float> {
        let xs = UnsafeMutablePointer<Float>.allocate(capacity: total * embd)
        var o = 0
        do {
            for (_, m) in experts {
                for item in m {
                    try input.floats(row: item.row, embedding: embd, into: xs + o * embd)
                    o += 1
                }
            }
        } catch {
            xs.deallocate()
            throw error
        }
        return xs
    }
}
