#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Kernels

/// Keys and values of one sequence for a range of layers, stored as f16 and preallocated for the whole context.
public final class KVCache: @unchecked Sendable {
    public let layers: Range<Int>
    public let capacity: Int
    public let kvDim: Int
    private let keys: UnsafeMutablePointer<UInt16>
    private let values: UnsafeMutablePointer<UInt16>
    /// Positions filled so far (the same for every layer once a batch has gone through them all).
    public internal(set) var length = 0

    /// Bytes of one sequence's cache (keys and values, f16); Int.max when the product overflows (a file may
    /// claim any context length).
    public static func bytes(layers: Int, capacity: Int, kvDim: Int) -> Int {
        var n = 4  // 2 bytes each for a key and a value element
        for f in [layers, capacity, kvDim] {
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
        let one = bytes(layers: config.layerCount, capacity: capacity, kvDim: config.kvDim)
        let (all, overflow) = one.multipliedReportingOverflow(by: max(1, sequences))
        guard !overflow, all <= memory else {
            let need = one == .max || overflow ? "more than 2^63 bytes" : String(format: "%.1f GiB", Double(all) / 1_073_741_824)
            throw ModelError("a KV cache for \(capacity) positions\(sequences > 1 ? " × \(sequences) sequences" : "") needs \(need) but this machine has \(memory / 1_048_576) MiB; give a smaller --ctx (the model's own is \(config.contextLength))")
        }
    }

    public init(layers: Range<Int>, capacity: Int, kvDim: Int) {
        self.layers = layers
        self.capacity = capacity
        self.kvDim = kvDim
        let n = layers.count * capacity * kvDim
        keys = .allocate(capacity: max(1, n))
        values = .allocate(capacity: max(1, n))
        keys.initialize(repeating: 0, count: max(1, n))
        values.initialize(repeating: 0, count: max(1, n))
    }

    deinit {
        keys.deallocate()
        values.deallocate()
    }

    /// Bytes held (what the memory budget counts).
    public var bytes: Int { Self.bytes(layers: layers.count, capacity: capacity, kvDim: kvDim) }


    @inline(__always) func offset(_ layer: Int, _ pos: Int) -> Int {
        ((layer - layers.lowerBound) * capacity + pos) * kvDim
    }

    func key(_ layer: Int, _ pos: Int) -> UnsafeMutablePointer<UInt16> { keys + offset(layer, pos) }
    func value(_ layer: Int, _ pos: Int) -> UnsafeMutablePointer<UInt16> { values + offset(layer, pos) }

    func store(layer: Int, position: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>) {
        Ops.toF16(k, key(layer, position), count: kvDim)
        Ops.toF16(v, value(layer, position), count: kvDim)
    }

    /// Forgets everything from `position` on (a new prompt, or a replay after a failure).
    public func truncate(to position: Int) { length = min(length, position) }
}
