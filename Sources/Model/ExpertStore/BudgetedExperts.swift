#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import GGUF
import Runtime
import Kernels

/// The offload cache: experts beyond a memory budget live in a fixed pool of slots, allocated once, filled on a
/// miss by reading that expert's gate, up and down slices of the stacked tensors from the file (`ExpertReader`:
/// pread, never the mapping) and repacked in the slot exactly as resident experts are packed, so every result
/// is bit-identical to a fully resident run at any budget and any batch.
///
/// Some experts may be resident (mapped, faulted in, packed in place) and the rest paged. Which slot to give up
/// is the `EvictionPolicy`'s choice; large batches (prefill) stream their misses through a few transient slots
/// so that a long prompt does not flush the decode working set. `prefetch` starts reads on an I/O queue for
/// experts the next layer is predicted to need, so disk time overlaps compute.
public final class BudgetedExperts: ExpertProvider, @unchecked Sendable {
    /// What the cache did, for status, `conclave run` and benchmarks.
    public struct Counters: Sendable, Equatable {
        /// Uses of paged experts found in a slot / read from disk.
        public var hits = 0, misses = 0
        /// Uses of resident experts (never a cache event).
        public var residentUses = 0
        public var bytesRead = 0
        public var readSeconds = 0.0
        /// Prefetch reads started; of those, slots used before eviction; evicted unused.
        public var prefetchIssued = 0, prefetchUsed = 0, prefetchWasted = 0
        /// Time the computation waited for reads.
        public var stallSeconds = 0.0
        public init() {}
        public var hitRate: Double { hits + misses > 0 ? Double(hits) / Double(hits + misses) : 0 }
        public var readGBps: Double { readSeconds > 0 ? Double(bytesRead) / readSeconds / 1e9 : 0 }
        /// Of the experts read ahead, the share that was used.
        public var prefetchPrecision: Double { prefetchIssued > 0 ? Double(prefetchUsed) / Double(prefetchIssued) : 0 }
        /// Of the uses that found their expert missing or only there thanks to a prefetch, the share the
        /// prefetch covered.
        public var prefetchRecall: Double { prefetchUsed + misses > 0 ? Double(prefetchUsed) / Double(prefetchUsed + misses) : 0 }
    }

    public let slotCount: Int
    /// Bytes of one slot (the largest paged expert, its three parts each rounded to the O_DIRECT alignment).
    public let slotBytes: Int
    public let resident: ExpertSet
    public let paged: ExpertSet
    /// Rows above which a batch is a stream (prefill): its misses go through transient slots only.
    public var streamingRows = 32

    let weights: [Int: ExpertWeights]
    let layout: WeightLayout
    let reader: ExpertReader
    let pool: ThreadPool
    let policy: EvictionPolicy
    let memory: UnsafeMutableRawPointer
    /// Per layer: byte offsets of gate, up and down inside a slot.
    let partOffsets: [Int: [Int]]
    /// Per layer: whether slots are repacked after a read (exactly when resident experts of the layer are packed).
    let packSlots: [Int: Bool]
    /// I/O queues, reads spread round-robin: serial queues each get a thread of their own (a concurrent queue's
    /// width is the core count, which blocking reads would leave idle), so a layer's misses and the next layer's
    /// prefetches are in flight together — a disk serves several requests at once faster than one at a time.
    let io = (0..<8).map { DispatchQueue(label: "conclave.experts.io.\($0)") }
    private var nextQueue = 0
    /// The next I/O queue (under the monitor).
    private func queue() -> DispatchQueue {
        nextQueue = (nextQueue + 1) % io.count
        return io[nextQueue]
    }

    struct Slot {
        var key: ExpertKey?
        var ready = false
        var pins = 0
        /// Loaded by a prefetch and not yet used.
        var prefetched = false
        /// Loaded by a stream (prefill); evicted before any decode entry.
        var transient = false
    }
    private let monitor = Monitor()
    private var slots: [Slot]
    private var slotOf: [ExpertKey: Int] = [:]
    private var counters = Counters()
    private var now = 0
    /// Stall and read times are measured on it.
    private let clock: any Clock

    /// `paged` experts go through `slots` slots; `resident` ones are mapped (packed and faulted in here).
    public init(file: GGUFFile, config: ModelConfig, resident: ExpertSet = .none, paged: ExpertSet, slots: Int,
                policy: EvictionPolicy = EvictionPolicies.make(EvictionPolicies.defaultName)!, pool: ThreadPool,
                clock: any Clock = MonotonicClock()) throws(ModelError) {
        self.clock = clock
        guard slots >= 1 else { throw ModelError("the expert cache needs at least one slot") }
        let layers = try Set(resident.checkedLayers(config: config, file: file) + paged.checkedLayers(config: config, file: file)).sorted()
        layout = WeightLayout(file: file, config: config)
        var w: [Int: ExpertWeights] = [:]
        var parts: [Int: [Int]] = [:]
        var pack: [Int: Bool] = [:]
        let a = ExpertReader.alignment
        var largest = 0
        for l in layers {
            for e in paged.experts(inLayer: l, of: config.expertCount) where resident.contains(layer: l, expert: e) {
                throw ModelError("expert \(e) of layer \(l) is listed both resident and paged")
            }
            let unpacked = try ExpertWeights.bind(file: file, config: config, layer: l)
            pack[l] = unpacked.packable
            w[l] = try unpacked.packed(in: file, held: resident.experts(inLayer: l, of: config.expertCount))
            var offsets: [Int] = [], o = 0
            for r in layout.expertSlices[l] {
                offsets.append(o)
                o += ExpertReader.regionBytes(r.bytesPerExpert)
            }
            parts[l] = offsets
            if !paged.experts(inLayer: l, of: config.expertCount).isEmpty { largest = max(largest, layout.slotBytes(layer: l)) }
        }
        layout.prefault(resident, layers: layers, in: file)
        slotBytes = max(a, largest)
        slotCount = slots
        var p: UnsafeMutableRawPointer?
        guard posix_memalign(&p, a, slots * slotBytes) == 0, let p else {
            throw ModelError("cannot allocate \(slots) expert slots of \(slotBytes) bytes")
        }
        // Touched now: the pool is allocated once, and counts against the budget from the start.
        memset(p, 0, slots * slotBytes)
        memory = p
        reader = try ExpertReader(path: file.path, clock: clock)
        weights = w
        partOffsets = parts
        packSlots = pack
        self.resident = resident
        self.paged = paged
        self.pool = pool
        self.policy = policy
        self.slots = [Slot](repeating: Slot(), count: slots)
    }

    deinit { free(memory) }

    /// Bytes this provider holds: its slots and its resident experts.
    public var heldBytes: Int {
        slotCount * slotBytes + weights.keys.reduce(0) { $0 + resident.experts(inLayer: $1, of: layout.expertCount).count * layout.bytesPerExpert(layer: $1) }
    }

    public var snapshot: Counters { monitor.locked { counters } }

    /// Waits for every read started so far (prefetches nobody waited for included), so counters are final.
    public func quiesce() { for q in io { q.sync {} } }

    /// Number of paged experts.
    public var pagedCount: Int { weights.keys.reduce(0) { $0 + paged.experts(inLayer: $1, of: layout.expertCount).count } }

    public var policyName: String { policy.name }

    public var pagesExperts: Bool { true }

    // MARK: Computing

    public func weightedOutputs(layer: Int, input x: ExpertInput, routes: [Route], slotsPerRow k: Int,
                                into results: UnsafeMutablePointer<Float>) throws {
        guard let w = weights[layer] else { throw ModelError("layer \(layer) has no experts here") }
        let groups = try ExpertCompute.group(routes) { e in
            guard e >= 0 && e < w.expertCount else { throw ModelError("expert \(e) does not exist in layer \(layer)") }
            guard resident.contains(layer: layer, expert: e) || paged.contains(layer: layer, expert: e) else {
                throw ModelError("expert \(e) of layer \(layer) is not held here")
            }
        }
        let mapped = groups.filter { resident.contains(layer: layer, expert: $0.expert) }
        var pending = groups.filter { !resident.contains(layer: layer, expert: $0.expert) }
        let streaming = routes.count > streamingRows
        monitor.locked {
            now += 1
            counters.residentUses += mapped.reduce(0) { $0 + $1.members.count }
        }
        var residentDone = mapped.isEmpty
        while !pending.isEmpty || !residentDone {
            // Pin what is cached, claim slots for misses, start their reads; compute the resident experts while
            // the first reads travel. The wave is released at the end of the pass, whatever happens in it.
            let (wave, reads) = pending.isEmpty ? ([], []) : acquire(layer: layer, pending.map(\.expert), streaming: streaming)
            var failedReads: [ExpertKey] = []
            defer { if !wave.isEmpty { release(wave.map(\.slot), dropping: failedReads) } }
            let done = DispatchGroup()
            let failure = Monitor.Box<ModelError?>(nil)
            for (key, slot) in reads {
                monitor.locked { queue() }.async(group: done) { [self] in
                    do throws(ModelError) { try load(key, into: slot) } catch { monitor.locked { failure.value = error } }
                }
            }
            if !residentDone {
                try ExpertCompute.run(mapped.map { (w.matrices($0.expert), $0.members) }, input: x, routes: routes, slotsPerRow: k,
                                      embd: w.embd, ff: w.expertFF, pool: pool, into: results)
                residentDone = true
            }
            guard !wave.isEmpty else { continue }
            let t0 = clock.now()
            done.wait()
            if let failed = monitor.locked({ failure.value }) {
                failedReads = reads.map(\.0)
                throw failed
            }
            try waitReady(layer: layer, wave)
            monitor.locked { counters.stallSeconds += clock.now() - t0 }
            let members = Dictionary(uniqueKeysWithValues: pending.map { ($0.expert, $0.members) })
            try ExpertCompute.run(wave.map { (matrices(layer: layer, expert: $0.expert, slot: $0.slot, w), members[$0.expert]!) }, input: x, routes: routes,
                                  slotsPerRow: k, embd: w.embd, ff: w.expertFF, pool: pool, into: results)
            let computed = Set(wave.map(\.expert))
            pending.removeAll { computed.contains($0.expert) }
        }
    }

    public func prefetch(layer: Int, experts: Set<Int>) {
        guard weights[layer] != nil else { return }
        let wanted = experts.sorted().filter { paged.contains(layer: layer, expert: $0) }
        let reads: [(ExpertKey, Int)] = monitor.locked {
            var reads: [(ExpertKey, Int)] = []
            for e in wanted {
                let key = ExpertKey(layer: layer, expert: e)
                guard slotOf[key] == nil, let s = victimSlot(streaming: false, excluding: Set(reads.map(\.1))) else { continue }
                claim(s, for: key)
                slots[s].prefetched = true
                counters.prefetchIssued += 1
                reads.append((key, s))
            }
            return reads
        }
        for (key, s) in reads {
            monitor.locked { queue() }.async { [self] in
                do throws(ModelError) {
                    try load(key, into: s)
                } catch {
                    // The slot is given back (its pins stay: a caller waiting for it sees the key gone and fails);
                    // a later use reads the expert again and reports the error then.
                    monitor.locked {
                        if slots[s].key == key {
                            slotOf[key] = nil
                            policy.removed(key)
                            slots[s] = Slot(pins: slots[s].pins)
                            monitor.broadcast()
                        }
                    }
                }
            }
        }
    }

    // MARK: Slots (under the monitor)

    /// Pins the cached experts of `experts` and claims slots for as many misses as can be had; returns the wave
    /// (expert, slot) and the reads this call must do.
    private func acquire(layer: Int, _ experts: [Int], streaming: Bool) -> ([(expert: Int, slot: Int)], [(ExpertKey, Int)]) {
        monitor.locked {
            while true {
                var wave: [(expert: Int, slot: Int)] = []
                var reads: [(ExpertKey, Int)] = []
                for e in experts {
                    let key = ExpertKey(layer: layer, expert: e)
                    guard let s = slotOf[key] else { continue }
                    slots[s].pins += 1
                    counters.hits += 1
                    if slots[s].prefetched { slots[s].prefetched = false; counters.prefetchUsed += 1 }
                    if !streaming { slots[s].transient = false; policy.accessed(key, now: now) }
                    wave.append((e, s))
                }
                for e in experts where slotOf[ExpertKey(layer: layer, expert: e)] == nil {
                    let key = ExpertKey(layer: layer, expert: e)
                    guard let s = victimSlot(streaming: streaming, excluding: []) else { break }
                    claim(s, for: key)
                    slots[s].pins = 1
                    slots[s].transient = streaming
                    counters.misses += 1
                    if !streaming { policy.accessed(key, now: now) }
                    wave.append((e, s))
                    reads.append((key, s))
                }
                if !wave.isEmpty { return (wave, reads) }
                // Every slot is pinned by another caller's wave: wait for one to be released.
                monitor.wait()
            }
        }
    }

    /// A slot to (re)use: a free one, else a transient one, else the policy's victim among unpinned ready
    /// slots — except that a stream takes a normal slot only while fewer than an eighth of the slots are
    /// transient, so a long prompt cycles through a few slots instead of flushing the decode working set.
    private func victimSlot(streaming: Bool, excluding: Set<Int>) -> Int? {
        func free(_ s: Slot) -> Bool { s.pins == 0 && (s.key == nil || s.ready) }
        if let s = slots.indices.first(where: { slots[$0].key == nil && slots[$0].pins == 0 && !excluding.contains($0) }) { return s }
        let evictable = slots.indices.filter { free(slots[$0]) && !excluding.contains($0) }
        if let s = evictable.first(where: { slots[$0].transient }) { return s }
        if streaming {
            let transient = slots.reduce(0) { $0 + ($1.transient ? 1 : 0) }
            guard transient < max(1, slotCount / 8) else { return nil }
        }
        let candidates = evictable.compactMap { slots[$0].key }
        guard !candidates.isEmpty else { return nil }
        return slotOf[policy.victim(among: candidates, now: now)]
    }

    private func claim(_ s: Int, for key: ExpertKey) {
        if let old = slots[s].key {
            slotOf[old] = nil
            policy.removed(old)
            if slots[s].prefetched { counters.prefetchWasted += 1 }
        }
        slots[s] = Slot(key: key)
        slotOf[key] = s
    }

    private func release(_ wave: [Int], dropping failed: [ExpertKey]) {
        monitor.locked {
            for s in wave { slots[s].pins -= 1 }
            for key in failed {
                if let s = slotOf[key] { slotOf[key] = nil; policy.removed(key); slots[s] = Slot() }
            }
            monitor.broadcast()
        }
    }

    /// Waits until every slot of `wave` holds its expert (a prefetch read may still be in flight); throws when
    /// a prefetch read failed meanwhile.
    private func waitReady(layer: Int, _ wave: [(expert: Int, slot: Int)]) throws(ModelError) {
        try monitor.locked { () throws(ModelError) in
            func holds(_ w: (expert: Int, slot: Int)) -> Bool { slots[w.slot].key == ExpertKey(layer: layer, expert: w.expert) }
            while !wave.allSatisfy({ !holds($0) || slots[$0.slot].ready }) { monitor.wait() }
            if let lost = wave.first(where: { !holds($0) }) {
                throw ModelError("\(reader.path): reading expert \(lost.expert) of layer \(layer) ahead of use failed")
            }
        }
    }

    // MARK: Reading

    /// Reads `key` into slot `s` (which this caller claimed), packs it like resident experts, marks it ready.
    private func load(_ key: ExpertKey, into s: Int) throws(ModelError) {
        let t0 = clock.now()
        let base = memory + s * slotBytes
        let offsets = partOffsets[key.layer]!
        var bytes = 0, starts: [Int] = []
        for (i, r) in layout.expertRanges(layer: key.layer, expert: key.expert).enumerated() {
            starts.append(offsets[i] + (try reader.read(offset: r.offset, count: r.count, into: base + offsets[i])))
            bytes += r.count
        }
        let w = weights[key.layer]!
        if packSlots[key.layer]! {
            let scratch = UnsafeMutableRawPointer.allocate(byteCount: 8 * max(w.gate.rowStride, w.up.rowStride, w.down.rowStride), alignment: 64)
            defer { scratch.deallocate() }
            for (i, m) in [w.gate, w.up, w.down].enumerated() {
                let rows = i == 2 ? w.embd : w.expertFF
                for g in stride(from: 0, to: rows, by: 8) {
                    Packing.packGroup(base + starts[i] + g * m.rowStride, type: m.type, rowStride: m.rowStride, cols: m.cols, scratch: scratch)
                }
            }
        }
        let dt = clock.now() - t0
        monitor.locked {
            counters.bytesRead += bytes
            counters.readSeconds += dt
            if slots[s].key == key { slots[s].ready = true }
            monitor.broadcast()
        }
    }

    /// The matrices of `expert` in slot `s`, in the layout resident experts of `layer` use. Each part starts where
    /// the read put it: its file offset's distance past an aligned block.
    private func matrices(layer: Int, expert: Int, slot s: Int, _ w: ExpertWeights) -> ExpertMatrices {
        let base = UnsafeRawPointer(memory + s * slotBytes)
        let o = zip(partOffsets[layer]!, layout.expertRanges(layer: layer, expert: expert)).map { $0 + $1.offset % ExpertReader.alignment }
        func view(_ m: WeightMatrix, rows: Int, at offset: Int) -> WeightMatrix {
            try! WeightMatrix(type: m.type, rows: rows, cols: m.cols, data: base + offset, rowStride: m.rowStride, packed: packSlots[layer]!)
        }
        return w.matrices(expert, gate: view(w.gate, rows: w.expertFF, at: o[0]), up: view(w.up, rows: w.expertFF, at: o[1]),
                          down: view(w.down, rows: w.embd, at: o[2]))
    }
}
