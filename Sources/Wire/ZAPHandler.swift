#if canImport(Glibc)
import Glibc
#endif
import CZeroMQ
import Foundation
import CurveKeys
import Synchronization

/// Who a peer is, as the ZAP handler told libzmq when the peer's CurveZMQ handshake was admitted: every message
/// from that connection then carries it as its User-Id, so a receiver knows the role of whoever sent a message
/// without trusting anything the message says.
public enum PeerRole: Sendable, Hashable, CustomStringConvertible {
    case coordinator
    /// A worker of the plan, by its cluster-file name.
    case worker(String)
    case client
    /// A worker that may join the cluster (the cluster file's `join_keys`), by its public key (Z85): the
    /// coordinator connects back to it proving that key.
    case joiner(String)

    public var userID: String {
        switch self {
        case .coordinator: "coordinator"
        case .worker(let name): "worker:" + name
        case .client: "client"
        case .joiner(let key): "joiner:" + key
        }
    }

    public init?(userID: String) {
        switch userID {
        case "coordinator": self = .coordinator
        case "client": self = .client
        default:
            if userID.hasPrefix("joiner:") {
                self = .joiner(String(userID.dropFirst(7)))
                return
            }
            guard userID.hasPrefix("worker:") else { return nil }
            self = .worker(String(userID.dropFirst(7)))
        }
    }

    public var description: String { userID }
}

/// Who may open a connection to one listening socket: the public keys admitted and the role of each. The
/// owner changes it (a worker learns its plan's peers from an Assign); the ZAP handler reads it on its thread.
/// Refusals are counted here, whichever step refused: the ZAP handler (an unlisted key) or the socket's
/// monitor (a peer that does not speak CurveZMQ at all).
public final class PeerAdmission: Sendable {
    /// The ZAP domain of the socket this admission guards: how the one handler of a process tells sockets apart.
    public let domain: String
    private let fixed: [CurveKey: PeerRole]
    private let workers = Mutex<[CurveKey: PeerRole]>([:])
    private let refusals = Atomic<Int>(0)
    /// Who was refused: a key, or a host that spoke no CurveZMQ or failed the handshake. A peer that retries
    /// every second is one peer (bounded: past `peerLimit` distinct peers, each further refusal counts as new).
    private let peers = Mutex<Set<String>>([])
    private let overflow = Atomic<Int>(0)
    static let peerLimit = 10_000
    let log: @Sendable (String) -> Void

    private static let next = Atomic<Int>(0)

    /// `fixed`: keys admitted for the socket's lifetime (the coordinator's key on a worker, client keys on the
    /// coordinator); workers come and go with plans (`admitWorkers`).
    public init(fixed: [CurveKey: PeerRole], log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.fixed = fixed
        self.log = log
        domain = "conclave.\(getpid()).\(Self.next.add(1, ordering: .relaxed).newValue)"
    }

    /// The workers of the plan in force, replacing those of the last one.
    public func admitWorkers(_ peers: [String: CurveKey]) {
        workers.withLock { w in
            w.removeAll()
            for (name, key) in peers { w[key] = .worker(name) }
        }
    }

    public func role(of key: CurveKey) -> PeerRole? { fixed[key] ?? workers.withLock { $0[key] } }

    /// Distinct peers refused so far (not handshakes: libzmq peers retry every few seconds).
    public var refused: Int { peers.withLock { $0.count } + overflow.load(ordering: .relaxed) }

    /// Counts a refusal of `peer` (a key, or a kind of failure and the host it came from) and logs it; after
    /// the first 20 attempts, one line per 1000, so a peer retrying in a loop cannot fill the log.
    func refuse(_ why: String, peer: String) {
        let n = refusals.add(1, ordering: .relaxed).newValue
        let new = peers.withLock { s -> Bool in
            if s.count >= Self.peerLimit, !s.contains(peer) { overflow.add(1, ordering: .relaxed); return true }
            return s.insert(peer).inserted
        }
        if n <= 20 || n % 1000 == 0 || (new && refused <= 100) { log("refused a peer (\(n) attempts so far): \(why)") }
    }

    /// The host of a ZAP address ("10.0.0.5") or a monitor's endpoint ("tcp://10.0.0.5:41234").
    static func host(_ address: String) -> String {
        var a = Substring(address)
        if let r = a.range(of: "://") { a = a[r.upperBound...] }
        if let colon = a.lastIndex(of: ":"), a.filter({ $0 == ":" }).count == 1 || a.hasPrefix("[") { a = a[..<colon] }
        return String(a)
    }
}

/// The ZAP handler of a process (RFC 27): a REP socket at `inproc://zeromq.zap.01` in the ZeroMQ context, on a
/// thread of its own, asked by libzmq during every CurveZMQ handshake on a server socket of that context. It
/// admits a key its socket's `PeerAdmission` lists, naming the key's role as the connection's User-Id, and
/// refuses every other. Without a handler libzmq would admit any key (encryption without authorisation), so
/// it is started before the first CurveZMQ server socket binds and never stops.
final class ZAPHandler: @unchecked Sendable {
    private static let handlers = Mutex<[UnsafeMutableRawPointer: ZAPHandler]>([:])

    /// The running handler of `context`, started on first use.
    static func running(in context: ZMQContext) throws -> ZAPHandler {
        try handlers.withLock { (h: inout [UnsafeMutableRawPointer: ZAPHandler]) throws -> ZAPHandler in
            if let z = h[context.handle] { return z }
            let z = try ZAPHandler(context: context)
            h[context.handle] = z
            return z
        }
    }

    private let socket: UnsafeMutableRawPointer
    private let admissions = Mutex<[String: PeerAdmission]>([:])
    private var thread = pthread_t()

    private init(context: ZMQContext) throws {
        guard let s = zmq_socket(context.handle, ZMQ_REP) else { throw ZMQError("zmq_socket (ZAP)") }
        guard zmq_bind(s, "inproc://zeromq.zap.01") == 0 else {
            let e = ZMQError("bind the ZAP handler")
            zmq_close(s)
            throw e
        }
        socket = s
        let box = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&thread, nil, { arg in
            Unmanaged<ZAPHandler>.fromOpaque(arg!).takeRetainedValue().run()
            return nil
        }, box)
    }

    /// Makes `admission` decide for the sockets of its domain.
    func register(_ admission: PeerAdmission) { admissions.withLock { $0[admission.domain] = admission } }

    private func run() {
        while true {
            guard let frames = receiveMultipart(socket, wait: true) else {
                if zmq_errno() == ETERM { return }
                continue
            }
            guard frames.count >= 2 else { continue }
            let (code, text, user) = decide(frames)
            let reply = [Data("1.0".utf8), frames[1], Data(code.utf8), Data(text.utf8), Data(user.utf8), Data()]
            for (i, f) in reply.enumerated() {
                _ = f.withUnsafeBytes { zmq_send(socket, $0.baseAddress, $0.count, i < reply.count - 1 ? ZMQ_SNDMORE : 0) }
            }
        }
    }

    /// The answer to one request: [version, request id, domain, address, routing id, mechanism, credentials…].
    private func decide(_ f: [Data]) -> (String, String, String) {
        guard f.count >= 6, String(decoding: f[0], as: UTF8.self) == "1.0" else { return ("500", "malformed ZAP request", "") }
        let domain = String(decoding: f[2], as: UTF8.self), address = String(decoding: f[3], as: UTF8.self)
        let mechanism = String(decoding: f[5], as: UTF8.self)
        guard let admission = admissions.withLock({ $0[domain] }) else { return ("400", "no admission for this socket", "") }
        guard mechanism == "CURVE", f.count >= 7, f[6].count == 32 else {
            admission.refuse("a \(mechanism) handshake from \(address) (only CurveZMQ is admitted)", peer: "\(mechanism) from \(PeerAdmission.host(address))")
            return ("400", "CurveZMQ required", "")
        }
        var text = [CChar](repeating: 0, count: 41)
        let key = f[6].withUnsafeBytes { zmq_z85_encode(&text, $0.bindMemory(to: UInt8.self).baseAddress, 32) }.flatMap { _ in try? CurveKey(z85: String(nulTerminated: text)) }
        guard let key, let role = admission.role(of: key) else {
            admission.refuse("key \(String(nulTerminated: text)) from \(address) is not listed", peer: "key \(String(nulTerminated: text))")
            return ("400", "key not admitted", "")
        }
        return ("200", "OK", role.userID)
    }
}
