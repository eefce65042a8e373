import Coordinator
import CurveKeys
import Foundation

/// Where `serve --local` keeps the CurveZMQ keys of its cluster when no --key-dir is given, so that the
/// client commands on the same host find them without a flag: `~/.cache/conclave/local-PORT` (or under
/// $XDG_CACHE_HOME), readable by this user only — any other local user is refused by the cluster.
enum LocalKeys {
    static func directory(port: Int) -> String {
        let env = ProcessInfo.processInfo.environment
        let base = env["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (env["HOME"].map { $0 + "/.cache" } ?? FileManager.default.temporaryDirectory.path)
        return base + "/conclave/local-\(port)"
    }

    /// Makes `dir` (mode 0700) for fresh keys.
    static func prepare(_ dir: String) throws {
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: dir)
        } catch {
            throw CoordinatorError("cannot make the local cluster's key directory \(dir): \(error.localizedDescription); give --key-dir DIR, or --no-curve")
        }
    }

    static func forget(port: Int) { try? FileManager.default.removeItem(atPath: directory(port: port)) }

    /// The key directory of a local cluster whose coordinator listens at `endpoint`, when it is on loopback and
    /// a `serve --local` wrote a client pair for its port.
    static func existing(for endpoint: String) -> String? {
        for host in ["tcp://127.0.0.1:", "tcp://localhost:"] where endpoint.hasPrefix(host) {
            guard let port = Int(endpoint.dropFirst(host.count)) else { return nil }
            let dir = directory(port: port)
            return FileManager.default.fileExists(atPath: CurveCertificate.secretPath(dir, "client")) ? dir : nil
        }
        return nil
    }
}
