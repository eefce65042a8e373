import Foundation
import Testing
import TestSupport

/// Every option and every size a file claims is checked before use: out-of-range values get a message that
/// names them and an exit code, never a crash (a Swift trap exits with SIGILL, 132 or 4) or a huge allocation.
@Suite struct CommandLineTests {
    @Test func outOfRangeOptionsAreClearErrors() throws {
        let c = try ProcessCluster()
        let model = Fixtures.shippedModel
        let huge = c.dir.appendingPathComponent("huge-context.gguf").path
        let (rc, _, err) = try c.run(["synth", "--layers", "1", "--embd", "64", "--heads", "2", "--kv-heads", "1", "--head-dim", "32", "--experts", "4",
                                      "--used", "2", "--expert-ff", "32", "--ctx", "4000000000", "--type", "F16", "-o", huge])
        #expect(rc == 0, "\(err)")
        let cases: [([String], String)] = [
            (["run", "-m", model, "--top-p", "2"], "top-p 2.0 is outside"),
            (["run", "-m", model, "--temp", "nan"], "temperature"),
            (["run", "-m", model, "--min-p", "5"], "min-p"),
            (["run", "-m", model, "--threads", "100000"], "--threads 100000 is outside"),
            (["run", "-m", model, "--ctx", "5000000000"], "KV cache for 5000000000 positions"),
            (["run", "-m", model, "--ctx", "0"], "holds nothing"),
            (["run", "-m", huge, "-p", "hi"], "KV cache for 4000000000 positions"),
            (["generate", "-n", "5000000000"], "-n 5000000000 is outside"),
            (["generate", "--top-k", "-1"], "top-k"),
            (["synth", "--ctx", "1000000000000", "-o", c.dir.appendingPathComponent("x.gguf").path], "--ctx 1000000000000 is outside"),
        ]
        for (args, message) in cases {
            let (rc, _, err) = try c.run(args)
            #expect(rc != 0 && rc != 132 && rc != 4 && rc < 128, "\(args): exit \(rc)")
            #expect(err.contains(message), "\(args): \(err)")
            #expect(!err.contains("Backtrac") && !err.contains("Fatal error"), "\(args) crashed: \(err)")
        }
    }
}
