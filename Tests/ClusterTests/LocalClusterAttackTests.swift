#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization
import Testing
import TestSupport
import Wire

/// A local process that reaches a `--local` cluster's ports and floods a stage worker with 20 000 StageInputs of
/// another plan: by default (CurveZMQ with fresh keys) it is refused at the handshake and nothing reaches the
/// worker; with `--no-curve` the worker answers it (only it) at most 100 times a second and keeps heartbeating.
/// Either way every worker stays ready and the next request's text is the clean run's; so is the text of a
/// request running while the attacker sends StageInputs of the plan in force with guessed request ids.
@Suite(.serialized) struct LocalClusterAttackTests {
    static let args = ["-p", "Once upon a time", "-n", "24", "--temp", "0.8", "--seed", "7"]

    @Test func aLocalClusterRefusesAPlainPeer() async throws { try await onThread { try Self.attack(curve: true) } }
    @Test func aPlainLocalClusterBoundsWhatAFloodCosts() async throws { try await onThread { try Self.attack(curve: false) } }

    static func attack(curve: Bool) throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let base = ProcessCluster.freePorts(4)
        try c.start("serve", ["serve", "--local", "3", "--port", String(base), "--http", "off", "--threads", "1"] + (curve ? [] : ["--no-curve"]))
        try c.waitFor("serve", "[coordinator] serving", timeout: 180)
        let coordinator = "tcp://127.0.0.1:\(base)"
        let (rc0, clean, err0) = try c.run(["generate", "--coordinator", coordinator] + args)
        #expect(rc0 == 0, "\(err0)")
        let (_, single, _) = try c.run(["run", "-m", Fixtures.shippedModel, "--threads", "1"] + args)
        #expect(clean == single)

        // The attacker: a plain DEALER at the second stage (local-2).
        let attacker = try ZMQSocket(.dealer, bind: false, endpoint: "tcp://127.0.0.1:\(base + 2)")
        let answers = Atomic<Int>(0)
        attacker.receive { _ in answers.add(1, ordering: .relaxed) }

        // First, while a request generates: StageInputs of the plan in force with guessed request ids. The
        // worker's errors for requests it never had go to the attacker alone (never to the coordinator, which
        // would fail its requests), and the request in flight ends with its clean text.
        let (_, statusOut, _) = try c.run(["status", "--coordinator", coordinator, "--json"])
        let epoch = try #require(try JSONSerialization.jsonObject(with: Data(statusOut.utf8)) as? [String: Any])["epoch"] as? Int
        let running = try c.spawn(["generate", "--coordinator", coordinator] + args)
        var guess = Envelope()
        guess.epoch = UInt64(epoch ?? 1)
        guess.stageInput = Conclave_V1_StageInput()
        for id in 1...2_000 {
            guess.requestID = UInt64(id)
            attacker.send(Frames(parts: try WireMessage.make(guess).encode()))
            if id % 500 == 0 { usleep(20_000) }
        }
        let (rcRunning, textRunning, errRunning) = try running.finish(timeout: 300)
        #expect(rcRunning == 0 && textRunning == clean, "guessed ids changed or failed the request in flight: \(errRunning)")

        // Then a flood: 20 000 StageInputs of plan 999.
        var e = Envelope()
        e.epoch = 999
        e.stageInput = Conclave_V1_StageInput()
        let t0 = Date()
        for i in 0..<20_000 {
            e.requestID = UInt64(i + 1)
            attacker.send(Frames(parts: try WireMessage.make(e).encode()))
            if i % 1000 == 999 { usleep(20_000) }
        }
        // While it lasts and after, every worker heartbeats: status says ready.
        var states: [String] = []
        var refused = 0
        for _ in 0..<6 {
            let (rc, out, _) = try c.run(["status", "--coordinator", coordinator, "--json"])
            #expect(rc == 0)
            let d = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
            states = (d["workers"] as? [[String: Any]] ?? []).map { $0["state"] as? String ?? "?" }
            #expect(states == ["ready", "ready", "ready"], "\(out)")
            // The attacker is one refused peer, however often it reconnects; `generate` and `status` checking
            // that the coordinator listens (a TCP connect closed at once) are none.
            if curve {
                refused = d["refused_peers"] as? Int ?? -1
                #expect(d["security"] as? String == "curve" && (0...1).contains(refused), "\(out)")
            }
            usleep(500_000)
        }
        let seconds = Date().timeIntervalSince(t0)
        attacker.close()
        let (rc1, after, err1) = try c.run(["generate", "--coordinator", coordinator] + args)
        #expect(rc1 == 0 && after == clean, "\(err1)\n\(c.logText("serve").suffix(3000))")
        // The worker may still be working through what it had buffered when the attacker stopped: the bound is
        // over the time until the log is read.
        let log = c.logText("serve")
        let total = Date().timeIntervalSince(t0)
        if curve {
            #expect(refused == 1, "the attacker is one refused peer")
            #expect(answers.load(ordering: .relaxed) == 0, "a peer without the cluster's keys got answers")
            #expect(!log.contains("a StageInput of plan 999"), "the flood reached the worker")
        } else {
            let n = answers.load(ordering: .relaxed)
            #expect(n > 0 && Double(n) <= 100 * (total + 2), "\(n) error replies in \(total) s")
            print("flood of 20 000 stale StageInputs over \(String(format: "%.1f", seconds)) s: \(n) error replies reached the attacker")
            #expect(log.contains("more error replies (and their log lines) dropped in the last second"))
            #expect(log.components(separatedBy: "a StageInput of plan 999").count - 1 <= Int(100 * (total + 2)))
        }
    }
}
