#if canImport(Glibc)
import Glibc
#endif
import CZeroMQ
import Foundation
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

/// A received or outgoing multipart message; `peer` is the ROUTER routing id (nil on a DEALER).
public struct Frames: Sendable {
    public var peer: Data?
    public var parts: [Data]
    public init(peer: Data? = nil, parts: [Data]) {
        self.peer = peer
        self.parts = parts
    }
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

    /// Binds (ROUTER, or a DEALER given `bind: true`) or connects to `endpoint`.
    public init(_ kind: Kind, bind: Bool, endpoint: String, identity: String? = nil, maxMessageSize: Int = 256 << 20,
                highWaterMark: Int32 = 10_000, context: ZMQContext = .shared) throws {
        guard let s = zmq_socket(context.handle, kind == .router ? ZMQ_ROUTER : ZMQ_DEALER) else { throw ZMQError("zmq_socket") }
        func setInt32(_ opt: Int32, _ v: Int32) { var v = v; zmq_setsockopt(s, opt, &v, 4) }
        setInt32(ZMQ_LINGER, 0)
        setInt32(ZMQ_SNDHWM, highWaterMark)
        setInt32(ZMQ_RCVHWM, highWaterMark)
        var maxSize = Int64(maxMessageSize)
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxSize, 8)
        if kind == .router { setInt32(ZMQ_ROUTER_MANDATORY, 1) }
        if let identity { _ = identity.withCString { zmq_setsockopt(s, ZMQ_ROUTING_ID, $0, strlen($0)) } }
        let rc = bind ? zmq_bind(s, endpoint) : zmq_connect(s, endpoint)
        guard rc == 0 else {
            let e = ZMQError(bind ? "bind \(endpoint)" : "connect \(endpoint)")
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

    /// Queues a message; the socket thread sends it. On a ROUTER, `frames.peer` names the destination.
    public func send(_ frames: Frames) { enqueue(frames, nil) }

    /// Sends and says whether the message left: false when a ROUTER's peer is gone (ROUTER_MANDATORY reports
    /// EHOSTUNREACH once its connection closed), the queue to it is full, or the socket is closed.
    public func sendReporting(_ frames: Frames) -> Bool {
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

    private func run() {
        var items = [zmq_pollitem_t(socket: socket, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0),
                     zmq_pollitem_t(socket: nil, fd: wake, events: Int16(ZMQ_POLLIN), revents: 0)]
        while !closed.load(ordering: .acquiring) {
            let n = zmq_poll(&items, 2, 1000)
            if n < 0 && zmq_errno() != EINTR { break }
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
        // Whoever still waits hears that nothing was sent.
        for (_, outcome) in queue.withLock({ q in defer { q.removeAll() }; return q }) { outcome?(false) }
        var linger: Int32 = 500
        zmq_setsockopt(socket, ZMQ_LINGER, &linger, 4)
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

    /// Drains every complete message waiting on the socket.
    private func receiveAll() {
        while true {
            var parts: [Data] = []
            var more: Int32 = 1
            repeat {
                var msg = zmq_msg_t()
                zmq_msg_init(&msg)
                let rc = zmq_msg_recv(&msg, socket, parts.isEmpty ? ZMQ_DONTWAIT : 0)
                if rc < 0 {
                    zmq_msg_close(&msg)
                    return
                }
                parts.append(Data(bytes: zmq_msg_data(&msg), count: zmq_msg_size(&msg)))
                more = zmq_msg_more(&msg)
                zmq_msg_close(&msg)
            } while more != 0
            if kind == .router {
                let peer = parts.removeFirst()
                continuation.yield(Frames(peer: peer, parts: parts))
            } else {
                continuation.yield(Frames(parts: parts))
            }
        }
    }
}
