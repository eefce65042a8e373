#if canImport(Glibc)
import Glibc
#endif
import CZeroMQ
import Foundation
import CurveKeys
import Synchronization

/// One ZeroMQ context per process; sockets are made from it. libzmq's context is thread-safe.
public final class ZMQContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer

    public init() {
        handle = zmq_ctx_new()
    }

    deinit { zmq_ctx_term(handle) }

    public static let shared = ZMQContext()
}

/// A received or outgoing multipart message; `peer` is the ROUTER routing id (nil on a DEALER); `role` is who
/// the sender authenticated as (CurveZMQ with a ZAP handler), nil on an unauthenticated socket.
public struct Frames: Sendable {
    public var peer: Data?
    public var parts: [Data]
    public var role: PeerRole?
    public init(peer: Data? = nil, parts: [Data], role: PeerRole? = nil) {
        self.peer = peer
        self.parts = parts
        self.role = role
    }
}

/// How a socket authenticates (DESIGN.md § Security).
public enum SocketSecurity: Sendable {
    /// Plain ZeroMQ: anyone who reaches the port may talk (loopback, or `--insecure`).
    case none
    /// CurveZMQ server (a bound ROUTER): our key pair; `admission` says which client keys get in, as what.
    case curveServer(CurveKeyPair, PeerAdmission)
    /// CurveZMQ client (a DEALER): our key pair and the key the server must prove it holds.
    case curveClient(CurveKeyPair, server: CurveKey)
}

public struct ZMQError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ what: String) { description = "\(what): \(String(cString: zmq_strerror(zmq_errno())))" }
    init(message: String) { description = message }
}

/// A ROUTER or DEALER socket owned by one dedicated thread, so that nothing ever blocks Swift's cooperative
/// pool: the thread polls the socket and an eventfd; `send` queues under a mutex and pokes the eventfd;
/// received messages come out of `messages`. Linger 0 on close; `maxMessageSize` bounds what a peer can send.
public final class ZMQSocket: @unchecked Sendable {
    public enum Kind: Sendable { case router, dealer }

    /// Milliseconds between ZMTP PINGs on every connection, and of silence after which it is closed.
    public static let heartbeatInterval: Int32 = 1000
    public static let heartbeatTimeout: Int32 = 5000
    /// Most messages taken per turn of the socket thread between sends.
    static let receiveBatch = 64

    public let kind: Kind
    /// The endpoint actually bound (a `*` port resolved), or the one connected to.
    public let endpoint: String
    public let messages: AsyncStream<Frames>

    private let continuation: AsyncStream<Frames>.Continuation
    /// Messages to send, each with what to tell a caller waiting for the outcome.
    private let queue = Mutex<[(Frames, (@Sendable (Bool) -> Void)?)]>([])
    private let closed = Atomic<Bool>(false)
    private let wake: Int32
    private var thread = pthread_t()
    // Owned by the socket thread once started; set up and torn down around it.
    private let socket: UnsafeMutableRawPointer
    /// A PAIR receiving this socket's handshake events (nil on a plain server, which has nothing to check).
    private let monitor: UnsafeMutableRawPointer?
    private let security: SocketSecurity
    private let problem = Mutex<String?>(nil)
    /// Connecting ends: (ever connected, last attempt refused, connections lost), from the monitor's events.
    private let reach = Mutex<(connected: Bool, refused: Bool, drops: Int)>((false, false, 0))
    /// Set by `receive(with:)`: messages go to it on the socket thread instead of to `messages`.
    private let receiver = Mutex<Receiver?>(nil)
    private static let monitors = Atomic<Int>(0)

    /// Binds (ROUTER, or a DEALER given `bind: true`) or connects to `endpoint`.
    public init(_ kind: Kind, bind: Bool, endpoint: String, identity: String? = nil, maxMessageSize: Int = 256 << 20,
                highWaterMark: Int32 = 10_000, security: SocketSecurity = .none, context: ZMQContext = .shared) throws {
        guard let s = zmq_socket(context.handle, kind == .router ? ZMQ_ROUTER : ZMQ_DEALER) else { throw ZMQError("zmq_socket") }
        func setInt32(_ opt: Int32, _ v: Int32) { var v = v; zmq_setsockopt(s, opt, &v, 4) }
        func setKey(_ opt: Int32, _ z85: String) -> Bool { z85.withCString { zmq_setsockopt(s, opt, $0, 40) } == 0 }
        switch security {
        case .none: break
        case .curveServer(let pair, let admission):
            // The handler must answer before the first handshake: without one libzmq admits every key.
            let zap: ZAPHandler
            do { zap = try ZAPHandler.running(in: context) } catch { zmq_close(s); throw error }
            zap.register(admission)
            setInt32(ZMQ_CURVE_SERVER, 1)
            _ = admission.domain.withCString { zmq_setsockopt(s, ZMQ_ZAP_DOMAIN, $0, strlen($0)) }
            guard setKey(ZMQ_CURVE_SECRETKEY, pair.secretZ85) else { zmq_close(s); throw ZMQError("CurveZMQ server key") }
        case .curveClient(let pair, let server):
            guard setKey(ZMQ_CURVE_SERVERKEY, server.z85), setKey(ZMQ_CURVE_PUBLICKEY, pair.publicKey.z85),
                  setKey(ZMQ_CURVE_SECRETKEY, pair.secretZ85) else { zmq_close(s); throw ZMQError("CurveZMQ client keys") }
        }
        self.security = security
        // Handshake outcomes: a server counts peers that fail before its ZAP handler is asked (no CurveZMQ at
        // all); a client learns that the server refused it, instead of waiting for replies that never come.
        var watch: UnsafeMutableRawPointer?
        if case .curveServer = security, kind == .router { watch = s } else if !bind { watch = s }
        if let w = watch {
            let address = "inproc://conclave.monitor.\(getpid()).\(Self.monitors.add(1, ordering: .relaxed).newValue)"
            var events = ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_SUCCEEDED
            if !bind { events |= ZMQ_EVENT_CONNECTED | ZMQ_EVENT_CONNECT_RETRIED | ZMQ_EVENT_DISCONNECTED }
            if zmq_socket_monitor(w, address, events) == 0, let pair = zmq_socket(context.handle, ZMQ_PAIR), zmq_connect(pair, address) == 0 {
                monitor = pair
            } else {
                monitor = nil
            }
        } else {
            monitor = nil
        }
        setInt32(ZMQ_LINGER, 0)
        setInt32(ZMQ_SNDHWM, highWaterMark)
        setInt32(ZMQ_RCVHWM, highWaterMark)
        var maxSize = Int64(maxMessageSize)
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxSize, 8)
        if kind == .router {
            setInt32(ZMQ_ROUTER_MANDATORY, 1)
            // A peer that reconnects under its routing id (a coordinator whose connection dropped and came back)
            // takes the id over instead of being refused while the old pipe lingers. Ids are unguessable per
            // process (`ZeroMQTransports.coordinatorIdentity`), and with CurveZMQ only admitted keys connect.
            setInt32(ZMQ_ROUTER_HANDOVER, 1)
        }
        // ZMTP heartbeats, answered by libzmq's I/O thread whatever our threads are doing: a peer whose host
        // vanished (no FIN, no RST) is disconnected after `Self.heartbeatTimeout` instead of TCP's 15 minutes, so
        // a worker notices a dead coordinator and takes the next one that assigns it.
        setInt32(ZMQ_HEARTBEAT_IVL, Self.heartbeatInterval)
        setInt32(ZMQ_HEARTBEAT_TIMEOUT, Self.heartbeatTimeout)
        setInt32(ZMQ_HEARTBEAT_TTL, Self.heartbeatTimeout)
        if let identity { _ = identity.withCString { zmq_setsockopt(s, ZMQ_ROUTING_ID, $0, strlen($0)) } }
        let rc = bind ? zmq_bind(s, endpoint) : zmq_connect(s, endpoint)
        guard rc == 0 else {
            let e = ZMQError(bind ? "bind \(endpoint)" : "connect \(endpoint)")
            if let monitor { zmq_close(monitor) }
            zmq_close(s)
            throw e
        }
        var name = [CChar](repeating: 0, count: 256)
        var size = name.count
        zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, &name, &size)
        self.endpoint = bind ? String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : endpoint
        self.kind = kind
        self.socket = s
        wake = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        (messages, continuation) = AsyncStream.makeStream(of: Frames.self, bufferingPolicy: .unbounded)
        let box = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&thread, nil, { arg in
            let me = Unmanaged<ZMQSocket>.fromOpaque(arg!).takeRetainedValue()
            me.run()
            return nil
        }, box)
    }

    /// Why the last handshake failed, until one succeeds (a DEALER): the server refused our key, or speaks
    /// another mechanism. Nil while nothing is known to be wrong.
    public var handshakeProblem: String? { problem.withLock { $0 } }

    /// Queues a message; the socket thread sends it. On a ROUTER, `frames.peer` names the destination.
    public func send(_ frames: Frames) { enqueue(frames, nil) }

    /// Sends and says whether the message left: false when a ROUTER's peer is gone (ROUTER_MANDATORY reports
    /// EHOSTUNREACH once its connection closed), the queue to it is full, or the socket is closed.
    public func sendReporting(_ frames: Frames) -> Bool {
        // From a receiver on our own thread: waiting for the thread would wait for ourselves.
        if pthread_equal(pthread_self(), thread) != 0 {
            guard !closed.load(ordering: .acquiring) else { return false }
            return transmit(frames)
        }
        let done = DispatchSemaphore(value: 0)
        let result = Atomic<Bool>(false)
        enqueue(frames) { ok in
            result.store(ok, ordering: .releasing)
            done.signal()
        }
        done.wait()
        return result.load(ordering: .acquiring)
    }

    private func enqueue(_ frames: Frames, _ outcome: (@Sendable (Bool) -> Void)?) {
        let accepted = queue.withLock { q -> Bool in
            // Checked under the lock the socket thread drains with, so a message is either sent or refused here.
            guard !closed.load(ordering: .acquiring) else { return false }
            q.append((frames, outcome))
            return true
        }
        guard accepted else { outcome?(false); return }
        var one: UInt64 = 1
        _ = write(wake, &one, 8)
    }

    /// Stops the thread and closes the socket; messages already queued get 500 ms to leave (libzmq sends them
    /// in the background), later ones are dropped.
    public func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        var one: UInt64 = 1
        _ = write(wake, &one, 8)
        pthread_join(thread, nil)
    }

    deinit { close() }

    public func receive(with receiver: @escaping @Sendable (Frames) -> Void) {
        let box = Receiver(receiver)
        self.receiver.withLock { $0 = box }
    }

    private func run() {
        var items = [zmq_pollitem_t(socket: socket, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0),
                     zmq_pollitem_t(socket: nil, fd: wake, events: Int16(ZMQ_POLLIN), revents: 0)]
        if let monitor { items.append(zmq_pollitem_t(socket: monitor, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)) }
        while !closed.load(ordering: .acquiring) {
            let n = zmq_poll(&items, Int32(items.count), 1000)
            if n < 0 && zmq_errno() != EINTR { break }
            if items.count > 2, items[2].revents != 0 { readEvents() }
            if items[1].revents != 0 {
                var v: UInt64 = 0
                _ = read(wake, &v, 8)
            }
            for (f, outcome) in queue.withLock({ q in defer { q.removeAll() }; return q }) {
                let ok = transmit(f)
                outcome?(ok)
            }
            receiveAll()
        }
        // What was queued before `close` was accepted (enqueue checks `closed` under the same lock): it still
        // goes out, e.g. the error a stopping coordinator sends each running request. The loop can see `closed`
        // between a send of the queue and the next wake, so this is not only a nicety.
        for (f, outcome) in queue.withLock({ q in defer { q.removeAll() }; return q }) { outcome?(transmit(f)) }
        var linger: Int32 = 500
        zmq_setsockopt(socket, ZMQ_LINGER, &linger, 4)
        if let monitor {
            zmq_socket_monitor(socket, nil, 0)
            var zero: Int32 = 0
            zmq_setsockopt(monitor, ZMQ_LINGER, &zero, 4)
            zmq_close(monitor)
        }
        zmq_close(socket)
        Glibc.close(wake)
        continuation.finish()
    }

    private func transmit(_ f: Frames) -> Bool {
        var parts = f.parts
        if kind == .router, let peer = f.peer { parts.insert(peer, at: 0) }
        for (i, p) in parts.enumerated() {
            let flags = i < parts.count - 1 ? ZMQ_SNDMORE : 0
            let rc = p.withUnsafeBytes { zmq_send(socket, $0.baseAddress, $0.count, flags | ZMQ_DONTWAIT) }
            if rc < 0 { return false }  // unknown peer (ROUTER_MANDATORY) or full queue: the message is dropped
        }
        return true
    }

    /// Takes up to `receiveBatch` complete messages waiting on the socket; the loop sends what is queued before
    /// it takes more, so a flood of input (thousands of messages a peer should not have sent) cannot hold back
    /// our replies and heartbeats.
    private func receiveAll() {
        let authenticated: Bool
        if case .curveServer = security { authenticated = true } else { authenticated = false }
        for _ in 0..<Self.receiveBatch {
            var parts: [Data] = []
            var more: Int32 = 1
            var role: PeerRole?
            repeat {
                var msg = zmq_msg_t()
                zmq_msg_init(&msg)
                let rc = zmq_msg_recv(&msg, socket, parts.isEmpty ? ZMQ_DONTWAIT : 0)
                if rc < 0 {
                    zmq_msg_close(&msg)
                    return
                }
                // The routing-id frame a ROUTER makes up carries no properties; the peer's own frames do.
                if authenticated, role == nil, let user = zmq_msg_gets(&msg, "User-Id") { role = PeerRole(userID: String(cString: user)) }
                parts.append(Data(bytes: zmq_msg_data(&msg), count: zmq_msg_size(&msg)))
                more = zmq_msg_more(&msg)
                zmq_msg_close(&msg)
            } while more != 0
            var frames = Frames(parts: parts)
            if kind == .router { frames = Frames(peer: parts.first, parts: Array(parts.dropFirst()), role: role) }
            if let r = receiver.withLock({ $0 }) { r.call(frames) } else { continuation.yield(frames) }
        }
    }

    /// Handshake events from the monitor: [event (u16) + value (u32)], [address].
    private func readEvents() {
        while let monitor {
            guard let frames = receiveMultipart(monitor, wait: false) else { return }
            guard let head = frames.first, head.count >= 6 else { continue }
            let event = Int32(head[head.startIndex]) | Int32(head[head.startIndex + 1]) << 8
            let value = head.dropFirst(2).prefix(4).enumerated().reduce(UInt32(0)) { $0 | UInt32($1.element) << (8 * UInt32($1.offset)) }
            let address = frames.count > 1 ? String(decoding: frames[1], as: UTF8.self) : endpoint
            handshake(event: event, value: value, address: address)
        }
    }

    /// Whether nothing listened at our endpoint so far (connection refused, never connected): a client that
    /// would otherwise wait its whole timeout for a server that is not running can say so at once.
    public var connectionRefused: Bool { reach.withLock { !$0.connected && $0.refused } }

    /// How often an established connection of this connecting end was lost (the peer's process ended, or its
    /// heartbeats stopped): a request in flight over a lost connection will not be answered, since libzmq
    /// reconnects to whatever listens there next.
    public var disconnections: Int { reach.withLock { $0.drops } }

    private func handshake(event: Int32, value: UInt32, address: String) {
        if event == ZMQ_EVENT_CONNECTED { reach.withLock { $0.connected = true; $0.refused = false }; return }
        if event == ZMQ_EVENT_CONNECT_RETRIED { reach.withLock { $0.refused = true }; return }
        if event == ZMQ_EVENT_DISCONNECTED { reach.withLock { $0.drops += 1 }; return }
        switch security {
        case .curveServer(_, let admission):
            // A refused key was counted by the ZAP handler, which knew the key; these failed before it was asked.
            if event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL || event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL {
                admission.refuse("a peer of \(address) failed the CurveZMQ handshake (protocol error 0x\(String(value, radix: 16))): it does not speak CurveZMQ, or was given another key for this endpoint",
                                  peer: "a failed handshake from \(PeerAdmission.host(address))")
            }
        case .curveClient, .none:
            let what: String?
            switch event {
            case ZMQ_EVENT_HANDSHAKE_SUCCEEDED: what = nil
            case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH: what = "\(endpoint) refused this process's CurveZMQ key (status \(value)): it is not among the keys listed there"
            default:
                if case .none = security {
                    what = "the handshake with \(endpoint) failed (protocol error 0x\(String(value, radix: 16))): it requires CurveZMQ; give the keys (--key-dir)"
                } else {
                    what = "the CurveZMQ handshake with \(endpoint) failed (protocol error 0x\(String(value, radix: 16))): it does not speak CurveZMQ, or its key is not the one given"
                }
            }
            problem.withLock { $0 = what }
        }
    }
}

/// One whole multipart message from `socket` (nil when none is waiting, with `wait` false, or on an error).
func receiveMultipart(_ socket: UnsafeMutableRawPointer, wait: Bool) -> [Data]? {
    var frames: [Data] = []
    var more: Int32 = 1
    repeat {
        var msg = zmq_msg_t()
        zmq_msg_init(&msg)
        defer { zmq_msg_close(&msg) }
        guard zmq_msg_recv(&msg, socket, frames.isEmpty && !wait ? ZMQ_DONTWAIT : 0) >= 0 else { return nil }
        frames.append(Data(bytes: zmq_msg_data(&msg), count: zmq_msg_size(&msg)))
        more = zmq_msg_more(&msg)
    } while more != 0
    return frames
}
