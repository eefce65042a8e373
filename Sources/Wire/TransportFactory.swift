import Foundation
import CurveKeys
import Synchronization

/// A worker of the plan as the others must know it to talk to it under CurveZMQ.
public struct TrustedPeer: Sendable, Equatable {
    public let name: String
    public let endpoint: String
    public let key: CurveKey
    public init(name: String, endpoint: String, key: CurveKey) {
        self.name = name
        self.endpoint = endpoint
        self.key = key
    }
}

/// Makes every socket a daemon opens (DESIGN.md § Request/reply and edges): the one place where CurveZMQ is
/// configured, so the coordinator and workers are written once for plain sockets, CurveZMQ and the in-memory
/// twin alike.
public protocol TransportFactory: Sendable {
    /// Whether peers on our listeners are authenticated: then every message carries the sender's role, and
    /// a message without one is refused.
    var authenticates: Bool { get }
    /// A ROUTER bound at `endpoint`.
    func listen(_ endpoint: String, maxMessageSize: Int) throws -> Transport
    /// A DEALER connected to `endpoint`.
    func connect(_ endpoint: String) throws -> Transport
    /// The workers of the plan now in force (from an Assign): admitted on our listeners as workers, and the
    /// keys their endpoints must prove when we connect to them. Replaces the workers of the last plan.
    func trust(workers: [TrustedPeer])
    /// The key a worker that joined proved on our listener (`PeerRole.joiner`): what its endpoint must prove
    /// when we connect to it, for as long as we run. False (and nothing changes) when another key is known for
    /// that endpoint already.
    @discardableResult
    func trust(server endpoint: String, key: CurveKey) -> Bool
    /// Peers our listeners refused (an unlisted key, or no CurveZMQ at all).
    var refusedPeers: Int { get }
}

/// Real ZeroMQ sockets, plain or CurveZMQ.
public final class ZeroMQTransports: TransportFactory {
    public struct Curve: Sendable {
        public var keys: CurveKeyPair
        /// Keys admitted on our listeners for as long as we run, with their role (on a worker: the
        /// coordinator's; on the coordinator: the clients').
        public var admitted: [CurveKey: PeerRole]
        /// Keys of the endpoints we connect to that are known from the start (the coordinator's cluster file).
        public var servers: [String: CurveKey]
        public init(keys: CurveKeyPair, admitted: [CurveKey: PeerRole], servers: [String: CurveKey] = [:]) {
            self.keys = keys
            self.admitted = admitted
            self.servers = servers
        }
    }

    let identity: String?
    let curve: Curve?
    let admission: PeerAdmission?
    private let servers: Mutex<[String: CurveKey]>
    /// Servers learned while running (`trust(server:key:)`), kept when a plan's workers replace the others.
    private let joined = Mutex<[String: CurveKey]>([:])

    /// `identity`: the routing id of our DEALERs (the coordinator's, so a worker's replies find it); `curve`:
    /// nil for plain sockets.
    public init(identity: String? = nil, curve: Curve? = nil, log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.identity = identity
        self.curve = curve
        admission = curve.map { PeerAdmission(fixed: $0.admitted, log: log) }
        servers = Mutex(curve?.servers ?? [:])
    }

    /// A coordinator's routing id, unique to this process: two coordinators never share one (a worker's ROUTER
    /// would drop the second, or take its messages as the first's), and a local process cannot squat on it
    /// while a coordinator restarts.
    public static func coordinatorIdentity() -> String {
        var host = [CChar](repeating: 0, count: 64)
        gethostname(&host, host.count - 1)
        let name = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let nonce = (0..<8).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        return "coordinator-\(name.prefix(40))-\(getpid())-\(nonce)"
    }

    public var authenticates: Bool { curve != nil }
    public var refusedPeers: Int { admission?.refused ?? 0 }

    /// A client's sockets (`conclave generate`, `status`, the benches): plain, or CurveZMQ with our pair and the
    /// key `server` (the coordinator's) must prove.
    public static func client(of server: String, keys: (pair: CurveKeyPair, serverKey: CurveKey)?) -> ZeroMQTransports {
        ZeroMQTransports(curve: keys.map { Curve(keys: $0.pair, admitted: [:], servers: [server: $0.serverKey]) })
    }

    public func listen(_ endpoint: String, maxMessageSize: Int = 256 << 20) throws -> Transport {
        let security: SocketSecurity = curve.map { .curveServer($0.keys, admission!) } ?? .none
        return try ZMQSocket(.router, bind: true, endpoint: endpoint, maxMessageSize: maxMessageSize, security: security)
    }

    public func connect(_ endpoint: String) throws -> Transport {
        var security = SocketSecurity.none
        if let curve {
            guard let key = servers.withLock({ $0[endpoint] }) else {
                throw ZMQError(message: "connect \(endpoint): no CurveZMQ key is known for this endpoint (it is not a worker of the plan)")
            }
            security = .curveClient(curve.keys, server: key)
        }
        return try ZMQSocket(.dealer, bind: false, endpoint: endpoint, identity: identity, security: security)
    }

    public func trust(workers: [TrustedPeer]) {
        guard let curve, let admission else { return }
        admission.admitWorkers(Dictionary(workers.map { ($0.name, $0.key) }, uniquingKeysWith: { a, _ in a }))
        let learned = joined.withLock { $0 }
        servers.withLock { s in
            s = curve.servers.merging(learned) { a, _ in a }
            for w in workers { s[w.endpoint] = w.key }
        }
    }

    public func trust(server endpoint: String, key: CurveKey) -> Bool {
        guard curve != nil else { return true }
        return servers.withLock { s in
            if let known = s[endpoint] { return known == key }
            s[endpoint] = key
            joined.withLock { $0[endpoint] = key }
            return true
        }
    }
}

/// The in-memory twin: routers and dealers of an `InMemoryNetwork`. `role` stands for the key this process
/// would authenticate with: its dealers' messages carry it, and with a role the factory authenticates.
public final class InMemoryTransports: TransportFactory {
    let network: InMemoryNetwork
    let identity: String
    let role: PeerRole?
    /// The role a listener would give our key where it is not `role` (a ZAP handler decides per listener: a
    /// joining worker's key is a `joiner` at the coordinator's client endpoint and a worker at the others').
    let rolesAt: [String: PeerRole]

    public init(network: InMemoryNetwork, identity: String, role: PeerRole? = nil, rolesAt: [String: PeerRole] = [:]) {
        self.network = network
        self.identity = identity
        self.role = role
        self.rolesAt = rolesAt
    }

    public var authenticates: Bool { role != nil }
    public var refusedPeers: Int { 0 }
    public func listen(_ endpoint: String, maxMessageSize: Int) throws -> Transport { try network.router(at: endpoint, maxMessageSize: maxMessageSize) }
    public func connect(_ endpoint: String) throws -> Transport { try network.dealer(connectingTo: endpoint, identity: identity, role: rolesAt[endpoint] ?? role) }
    public func trust(workers: [TrustedPeer]) {}
    public func trust(server endpoint: String, key: CurveKey) -> Bool { true }
}
