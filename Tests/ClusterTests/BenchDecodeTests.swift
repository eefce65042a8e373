import Foundation
import GGUF
import Testing
import TestSupport

/// `conclave bench decode --json` reports the physical limit of decode: the bytes a token reads (counted here
/// independently from the file's tensor table) against the bandwidth it measured, and the fraction reached.
@Suite struct BenchDecodeTests {
    @Test func reportsTheBytesATokenReadsAndTheFractionOfTheLimit() async throws { try await onThread { [self] in try self.blocking() } }
    func blocking() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let file = try GGUFFile(path: Fixtures.shippedModel)
        // The shipped model: 4 layers, 8 experts of which 2 are used, 2 KV heads of 32, a 32000-token vocabulary.
        func expected(used: Int, positions: Int) -> Int {
            var bytes = 0
            for t in file.tensorInfos {
                if t.name.contains("_exps.") { bytes += t.byteCount / 8 * used } else if t.name == "token_embd.weight" { bytes += t.byteCount / 32000 } else { bytes += t.byteCount }
            }
            return bytes + positions * 4 * 2 * (2 * 32 * 2)  // layers × (K, V) × f16 row
        }
        func bench(_ extra: [String]) throws -> [String: Any] {
            let (rc, out, err) = try c.run(["bench", "decode", "-m", Fixtures.shippedModel, "--threads", "1", "--prompt", "16", "--gen", "8", "--json"] + extra, timeout: 600)
            #expect(rc == 0, "\(err)")
            return try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any], "\(out)")
        }
        let all = try bench([])
        // KV read at the run's average position: the prompt and half the generated tokens.
        #expect(all["decode_bytes_per_token"] as? Int == expected(used: 2, positions: 16 + 4), "\(all)")
        let gbps = all["read_gbps"] as? Double ?? 0, tokS = all["decode_tok_s"] as? Double ?? 0
        #expect(gbps > 0 && tokS > 0, "\(all)")
        let limit = gbps * 1e9 / Double(expected(used: 2, positions: 20))
        #expect(abs((all["decode_limit_tok_s"] as? Double ?? 0) - limit) / limit < 0.01, "\(all)")
        #expect(abs((all["decode_fraction_of_limit"] as? Double ?? 0) - tokS / limit) < 0.002, "\(all)")
        // One expert per token reads one expert less per layer.
        let one = try bench(["--experts-used", "1"])
        #expect(one["decode_bytes_per_token"] as? Int == expected(used: 1, positions: 20), "\(one)")
    }

    /// `bench offload` runs each share twice, with the page cache as it was and with the experts dropped from it,
    /// and every miss of the cold run is a read of the file.
    @Test func offloadRunsWarmAndCold() async throws { try await onThread { [self] in try self.offloadBlocking() } }
    func offloadBlocking() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let (rc, out, err) = try c.run(["bench", "offload", "-m", Fixtures.shippedModel, "--threads", "1", "--resident", "25,100",
                                        "--prompt", "16", "--gen", "32", "--json"], timeout: 600)
        #expect(rc == 0, "\(err)")
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]], "\(out)")
        #expect(rows.map { "\($0["resident_fraction"] ?? "")/\($0["page_cache"] ?? "")" } == ["0.25/warm", "0.25/cold", "1/warm"], "\(rows)")
        for r in rows { #expect((r["decode_tok_s"] as? Double ?? 0) > 0, "\(r)") }
        let cold = try #require(rows.first { $0["page_cache"] as? String == "cold" })
        #expect((cold["bytes_read_per_token"] as? Double ?? 0) > 0 && (cold["hit_rate"] as? Double ?? 1) < 1, "\(cold)")
    }
}
