#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TestSupport

/// An authenticated cluster of real processes on 127.0.0.1: keys from `conclave keys generate`, listed in the
/// cluster file; the output is the one process's; peers without a listed key get nothing and are counted.
@Suite(.serialized) struct CurveClusterTests {
    @Test func authenticatedClusterMatchesOneProcessAndRefusesStrangers() async throws { try await onThread { try Self.blocking() } }

    /// Three workers and a coordinator with keys from `conclave keys generate` (and `joinKeys` listed in
    /// `join_keys`), serving: the cluster, its coordinator's endpoint and its first port (the coordinator's; the
    /// workers' follow, and two more are free).
    static func startCluster(joinKeys: [String] = []) throws -> (ProcessCluster, String, Int) {
        let c = try ProcessCluster()
        let base = ProcessCluster.freePorts(6)
        do {
            let file = try c.writeClusterFile(base: base, keys: true, joinKeys: joinKeys)
            for (i, n) in ["stage-a", "stage-b", "experts-1"].enumerated() {
                try c.start(n, ["worker", "--listen", "tcp://127.0.0.1:\(base + 1 + i)", "--name", n, "--threads", "1", "--model", Fixtures.shippedModel, "--key-dir", c.keyDir])
            }
            try c.start("coordinator", ["serve", "-m", Fixtures.shippedModel, "--cluster", file, "--key-dir", c.keyDir, "--threads", "1", "--join-timeout", "60", "--http", "off"])
            try c.waitFor("coordinator", "serving")
        } catch {
            c.stop()
            throw error
        }
        return (c, "tcp://127.0.0.1:\(base)", base)
    }

    /// With the client's keys, the text is the one process's, token for token.
    static func expectClientGetsOneProcessText(_ c: ProcessCluster, _ endpoint: String) throws {
        let args = ["-p", "Once upon a time", "-n", "24", "--temp", "0", "--repeat-penalty", "1.3"]
        let (rc1, single, _) = try c.run(["run", "-m", Fixtures.shippedModel, "--threads", "1"] + args)
        let (rc2, distributed, err2) = try c.run(["generate", "--coordinator", endpoint, "--key-dir", c.keyDir] + args)
        #expect(rc1 == 0)
        #expect(rc2 == 0, "\(err2)\n\(c.logs())")
        #expect(distributed == single)
    }

    static func blocking() throws {
        let (c, endpoint, base) = try startCluster()
        defer { c.stop() }
        try expectClientGetsOneProcessText(c, endpoint)

        // A client without keys, and one whose key is not listed, get no answer they can use, and say why.
        let args = ["-p", "Once upon a time", "-n", "24", "--temp", "0", "--repeat-penalty", "1.3"]
        let (rc3, out3, err3) = try c.run(["generate", "--coordinator", endpoint, "--timeout", "120"] + args)
        #expect(rc3 != 0 && out3.isEmpty && err3.contains("requires CurveZMQ"), "\(err3)")
        let stranger = c.dir.appendingPathComponent("stranger").path
        _ = try c.run(["keys", "generate", "-o", stranger, "client"])
        try FileManager.default.copyItem(atPath: c.keyDir + "/coordinator.key", toPath: stranger + "/coordinator.key")
        let (rc4, out4, err4) = try c.run(["generate", "--coordinator", endpoint, "--key-dir", stranger, "--timeout", "120"] + args)
        #expect(rc4 != 0 && out4.isEmpty && err4.contains("refused this process's CurveZMQ key"), "\(err4)")

        // Straight to a worker: a stranger's key, and even the listed client's, cannot Assign it or call its
        // experts — the worker admits the coordinator and the plan's workers only.
        for (name, dir) in [("stranger", stranger), ("client", c.keyDir)] {
            let rogue = c.dir.appendingPathComponent("rogue-\(name)").path
            try FileManager.default.createDirectory(atPath: rogue, withIntermediateDirectories: true)
            for f in ["client.key", "client.key_secret"] { try FileManager.default.copyItem(atPath: dir + "/" + f, toPath: rogue + "/" + f) }
            try FileManager.default.copyItem(atPath: c.keyDir + "/experts-1.key", toPath: rogue + "/coordinator.key")  // the worker's public key
            let (rc, _, err) = try c.run(["status", "--coordinator", "tcp://127.0.0.1:\(base + 3)", "--key-dir", rogue, "--timeout", "120"])
            #expect(rc != 0 && err.contains("refused this process's CurveZMQ key"), "\(name): \(err)")
        }

        // Every refusal is counted: the coordinator's (no keys, unlisted key) and the worker's (two), in status.
        var counted = false
        var last = ""
        let deadline = Date().addingTimeInterval(60)
        while !counted && Date() < deadline {
            let (rc, out, _) = try c.run(["status", "--coordinator", endpoint, "--key-dir", c.keyDir, "--json"])
            last = out
            if rc == 0, let d = try? JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any],
               let workers = d["workers"] as? [[String: Any]], d["security"] as? String == "curve",
               let total = d["refused_peers"] as? Int, total >= 4,
               let experts = workers.first(where: { $0["name"] as? String == "experts-1" }), (experts["refused_peers"] as? Int ?? 0) >= 2 {
                counted = true
            } else {
                usleep(500_000)
            }
        }
        #expect(counted, "\(last)")
    }

    /// `worker --join` under CurveZMQ: a worker whose key the cluster file's `join_keys` lists joins and takes a
    /// share (the coordinator connects back proving that key; the other workers admit it from the Assign), and
    /// the text is the one process's; a worker with a key the file does not list is not admitted and keeps
    /// saying what to check.
    @Test func aListedKeyJoinsAndAnUnlistedOneIsNotAdmitted() async throws { try await onThread { try Self.joinBlocking() } }

    static func joinBlocking() throws {
        let (c, endpoint, base) = try startCluster(joinKeys: ["newcomer"])
        defer { c.stop() }
        let model = Fixtures.shippedModel
        let outsiderKeys = c.dir.appendingPathComponent("outsider").path
        _ = try c.run(["keys", "generate", "-o", outsiderKeys, "outsider"])
        try FileManager.default.copyItem(atPath: c.keyDir + "/coordinator.key", toPath: outsiderKeys + "/coordinator.key")
        try c.start("outsider", ["worker", "--listen", "tcp://127.0.0.1:\(base + 5)", "--name", "outsider", "--threads", "1", "--model", model,
                                 "--key-dir", outsiderKeys, "--join", endpoint, "--role", "stage"])
        try c.start("newcomer", ["worker", "--listen", "tcp://127.0.0.1:\(base + 4)", "--name", "newcomer", "--threads", "1", "--model", model,
                                 "--key-dir", c.keyDir, "--join", endpoint, "--role", "stage"])
        try c.waitFor("newcomer", "joined the cluster of the coordinator")
        try c.waitFor("coordinator", "recovered in")
        try expectClientGetsOneProcessText(c, endpoint)
        let (rc, out, _) = try c.run(["status", "--coordinator", endpoint, "--key-dir", c.keyDir, "--json"])
        let json = try #require(rc == 0 ? try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any] : nil)
        let workers = json["workers"] as? [[String: Any]] ?? []
        let newcomer = workers.first { $0["name"] as? String == "newcomer" }
        #expect(newcomer?["state"] as? String == "ready" && (newcomer?["layers"] as? [Int])?.count == 2, "\(workers)")
        #expect(!workers.contains { $0["name"] as? String == "outsider" }, "\(workers)")
        try c.waitFor("outsider", "join_keys", timeout: 60)
        #expect(!c.logText("outsider").contains("joined the cluster"), "\(c.logText("outsider"))")
    }
}
