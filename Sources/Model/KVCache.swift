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

    /// Bytes of a cache of `capacity` positions over `layers` layers: K and V, f16.
    public static func bytes(layers: Int, capacity: Int, kvDim: Int) -> Int { 2 * 2 * layers * capacity * kvDim }

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
