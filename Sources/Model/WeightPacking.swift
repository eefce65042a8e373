import GGUF
import Kernels

/// A stage's Q4_0 and Q8_0 matrices are repacked once, when the stage binds them, into the eight-row layout the
/// kernels read fastest (`Packing`). The rewrite happens in this process's private copy of the mapped pages —
/// the file never changes and RSS does not grow, since a private copy replaces the page it copies — and only
/// for what this process computes: a worker packs the experts it holds, nothing else of the stacked tensors.
/// The mapping remembers what was packed, so two stages over one file never pack a group twice.
extension GGUFFile {
    /// `w` (a view into this file) with rows `range` packed and the view marked packed; `w` unchanged when it
    /// cannot be packed (another type, a partial group, or a CPU without the packed kernel). Throws only when
    /// the pages cannot be made writable.
    func packed(_ w: WeightMatrix, rows range: Range<Int>? = nil) throws(ModelError) -> WeightMatrix {
        guard Packing.canPack(w), let base = mapping.base else { return w }
        let r = range ?? 0..<w.rows
        guard r.lowerBound % 8 == 0, r.count % 8 == 0, r.upperBound <= w.rows else { return w }
        let offset = base.distance(to: w.data) + r.lowerBound * w.rowStride, count = r.count * w.rowStride
        guard offset >= 0, offset + count <= mapping.count else { return w }
        do {
            try mapping.rewrite(offset: offset, count: count) { p, done in
                let scratch = UnsafeMutableRawPointer.allocate(byteCount: 8 * w.rowStride, alignment: 64)
                defer { scratch.deallocate() }
                for g in stride(from: 0, to: r.count, by: 8) where done.insert(offset + g * w.rowStride).inserted {
                    Packing.packGroup(p + g * w.rowStride, type: w.type, rowStride: w.rowStride, cols: w.cols, scratch: scratch)
                }
            }
        } catch {
            throw ModelError("cannot repack weights for the kernels: \(error)")
        }
        return Packing.view(w)
    }
}

extension ExpertWeights {
    /// Whether this layer's experts are computed from the packed layout (the offload cache packs its slots
    /// exactly when resident experts are packed, so both compute the same bits).
    var packable: Bool {
        expertFF % 8 == 0 && embd % 8 == 0 && Packing.canPack(gate) && Packing.canPack(up) && Packing.canPack(down)
    }

    /// The experts `held` packed; the others are never computed from this mapping by this process.
    func packed(in file: GGUFFile, held experts: [Int]) throws(ModelError) -> ExpertWeights {
        guard !experts.isEmpty, packable else { return self }
        var g = gate, u = up, d = down
        for e in experts {
            g = try file.packed(gate, rows: (e * expertFF)..<((e + 1) * expertFF))
            u = try file.packed(up, rows: (e * expertFF)..<((e + 1) * expertFF))
            d = try file.packed(down, rows: (e * embd)..<((e + 1) * embd))
        }
        return with(gate: g, up: u, down: d)
    }
}

extension LayerWeights {
    /// Attention and feed-forward matrices packed; of the routed experts only `heldExperts`.
    func packed(in file: GGUFFile, config: ModelConfig, heldExperts: [Int]) throws(ModelError) -> LayerWeights {
        LayerWeights(attention: try attention.packed(in: file, config: config), feedForward: try feedForward.packed(in: file, heldExperts: heldExperts))
    }
}
