import Foundation
import TestSupport
import Testing

/// `conclave top` in a real terminal (tmux: `send-keys`, `capture-pane`, driven by Tests/Python/top_check.py —
/// Foundation's Process does not see a tmux client end once it has started tmux's server) against a three-worker
/// cluster: the table shows the workers and the heat map once there was traffic; `q` exits with status 0.
@Suite(.serialized) struct TopTests {
    @Test func topShowsTheWorkersAndQuitsOnQ() async throws { try await onThread { [self] in try self.topBlocking() } }
    func topBlocking() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/tmux") else {
            Issue.record("no /usr/bin/tmux: scripts/test installs it")
            return
        }
        let c = try ProcessCluster()
        defer { c.stop() }
        let base = ProcessCluster.freePorts(4)
        try c.start("serve", ["serve", "--local", "3", "--port", String(base), "--http", "off", "--threads", "1"])
        try c.waitFor("serve", "[coordinator] serving", timeout: 180)
        let (rc, _, err) = try c.run(["generate", "--coordinator", "tcp://127.0.0.1:\(base)", "-p", "Once upon a time", "-n", "16"])
        #expect(rc == 0, "\(err)")
        // The screen as a picture for people to look at (docs/top.png is one).
        let shot = Fixtures.root.appendingPathComponent(".build/top.png").path
        let hasChromium = FileManager.default.isExecutableFile(atPath: "/usr/bin/chromedriver")
        let out = try OpenAIClientTests.runCheck("top_check.py", [c.binary, "tcp://127.0.0.1:\(base)", c.dir.path] + (hasChromium ? [shot] : []), cluster: c)
        let result = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: String], "\(out)")
        let screen = result["screen"] ?? ""
        #expect(screen.contains("workers 3 ready / 0 suspect / 0 down"), "\(screen)")
        for name in ["local-1", "local-2", "local-3"] {
            #expect(screen.split(separator: "\n").contains { $0.hasPrefix(name) && $0.contains("ready") }, "\(screen)")
        }
        #expect(screen.contains("expert heat") && screen.contains("L0 ") && screen.contains("L3 "), "\(screen)")
        #expect(result["exit"] == "EXIT:0", "top did not quit cleanly on q: \(result["exit"] ?? "")")
        #expect(!hasChromium || FileManager.default.fileExists(atPath: shot))
        print("top:\n\(screen)")
    }
}
