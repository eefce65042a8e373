import GGUF

/// Drops each MoE layer's least used experts (issue 15's pruning): given how often a calibration text chose each
/// expert (`RoutingTrace.expertUse`), keeps the same number per layer — the most used, ascending ids — and
/// writes a GGUF that llama.cpp loads as is: the stacked expert tensors, their biases, the router's rows and
/// the selection bias keep only those experts, and `expert_count` says how many are left. Everything else is
/// copied byte for byte, so keeping every expert writes the same tensors.
public enum ModelPruner {
    /// Experts to keep per layer: the `keep` most used (ties: the lower id), ids ascending.
    public static func choose(use: [[Double]], keep: Int, expertCount: Int) -> [[Int]] {
        use.map { row in
            guard row.count == expertCount else { return Array(0..<keep) }
            return Array((0..<expertCount).sorted { (-row[$0], $0) < (-row[$1], $1) }.prefix(keep)).sorted()
        }
    }

    /// The routing-mass curve: for k = 1 … experts, the least and the most of its layer's routing that any layer's
    /// k most used experts carried (what `--keep k` keeps).
    public static func massCurve(use: [[Double]], expertCount: Int) -> [(experts: Int, min: Double, max: Double)] {
        let rows = use.filter { $0.count == expertCount && $0.reduce(0, +) > 0 }
        let cumulative = rows.map { row -> [Double] in
            let total = row.reduce(0, +)
            var acc = 0.0
            return row.sorted(by: >).map { acc += $0; return acc / total }
        }
        return (1...max(1, expertCount)).map { k in
            let at = cumulative.map { $0[k - 1] }
            return (k, at.min() ?? 1, at.max() ?? 1)
        }
    }

    /// The fewest experts per layer that carry `mass` of every layer's routing (the largest layer's need, as a
    /// GGUF has one expert count), at least `minimum`.
    public static func count(forMass mass: Double, use: [[Double]], minimum: Int, expertCount: Int) -> Int {
        var need = minimum
        for row in use where row.count == expertCount {
            let total = row.reduce(0, +)
            guard total > 0 else { continue }
            var acc = 0.0, n = 0
            for u in row.sorted(by: >) where acc < mass * total - 1e-12 {
                acc += u
                n += 1
            }
            need = max(need, n)
        }
        return min(expertCount, need)
    }

    /// Writes the model at `source` with only `kept[l]` experts in layer l (the same number in every layer).
    /// The file is mapped afresh here: a mapping an engine has run on holds weights repacked in place for this
    /// host's kernels, not the bytes of the file.
    public static func write(source: String, kept: [[Int]], to path: String, progress: (Int, Int) -> Void = { _, _ in }) throws {
        let file = try GGUFFile(path: source)
        let config = try ModelConfig(file: file)
        let n = config.expertCount, arch = config.architecture
        guard config.isMoE, kept.count == config.layerCount, let count = kept.first?.count, count >= max(1, config.expertsUsed),
              kept.allSatisfy({ $0.count == count && Set($0).count == count && $0.allSatisfy { (0..<n).contains($0) } }) else {
            throw ModelError("pruning needs the same number of distinct experts (at least the \(config.expertsUsed) used per token) kept in each of the \(config.layerCount) layers")
        }
        let w = GGUFWriter(path: path, alignment: file.alignment)
        for (key, value) in file.metadata where key != "general.alignment" {
            try w.set(key, key == ModelKey.expertCount.name(arch) ? .uint32(UInt32(count)) : value)
        }
        // A tensor whose last axis is the experts: its shape there becomes `count`.
        func perExpert(_ info: GGUFTensorInfo) -> Int? {
            guard let name = TensorName(parsing: info.name), let l = name.layer, l < config.layerCount, info.shape.last == n else { return nil }
            switch name.role.category {
            case .experts, .router: return l
            default: return nil
            }
        }
        for info in file.tensorInfos {
            let shape = perExpert(info) == nil ? info.shape : Array(info.shape.dropLast()) + [count]
            _ = try w.addTensor(name: info.name, type: info.type, shape: shape)
        }
        var index = 0
        try w.write { out, sink in
            let info = file.tensorInfos[index]
            index += 1
            progress(index, file.tensorInfos.count)
            guard let t = file.tensor(named: info.name) else { throw ModelError("\(file.path): tensor '\(info.name)' vanished") }
            if let l = perExpert(info) {
                // Expert-major along the last axis: each expert's part is one contiguous run of bytes.
                let part = info.byteCount / n
                for e in kept[l] { try sink.write(UnsafeRawBufferPointer(start: t.data + e * part, count: part)) }
            } else {
                try sink.write(t.bytes)
            }
        }
    }
}
