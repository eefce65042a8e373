import Foundation
import Testing
import TestSupport

/// `conclave bench soak` accounts for every request and reports each process's memory.
@Suite struct BenchSoakTests {
    @Test func everyRequestIsAccountedFor() async throws { try await onThread { [self] in try self.everyRequestIsAccountedForBlocking() } }
    func everyRequestIsAccountedForBlocking() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let port = ProcessCluster.freePorts(3)
        let (rc, out, err) = try c.run(["bench", "soak", "-m", Fixtures.shippedModel, "--local", "2", "--port", String(port), "--requests", "40",
                                        "--concurrency", "4", "--gen", "8", "--json"], timeout: 300)
        #expect(rc == 0, "\(err)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any], "\(out)")
        #expect(json["lost"] as? Int == 0)
        #expect(json["completed"] as? Int == 36 && json["refused_as_meant"] as? Int == 4, "\(json)")
        #expect(json["wrong"] as? Int == 0 && json["refused_outside_outage"] as? Int == 0, "every answer is its pair's clean text: \(json)")
        let rss = try #require(json["rss"] as? [[String: Any]])
        #expect(rss.count == 3, "coordinator and two workers: \(rss)")
        for p in rss { #expect((p["start_bytes"] as? Int ?? 0) > 1 << 20 && (p["end_bytes"] as? Int ?? 0) > 1 << 20, "\(p)") }
        #expect((json["windows"] as? [[String: Any]])?.isEmpty == false)
    }

    /// The chaos run, small: kill -9 / SIGSTOP of workers and a coordinator restart while 4 clients send, with a
    /// spare. Every request completes with the clean text, or is refused or interrupted while an outage lasts;
    /// none is lost, and the cluster answers again after every fault.
    @Test func faultsLoseNoRequestAndChangeNoText() async throws { try await onThread { [self] in try self.faultsBlocking() } }
    func faultsBlocking() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let base = ProcessCluster.freePorts(5)
        let file = try c.writeClusterFile(base: base, spares: 1)
        // Seed 2's three faults: kill -9 of experts-1 (the spare takes over), the coordinator restart, kill -9 of spare-1.
        let (rc, out, err) = try c.run(["bench", "soak", "-m", Fixtures.shippedModel, "--cluster", file, "--requests", "60", "--concurrency", "4",
                                        "--gen", "8", "--faults", "3", "--outage", "5", "--fault-seed", "2", "--json"], timeout: 600)
        #expect(rc == 0, "\(out)\n\(err)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any], "\(out)\n\(err)")
        #expect(json["lost"] as? Int == 0 && json["wrong"] as? Int == 0 && json["refused_outside_outage"] as? Int == 0, "\(json)")
        let accounted = ["completed", "refused_as_meant", "refused_in_outage", "interrupted_in_outage"].compactMap { json[$0] as? Int }.reduce(0, +)
        #expect(accounted == 60, "\(json)")
        #expect((json["completed"] as? Int ?? 0) >= 40, "most requests complete: \(json)")
        let faults = try #require(json["faults"] as? [[String: Any]])
        #expect(faults.count == 3, "\(faults)")
        #expect(faults.contains { ($0["fault"] as? String ?? "").contains("coordinator") }, "\(faults)")
        for f in faults { #expect(f["served_after_s"] is Double, "the cluster answers again after each fault: \(f)") }
        // A worker's fault with a spare present: the spare takes over while the worker is away.
        for f in faults where (f["fault"] as? String ?? "").contains("'") { #expect(f["served_during_s"] is Double, "\(f)") }
    }
}
