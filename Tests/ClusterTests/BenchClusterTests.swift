import Foundation
import Testing
import TestSupport

/// `conclave bench cluster --modes all` measures pipeline, expert-parallel and both placements of the same
/// workers in one run, each generating the single process's text, with the round trips the plan weighed.
@Suite struct BenchClusterTests {
    @Test func everyModeRunsAndReports() async throws { try await onThread { [self] in try self.everyModeRunsAndReportsBlocking() } }
    func everyModeRunsAndReportsBlocking() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let port = ProcessCluster.freePorts(4)
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("three.yaml").path
        let workers = (1...3).map { "  - name: w\($0)\n    endpoint: tcp://127.0.0.1:\(port + $0)\n    memory: 256MiB\n" }.joined()
        try "coordinator: tcp://127.0.0.1:\(port)\nworkers:\n\(workers)".write(toFile: file, atomically: true, encoding: .utf8)
        let (rc, out, err) = try c.run(["bench", "cluster", "-m", Fixtures.shippedModel, "--cluster", file, "--threads", "1", "--gen", "8",
                                        "--sequences", "2", "--modes", "all", "--json"], timeout: 600)
        #expect(rc == 0, "\(err)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any], "\(out)")
        let modes = try #require(json["modes"] as? [[String: Any]], "\(json)")
        #expect(modes.map { $0["mode"] as? String } == ["pipeline", "expert", "both"])
        for m in modes {
            #expect(m["identical_text"] as? Bool == true, "\(m)")
            #expect((m["distributed_decode_tok_s"] as? Double ?? 0) > 0 && (m["aggregate_tok_s"] as? Double ?? 0) > 0, "\(m)")
            // The one-process aggregate of the same sequences (batched by the in-process scheduler), measured once.
            #expect((m["single_aggregate_tok_s"] as? Double ?? 0) > 0 && m["single_aggregate_tok_s"] as? Double == modes[0]["single_aggregate_tok_s"] as? Double, "\(m)")
        }
        // Three stages; one stage beside two experts workers; two stages beside one.
        #expect(modes.map { $0["stages"] as? Int } == [3, 1, 2])
        // The shipped model's experts are tiny (an expert's share of a token's reads takes well under a
        // microsecond, a call's round trip a hundred or more): the time-balanced plan keeps them with their
        // stages, so no mode calls another worker, and the report says so.
        for m in modes {
            #expect(m["expert_calls_per_token"] as? Double == 0, "\(m)")
            let workers = try #require(m["workers"] as? [[String: Any]])
            #expect(workers.count == 3 && workers.allSatisfy { ($0["round_trip_ms"] as? Double ?? 0) > 0 }, "\(workers)")
        }
        // The shared bus measured in the run: what one process reads alone and all at once, the limit on this host
        // (the experts' concurrent reads at the measured share) at most the separate hosts' one, which is the
        // speedup over one process the report names.
        for m in modes {
            let d = { (k: String) in m[k] as? Double ?? -1 }
            #expect(d("read_gbps_one_process") > 0 && d("read_gbps_all_processes") > 0, "\(m)")
            #expect(d("shared_bus_factor") > 0 && d("shared_bus_factor") <= 1, "\(m)")
            #expect(d("limit_this_host_tok_s") > 0 && d("limit_this_host_tok_s") <= d("limit_tok_s") * 1.001, "\(m)")
            #expect(abs(d("separate_hosts_speedup") - d("limit_tok_s") / d("single_decode_tok_s")) < 0.01 * max(1, d("separate_hosts_speedup")), "\(m)")
        }
        let expert = try #require(modes[1]["workers"] as? [[String: Any]])
        #expect(expert.map { $0["experts"] as? Int } == [32, 0, 0])
    }
}
