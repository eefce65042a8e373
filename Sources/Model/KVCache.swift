#if canImport(Glibc)
import Glibc
#endif
import Foundation
import GGUF
import Kernels

/// The element types a KV cache stores keys and values in (llama.cpp's `--cache-type-k` / `--cache-type-v`):
/// f16, or the Q8_0 / Q4_0 blocks llama.cpp quantizes each cached row into.
public struct CacheTypes: Sendable, Equatable, CustomStringConvertible {
    public let key: GGMLType
    public let value: GGMLType
    public static let f16 = CacheTypes(checked: .f16, .f16)
    /// The types a cache can hold.
    public static let allowed: [GGMLType] = [.f16, .q8_0, .q4_0]

    private init(checked key: GGMLType, _ value: GGMLType) {
        self.key = key
        self.value = value
    }

    public init(key: GGMLType, value: GGMLType) throws(ModelError) {
        for t in [key, value] where !Self.allowed.contains(t) {
            throw ModelError("a KV cache holds f16, q8_0 or q4_0, not \(t.name.lowercased())")
        }
        self.init(checked: key, value)
    }

    /// From the names users give (`q8_0`, `F16`); nil or empty means f16.
    public init(key: String?, value: String?) throws(ModelError) {
        func type(_ name: String?, _ flag: String) throws(ModelError) -> GGMLType {
            guard let name, !name.isEmpty else { return .f16 }
            guard let t = GGMLType(name: name), Self.allowed.contains(t) else {
                throw ModelError("\(flag) \(name) is not a cache type; one of f16, q8_0, q4_0")
            }
            return t
        }
        try self.init(key: try type(key, "--cache-type-k"), value: try type(value, "--cache-type-v"))
    }

    public var isQuantized: Bool { key != .f16 || value != .f16 }
    public var description: String { "K \(key.name.lowercased()), V \(value.name.lowercased())" }

    /// Refuses types `config`'s attention cannot cache: quantized rows need every head to be whole blocks, and
    /// latent attention (whose values llama.cpp reads out of the key cache) stays f16.
    public func check(_ config: ModelConfig) throws(ModelError) {
        guard isQuantized else { return }
        guard config.latent == nil else {
            throw ModelError("\(config.architecture)'s latent attention caches f16 only; drop --cache-type-k/--cache-type-v")
        }
        guard config.headDim % 32 == 0 else {
            throw ModelError("a quantized KV cache needs a head size that is a multiple of 32 (Q8_0/Q4_0 blocks); this model's is \(config.headDim)")
        }
    }

    /// Bytes of one position's row of one layer.
    func rowBytes(keys: Int, values: Int) -> Int {
        (key.rowBytes(elements: keys) ?? 2 * keys) + (value.rowBytes(elements: values) ?? 2 * values)
    }
}

/// Keys and values of one sequence for a range of layers, mapped for the whole context, each position's row
/// stored in its `CacheTypes` (f16 unless asked). A row is `keyWidth` keys and `valueWidth` values per layer:
/// the K and V of every KV head for standard attention; for latent attention the latent and the rope key, and no
/// values (llama.cpp reads them from the latent).
///
/// The storage is one anonymous mapping, each layer's keys and values in a page-aligned region of their own, so
/// the memory a cache holds is the pages its positions were written to: a cache kept for reuse (`trim`) costs
/// its length, not its context (`KVRoom` counts both).
///
/// Attention reads the cache through `scores` and `accumulate`, which compute as llama.cpp does for each type:
/// an f16 key meets the query rounded to f16; a quantized key meets it quantized to Q8_0 (ggml's vec-dot
/// types); f16 values are summed with the weights as they are; quantized values, which llama.cpp allows only
/// under flash attention, are dequantized and summed in f32 as its flash-attention kernel does.
public final class KVCache: @unchecked Sendable {
    public let layers: Range<Int>
    public let capacity: Int
    public let keyWidth: Int
    public let valueWidth: Int
    public let types: CacheTypes
    private let keyRowBytes: Int, valueRowBytes: Int
    /// Bytes from one layer's region to the next (whole pages).
    private let keyStride: Int, valueStride: Int
    private let mapping: UnsafeMutableRawPointer
    private let mappedBytes: Int
    private let keys: UnsafeMutableRawPointer
    private let values: UnsafeMutableRawPointer
    /// Positions filled so far (the same for every layer once a batch has gone through them all).
    public internal(set) var length = 0

    /// Bytes of one sequence's cache for `config`'s attention in `types`; Int.max when the product overflows (a
    /// file may claim any context length).
    public static func bytes(layers: Int, capacity: Int, config: ModelConfig, types: CacheTypes = .f16) -> Int {
        bytes(layers: layers, capacity: capacity, rowBytes: types.rowBytes(keys: config.cacheKeyWidth, values: config.cacheValueWidth))
    }

    static func bytes(layers: Int, capacity: Int, rowBytes: Int) -> Int {
        var n = 1
        for f in [layers, capacity, rowBytes] {
            let (m, overflow) = n.multipliedReportingOverflow(by: max(0, f))
            if overflow { return .max }
            n = m
        }
        return n
    }

    /// The granule the kernel maps memory in (a cache's pages past its length are given back whole).
    public static let pageSize = max(4096, Int(sysconf(Int32(_SC_PAGESIZE))))

    /// Refuses a context whose caches (`sequences` of them, every layer of `config`) cannot fit in this machine's
    /// memory — before anything is allocated: a file may claim any context length.
    public static func checkFits(config: ModelConfig, capacity: Int, sequences: Int = 1, types: CacheTypes = .f16,
                                 memory: Int = Int(clamping: UInt64(sysconf(Int32(_SC_PHYS_PAGES))) &* UInt64(sysconf(Int32(_SC_PAGESIZE))))) throws(ModelError) {
        guard capacity >= 1 else { throw ModelError("a context of \(capacity) positions holds nothing; give --ctx 1 or more") }
        try types.check(config)
        let one = bytes(layers: config.layerCount, capacity: capacity, config: config, types: types)
        let (all, overflow) = one.multipliedReportingOverflow(by: max(1, sequences))
        guard !overflow, all <= memory else {
            let need = one == .max || overflow ? "more than 2^63 bytes" : String(format: "%.1f GiB", Double(all) / 1_073_741_824)
            throw ModelError("a KV cache for \(capacity) positions\(sequences > 1 ? " × \(sequences) sequences" : "") needs \(need) but this machine has \(memory / 1_048_576) MiB; give a smaller --ctx (the model's own is \(config.contextLength))")
        }
    }

    /// A cache for `config`'s attention over `layers`, `capacity` positions (`types` checked with `CacheTypes.check`).
    public convenience init(layers: Range<Int>, capacity: Int, config: ModelConfig, types: CacheTypes = .f16) {
        self.init(layers: layers, capacity: capacity, keyWidth: config.cacheKeyWidth, valueWidth: config.cacheValueWidth, types: types)
    }

    public init(layers: Range<Int>, capacity: Int, keyWidth: Int, valueWidth: Int, types: CacheTypes = .f16) {
        self.layers = layers
        self.capacity = capacity
        self.keyWidth = keyWidth
        self.valueWidth = valueWidth
        self.types = types
        keyRowBytes = types.key.rowBytes(elements: keyWidth) ?? 2 * keyWidth
        valueRowBytes = valueWidth > 0 ? types.value.rowBytes(elements: valueWidth) ?? 2 * valueWidth : 0
        let page = Self.pageSize
        func pages(_ n: Int) -> Int { (n + page - 1) / page * page }
        keyStride = pages(capacity * keyRowBytes)
        valueStride = pages(capacity * valueRowBytes)
        mappedBytes = max(page, layers.count * (keyStride + valueStride))
        // Anonymous pages read as zero until written and cost nothing before: the budget counts what is written.
        guard let m = mmap(nil, mappedBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0), m != MAP_FAILED else {
            fatalError("cannot map \(mappedBytes) bytes for a KV cache: \(String(cString: strerror(errno)))")
        }
        mapping = m
        keys = m
        values = m + layers.count * keyStride
    }

    deinit {
        munmap(mapping, mappedBytes)
    }

    /// Bytes of its rows for the whole context (the figure the budget tests check against the formula).
    public var bytes: Int { Self.bytes(layers: layers.count, capacity: capacity, rowBytes: keyRowBytes + valueRowBytes) }

    /// Bytes of memory the written positions can occupy: every layer's rows up to `length`, whole pages.
    public var residentBytes: Int {
        let page = Self.pageSize
        func pages(_ n: Int) -> Int { (n + page - 1) / page * page }
        return layers.count * (pages(length * keyRowBytes) + pages(length * valueRowBytes))
    }

    /// Bytes of the mapping the kernel holds in memory now (mincore): what the cache really costs.
    public var mappedResidentBytes: Int {
        let page = Self.pageSize
        var present = [UInt8](repeating: 0, count: (mappedBytes + page - 1) / page)
        guard mincore(mapping, mappedBytes, &present) == 0 else { return mappedBytes }
        return present.reduce(0) { $0 + Int($1 & 1) } * page
    }

    /// Copies the first `count` positions of `source` (a cache of the same layers, widths and types): a sequence
    /// that starts from a prefix another one computed.
    public func copyPrefix(of source: KVCache, count: Int) {
        precondition(source.layers == layers && source.keyRowBytes == keyRowBytes && source.valueRowBytes == valueRowBytes && count <= capacity && count <= source.length)
        for l in 0..<layers.count {
            (keys + l * keyStride).copyMemory(from: source.keys + l * source.keyStride, byteCount: count * keyRowBytes)
            if valueRowBytes > 0 { (values + l * valueStride).copyMemory(from: source.values + l * source.valueStride, byteCount: count * valueRowBytes) }
        }
        length = count
    }

    /// Gives back the pages wholly past `length` (written by proposals a later step rejected): a cache kept for
    /// reuse then holds `residentBytes` at most.
    public func trim() {
        let page = Self.pageSize
        for (base, stride, row) in [(keys, keyStride, keyRowBytes), (values, valueStride, valueRowBytes)] where row > 0 {
            let keep = (length * row + page - 1) / page * page
            guard keep < stride else { continue }
            for l in 0..<layers.count { madvise(base + l * stride + keep, stride - keep, MADV_DONTNEED) }
        }
    }

    @inline(__always) private func keyRow(_ layer: Int, _ pos: Int) -> UnsafeMutableRawPointer { keys + (layer - layers.lowerBound) * keyStride + pos * keyRowBytes }
    @inline(__always) private func valueRow(_ layer: Int, _ pos: Int) -> UnsafeMutableRawPointer { values + (layer - layers.lowerBound) * valueStride + pos * valueRowBytes }

    /// An f16 cache's keys and values at a position (latent attention's, which is always f16).
    func key(_ layer: Int, _ pos: Int) -> UnsafeMutablePointer<UInt16> { keyRow(layer, pos).assumingMemoryBound(to: UInt16.self) }
    func value(_ layer: Int, _ pos: Int) -> UnsafeMutablePointer<UInt16> { valueRow(layer, pos).assumingMemoryBound(to: UInt16.self) }

    /// Stores a position's keys and (when this cache has them) values in the cache's types.
    func store(layer: Int, position: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>?) throws {
        try Self.write(k, count: keyWidth, type: types.key, to: keyRow(layer, position))
        if let v, valueWidth > 0 { try Self.write(v, count: valueWidth, type: types.value, to: valueRow(layer, position)) }
    }

    private static func write(_ x: UnsafePointer<Float>, count: Int, type: GGMLType, to dst: UnsafeMutableRawPointer) throws {
        if type == .f16 { Ops.toF16(x, dst.assumingMemoryBound(to: UInt16.self), count: count) } else { try Quantize.row(x, count: count, to: type, dst) }
    }

    /// The query one head brings to the keys, in the form their type's dot product takes (ggml's vec-dot type):
    /// rounded to f16 for f16 keys, quantized to Q8_0 for quantized ones. Made once per (row, head), used for
    /// every position.
    final class Query {
        let width: Int
        let converted: QuantizedActivations
        init(_ q: UnsafePointer<Float>, width: Int, keyType: GGMLType) throws {
            self.width = width
            converted = try QuantizedActivations(q, cols: width, batch: 1, format: ActivationQuant.vecDotType(for: keyType) ?? .f16)
        }
    }

    /// scores[j] = scale · key(first + j)[offset ..< offset + width] · query, for j < count: one kernel call over
    /// the cached rows, as ggml's mul_mat runs K·Q.
    func scores(layer l: Int, first: Int, count n: Int, offset: Int, query: Query, scale: Float, into scores: UnsafeMutablePointer<Float>) throws {
        let start = keyRow(l, first) + types.key.rowBytes(elements: offset)!
        try MatMul.rowDots(WeightMatrix(type: types.key, rows: n, cols: query.width, data: start, rowStride: keyRowBytes), query.converted, into: scores)
        for j in 0..<n { scores[j] *= scale }
    }

    /// Whether `attend(layer:…)` runs here: f16 keys and values, and a CPU with the kernel (AVX2).
    var attendsInOnePass: Bool { types.key == .f16 && types.value == .f16 && valueRowBytes > 0 && Ops.attendsF16InOnePass }

    /// Floats of `work` that `attend` needs for `heads` heads of `width` over `count` positions.
    static func attendWork(heads: Int, width: Int, count: Int) -> Int { Ops.attendF16Work(heads: heads, width: width, count: count) }

    /// Attention of `heads` query heads that share the KV head at `offset` (one row's queries, `queryStride` apart)
    /// over positions first ..< first + count, in one kernel call: the softmax of their scaled scores (with each
    /// head's sink) weighting the values, written to out + h·outStride. False (nothing written) when the kernel
    /// does not take this cache or shape; the caller then runs `scores` and `accumulate` per head.
    func attend(layer l: Int, first: Int, count n: Int, offset: Int, heads: Int, width: Int, queries: UnsafePointer<Float>,
                queryStride: Int, scale: Float, sinks: UnsafePointer<Float>?, work: UnsafeMutablePointer<Float>,
                into out: UnsafeMutablePointer<Float>, outStride: Int) -> Bool {
        guard attendsInOnePass else { return false }
        return Ops.attendF16(heads: heads, width: width, count: n, queries: queries, queryStride: queryStride,
                             keys: key(l, first) + offset, keyStride: keyRowBytes / 2, values: value(l, first) + offset,
                             valueStride: valueRowBytes / 2, scale: scale, sinks: sinks, work: work, into: out, outStride: outStride)
    }

    /// Whether `attendLatent` runs here: f16 rows that hold their own values (deepseek2's latent cache).
    var attendsLatentInOnePass: Bool { types.key == .f16 && valueRowBytes == 0 && keyWidth % 8 == 0 && Ops.attendsF16InOnePass }

    /// `attend` over a cache whose rows are the values too (the latent and its rope key): `heads` queries of the
    /// whole row's width against positions 0 ..< count; each out row gets the whole width, of which the caller
    /// uses the latent part (the rope tail costs a ninth more value work and spares a second kernel). The weights
    /// meet the values as f16, as the per-head path and llama.cpp's MLA attention do.
    func attendLatent(layer l: Int, count n: Int, heads: Int, queries: UnsafePointer<Float>, queryStride: Int, scale: Float,
                      work: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>, outStride: Int) -> Bool {
        guard attendsLatentInOnePass else { return false }
        let rows = UnsafePointer(key(l, 0))
        return Ops.attendF16(heads: heads, width: keyWidth, count: n, queries: queries, queryStride: queryStride, keys: rows,
                             keyStride: keyRowBytes / 2, values: rows, valueStride: keyRowBytes / 2, scale: scale, sinks: nil,
                             roundWeights: true, work: work, into: out, outStride: outStride)
    }

    /// out[0 ..< width] += Σ_j weights[j] · value(first + j)[offset ..< offset + width].
    func accumulate(layer l: Int, first: Int, count n: Int, offset: Int, width: Int, weights: UnsafePointer<Float>,
                    into out: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>) throws {
        if types.value == .f16 {
            Ops.weightedSumF16(rows: n, weights, value(l, first) + offset, stride: valueRowBytes / 2, out, count: width)
            return
        }
        let skip = types.value.rowBytes(elements: offset)!
        if Ops.weightedSum(types.value, rows: n, weights, valueRow(l, first) + skip, stride: valueRowBytes, out, count: width) { return }
        for j in 0..<n {
            try Dequantize.row(types.value, valueRow(l, first + j) + skip, scratch, count: width)
            let w = weights[j]
            for i in 0..<width { out[i] += w * scratch[i] }
        }
    }

    /// Forgets everything from `position` on (a new prompt, or a replay after a failure).
    public func truncate(to position: Int) { length = min(length, position) }
}
