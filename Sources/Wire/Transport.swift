import Foundation
import Synchronization

/// Moves multipart messages between processes. The coordinator and workers are written against this, so tests
/// can run them over `InMemoryNetwork` (deterministic, no sockets) or over real ZeroMQ sockets.
public protocol Transport: AnyObject, Sendable {
    /// Where this end is reachable (bound) or what it connected to.
    var endpoint: String { get }
    /// Messages received, in arrival order; on a router, `peer` says who sent each.
    var messages: AsyncStream<Frames> { get }
    /// Queues a message; on a router, `frames.peer` names the destination. Never blocks.
    func send(_ frames: Frames)
    /// Sends and says whether the message left: false when a router's peer is gone (its process ended or it
    /// disconnected) or the queue to it is full. Waits for the send to be tried.
    func sendReporting(_ frames: Frames) -> Bool
    func close()
    /// Why this end cannot talk to its peer, when the handshake says so (a refused key); nil otherwise.
    var handshakeProblem: String? { get }
    /// A connecting end whose connection was refused (nothing listens there) and that never connected yet.
    var connectionRefused: Bool { get }
    /// How many established connections of a connecting end were lost so far.
    var disconnections: Int { get }
    /// From now on, messages go to `receiver`, called on the thread that receives them (keep it short, and never
    /// wait there for this transport's own sends), instead of to `messages`, which then only ends at close. Each
    /// thread hop a message takes costs tens of microseconds on an idle virtual CPU; an expert call makes four
    /// per layer, so the hot paths (expert calls, their replies) take messages where they arrive.
    func receive(with receiver: @escaping @Sendable (Frames) -> Void)
}

extension ZMQSocket: Transport {}

/// A transport's receiver, kept behind a reference. A bare function value held in a `Mutex` and read with
/// `withLock { $0 }` comes back wrapped in one more reabstraction thunk each time, and the wrapped value is what
/// stays stored (Swift 6.3): read once per message, the receiver grew a chain of thunks as long as the messages
/// so far, and each message walked all of it — an experts worker's calls took 0.1 s more after 500 requests
/// (`bench soak` latency p50 108 → 768 ms). A class reference is stored as it is.
final class Receiver: Sendable {
    let call: @Sendable (Frames) -> Void
    init(_ call: @escaping @Sendable (Frames) -> Void) { self.call = call }
}

public extension Transport {
    var connectionRefused: Bool { false }
    var disconnections: Int { 0 }
}

/// The in-memory twin of ZeroMQ's ROUTER/DEALER: routers registered by endpoint name, dealers connected to them
/// by routing id. Delivery is immediate and ordered; an oversized message or an unknown destination is dropped,
/// as libzmq does with ZMQ_MAXMSGSIZE and ROUTER_MANDATORY.
public final class InMemoryNetwork: Sendable {
    private let routers = Mutex<[String: InMemoryEndpoint]>([:])

    public init() {}

    public func router(at endpoint: String, maxMessageSize: Int = 256 << 20) throws(ZMQError) -> InMemoryEndpoint {
        try routers.withLock { (r: inout [String: InMemoryEndpoint]) throws(ZMQError) -> InMemoryEndpoint in
            guard r[endpoint] == nil else { throw ZMQError(message: "bind \(endpoint): address already in use") }
            let e = InMemoryEndpoint(kind: .router, endpoint: endpoint, identity: Data(), maxMessageSize: maxMessageSize, network: self)
            r[endpoint] = e
            return e
        }
    }

    /// A dealer; `role` stands for what a ZAP handler would have said of its key (nil: an unauthenticated peer).
    public func dealer(connectingTo endpoint: String, identity: String, role: PeerRole? = nil) throws(ZMQError) -> InMemoryEndpoint {
        guard let router = routers.withLock({ $0[endpoint] }) else { throw ZMQError(message: "connect \(endpoint): nothing listens there") }
        let d = InMemoryEndpoint(kind: .dealer, endpoint: endpoint, identity: Data(identity.utf8), maxMessageSize: .max, network: self)
        d.role = role
        d.attach(to: router)
        return d
    }

    func boundRouter(_ endpoint: String) -> InMemoryEndpoint? { routers.withLock { $0[endpoint] } }

    func unregister(_ e: InMemoryEndpoint) {
        routers.withLock { if $0[e.endpoint] === e { $0[e.endpoint] = nil } }
    }
}

public final class InMemoryEndpoint: Transport, @unchecked Sendable {
    public let kind: ZMQSocket.Kind
    public let endpoint: String
    public let messages: AsyncStream<Frames>
    let identity: Data
    fileprivate var role: PeerRole?
    let maxMessageSize: Int
    public var handshakeProblem: String? { nil }
    private let continuation: AsyncStream<Frames>.Continuation
    fileprivate let dealers = Mutex<[Data: InMemoryEndpoint]>([:])
    private struct WeakRouter { weak var router: InMemoryEndpoint? }
    private let peer = Mutex(WeakRouter())
    private weak var network: InMemoryNetwork?
    private let closed = Atomic<Bool>(false)
    private let receiver = Mutex<Receiver?>(nil)

    init(kind: ZMQSocket.Kind, endpoint: String, identity: Data, maxMessageSize: Int, network: InMemoryNetwork) {
        self.kind = kind
        self.endpoint = endpoint
        self.identity = identity
        self.maxMessageSize = maxMessageSize
        self.network = network
        (messages, continuation) = AsyncStream.makeStream(of: Frames.self, bufferingPolicy: .unbounded)
    }

    public func send(_ frames: Frames) { _ = sendReporting(frames) }

    public func sendReporting(_ frames: Frames) -> Bool {
        guard !closed.load(ordering: .acquiring) else { return false }
        switch kind {
        case .dealer:
            guard let router = connectedRouter() else { return false }
            return router.deliver(Frames(peer: identity, parts: frames.parts, role: role))
        case .router:
            guard let peer = frames.peer, let dealer = dealers.withLock({ $0[peer] }) else { return false }
            return dealer.deliver(Frames(parts: frames.parts))
        }
    }

    @discardableResult
    func deliver(_ f: Frames) -> Bool {
        guard !closed.load(ordering: .acquiring), f.parts.reduce(0, { $0 + $1.count }) <= maxMessageSize else { return false }
        if let r = receiver.withLock({ $0 }) { r.call(f) } else { continuation.yield(f) }
        return true
    }

    fileprivate func attach(to router: InMemoryEndpoint) {
        peer.withLock { $0.router = router }
        router.dealers.withLock { $0[identity] = self }
    }

    /// The router this dealer talks to: the one it connected to while that is open, else whatever binds the
    /// endpoint now (ZeroMQ reconnects a dealer to a peer that restarted), else none.
    private func connectedRouter() -> InMemoryEndpoint? {
        if let r = peer.withLock({ $0.router }), !r.closed.load(ordering: .acquiring) { return r }
        guard let r = network?.boundRouter(endpoint) else { return nil }
        attach(to: r)
        return r
    }

    /// The twin calls `receiver` on the sender's thread (delivery is immediate).
    public func receive(with receiver: @escaping @Sendable (Frames) -> Void) {
        let box = Receiver(receiver)
        self.receiver.withLock { $0 = box }
    }

    public func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        continuation.finish()
        network?.unregister(self)
        // A dealer that closes is gone from its router, as a ZeroMQ peer whose connection ended.
        if kind == .dealer, let router = peer.withLock({ $0.router }) { router.dealers.withLock { if $0[identity] === self { $0[identity] = nil } } }
    }
}
