import GGUF
import Runtime
import Kernels

/// Experts whose weights are mapped in this process and stay in memory (faulted in once, packed in place).
public final class ResidentExperts: ExpertProvider, @unchecked Sendable {
    let weights: [Int: ExpertWeights]
    let pool: ThreadPool
    /// The experts this process may compute (of `weights`' layers).
    public let held: ExpertSet

    public init(weights: [Int: ExpertWeights], pool: ThreadPool, held: ExpertSet = .all) {
        self.weights = weights
        self.pool = pool
        self.held = held
    }

    /// The experts `held` of a model file, for a worker that holds experts of layers it does not run: binds the
    /// layers' stacked expert tensors, packs and faults in only the held experts' slices.
    public static func load(file: GGUFFile, config: ModelConfig, held: ExpertSet, pool: ThreadPool) throws(ModelError) -> (ResidentExperts, residentBytes: Int) {
        let layers = try held.checkedLayers(config: config, file: file)
        var w: [Int: ExpertWeights] = [:]
        for l in layers { w[l] = try ExpertWeights.bind(file: file, config: config, layer: l).packed(in: file, held: held.experts(inLayer: l, of: config.expertCount)) }
        let bytes = WeightLayout(file: file, config: config).prefault(held, layers: layers, in: file)
        return (ResidentExperts(weights: w, pool: pool, held: held), bytes)
    }

    public func weightedOutputs(layer: Int, input x: ExpertInput, routes: [Route], slotsPerRow k: Int,
                                into results: UnsafeMutablePointer<Float>) throws {
        guard let w = weights[layer] else { throw ModelError("layer \(layer) has no resident experts here") }
        let groups = try ExpertCompute.group(routes) { e in
            guard e >= 0 && e < w.expertCount else { throw ModelError("expert \(e) does not exist in layer \(layer)") }
            guard held.contains(layer: layer, expert: e) else { throw ModelError("expert \(e) of layer \(layer) is not held here") }
        }
        try ExpertCompute.run(groups.map { (w.matrices($0.expert), $0.members) }, input: x, routes: routes, slotsPerRow: k,
                              embd: w.embd, ff: w.expertFF, pool: pool, into: results)
    }
}

extension ExpertSet {
    /// The listed layers, each checked against the model (an `all` set has no layers of its own to load).
    func checkedLayers(config: ModelConfig, file: GGUFFile) throws(ModelError) -> [Int] {
        guard let layers = listedLayers else { throw ModelError("an expert set to load must list its layers") }
        for l in layers {
            guard l >= 0 && l < config.layerCount else { throw ModelError("layer \(l) is outside the model's 0..<\(config.layerCount)") }
            for x in experts(inLayer: l, of: config.expertCount) where x < 0 || x >= config.expertCount {
                throw ModelError("expert \(x) of layer \(l) is outside the model's \(config.expertCount) experts")
            }
        }
        // A dense layer (deepseek2's first) has no experts to hold, whatever a plan lists for it.
        return layers.filter { config.hasExperts(layer: $0) }
    }
}
