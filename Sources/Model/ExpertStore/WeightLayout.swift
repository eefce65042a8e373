import GGUF

/// Who holds each tensor of a model file and how many bytes one routed expert is: the one answer that stage
/// loading, prefaulting, placement (`ModelFootprint`) and the offload cache all use.
public struct WeightLayout: Sendable {
    /// Which part of a deployment needs a tensor's bytes.
    public enum Holder: Sendable, Equatable {
        /// The token embedding: the first stage (and the last, when the head is tied to it).
        case embedding
        /// The output norm and head: the last stage.
        case head
        /// A layer's attention, norms, router and shared expert: the stage running the layer.
        case layer(Int)
        /// A layer's stacked routed-expert tensors: whoever holds each expert, one slice per expert.
        case experts(Int)
    }

    /// One stacked expert tensor (gate, up or down) of a layer: expert e's bytes are at
    /// `fileOffset + e · bytesPerExpert`, `bytesPerExpert` long.
    public struct ExpertSlice: Sendable, Equatable {
        public let role: TensorRole
        public let fileOffset: Int
        public let bytesPerExpert: Int
        public let type: GGMLType
    }

    public let expertCount: Int
    public let layerCount: Int
    /// Whether the file has no `output` tensor (the head reads the embedding).
    public let tiedHead: Bool
    /// Per layer: its stacked expert tensors, gate, up, down (empty for a dense layer).
    public let expertSlices: [[ExpertSlice]]

    public init(file: GGUFFile, config: ModelConfig) {
        expertCount = max(1, config.expertCount)
        layerCount = config.layerCount
        tiedHead = file.tensorInfo(named: TensorName.global(.output).description) == nil
        var slices = [[ExpertSlice]](repeating: [], count: config.layerCount)
        if config.isMoE {
            for l in 0..<config.layerCount {
                for role in [TensorRole.expertGate, .expertUp, .expertDown] {
                    guard let t = file.tensor(named: TensorName.block(l, role).description) else { continue }
                    slices[l].append(ExpertSlice(role: role, fileOffset: t.fileOffset, bytesPerExpert: t.info.byteCount / max(1, config.expertCount), type: t.info.type))
                }
            }
        }
        expertSlices = slices
    }

    /// The format layer `layer`'s experts take their rows in on the wire (see `ExpertInput.quantizedFormat`);
    /// nil: floats.
    public func expertInputFormat(layer: Int) -> GGMLType? {
        let types = Dictionary(expertSlices[layer].map { ($0.role, $0.type) }, uniquingKeysWith: { a, _ in a })
        guard let g = types[.expertGate], let u = types[.expertUp], let d = types[.expertDown] else { return nil }
        return ExpertInput.quantizedFormat(gate: g, up: u, down: d)
    }

    /// Who holds a tensor; nil for a name outside Conclave's table or a layer the model does not have.
    public func holder(of name: String) -> Holder? {
        guard let n = TensorName(parsing: name) else { return nil }
        if let l = n.layer {
            guard l < layerCount else { return nil }
            // The experts' biases (gpt-oss) are small and every holder of the layer reads them whole: the layer's.
            return n.role.category == .experts && n.suffix == "weight" ? .experts(l) : .layer(l)
        }
        return n.role == .tokenEmbedding || n.role == .ropeFreqs ? .embedding : .head
    }

    /// Whether a stage running `layers` needs a tensor of `holder` in full (expert tensors are held per expert:
    /// see `expertRanges`); a shard without layers (experts only) runs no stage and needs none.
    public func stageNeeds(_ holder: Holder, layers: Range<Int>) -> Bool {
        guard !layers.isEmpty else { return false }
        let first = layers.lowerBound == 0, last = layers.upperBound == layerCount
        switch holder {
        case .embedding: return first || (tiedHead && last)
        case .head: return last
        case .layer(let l), .experts(let l): return layers.contains(l)
        }
    }

    /// Bytes of one routed expert of `layer` (its gate, up and down slices).
    public func bytesPerExpert(layer: Int) -> Int {
        expertSlices[layer].reduce(0) { $0 + $1.bytesPerExpert }
    }

    /// Bytes of one offload cache slot for an expert of `layer`: a region per part that whole O_DIRECT blocks
    /// covering it fit in (`ExpertReader.regionBytes`), so each part is read straight into the slot.
    public func slotBytes(layer: Int) -> Int {
        expertSlices[layer].reduce(0) { $0 + ExpertReader.regionBytes($1.bytesPerExpert) }
    }

    /// The file ranges of one expert, gate then up then down.
    public func expertRanges(layer: Int, expert: Int) -> [(role: TensorRole, offset: Int, count: Int)] {
        expertSlices[layer].map { ($0.role, $0.fileOffset + expert * $0.bytesPerExpert, $0.bytesPerExpert) }
    }

    /// Faults in the experts of `set` over `layers` from the mapping; returns their bytes.
    @discardableResult
    public func prefault(_ set: ExpertSet, layers: some Swift.Sequence<Int>, in file: GGUFFile) -> Int {
        var bytes = 0
        for l in layers {
            for e in set.experts(inLayer: l, of: expertCount) {
                for r in expertRanges(layer: l, expert: e) {
                    file.mapping.prefault(offset: r.offset, count: r.count)
                    bytes += r.count
                }
            }
        }
        return bytes
    }
}

extension WeightLayout {
    /// The byte ranges of `file` that a shard reads: every tensor a stage running `layers` needs whole (none for
    /// an experts-only shard), and of the routed experts the slices of
    /// `experts` (the ones it keeps resident and the ones it pages) with their layers' expert biases. A worker
    /// that fetches only its shard fetches these (`ModelFetch`); a tensor outside Conclave's table is fetched
    /// with any stage, so an unknown tensor is never read as a hole.
    public func fileRanges(of file: GGUFFile, layers: Range<Int>, experts: ExpertSet) -> [Range<Int>] {
        var out: [Range<Int>] = []
        for t in file.tensors {
            let whole = t.fileOffset..<(t.fileOffset + t.info.byteCount)
            guard let holder = holder(of: t.info.name), let name = TensorName(parsing: t.info.name) else {
                if !layers.isEmpty { out.append(whole) }
                continue
            }
            switch holder {
            case .experts(let l):
                let each = t.info.byteCount / expertCount
                for e in experts.experts(inLayer: l, of: expertCount) where e < expertCount {
                    out.append((t.fileOffset + e * each)..<(t.fileOffset + (e + 1) * each))
                }
            case .layer(let l):
                let expertBias = name.role.category == .experts
                if stageNeeds(holder, layers: layers) || (expertBias && !experts.experts(inLayer: l, of: expertCount).isEmpty) { out.append(whole) }
            case .embedding, .head:
                if stageNeeds(holder, layers: layers) { out.append(whole) }
            }
        }
        return out
    }
}
