import Foundation
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
    public var active: ClusterFile { ClusterFile(coordinator: coordinator, workers: workers.filter { $0.role != .spare }) }

    public struct Worker: Sendable, Equatable {
        public let name: String
        public let endpoint: String
        public let memory: Int
        public let role: Role
        /// The same worker in another role (a spare called in by a re-plan holds layers and experts).
        public func with(role: Role) -> Worker { Worker(name: name, endpoint: endpoint, memory: memory, role: role) }
        public init(name: String, endpoint: String, memory: Int, role: Role = .any) {
            self.name = name
            self.endpoint = endpoint
            self.memory = memory
            self.role = role
        }
    }

    public let coordinator: String
    public let workers: [Worker]

    public init(coordinator: String, workers: [Worker]) {
        self.coordinator = coordinator
        self.workers = workers
    }

    public init(path: String) throws(PlacementError) {
        guard let data = FileManager.default.contents(atPath: path) else { throw PlacementError("cannot read cluster file '\(path)'") }
        try self.init(yaml: String(decoding: data, as: UTF8.self), source: path)
    }

    private struct Raw: Decodable {
        struct W: Decodable { let name: String?; let endpoint: String?; let memory: String?; let role: String? }
        let coordinator: String?
        let workers: [W]?
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
        var workers: [Worker] = []
        for (i, w) in list.enumerated() {
            let label = "\(source): workers[\(i)]"
            guard let name = w.name, !name.isEmpty else { throw PlacementError("\(label): missing 'name'") }
            guard let endpoint = w.endpoint, Self.isEndpoint(endpoint) else {
                throw PlacementError("\(label) '\(name)': 'endpoint' must be like tcp://10.0.0.2:7070")
            }
            guard let m = w.memory, let memory = Self.parseBytes(m) else {
                throw PlacementError("\(label) '\(name)': 'memory' must be a size like 48GiB, 512MiB or a number of bytes")
            }
            let roleName = w.role ?? "any"
            guard let role = Role(rawValue: roleName) else {
                throw PlacementError("\(label) '\(name)': role '\(roleName)' is not one of any, stage, experts, spare")
            }
            guard !workers.contains(where: { $0.name == name }) else { throw PlacementError("\(label): the name '\(name)' is used twice") }
            guard !workers.contains(where: { $0.endpoint == endpoint }) else { throw PlacementError("\(label) '\(name)': endpoint \(endpoint) is used twice") }
            workers.append(Worker(name: name, endpoint: endpoint, memory: memory, role: role))
        }
        guard workers.contains(where: { $0.role != .experts && $0.role != .spare }) else {
            throw PlacementError("\(source): every worker has role 'experts' or 'spare'; at least one must hold layers (role 'any' or 'stage')")
        }
        self.coordinator = coordinator
        self.workers = workers
    }

    static func isEndpoint(_ s: String) -> Bool {
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
