import Foundation
import CurveKeys
import Yams

/// A cluster file (DESIGN.md § Cluster file): where the coordinator listens and, per worker, its endpoint,
/// its hard memory budget and what it may hold.
public struct ClusterFile: Sendable, Equatable {
    public enum Role: String, Sendable, Codable, CaseIterable {
        /// Layers and experts.
        case any
        /// Layers only (a pipeline stage that sends its experts elsewhere).
        case stage
        /// Experts only, for other workers' layers.
        case experts
        /// Nothing until a worker fails: says Hello and waits; a re-plan after a failure may give it anything.
        case spare
    }

    /// The workers a plan uses now: every one but the spares.
    public var active: ClusterFile {
        with(workers: workers.filter { $0.role != .spare })
    }

    public struct Worker: Sendable, Equatable {
        public let name: String
        public let endpoint: String
        public let memory: Int
        public let role: Role
        /// Its CurveZMQ public key (`key:`), when the cluster is authenticated.
        public let key: CurveKey?
        /// A factor on how fast it reads expert weights (`speed:`, default 1): on its measured rate when the
        /// coordinator has one, else on the nominal rate (`conclave plan`).
        public let speed: Double
        /// Bytes of expert weights it reads per second, as the worker measured at start (not in the file).
        public var readRate: Double?
        /// Seconds of an expert call's round trip to it, as the coordinator measured (not in the file).
        public var roundTrip: Double?
        /// The rate the planner assumes for a worker nobody measured.
        public static let nominalReadRate = 10e9
        /// Its rate for planning: measured (or nominal) times `speed`.
        public var effectiveReadRate: Double { (readRate ?? Self.nominalReadRate) * speed }

        /// The same worker in another role (a spare called in by a re-plan holds layers and experts).
        public func with(role: Role) -> Worker { with(memory: memory, role: role) }
        /// The same worker with another budget (what it reported, when below the file's), its measurements kept.
        public func with(memory: Int, role: Role? = nil) -> Worker {
            var w = Worker(name: name, endpoint: endpoint, memory: memory, role: role ?? self.role, key: key, speed: speed)
            w.readRate = readRate
            w.roundTrip = roundTrip
            return w
        }
        public init(name: String, endpoint: String, memory: Int, role: Role = .any, key: CurveKey? = nil, speed: Double = 1) {
            self.name = name
            self.endpoint = endpoint
            self.memory = memory
            self.role = role
            self.key = key
            self.speed = speed
        }
    }

    public let coordinator: String
    public let workers: [Worker]
    /// CurveZMQ (DESIGN.md § Security): the coordinator's public key (`coordinator_key:`); with it every worker
    /// has a `key:`, and `client_keys:` lists who may send Generate and StatusQuery. Nil: a plain cluster.
    public let coordinatorKey: CurveKey?
    public let clientKeys: [CurveKey]
    /// Keys of workers that may join while the cluster serves (`join_keys:`, `worker --join`), each proving it
    /// when the coordinator connects back. Without CurveZMQ a worker on this host may join.
    public let joinKeys: [CurveKey]

    public init(coordinator: String, workers: [Worker], coordinatorKey: CurveKey? = nil, clientKeys: [CurveKey] = [], joinKeys: [CurveKey] = []) {
        self.coordinator = coordinator
        self.workers = workers
        self.coordinatorKey = coordinatorKey
        self.clientKeys = clientKeys
        self.joinKeys = joinKeys
    }

    /// The same cluster (endpoint and keys) with other workers: what a re-plan plans over.
    public func with(workers: [Worker]) -> ClusterFile {
        ClusterFile(coordinator: coordinator, workers: workers, coordinatorKey: coordinatorKey, clientKeys: clientKeys, joinKeys: joinKeys)
    }

    /// Whether peers authenticate with CurveZMQ.
    public var authenticated: Bool { coordinatorKey != nil }

    /// Every endpoint on this machine's loopback: a plain cluster is safe to run only then.
    public var loopbackOnly: Bool { ([coordinator] + workers.map(\.endpoint)).allSatisfy(Self.isLoopback) }

    /// tcp://127.x.x.x, tcp://localhost, tcp://[::1], ipc:// and inproc:// stay on this machine.
    public static func isLoopback(_ endpoint: String) -> Bool {
        if endpoint.hasPrefix("ipc://") || endpoint.hasPrefix("inproc://") { return true }
        guard endpoint.hasPrefix("tcp://") else { return false }
        let host = endpoint.dropFirst(6).prefix { $0 != ":" }
        return host.hasPrefix("127.") || host == "localhost" || endpoint.dropFirst(6).hasPrefix("[::1]")
    }

    public init(path: String) throws(PlacementError) {
        guard let data = FileManager.default.contents(atPath: path) else { throw PlacementError("cannot read cluster file '\(path)'") }
        try self.init(yaml: String(decoding: data, as: UTF8.self), source: path)
    }

    private struct Raw: Decodable {
        struct W: Decodable { let name: String?; let endpoint: String?; let memory: String?; let role: String?; let key: String?; let speed: Double? }
        let coordinator: String?
        let workers: [W]?
        let coordinator_key: String?
        let client_keys: [String]?
        let join_keys: [String]?
    }

    public init(yaml: String, source: String = "cluster file") throws(PlacementError) {
        let raw: Raw
        do {
            raw = try YAMLDecoder().decode(Raw.self, from: yaml)
        } catch {
            throw PlacementError("\(source): not a valid cluster file: \(error)")
        }
        guard let coordinator = raw.coordinator, Self.isEndpoint(coordinator) else {
            throw PlacementError("\(source): 'coordinator' must be an endpoint like tcp://10.0.0.1:7000")
        }
        guard let list = raw.workers, !list.isEmpty else { throw PlacementError("\(source): 'workers' lists no worker") }
        // Key files named in the cluster file are found next to it.
        let directory = source == "cluster file" ? nil : URL(fileURLWithPath: source).deletingLastPathComponent().path
        func key(_ s: String, _ what: String) throws(PlacementError) -> CurveKey {
            do { return try CurveKey(keyOrFile: s, relativeTo: directory) } catch { throw PlacementError("\(source): \(what): \(error.message)") }
        }
        let coordinatorKey = try raw.coordinator_key.map { (s: String) throws(PlacementError) in try key(s, "'coordinator_key'") }
        var clientKeys: [CurveKey] = []
        for (i, s) in (raw.client_keys ?? []).enumerated() { clientKeys.append(try key(s, "client_keys[\(i)]")) }
        var joinKeys: [CurveKey] = []
        for (i, s) in (raw.join_keys ?? []).enumerated() { joinKeys.append(try key(s, "join_keys[\(i)]")) }
        if coordinatorKey == nil, !clientKeys.isEmpty || !joinKeys.isEmpty || list.contains(where: { $0.key != nil }) {
            throw PlacementError("\(source): workers or clients have keys but 'coordinator_key' is missing; an authenticated cluster gives the coordinator's key too")
        }
        var workers: [Worker] = []
        for (i, w) in list.enumerated() {
            let label = "\(source): workers[\(i)]"
            let (name, endpoint, role) = try Self.identity(name: w.name, endpoint: w.endpoint, role: w.role, among: workers, label: label)
            guard let m = w.memory, let memory = Self.parseBytes(m) else {
                throw PlacementError("\(label) '\(name)': 'memory' must be a size like 48GiB, 512MiB or a number of bytes")
            }
            var workerKey: CurveKey?
            if let k = w.key { workerKey = try key(k, "\(label) '\(name)': 'key'") }
            if coordinatorKey != nil, workerKey == nil {
                throw PlacementError("\(label) '\(name)': no 'key'; with 'coordinator_key' every worker gives its public key (`conclave keys generate -o DIR \(name)`)")
            }
            let speed = w.speed ?? 1
            guard speed.isFinite, speed > 0, speed <= 1000 else { throw PlacementError("\(label) '\(name)': 'speed' must be a number above 0 (a relative expert speed; 1 by default)") }
            workers.append(Worker(name: name, endpoint: endpoint, memory: memory, role: role, key: workerKey, speed: speed))
        }
        guard workers.contains(where: { $0.role != .experts && $0.role != .spare }) else {
            throw PlacementError("\(source): every worker has role 'experts' or 'spare'; at least one must hold layers (role 'any' or 'stage')")
        }
        self.coordinator = coordinator
        self.workers = workers
        self.coordinatorKey = coordinatorKey
        self.clientKeys = clientKeys
        self.joinKeys = joinKeys
    }

    /// The file as YAML that `init(yaml:)` reads back to an equal value (keys inline, memory in bytes): how a
    /// command that makes a cluster (`bench cluster --curve`) hands it to the processes it starts.
    public var yaml: String {
        var out = "coordinator: \(coordinator)\n"
        if let coordinatorKey { out += "coordinator_key: \"\(coordinatorKey.z85)\"\n" }
        if !clientKeys.isEmpty { out += "client_keys: [\(clientKeys.map { "\"\($0.z85)\"" }.joined(separator: ", "))]\n" }
        if !joinKeys.isEmpty { out += "join_keys: [\(joinKeys.map { "\"\($0.z85)\"" }.joined(separator: ", "))]\n" }
        out += "workers:\n"
        for w in workers {
            out += "  - name: \"\(w.name)\"\n    endpoint: \(w.endpoint)\n    memory: \"\(w.memory)\"\n    role: \(w.role.rawValue)\n"
            if let key = w.key { out += "    key: \"\(key.z85)\"\n" }
            if w.speed != 1 { out += "    speed: \(w.speed)\n" }
        }
        return out
    }

    /// A worker's name, endpoint and role as the file gives them (or as a worker that joins says), checked
    /// against the `others` already listed: each name and endpoint once, a known role.
    static func identity(name: String?, endpoint: String?, role: String?, among others: [Worker],
                                label: String) throws(PlacementError) -> (name: String, endpoint: String, role: Role) {
        guard let name, !name.isEmpty else { throw PlacementError("\(label): missing 'name'") }
        guard let endpoint, Self.isEndpoint(endpoint) else {
            throw PlacementError("\(label) '\(name)': 'endpoint' must be like tcp://10.0.0.2:7070")
        }
        let roleName = role ?? "any"
        guard let role = Role(rawValue: roleName) else {
            throw PlacementError("\(label) '\(name)': role '\(roleName)' is not one of any, stage, experts, spare")
        }
        guard !others.contains(where: { $0.name == name }) else { throw PlacementError("\(label): the name '\(name)' is used twice") }
        guard !others.contains(where: { $0.endpoint == endpoint }) else { throw PlacementError("\(label) '\(name)': endpoint \(endpoint) is used twice") }
        return (name, endpoint, role)
    }

    /// Whether `s` is an endpoint as a cluster file takes one (tcp://HOST:PORT).
    public static func isEndpoint(_ s: String) -> Bool {
        guard s.hasPrefix("tcp://"), let colon = s.lastIndex(of: ":"), colon > s.index(s.startIndex, offsetBy: 6) else { return false }
        return UInt16(s[s.index(after: colon)...]) != nil
    }

    /// "48GiB", "6 GB", "512MiB", "1073741824" → bytes (binary units for Ki/Mi/Gi/Ti, decimal for K/M/G/T).
    public static func parseBytes(_ s: String) -> Int? {
        let t = s.trimmingCharacters(in: .whitespaces)
        let digits = t.prefix { $0.isNumber || $0 == "." }
        guard let value = Double(digits), value >= 0 else { return nil }
        let unit = t.dropFirst(digits.count).trimmingCharacters(in: .whitespaces).lowercased()
        let scale: Double
        switch unit {
        case "", "b": scale = 1
        case "kib", "ki": scale = 1024
        case "mib", "mi": scale = 1024 * 1024
        case "gib", "gi": scale = 1024 * 1024 * 1024
        case "tib", "ti": scale = 1024 * 1024 * 1024 * 1024
        case "kb", "k": scale = 1e3
        case "mb", "m": scale = 1e6
        case "gb", "g": scale = 1e9
        case "tb", "t": scale = 1e12
        default: return nil
        }
        return Int(value * scale)
    }
}

public struct PlacementError: Error, CustomStringConvertible, Sendable, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
