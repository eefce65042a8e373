import Foundation
import Runtime
import Synchronization

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
    /// What timeouts are measured on.
    public let clock: any Clock

    public init(clock: any Clock = MonotonicClock()) { self.clock = clock }

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
        let arrived = clock.wait(sem, seconds: timeout)
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
            // The spin is the CPU's time, not the program's: it runs on the machine's clock whatever is injected.
            if spin > 0 {
                let end = MonotonicClock.seconds() + min(spin, timeout)
                while !box.arrived.load(ordering: .acquiring) && MonotonicClock.seconds() < end { sched_yield() }
            }
            if box.arrived.load(ordering: .acquiring) {
                guard let reply = owner.take(id, box) else { return nil }
                return try reply.get()
            }
            guard owner.clock.wait(sem, seconds: timeout), let reply = owner.take(id, box) else { return nil }
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
    private let replies: PendingReplies
    private let sent = Atomic<UInt64>(0)
    /// Bytes of every request sent (all frames).
    public var bytesSent: UInt64 { sent.load(ordering: .relaxed) }

    public init(endpoint: String, clock: any Clock = MonotonicClock(), connect: @escaping @Sendable () throws -> Transport) {
        self.endpoint = endpoint
        self.connect = connect
        replies = PendingReplies(clock: clock)
    }

    /// A client of a transport already made.
    public convenience init(transport: Transport, clock: any Clock = MonotonicClock()) {
        self.init(endpoint: transport.endpoint, clock: clock, connect: { transport })
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
        public let waiter: PendingReplies.Waiter
        let parts: [Data]
        let deadline: Double
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
        return Call(waiter: waiter, parts: parts, deadline: replies.clock.now() + timeout, timeout: timeout, transport: t)
    }

    /// Waits for a started request's reply (or fails after its timeout: a request is never silently dropped),
    /// first spinning for `spin` seconds (see `PendingReplies.Waiter.poll`). A request sent on a connection whose
    /// handshake is then refused never left: it is sent again on a new one.
    public func finish(_ call: Call, spin: Double = 0) throws -> WireMessage {
        var call = call
        var refused: String?
        var spin = spin
        while true {
            let left = call.deadline - replies.clock.now()
            guard left > 0 else {
                replies.cancel(call.waiter.id)
                throw WireError(.internalError, "no reply from \(endpoint) within \(call.timeout) s" + (refused.map { " (\($0))" } ?? ""))
            }
            if let reply = try call.waiter.poll(timeout: min(0.25, left), spin: spin) { return reply }
            spin = 0
            if let problem = call.transport.handshakeProblem {
                refused = problem
                replies.clock.sleep(until: min(replies.clock.now() + 0.25, call.deadline))
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

