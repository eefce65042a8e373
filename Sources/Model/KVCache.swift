#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Kernels

/// Keys and values of one sequence for a range of layers, stored as f16 and preallocated for the whole context.
/// A position's row is `keyWidth` keys and `valueWidth` values per layer: the K and V of every KV head for
/// standard attention; for latent attention the latent and the rope key, and no values (llama.cpp reads them
/// from the latent).
public final class KVCache: @unchecked Sendable {
    public let layers: Range<Int>
    public let capacity: Int
    public let keyWidth: Int
    public let valueWidth: Int
    private let keys: UnsafeMutablePointer<UInt16>
    private let values: UnsafeMutablePointer<UInt16>
    /// Positions filled so far (the same for every layer once a batch has gone through them all).
    public internal(set) var length = 0

    /// Bytes of one sequence's cache (keys and values, f16) for `config`'s attention; Int.max when the product
    /// overflows (a file may claim any context length).
    public static func bytes(layers: Int, capacity: Int, config: ModelConfig) -> Int {
        bytes(layers: layers, capacity: capacity, rowWidth: config.cacheKeyWidth + config.cacheValueWidth)
    }

    static func bytes(layers: Int, capacity: Int, rowWidth: Int) -> Int {
        var n = 2  // bytes of an f16 element
        for f in [layers, capacity, rowWidth] {
            let (m, overflow) = n.multipliedReportingOverflow(by: max(0, f))
            if overflow { return .max }
            n = m
        }
        return n
    }

    /// Refuses a context whose caches (`sequences` of them, every layer of `config`) cannot fit in this machine's
    /// memory — before anything is allocated: a file may claim any context length.
    public static func checkFits(config: ModelConfig, capacity: Int, sequences: Int = 1,
                                 memory: Int = Int(clamping: UInt64(sysconf(Int32(_SC_PHYS_PAGES))) &* UInt64(sysconf(Int32(_SC_PAGESIZE))))) throws(ModelError) {
        guard capacity >= 1 else { throw ModelError("a context of \(capacity) positions holds nothing; give --ctx 1 or more") }
        let one = bytes(layers: config.layerCount, capacity: capacity, config: config)
        let (all, overflow) = one.multipliedReportingOverflow(by: max(1, sequences))
        guard !overflow, all <= memory else {
            let need = one == .max || overflow ? "more than 2^63 bytes" : String(format: "%.1f GiB", Double(all) / 1_073_741_824)
            throw ModelError("a KV cache for \(capacity) positions\(sequences > 1 ? " × \(sequences) sequences" : "") needs \(need) but this machine has \(memory / 1_048_576) MiB; give a smaller --ctx (the model's own is \(config.contextLength))")
        }
    }

    /// A cache for `config`'s attention over `layers`, `capacity` positions.
    public convenience init(layers: Range<Int>, capacity: Int, config: ModelConfig) {
        self.init(layers: layers, capacity: capacity, keyWidth: config.cacheKeyWidth, valueWidth: config.cacheValueWidth)
    }

    public init(layers: Range<Int>, capacity: Int, keyWidth: Int, valueWidth: Int) {
        self.layers = layers
        self.capacity = capacity
        self.keyWidth = keyWidth
        self.valueWidth = valueWidth
        let k = max(1, layers.count * capacity * keyWidth), v = max(1, layers.count * capacity * valueWidth)
        keys = .allocate(capacity: k)
        values = .allocate(capacity: v)
        keys.initialize(repeating: 0, count: k)
        values.initialize(repeating: 0, count: v)
    }

    deinit {
        keys.deallocate()
        values.deallocate()
    }

    /// Bytes held (what the memory budget counts).
    public var bytes: Int { Self.bytes(layers: layers.count, capacity: capacity, rowWidth: keyWidth + valueWidth) }

    @inline(__always) func slot(_ layer: Int, _ pos: Int) -> Int { (layer - layers.lowerBound) * capacity + pos }

    func key(_ layer: Int, _ pos: Int) -> UnsafeMutablePointer<UInt16> { keys + slot(layer, pos) * keyWidth }
    func value(_ layer: Int, _ pos: Int) -> UnsafeMutablePointer<UInt16> { values + slot(layer, pos) * valueWidth }

    /// Stores a position's keys and (when this cache has them) values, rounded to f16.
    func store(layer: Int, position: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>?) {
        Ops.toF16(k, key(layer, position), count: keyWidth)
        if let v, valueWidth > 0 { Ops.toF16(v, value(layer, position), count: valueWidth) }
    }

    /// Forgets everything from `position` on (a new prompt, or a replay after a failure).
    public func truncate(to position: Int) { length = min(length, position) }
}
