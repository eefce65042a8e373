import Foundation
import Model
import Synchronization
import Wire
import Kernels
import GGUF

/// Requests waiting for their replies, matched by request id; a synchronous caller blocks on its own semaphore
/// (on a dedicated thread, never the cooperative pool) while the transport's reader resolves it.
public final class PendingReplies: Sendable {
    final class Box: @unchecked Sendable {
        var reply: Result<WireMessage, WireError>?
        /// Also signalled on arrival: one thread can wait for whichever of several requests answers first.
        var notify: DispatchSemaphore?
        /// Called with the reply instead of anyone waiting (the entry is gone once it has run).
        var onReply: (@Sendable (Result<WireMessage, WireError>) -> Void)?
        /// Set with `reply`, for a waiter that spins before it sleeps.
        let arrived = Atomic<Bool>(false)
    }
    private let pending = Mutex<[UInt64: (DispatchSemaphore, Box)]>([:])
    private let nextID = Atomic<UInt64>(1)

    public init() {}

    /// A fresh request id, registered so that `resolve` can find its waiter.
    public func register() -> UInt64 {
        let id = nextID.add(1, ordering: .relaxed).newValue
        pending.withLock { $0[id] = (DispatchSemaphore(value: 0), Box()) }
        return id
    }

    /// Hands a received message (a reply, or an Error reply) to its waiter; false when nobody waits for it.
    @discardableResult
    public func resolve(_ result: Result<WireMessage, WireError>, id: UInt64) -> Bool {
        // The entry stays until its waiter takes it: a reply may arrive before the caller starts waiting.
        guard let (sem, box) = pending.withLock({ p -> (DispatchSemaphore, Box)? in
            guard let (sem, box) = p[id], box.reply == nil else { return nil }
            box.reply = result
            box.arrived.store(true, ordering: .releasing)
            if box.onReply != nil { p.removeValue(forKey: id) }
            return (sem, box)
        }) else { return false }
        if let f = box.onReply { f(result); return true }
        sem.signal()
        box.notify?.signal()
        return true
    }

    /// A fresh request id whose reply goes to `onReply` (on the thread that resolves it; keep it short).
    public func register(onReply: @escaping @Sendable (Result<WireMessage, WireError>) -> Void) -> UInt64 {
        let id = register()
        pending.withLock { $0[id]?.1.onReply = onReply }
        return id
    }

    /// The decoded message as a reply: an Error envelope becomes a failure.
    public func resolve(_ m: WireMessage) -> Bool {
        if case .error(let e) = m.envelope.kind {
            return resolve(.failure(WireError(WireError.Code(proto: e.code), "remote error: \(e.message)")), id: m.envelope.requestID)
        }
        return resolve(.success(m), id: m.envelope.requestID)
    }

    /// The reply of a resolved request, forgetting the request.
    func take(_ id: UInt64, _ box: Box) -> Result<WireMessage, WireError>? {
        pending.withLock { p in
            p.removeValue(forKey: id)
            return box.reply
        }
    }

    func pendingEntry(_ id: UInt64) -> (DispatchSemaphore, Box)? { pending.withLock { $0[id] } }

    /// Answers every request still waiting with `error` (the peer is gone; nobody should wait out a timeout).
    public func failAll(_ error: WireError) {
        let ids = pending.withLock { Array($0.keys) }
        for id in ids { resolve(.failure(error), id: id) }
    }

    /// Forgets a request (its late reply, if any, is dropped).
    public func cancel(_ id: UInt64) { pending.withLock { _ = $0.removeValue(forKey: id) } }

    /// Blocks until the reply to `id` arrives or `timeout` seconds pass (a request is never silently dropped).
    public func wait(_ id: UInt64, timeout: Double, from peer: String) throws(WireError) -> WireMessage {
        guard let (sem, box) = pending.withLock({ $0[id] }) else { throw WireError(.internalError, "request \(id) was never registered") }
        let arrived = sem.wait(timeout: .now() + timeout) == .success
        pending.withLock { _ = $0.removeValue(forKey: id) }
        guard arrived, let reply = pending.withLock({ _ in box.reply }) else {
            throw WireError(.internalError, "no reply from \(peer) within \(timeout) s")
        }
        return try reply.get()
    }
}

extension PendingReplies {
    /// A registered request a caller can poll with timeouts, checking other things (worker health) in between.
    public struct Waiter: @unchecked Sendable {
        public let id: UInt64
        let sem: DispatchSemaphore
        let box: Box
        /// The reply, or nil when `timeout` passes first (the request stays registered). With `spin`, the
        /// caller first polls for that many seconds, yielding the CPU between looks, before it sleeps: a reply
        /// expected within a millisecond is then seen without a wake-up (on a virtual machine, waking a halted
        /// CPU costs tens of microseconds, and an expert-parallel token waits for one reply per layer).
        public func poll(timeout: Double, spin: Double = 0) throws(WireError) -> WireMessage? {
            if spin > 0 {
                let end = KernelBench.now() + min(spin, timeout)
                while !box.arrived.load(ordering: .acquiring) && KernelBench.now() < end { sched_yield() }
            }
            if box.arrived.load(ordering: .acquiring) {
                guard let reply = owner.take(id, box) else { return nil }
                return try reply.get()
            }
            guard sem.wait(timeout: .now() + timeout) == .success, let reply = owner.take(id, box) else { return nil }
            return try reply.get()
        }
        let owner: PendingReplies
    }

    /// `notify`, when given, is signalled too when the reply arrives (see `Box.notify`).
    public func waiter(notify: DispatchSemaphore? = nil) -> Waiter {
        let id = register()
        let (sem, box) = pendingEntry(id)!
        box.notify = notify
        return Waiter(id: id, sem: sem, box: box, owner: self)
    }
}

/// Request/response over a DEALER-side transport, usable from synchronous code (a stage's layer loop): a task
/// reads replies and hands each to the waiter with the same request id.
///
/// The connection is made at the first call, not when the shard loads: by then every worker of the plan has
/// its Assign and, under CurveZMQ, admits us. It is made again when a handshake was refused (a peer restarted
/// and not yet assigned): libzmq does not retry a refused handshake, and nothing sent on that socket arrives.
public final class RemoteClient: @unchecked Sendable {
    public let endpoint: String
    private let connect: @Sendable () throws -> Transport
    private struct Link {
        var transport: Transport?
        var closed = false
    }
    private let link = Mutex(Link())
    private let replies = PendingReplies()
    private let sent = Atomic<UInt64>(0)
    /// Bytes of every request sent (all frames).
    public var bytesSent: UInt64 { sent.load(ordering: .relaxed) }

    public init(endpoint: String, connect: @escaping @Sendable () throws -> Transport) {
        self.endpoint = endpoint
        self.connect = connect
    }

    /// A client of a transport already made.
    public convenience init(transport: Transport) {
        self.init(endpoint: transport.endpoint, connect: { transport })
    }

    /// The live connection: the one made before, unless its handshake failed; else a new one. Replies are
    /// resolved on the socket's thread as they arrive, never through a task.
    private func transport() throws -> Transport {
        try link.withLock { l throws -> Transport in
            guard !l.closed else { throw WireError(.unavailable, "the connection to \(endpoint) was closed (the cluster was re-planned)") }
            if let t = l.transport, t.handshakeProblem == nil { return t }
            l.transport?.close()
            let t = try connect()
            let replies = self.replies
            t.receive { frames in
                do throws(WireError) {
                    _ = replies.resolve(try WireMessage.decode(frames.parts))
                } catch {
                    // A reply we cannot read: its id is unknown, so its caller times out with a clear error.
                }
            }
            l.transport = t
            return t
        }
    }

    /// Closes the connection; calls waiting for it fail at once.
    public func close() {
        let t = link.withLock { l -> Transport? in
            l.closed = true
            return l.transport
        }
        t?.close()
        replies.failAll(WireError(.unavailable, "the connection to \(endpoint) was closed (the cluster was re-planned)"))
    }

    /// A request sent and not yet answered (`finish` waits for it).
    public struct Call: @unchecked Sendable {
        let waiter: PendingReplies.Waiter
        let parts: [Data]
        let deadline: Date
        let timeout: Double
        var transport: Transport
    }

    /// Sends a request without waiting: the caller does other work, then `finish`es it.
    public func start(_ envelope: Envelope, tensors: [(Conclave_V1_DType, [Int], Data)], timeout: Double = 30) throws -> Call {
        var e = envelope
        let waiter = replies.waiter()
        e.requestID = waiter.id
        let parts = try WireMessage.make(e, tensors: tensors).encode()
        let t = try transport()
        sent.add(UInt64(parts.reduce(0) { $0 + $1.count }), ordering: .relaxed)
        t.send(Frames(parts: parts))
        return Call(waiter: waiter, parts: parts, deadline: Date().addingTimeInterval(timeout), timeout: timeout, transport: t)
    }

    /// Waits for a started request's reply (or fails after its timeout: a request is never silently dropped),
    /// first spinning for `spin` seconds (see `PendingReplies.Waiter.poll`). A request sent on a connection whose
    /// handshake is then refused never left: it is sent again on a new one.
    public func finish(_ call: Call, spin: Double = 0) throws -> WireMessage {
        var call = call
        var refused: String?
        var spin = spin
        while true {
            let left = call.deadline.timeIntervalSinceNow
            guard left > 0 else {
                replies.cancel(call.waiter.id)
                throw WireError(.internalError, "no reply from \(endpoint) within \(call.timeout) s" + (refused.map { " (\($0))" } ?? ""))
            }
            if let reply = try call.waiter.poll(timeout: min(0.25, left), spin: spin) { return reply }
            spin = 0
            if let problem = call.transport.handshakeProblem {
                refused = problem
                Thread.sleep(forTimeInterval: min(0.25, max(0, call.deadline.timeIntervalSinceNow)))
                call.transport = try transport()
                call.transport.send(Frames(parts: call.parts))
            }
        }
    }

    /// Forgets a started request that will not be finished (its late reply is dropped).
    public func forget(_ id: UInt64) { replies.cancel(id) }

    /// Sends and waits for the reply.
    public func call(_ envelope: Envelope, tensors: [(Conclave_V1_DType, [Int], Data)], timeout: Double = 30) throws -> WireMessage {
        try finish(try start(envelope, tensors: tensors, timeout: timeout))
    }
}

/// An ExpertProvider that computes the experts it holds locally (resident or paged) and asks other workers for
/// the rest — one call per remote worker per layer, all sent before the local work starts. It writes every
/// (row, slot)'s weighted output like any provider, so `apply` sums them in route order exactly as one process.
public final class RemoteExperts: ExpertProvider, @unchecked Sendable {
    /// How long a layer waits for its replies by polling before it sleeps (see `PendingReplies.Waiter.poll`):
    /// longer than a layer's remote compute and round trip, so a reply is normally seen without a wake-up.
    static let spin = 0.002

    /// Where an expert-parallel layer's time goes, summed over the layers that called other workers: the local
    /// experts computed while the calls were out, then the wait for the replies. With the servers' own compute
    /// time (`expert_serve_seconds`), the rest of the wait is the wire and its hops.
    public final class Timing: Sendable {
        public struct Totals: Sendable {
            public var layers: UInt64 = 0
            /// Calls sent (one per remote worker per layer).
            public var calls: UInt64 = 0
            public var localSeconds = 0.0
            public var waitSeconds = 0.0
        }
        private let totals = Mutex(Totals())
        func add(calls: Int, local: Double, wait: Double) {
            totals.withLock { t in
                t.layers += 1
                t.calls += UInt64(calls)
                t.localSeconds += local
                t.waitSeconds += wait
            }
        }
        public var snapshot: Totals { totals.withLock { $0 } }
    }
    public let timing = Timing()
    let local: ExpertProvider
    /// owner[layer][expert]: nil for a local expert, else the client of the worker holding it.
    let owner: [Int: [Int: RemoteClient]]
    let embedding: Int
    /// Per layer, the format its rows travel in (see `WeightLayout.expertInputFormat`); a layer not listed
    /// sends floats.
    let inputFormats: [Int: GGMLType]

    public init(local: ExpertProvider, owner: [Int: [Int: RemoteClient]], embedding: Int, inputFormats: [Int: GGMLType] = [:]) {
        self.local = local
        self.owner = owner
        self.embedding = embedding
        self.inputFormats = inputFormats
    }

    public var pagesExperts: Bool { local.pagesExperts }

    public func prefetch(layer: Int, experts: Set<Int>) {
        let remote = owner[layer] ?? [:]
        local.prefetch(layer: layer, experts: experts.filter { remote[$0] == nil })
    }

    public func weightedOutputs(layer: Int, input x: ExpertInput, routes: [Route], slotsPerRow k: Int,
                                into results: UnsafeMutablePointer<Float>) throws {
        let e = embedding
        let rows = routes.count
        let remote = owner[layer] ?? [:]
        // Split each row's route between local experts and each remote worker, keeping slots.
        var localRoutes = [Route](repeating: .emptyPart, count: rows)
        var byClient: [ObjectIdentifier: (RemoteClient, [Int: Route])] = [:]
        for (r, route) in routes.enumerated() {
            for i in 0..<route.experts.count {
                let ex = route.experts[i], w = route.weights[i], s = route.slot(i)
                if let c = remote[ex] {
                    var entry = byClient[ObjectIdentifier(c)] ?? (c, [:])
                    entry.1[r, default: .emptyPart].append(ex, weight: w, slot: s)
                    byClient[ObjectIdentifier(c)] = entry
                } else {
                    localRoutes[r].append(ex, weight: w, slot: s)
                }
            }
        }
        // Remote calls go out first, from this thread (a hop to another thread costs more than the send), and
        // local experts are computed while they travel; then each reply is waited for, spinning briefly.
        var calls: [(RemoteClient, [Int], [Int: Route], RemoteClient.Call)] = []
        var failure: String?
        let rowsOut = try byClient.isEmpty ? nil : WireRows(x, rows: rows, embedding: e, format: inputFormats[layer])
        for (_, (client, rs)) in byClient {
            let rowList = rs.keys.sorted()
            var call = Conclave_V1_ExpertCall()
            call.layer = UInt32(layer)
            for (i, r) in rowList.enumerated() {
                var route = Conclave_V1_Route()
                route.row = UInt32(i)
                route.experts = rs[r]!.experts.map(UInt32.init)
                route.weights = rs[r]!.weights
                route.slots = rs[r]!.slots!.map(UInt32.init)
                call.routes.append(route)
            }
            var envelope = Envelope()
            envelope.expertCall = call
            do {
                calls.append((client, rowList, rs, try client.start(envelope, tensors: [rowsOut!.tensor(rowList)])))
            } catch {
                failure = failure ?? "\(error)"
            }
        }
        let tSent = KernelBench.now()
        // Calls not finished below (local experts failed) are forgotten, so their late replies find no waiter.
        var unfinished = Set(calls.map { $0.3.waiter.id })
        defer { for id in unfinished { calls.first { $0.3.waiter.id == id }?.0.forget(id) } }
        if localRoutes.contains(where: { !$0.experts.isEmpty }) {
            try local.weightedOutputs(layer: layer, input: x, routes: localRoutes, slotsPerRow: k, into: results)
        }
        let tLocal = KernelBench.now()
        for (client, rowList, rs, pending) in calls {
            do {
                unfinished.remove(pending.waiter.id)
                let reply = try client.finish(pending, spin: Self.spin)
                guard case .expertResult(let res) = reply.envelope.kind, reply.frames.count == 1, res.rows.count == res.slots.count,
                      reply.frames[0].count == res.rows.count * e * 4 else {
                    throw WireError(.malformed, "bad ExpertResult from \(client.endpoint)")
                }
                // Every (row, slot) a peer names must be one we asked it for: nothing it sends writes elsewhere.
                for (row, slot) in zip(res.rows, res.slots) {
                    guard Int(row) < rowList.count, rs[rowList[Int(row)]]!.slots!.contains(Int(slot)) else {
                        throw WireError(.malformed, "ExpertResult from \(client.endpoint) names row \(row) slot \(slot), which was not asked for")
                    }
                }
                reply.frames[0].withUnsafeBytes { buf in
                    let f = buf.bindMemory(to: Float.self)
                    for (j, (row, slot)) in zip(res.rows, res.slots).enumerated() {
                        let r = rowList[Int(row)]
                        (results + (r * k + Int(slot)) * e).update(from: f.baseAddress! + j * e, count: e)
                    }
                }
            } catch {
                failure = failure ?? "\(error)"
            }
        }
        if !calls.isEmpty { timing.add(calls: calls.count, local: tLocal - tSent, wait: KernelBench.now() - tLocal) }
        // A peer that failed is the cluster's state, not this request's fault: the coordinator recovers from it.
        if let f = failure { throw WireError(.unavailable, "expert call for layer \(layer) failed: \(f)") }
    }
}

/// A layer's rows as an expert call carries them: quantized once to the format the callee's kernels take (the
/// bytes it would make from the floats itself), or the floats when the layer's experts take no such format.
struct WireRows {
    let dtype: Conclave_V1_DType
    let embedding: Int
    /// Where the rows are: quantized here (kept alive while calls are built; each row padded to a cache line),
    /// or the caller's, `stride` bytes apart.
    enum Source { case owned(QuantizedActivations), caller(UnsafeRawPointer, stride: Int) }
    let source: Source

    init(_ input: ExpertInput, rows: Int, embedding e: Int, format: GGMLType?) throws {
        embedding = e
        switch input {
        case .floats(let x):
            if let format, let dtype = Conclave_V1_DType(activations: format) {
                self.dtype = dtype
                source = .owned(try QuantizedActivations(x, cols: e, batch: rows, format: format))
            } else {
                dtype = .f32
                source = .caller(UnsafeRawPointer(x), stride: 4 * e)
            }
        case .quantized(let q, let format, let stride):
            guard let dtype = Conclave_V1_DType(activations: format) else {
                throw WireError(.internalError, "rows in \(format.name) cannot travel in an expert call")
            }
            self.dtype = dtype
            source = .caller(q, stride: stride)
        }
    }

    /// Bytes of one row as it travels.
    var wireRowBytes: Int { dtype == .f32 ? 4 * embedding : WireMessage.frameBytes(dtype, shape: [1, UInt64(embedding)])! }

    /// The frame of rows `rowList`, in that order.
    func tensor(_ rowList: [Int]) -> (Conclave_V1_DType, [Int], Data) {
        let n = wireRowBytes
        var data = Data(capacity: rowList.count * n)
        for r in rowList {
            // Only a row's blocks travel, not its padding.
            let start: UnsafeRawPointer
            switch source {
            case .owned(let q): start = UnsafeRawPointer(q.row(r).baseAddress!)
            case .caller(let p, let stride): start = p + r * stride
            }
            data.append(start.assumingMemoryBound(to: UInt8.self), count: n)
        }
        return (dtype, [rowList.count, embedding], data)
    }
}

extension Conclave_V1_DType {
    /// The wire dtype of rows quantized to `format`; nil for a format that does not travel.
    init?(activations format: GGMLType) {
        switch format {
        case .q8_0: self = .q80
        case .q8_K: self = .q8K
        default: return nil
        }
    }

    /// The activation format of a quantized dtype; nil for plain ones.
    var activationFormat: GGMLType? {
        switch self {
        case .q80: return .q8_0
        case .q8K: return .q8_K
        default: return nil
        }
    }
}
