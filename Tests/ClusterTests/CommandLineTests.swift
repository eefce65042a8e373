#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TestSupport

/// Every option and every size a file claims is checked before use: out-of-range values get a message that
/// names them and an exit code, never a crash (a Swift trap exits with SIGILL, 132 or 4) or a huge allocation.
@Suite struct CommandLineTests {
    @Test func outOfRangeOptionsAreClearErrors() async throws { try await onThread { [self] in try self.outOfRangeOptionsAreClearErrorsBlocking() } }
    func outOfRangeOptionsAreClearErrorsBlocking() throws {
        let c = try ProcessCluster()
        let model = Fixtures.shippedModel
        let huge = c.dir.appendingPathComponent("huge-context.gguf").path
        let (rc, _, err) = try c.run(["synth", "--layers", "1", "--embd", "64", "--heads", "2", "--kv-heads", "1", "--head-dim", "32", "--experts", "4",
                                      "--used", "2", "--expert-ff", "32", "--ctx", "4000000000", "--type", "F16", "-o", huge])
        #expect(rc == 0, "\(err)")
        // A draft with another vocabulary (GPT-2's): refused by run and serve before anything is generated.
        let other = c.dir.appendingPathComponent("other-vocab.gguf").path
        let (rc2, _, err2) = try c.run(["synth", "--layers", "1", "--embd", "64", "--heads", "2", "--kv-heads", "1", "--head-dim", "32", "--experts", "2",
                                        "--used", "1", "--expert-ff", "32", "--vocab-from", Fixtures.path("vocab/ggml-vocab-gpt-2.gguf"), "-o", other])
        #expect(rc2 == 0, "\(err2)")
        let cases: [([String], String)] = [
            (["run", "-m", model, "-p", "hi", "--draft", other], "a draft must share the tokenizer"),
            (["serve", "-m", model, "--http", "127.0.0.1:0", "--draft", other], "a draft must share the tokenizer"),
            (["run", "-m", model, "--draft", model, "--draft-max", "0"], "--draft-max must be"),
            (["bench", "cluster", "-m", model, "--vs-llama-rpc", c.dir.path], "lacks ggml-rpc-server"),
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
            // A negative number is a value to refuse by name, not a missing one; every error reads `error: `.
            (["run", "-m", model, "--temp", "-1", "-p", "hi"], "error: temperature -1.0 is outside"),
            (["serve", "-m", "/nonexistent.gguf"], "error: /nonexistent.gguf"),
            (["serve", "-m", model, "--api-key-file", "/nonexistent-key"], "cannot read --api-key-file"),
            (["serve", "-m", model, "--no-curve"], "--curve/--no-curve choose keys for a --local cluster"),
        ]
        for (args, message) in cases {
            let (rc, _, err) = try c.run(args)
            #expect(rc != 0 && rc != 132 && rc != 4 && rc < 128, "\(args): exit \(rc)")
            #expect(err.contains(message), "\(args): \(err)")
            #expect(!err.contains("Backtrac") && !err.contains("Fatal error"), "\(args) crashed: \(err)")
            #expect(!err.contains("Error: ") && !err.contains("ExitCode"), "\(args): one prefix, no spurious second line: \(err)")
        }
    }

    /// Waiting for what cannot come is said at once: `generate` when nothing listens at the coordinator's
    /// endpoint, and `serve --local` when one of its own workers cannot bind its port (the worker's error, then
    /// which worker; not a join timeout 30 s later).
    @Test func whatCannotWorkFailsAtOnce() async throws { try await onThread { try Self.failsAtOnceBlocking() } }
    static func failsAtOnceBlocking() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let base = ProcessCluster.freePorts(4)
        let t0 = Date()
        let (rc, _, err) = try c.run(["generate", "--coordinator", "tcp://127.0.0.1:\(base)", "-p", "hi"])
        #expect(rc != 0 && err.contains("nothing listens at tcp://127.0.0.1:\(base)"), "\(err)")
        // Held by a listener of our own: the second worker's port.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(base + 2).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        #expect(bound == 0 && listen(fd, 1) == 0)
        let (rc2, _, err2) = try c.run(["serve", "-m", Fixtures.shippedModel, "--local", "2", "--port", String(base), "--http", "off", "--threads", "1",
                                        "--join-timeout", "120"])
        #expect(rc2 != 0 && err2.contains("Address already in use") && err2.contains("local worker 'local-2' exited"), "\(err2)")
        let took = Date().timeIntervalSince(t0)
        #expect(took < 60, "took \(took) s: a join timeout, not an answer at once")
    }
}

extension CommandLineTests {
    /// `tokenize` needs only the vocabulary: llama.cpp's vocabulary-only files of architectures Conclave does
    /// not run (falcon, mpt, refact, gemma-4) tokenize llama.cpp's test texts exactly, through the command line.
    /// `CONCLAVE_ISA` is read once, in C, and every kernel follows it: forced to scalar, the bandwidth probe and
    /// every matrix product report scalar; a name it does not know is reported and ignored, never a crash.
    @Test func conclaveIsaHoldsEverywhere() async throws {
        try await onThread {
            let c = try ProcessCluster()
            let args = ["bench", "kernels", "--types", "q4_0", "--threads", "1", "--seconds", "0.05", "--json"]
            let (rc, out, err) = try c.run(args, wrapper: ["CONCLAVE_ISA=scalar"])
            #expect(rc == 0, "\(err)")
            let rows = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])
            #expect(rows.count >= 3)
            for r in rows { #expect(r["kernel"] as? String == "scalar", "\(r)") }
            let (rc2, out2, err2) = try c.run(args, wrapper: ["CONCLAVE_ISA=avx9000"])
            #expect(rc2 == 0, "\(err2)")
            #expect(err2.contains("CONCLAVE_ISA=avx9000 is not one of scalar, avx2, vnni"), "\(err2)")
            let rows2 = try #require(try JSONSerialization.jsonObject(with: Data(out2.utf8)) as? [[String: Any]])
            // The packed layout's rows say so ("vnni x8").
            #expect(rows2.allSatisfy { ($0["kernel"] as? String).map { ["scalar", "avx2", "vnni"].contains($0.split(separator: " ").first.map(String.init) ?? "") } == true }, "\(rows2)")
        }
    }

    @Test(arguments: ["falcon", "mpt", "refact", "gemma-4"]) func tokenizeTakesAVocabularyOnlyFile(vocab: String) async throws {
        try await onThread {
            let c = try ProcessCluster()
            let file = Fixtures.path("vocab/ggml-vocab-\(vocab).gguf")
            let texts = try String(contentsOfFile: file + ".inp", encoding: .utf8).components(separatedBy: "\n__ggml_vocab_test__\n")
            let ids = try String(contentsOfFile: file + ".out", encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
            // A handful of the cases (each a process): plain words, spaces, digits, emoji and code.
            for i in [1, 5, 12, 20, 33, 45] {
                let input = c.dir.appendingPathComponent("case-\(i).txt")
                try Data(texts[i].utf8).write(to: input)
                let (rc, out, err) = try c.run(["tokenize", "-m", file, "-f", input.path, "--no-bos", "--json"])
                #expect(rc == 0, "\(vocab) case \(i): \(err)")
                let want = "{\"ids\":[" + ids[i].split(separator: " ").joined(separator: ",") + "]}"
                #expect(out.trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: " ", with: "") == want, "\(vocab) case \(i): \(texts[i].debugDescription)")
            }
        }
    }
}

/// The fuzz harnesses' seed corpora replay cleanly through the plain builds of the harnesses (the same
/// functions libFuzzer drives in `scripts/fuzz`).
@Suite struct FuzzReplayTests {
    @Test(arguments: ["wire", "gguf"]) func seedsReplay(target: String) throws {
        let binary = try #require(Fixtures.conclaveBinary.map { URL(fileURLWithPath: $0).deletingLastPathComponent().appendingPathComponent(target == "wire" ? "FuzzWire" : "FuzzGGUF").path })
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = [Fixtures.path("fuzz/\(target)")]
        p.environment = ["CONCLAVE_FUZZ_MODEL": Fixtures.shippedModel]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        p.waitUntilExit()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationStatus == 0)
        let count = try FileManager.default.contentsOfDirectory(atPath: Fixtures.path("fuzz/\(target)")).count
        #expect(text.contains("replayed \(count) inputs, no crash"), "\(text)")
    }
}
