#if canImport(Glibc)
import Glibc
#endif
import Foundation
import TestSupport

/// Real `conclave` processes for end-to-end tests: workers, a coordinator, and the clients, with their output
/// captured. Every process started is killed when the cluster is stopped, whatever happened.
final class ProcessCluster: @unchecked Sendable {
    struct Failure: Error, CustomStringConvertible { let description: String }

    let binary: String
    let dir: URL
    var processes: [String: Process] = [:]
    /// Prefix for every command (e.g. ["ip", "netns", "exec", "ns1"]) per process name.
    var wrappers: [String: [String]] = [:]

    init() throws {
        guard let b = Fixtures.conclaveBinary else { throw Failure(description: "the conclave executable was not built next to the tests") }
        binary = b
        dir = Fixtures.temporaryDirectory()
    }

    /// A base port with `count` free ports after it (bound and released to check).
    static func freePorts(_ count: Int) -> Int {
        for _ in 0..<50 {
            let base = Int.random(in: 20000...50000)
            if (0..<count).allSatisfy({ portIsFree(base + $0) }) { return base }
        }
        return 39000
    }

    static func portIsFree(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == 0
    }

    func log(_ name: String) -> URL { dir.appendingPathComponent("\(name).log") }
    func logText(_ name: String) -> String { (try? String(contentsOf: log(name), encoding: .utf8)) ?? "" }

    /// Starts `conclave args…` in the background, output to `<name>.log`.
    func start(_ name: String, _ args: [String], wrapper: [String] = []) throws {
        let p = Process()
        let full = wrapper + [binary] + args
        p.executableURL = URL(fileURLWithPath: wrapper.isEmpty ? binary : "/usr/bin/env")
        p.arguments = wrapper.isEmpty ? args : full
        _ = FileManager.default.createFile(atPath: log(name).path, contents: nil)
        let h = try FileHandle(forWritingTo: log(name))
        p.standardOutput = h
        p.standardError = h
        try p.run()
        processes[name] = p
    }

    /// A client run in the background: `finish` waits for it (bounded) and gives (exit code, stdout, stderr).
    struct Background {
        let process: Process
        let out, err: URL
        func finish(timeout: Double = 120) throws -> (Int32, String, String) {
            let deadline = Date().addingTimeInterval(timeout)
            while process.isRunning && Date() < deadline { usleep(50_000) }
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            return (process.terminationStatus, try String(contentsOf: out, encoding: .utf8), try String(contentsOf: err, encoding: .utf8))
        }
    }

    /// Starts `conclave args…` with its output in files of its own.
    func spawn(_ args: [String], wrapper: [String] = []) throws -> Background {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: wrapper.isEmpty ? binary : "/usr/bin/env")
        p.arguments = wrapper.isEmpty ? args : wrapper + [binary] + args
        let out = dir.appendingPathComponent("run-\(UUID().uuidString).out"), err = dir.appendingPathComponent("run-\(UUID().uuidString).err")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        p.standardOutput = try FileHandle(forWritingTo: out)
        p.standardError = try FileHandle(forWritingTo: err)
        p.standardInput = FileHandle.nullDevice
        try p.run()
        return Background(process: p, out: out, err: err)
    }

    /// Runs `conclave args…` to completion (killed after `timeout` s): (exit code, stdout, stderr).
    func run(_ args: [String], wrapper: [String] = [], timeout: Double = 120) throws -> (Int32, String, String) {
        let b = try spawn(args, wrapper: wrapper)
        let (p, out, err) = (b.process, b.out, b.err)
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < deadline { usleep(20_000) }
        if p.isRunning {
            p.terminate()
            p.waitUntilExit()
            throw Failure(description: "conclave \(args.joined(separator: " ")) did not finish within \(timeout) s; stderr: \(try String(contentsOf: err, encoding: .utf8))")
        }
        return (p.terminationStatus, try String(contentsOf: out, encoding: .utf8), try String(contentsOf: err, encoding: .utf8))
    }

    /// Waits until `<name>.log` contains `text` (or the process died / time ran out).
    func waitFor(_ name: String, _ text: String, timeout: Double = 60) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let s = try? String(contentsOf: log(name), encoding: .utf8), s.contains(text) { return }
            if let p = processes[name], !p.isRunning { break }
            usleep(50_000)
        }
        throw Failure(description: "'\(name)' never logged '\(text)'; its log:\n\((try? String(contentsOf: log(name), encoding: .utf8)) ?? "")")
    }

    /// Sends `signal` and waits for the exit (SIGKILL after 10 s, so a hung process cannot hang the test).
    /// Sends `sig` (SIGSTOP, SIGCONT) without waiting for anything.
    func signal(_ name: String, _ sig: Int32) {
        guard let p = processes[name], p.isRunning else { return }
        Glibc.kill(p.processIdentifier, sig)
    }

    func kill(_ name: String, signal: Int32 = SIGKILL) {
        guard let p = processes[name], p.isRunning else { return }
        Glibc.kill(p.processIdentifier, signal)
        let deadline = Date().addingTimeInterval(10)
        while p.isRunning && Date() < deadline { usleep(20_000) }
        if p.isRunning { Glibc.kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
    }

    /// The exit status once `name` has exited (nil if it still runs after `within` seconds).
    func exitStatus(_ name: String, within seconds: Double) -> Int32? {
        guard let p = processes[name] else { return nil }
        let deadline = Date().addingTimeInterval(seconds)
        while p.isRunning && Date() < deadline { usleep(20_000) }
        return p.isRunning ? nil : p.terminationStatus
    }

    func logs() -> String {
        processes.keys.sorted().map { "--- \($0)\n" + ((try? String(contentsOf: log($0), encoding: .utf8)) ?? "") }.joined(separator: "\n")
    }

    func stop() {
        for p in processes.values where p.isRunning { p.terminate() }
        let deadline = Date().addingTimeInterval(5)
        for p in processes.values {
            while p.isRunning && Date() < deadline { usleep(20_000) }
            if p.isRunning { Glibc.kill(p.processIdentifier, SIGKILL) }
        }
        try? FileManager.default.removeItem(at: dir)
    }

    /// Two stages (layers only) and one worker that holds every expert, at ports after `base`; `spares` more
    /// workers with role spare after them.
    /// Where `writeClusterFile(keys: true)` put the key pairs (NAME.key, NAME.key_secret).
    var keyDir: String { dir.appendingPathComponent("keys").path }

    /// With `keys`, CurveZMQ pairs for the coordinator, every worker and a client are made with `conclave keys
    /// generate` into `keyDir`, and the file names their public key files (paths relative to the file).
    func writeClusterFile(base: Int, host: (Int) -> String = { _ in "127.0.0.1" }, coordinatorHost: String = "127.0.0.1", spares: Int = 0,
                          keys: Bool = false, joinKeys: [String] = [], name: String = "cluster.yaml") throws -> String {
        var workers: [(String, String)] = [("stage-a", "stage"), ("stage-b", "stage"), ("experts-1", "experts")]
        for i in 0..<spares { workers.append(("spare-\(i + 1)", "spare")) }
        // A second file of the same cluster (a standby coordinator's) keeps the keys the first made.
        if keys && !FileManager.default.fileExists(atPath: keyDir + "/coordinator.key") {
            let (rc, _, err) = try run(["keys", "generate", "-o", keyDir, "coordinator", "client"] + workers.map(\.0) + joinKeys)
            guard rc == 0 else { throw Failure(description: "keys generate failed: \(err)") }
        }
        var yaml = "coordinator: tcp://\(coordinatorHost):\(base)\n"
        if keys { yaml += "coordinator_key: keys/coordinator.key\nclient_keys: [keys/client.key]\n" }
        if keys && !joinKeys.isEmpty { yaml += "join_keys: [\(joinKeys.map { "keys/\($0).key" }.joined(separator: ", "))]\n" }
        yaml += "workers:\n"
        for (i, (name, role)) in workers.enumerated() {
            yaml += "  - name: \(name)\n    endpoint: tcp://\(host(i)):\(base + 1 + i)\n    memory: 64MiB\n    role: \(role)\n"
            if keys { yaml += "    key: keys/\(name).key\n" }
        }
        let path = dir.appendingPathComponent(name).path
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }
}
