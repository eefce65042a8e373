#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TestSupport

/// Whether this process may make network namespaces (root with CAP_NET_ADMIN, as in CI). Probed once.
enum NetNS {
    static let script = Fixtures.root.appendingPathComponent("ops/scripts/netns-cluster.sh").path

    static func sh(_ args: [String], env: [String: String] = [:]) -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return -1 }
        p.waitUntilExit()
        return p.terminationStatus
    }

    static let permitted: Bool = {
        guard getuid() == 0 else {
            FileHandle.standardError.write(Data("WARNING: network-namespace cluster test SKIPPED: not root, `ip netns` is not permitted\n".utf8))
            return false
        }
        let probe = "cvprobe\(getpid())"
        let ok = sh(["ip", "netns", "add", probe]) == 0
        _ = sh(["ip", "netns", "del", probe])
        if !ok { FileHandle.standardError.write(Data("WARNING: network-namespace cluster test SKIPPED: `ip netns add` failed here\n".utf8)) }
        return ok
    }()
}

/// The loopback end-to-end test again, but each worker and the coordinator on its own test host (a network
/// namespace with its own 10.77.0.x address, joined by a bridge in a hub namespace): real TCP between hosts.
@Suite(.serialized) struct NetworkNamespaceTests {
    @Test(.enabled(if: NetNS.permitted, "needs root and `ip netns` (CI runs as root)"))
    func clusterAcrossNamespacesMatchesOneProcess() async throws { try await onThread { [self] in try self.clusterAcrossNamespacesMatchesOneProcessBlocking() } }
    /// Hosts h0 (the coordinator) … hN (stage-a, stage-b, experts-1, then `spares` spares), a cluster of them
    /// authenticated with CurveZMQ as a deployment is, serving; `body` gets the cluster and each host's
    /// `ip netns exec` prefix. Everything is torn down after.
    /// `bare` more hosts (after the spares) run nothing: the test starts what it needs there.
    static func withHosts(_ tag: String, spares: Int = 0, bare: Int = 0, _ body: (ProcessCluster, (Int) -> [String]) throws -> Void) throws {
        let n = 3 + spares + bare
        let prefix = "\(tag)\(getpid() % 10000)"
        let env = ["CONCLAVE_NETNS_PREFIX": prefix]
        _ = NetNS.sh(["bash", NetNS.script, "down", "\(n)"], env: env)
        try #require(NetNS.sh(["bash", NetNS.script, "up", "\(n)"], env: env) == 0, "netns-cluster.sh up failed")
        defer { _ = NetNS.sh(["bash", NetNS.script, "down", "\(n)"], env: env) }
        let c = try ProcessCluster()
        defer { c.stop() }
        let model = Fixtures.shippedModel
        let host = { (i: Int) in ["ip", "netns", "exec", "\(prefix)-h\(i)"] }
        let file = try c.writeClusterFile(base: 7070, host: { "10.77.0.\(11 + $0)" }, coordinatorHost: "10.77.0.10", spares: spares, keys: true)
        let names = ["stage-a", "stage-b", "experts-1"] + (0..<spares).map { "spare-\($0 + 1)" }
        for (i, name) in names.enumerated() {
            try c.start(name, ["worker", "--listen", "tcp://10.77.0.\(11 + i):\(7071 + i)", "--model", model, "--name", name, "--threads", "1", "--key-dir", c.keyDir], wrapper: host(i + 1))
        }
        try c.start("coordinator", ["serve", "-m", model, "--cluster", file, "--key-dir", c.keyDir, "--threads", "1", "--join-timeout", "20", "--http", "off"], wrapper: host(0))
        try c.waitFor("coordinator", "serving")
        try body(c, host)
    }

    func clusterAcrossNamespacesMatchesOneProcessBlocking() throws {
        try Self.withHosts("cvt") { c, host in
            let model = Fixtures.shippedModel
            let args = ["-p", "Once upon a time", "-n", "24", "--temp", "0", "--repeat-penalty", "1.3"]
            let (rc1, single, _) = try c.run(["run", "-m", model, "--threads", "1"] + args)
            let (rc2, distributed, err) = try c.run(["generate", "--coordinator", "tcp://10.77.0.10:7070", "--key-dir", c.keyDir] + args, wrapper: host(0))
            #expect(rc1 == 0)
            #expect(rc2 == 0, "\(err)\n\(c.logs())")
            #expect(distributed == single)
            let (rc3, out, _) = try c.run(["status", "--coordinator", "tcp://10.77.0.10:7070", "--json", "--key-dir", c.keyDir], wrapper: host(0))
            #expect(rc3 == 0)
            #expect(out.components(separatedBy: "\"ready\"").count - 1 == 3, "\(out)")
        }
    }

    /// The coordinator's host vanishes (its link goes down: no FIN, no RST, TCP would wait 15 minutes): a second
    /// coordinator without --standby is refused while the first lives, with an error that says so; a standby on
    /// another host takes the workers over once their ZMTP heartbeats close the dead connection, within 15 s,
    /// and serves the one process's text.
    @Test(.enabled(if: NetNS.permitted, "needs root and `ip netns` (CI runs as root)"))
    func aStandbyCoordinatorTakesOverWhenTheCoordinatorsHostVanishes() async throws { try await onThread { [self] in try self.standbyTakesOverBlocking() } }
    func standbyTakesOverBlocking() throws {
        try Self.withHosts("cvs", bare: 1) { c, host in
            let model = Fixtures.shippedModel
            let file = try c.writeClusterFile(base: 7070, host: { "10.77.0.\(11 + $0)" }, coordinatorHost: "10.77.0.14", keys: true, name: "standby.yaml")
            let serve = ["serve", "-m", model, "--cluster", file, "--key-dir", c.keyDir, "--threads", "1", "--http", "off"]
            let (rc, _, err) = try c.run(serve, wrapper: host(4))
            #expect(rc != 0 && err.contains("assigned by another coordinator, which is still connected") && err.contains("--standby"), "\(err)")
            try c.start("standby", serve + ["--standby"], wrapper: host(4))
            try c.waitFor("standby", "standby: worker '")
            let args = ["-p", "Once upon a time", "-n", "24", "--temp", "0"]
            let (rc1, single, _) = try c.run(["run", "-m", model, "--threads", "1"] + args)
            #expect(rc1 == 0)
            let (rc2, first, _) = try c.run(["generate", "--coordinator", "tcp://10.77.0.10:7070", "--key-dir", c.keyDir] + args, wrapper: host(0))
            #expect(rc2 == 0 && first == single, "the first coordinator must keep serving while the standby waits")
            let cut = Date()
            #expect(NetNS.sh(host(0) + ["ip", "link", "set", "eth0", "down"]) == 0)
            try c.waitFor("standby", "[coordinator] serving", timeout: 120)
            let took = Date().timeIntervalSince(cut)
            print("standby took over \(String(format: "%.1f", took)) s after the coordinator's host vanished")
            #expect(took < 15, "\(c.logText("standby"))")
            let (rc3, text, err3) = try c.run(["generate", "--coordinator", "tcp://10.77.0.14:7070", "--key-dir", c.keyDir] + args, wrapper: host(4))
            #expect(rc3 == 0 && text == single, "\(err3)\n\(c.logs())")
        }
    }

    /// Real hosts die too: kill -9 a stage worker mid-generation (the spare, on a host of its own, takes its
    /// layers), then the experts worker (no spare left: the cluster plans anew over the three hosts that answer);
    /// each request completes over TCP between namespaces with exactly the text of one process.
    @Test(.enabled(if: NetNS.permitted, "needs root and `ip netns` (CI runs as root)"))
    func killedHostsAreReplacedAcrossNamespaces() async throws { try await onThread { [self] in try self.killedHostsAreReplacedBlocking() } }
    func killedHostsAreReplacedBlocking() throws {
        try Self.withHosts("cvk", spares: 1) { c, host in
            let model = Fixtures.shippedModel
            let args = ["-p", "Once upon a time", "-n", "300", "--ctx", "512", "--temp", "0.8", "--seed", "11"]
            let (rc, single, _) = try c.run(["run", "-m", model, "--threads", "1"] + args)
            #expect(rc == 0)
            for victim in ["stage-b", "experts-1"] {
                let gen = try c.spawn(["generate", "--coordinator", "tcp://10.77.0.10:7070", "--key-dir", c.keyDir] + args, wrapper: host(0))
                usleep(300_000)
                c.kill(victim)
                let (rc, text, err) = try gen.finish(timeout: 120)
                #expect(rc == 0, "after killing \(victim): \(err)\n\(c.logs())")
                #expect(text == single, "killing \(victim) changed the text")
        }
        let (rc3, out, _) = try c.run(["status", "--coordinator", "tcp://10.77.0.10:7070", "--json", "--key-dir", c.keyDir], wrapper: host(0))
        #expect(rc3 == 0)
        let status = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        let recoveries = try #require(status["recoveries"] as? [[String: Any]])
        #expect(recoveries.count == 2 && recoveries.allSatisfy { $0["recovered"] as? Bool == true }, "\(recoveries)")
        // The first re-plan moved only the dead stage's shard, to the spare.
        #expect(recoveries.first?["reloaded"] as? [String] == ["spare-1"], "\(recoveries)")
        }
    }
}
