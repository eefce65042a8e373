#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TestSupport

/// A worker killed mid-generation (kill -9) does not fail the request: the coordinator re-plans onto the workers
/// left (a spare, or the killed one restarted), replays every sequence, and the request completes with exactly
/// the tokens of a clean run — greedy and seeded sampling, whichever worker dies (a stage, the last stage, the
/// experts worker), and a request under a JSON schema when the last stage, which holds its grammar, dies.
@Suite(.serialized) struct RecoveryTests {
    static let model = Fixtures.shippedModel
    static let names = ["stage-a", "stage-b", "experts-1", "spare-1"]

    // On a thread of its own: it blocks for about 40 s, which must not starve other tests' async work.
    @Test func killedWorkersAreReplacedAndRequestsCompleteIdentically() async throws {
        try await onThread { try Self.killAndCompare() }
    }

    static func killAndCompare() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let base = ProcessCluster.freePorts(5)
        let file = try c.writeClusterFile(base: base, spares: 1)
        func startWorker(_ i: Int) throws {
            try c.start(names[i], ["worker", "--listen", "tcp://127.0.0.1:\(base + 1 + i)", "--name", names[i], "--threads", "1", "--model", model])
        }
        for i in names.indices { try startWorker(i) }
        try c.start("coordinator", ["serve", "-m", model, "--cluster", file, "--threads", "1", "--join-timeout", "20", "--http", "off"])
        try c.waitFor("coordinator", "serving")
        let endpoint = "tcp://127.0.0.1:\(base)"
        let settings = [["--temp", "0", "--repeat-penalty", "1.3"], ["--temp", "0.8", "--seed", "7"]]
        // What a clean run prints.
        var clean: [String] = []
        for s in settings {
            let (rc, out, err) = try c.run(["generate", "--coordinator", endpoint, "-p", "Once upon a time", "-n", "300", "--ctx", "512"] + s)
            #expect(rc == 0, "\(err)")
            clean.append(out)
        }
        // Ten kills, in turn a stage, the last stage, the experts worker and the spare; each killed worker is
        // restarted at once, so a later re-plan can take it back.
        let kills = 10
        var survived = 0
        for k in 0..<kills {
            let s = k % settings.count
            let victim = [1, 2, 0, 3][k % 4]
            let gen = try c.spawn(["generate", "--coordinator", endpoint, "-p", "Once upon a time", "-n", "300", "--ctx", "512"] + settings[s])
            usleep(300_000)
            c.kill(names[victim])
            try startWorker(victim)
            // Bounded: detection (3 s of silence), the re-plan and the rest of the generation take a few seconds.
            let (rc, text, stderr) = try gen.finish(timeout: 120)
            #expect(rc == 0, "kill \(k) (\(names[victim])): \(stderr)")
            #expect(text == clean[s], "kill \(k) (\(names[victim])) changed the text")
            if rc == 0 && text == clean[s] { survived += 1 }
        }
        print("recovery: \(survived) of \(kills) kills survived with identical output")
        // A constrained request (a JSON schema): the grammar lives with the sampler on the last stage, so killing
        // that stage mid-answer makes its successor rebuild the grammar's state from the replayed history — the
        // same JSON comes out.
        let schema = c.dir.appendingPathComponent("schema.json").path
        try #"{"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 28, "maxItems": 28}"#.write(toFile: schema, atomically: true, encoding: .utf8)
        let constrained = ["generate", "--coordinator", endpoint, "-p", "A list of names:", "-n", "450", "--ctx", "512", "--temp", "0.8", "--seed", "5",
                           "--json-schema-file", schema]
        let (rc0, cleanJSON, err0) = try c.run(constrained)
        #expect(rc0 == 0, "\(err0)")
        let items = try? JSONSerialization.jsonObject(with: Data(cleanJSON.utf8)) as? [String]
        #expect(items?.count == 28, "the clean constrained answer is JSON of the schema: \(cleanJSON)")
        func recoveryCount() throws -> Int {
            let (_, json, _) = try c.run(["status", "--coordinator", endpoint, "--json"])
            return ((try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])?["recoveries"] as? [Any])?.count ?? -1
        }
        let before = try recoveryCount()
        let gen = try c.spawn(constrained)
        usleep(300_000)
        c.kill(names[1])
        try startWorker(1)
        let (rc1, killedJSON, err1) = try gen.finish(timeout: 120)
        #expect(rc1 == 0 && killedJSON == cleanJSON, "killing the last stage changed the constrained answer: \(err1)\n\(killedJSON)\nvs\n\(cleanJSON)")
        // The kill landed while the answer was being written: a recovery replayed it (every recovery below replays
        // at least one sequence).
        let after = try recoveryCount()
        #expect(after == before + 1, "the last stage's kill was recovered: recoveries \(before) → \(after)")
        // Status lists the recoveries, each with its cause and time.
        let (rc, json, _) = try c.run(["status", "--coordinator", endpoint, "--json"])
        #expect(rc == 0)
        let status = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        let recoveries = try #require(status["recoveries"] as? [[String: Any]])
        #expect(recoveries.count >= kills / 2, "\(recoveries.count) recoveries recorded")
        for r in recoveries {
            #expect(r["recovered"] as? Bool == true, "\(r)")
            #expect((r["seconds"] as? Double ?? 99) < 30 && (r["sequences_replayed"] as? Int ?? 0) >= 1, "\(r)")
            // A worker silent for 3 s, or a step that reached a restarted one first.
            #expect(!(r["cause"] as? String ?? "").isEmpty, "\(r)")
        }
        print("recovery times (s): " + recoveries.map { String(format: "%.2f", $0["seconds"] as? Double ?? -1) }.joined(separator: " "))
        // Only what moved is loaded: the lost worker's shard, by the spare or by the worker restarted; the
        // others keep theirs.
        let reloads = recoveries.map { $0["reloaded"] as? [String] ?? names }
        #expect(reloads.allSatisfy { $0.count == 1 }, "workers that loaded weights per re-plan: \(reloads)")
        print("loaded weights per re-plan: " + reloads.map { $0.joined(separator: "+") }.joined(separator: " "))
    }

    // On a thread of its own: it blocks for about 30 s.
    @Test func aStalledWorkerIsTakenBackWithoutASpare() async throws {
        try await onThread { try Self.stallAndResume() }
    }

    /// No spare: the experts worker stalls (SIGSTOP) past the down threshold. Requests during the outage fail
    /// with a clear error naming it; after SIGCONT its heartbeats make it ready again, the idle coordinator's
    /// next try (it backs off, at most 16 s) takes it back, and requests complete with the clean text.
    static func stallAndResume() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let base = ProcessCluster.freePorts(4)
        let file = try c.writeClusterFile(base: base)
        let workers = ["stage-a", "stage-b", "experts-1"]
        for (i, name) in workers.enumerated() {
            try c.start(name, ["worker", "--listen", "tcp://127.0.0.1:\(base + 1 + i)", "--name", name, "--threads", "1", "--model", model])
        }
        try c.start("coordinator", ["serve", "-m", model, "--cluster", file, "--threads", "1", "--join-timeout", "20", "--http", "off"])
        try c.waitFor("coordinator", "serving")
        let generate = ["generate", "--coordinator", "tcp://127.0.0.1:\(base)", "-p", "Once upon a time", "-n", "40", "--temp", "0.8", "--seed", "3"]
        let (rc, clean, err) = try c.run(generate)
        #expect(rc == 0, "\(err)")

        c.signal("experts-1", SIGSTOP)
        defer { c.signal("experts-1", SIGCONT) }
        sleep(6)  // past the 3 s threshold, and a failed try or two
        let (rc2, _, err2) = try c.run(generate)
        #expect(rc2 != 0 && err2.contains("experts-1"), "during the outage: rc \(rc2), \(err2)")

        c.signal("experts-1", SIGCONT)
        var healed: (Int32, String, String)?
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let r = try c.run(generate)
            if r.0 == 0 { healed = r; break }
            sleep(1)
        }
        let (rc3, text, err3) = try #require(healed, "never served again; coordinator log:\n\(c.logText("coordinator").suffix(3000))")
        #expect(rc3 == 0 && text == clean, "\(err3)")
        #expect(c.logText("coordinator").contains("trying again in"), "a failed try says when the next one is")
    }
}
