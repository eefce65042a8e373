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
        #expect(json["completed"] as? Int == 36 && json["refused"] as? Int == 4, "\(json)")
        let rss = try #require(json["rss"] as? [[String: Any]])
        #expect(rss.count == 3, "coordinator and two workers: \(rss)")
        for p in rss { #expect((p["start_bytes"] as? Int ?? 0) > 1 << 20 && (p["end_bytes"] as? Int ?? 0) > 1 << 20, "\(p)") }
        #expect((json["windows"] as? [[String: Any]])?.isEmpty == false)
    }
}
