/// How much KV a stage (or a whole pipeline) has room for, in positions: the one currency the scheduler, which
/// owns the prefix cache's index, and each stage, which holds the caches and refuses what would pass its
/// budget, both count in. A cache of `length` positions costs `length + overhead` (its layers' rows rounded up to
/// whole pages); a running sequence reserves its whole `context`, a cached prefix only its length.
public struct KVRoom: Sendable, Equatable, CustomStringConvertible {
    /// Positions the KV budget holds (each position: every layer's key and value rows).
    public var positions: Int
    /// Positions each cache costs beyond its length.
    public var overhead: Int
    /// Positions a running sequence reserves.
    public var context: Int

    public init(positions: Int, overhead: Int, context: Int) {
        self.positions = max(0, positions)
        self.overhead = max(0, overhead)
        self.context = max(1, context)
    }

    /// What a cache of `length` positions costs.
    public func cost(length: Int) -> Int { length + overhead }
    /// What a running sequence costs.
    public var perSequence: Int { context + overhead }
    /// Running sequences that fit with no cached prefix.
    public var sequences: Int { positions / perSequence }
    /// Positions left for cached prefixes while `running` sequences run.
    public func cacheable(running: Int) -> Int { max(0, positions - running * perSequence) }

    /// The room of stages that each hold every sequence's positions of their own layers: the smallest budget and
    /// the largest overhead, so what fits by it fits on every one of them.
    public static func pipeline(_ rooms: [KVRoom]) -> KVRoom? {
        guard let first = rooms.first else { return nil }
        return KVRoom(positions: rooms.map(\.positions).min()!, overhead: rooms.map(\.overhead).max()!, context: first.context)
    }

    /// The room `bytes` of KV budget give `layers` of `config`'s attention in `types`, with `context` positions per
    /// running sequence.
    public init(bytes: Int, layers: Int, context: Int, config: ModelConfig, types: CacheTypes) {
        let perPosition = Self.bytesPerPosition(layers: layers, config: config, types: types)
        let pageRows = layers * (config.cacheValueWidth > 0 ? 2 : 1) * KVCache.pageSize
        self.init(positions: perPosition > 0 ? max(0, bytes) / perPosition : 0,
                  overhead: perPosition > 0 ? (pageRows + perPosition - 1) / perPosition : 0, context: context)
    }

    /// Bytes of one position of `layers` layers.
    public static func bytesPerPosition(layers: Int, config: ModelConfig, types: CacheTypes) -> Int {
        KVCache.bytes(layers: layers, capacity: 1, config: config, types: types)
    }

    public var description: String { "\(positions) positions (\(sequences) sequence\(sequences == 1 ? "" : "s") of \(context))" }
}

/// What the scheduler tells every stage about its sequences' caches between steps, applied in this order: the
/// sequences that ended and are kept for reuse (their first `length` positions), the caches to free (ended
/// sequences and evicted prefixes), and the sequences that start from a prefix another cache holds.
public struct CacheOps: Sendable, Equatable {
    public struct Start: Sendable, Equatable {
        public var sequence: UInt64
        /// The sequence or kept prefix whose first `length` positions it starts from.
        public var source: UInt64
        public var length: Int
        /// The source stays (its positions are copied); otherwise a kept prefix is taken over as it is.
        public var keepSource: Bool
        public init(sequence: UInt64, source: UInt64, length: Int, keepSource: Bool) {
            self.sequence = sequence
            self.source = source
            self.length = length
            self.keepSource = keepSource
        }
    }
    public var retain: [(sequence: UInt64, length: Int)] = []
    public var release: [UInt64] = []
    public var starts: [Start] = []
    public init(retain: [(sequence: UInt64, length: Int)] = [], release: [UInt64] = [], starts: [Start] = []) {
        self.retain = retain
        self.release = release
        self.starts = starts
    }
    public var isEmpty: Bool { retain.isEmpty && release.isEmpty && starts.isEmpty }

    public static func == (a: CacheOps, b: CacheOps) -> Bool {
        a.release == b.release && a.starts == b.starts && a.retain.map(\.sequence) == b.retain.map(\.sequence) && a.retain.map(\.length) == b.retain.map(\.length)
    }
}
