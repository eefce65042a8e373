#if canImport(Glibc)
import Glibc
#endif
import Foundation
import TestSupport
import Testing

/// The dashboard (`GET /`): in headless Chromium against a three-worker cluster while a client generates, and
/// behind `--api-key` (HTTP Basic, which a browser asks for and then sends with the page's requests).
@Suite(.serialized) struct DashboardTests {
    /// The page shows three ready workers, heat in every layer and tokens per second; after `kill -9` of the
    /// first stage's worker it shows that worker down and then the recovery (the other stage takes its layers). It also shows the experts worker's
    /// time per served call, and on a phone-wide screen it does not scroll sideways. Screenshots go to .build/ for
    /// people to look at (dashboard.png, -full, -narrow, -recovered).
    @Test func pageShowsTheClusterAndAWorkersDeath() async throws { try await onThread { [self] in try self.pageBlocking() } }
    func pageBlocking() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/chromedriver") else {
            Issue.record("no /usr/bin/chromedriver: scripts/test installs Debian's chromium and chromium-driver")
            return
        }
        let c = try ProcessCluster()
        defer { c.stop() }
        let base = ProcessCluster.freePorts(5)
        try c.start("serve", ["serve", "--local", "3", "--port", String(base), "--http", "127.0.0.1:\(base + 4)", "--threads", "1"])
        try c.waitFor("serve", "[coordinator] serving", timeout: 180)
        let shot = Fixtures.root.appendingPathComponent(".build/dashboard.png").path
        let out = try OpenAIClientTests.runCheck("dashboard_check.py", [
            "http://127.0.0.1:\(base + 4)", shot, "--serves-experts", "local-3",
            "--kill", "worker --listen tcp://127.0.0.1:\(base + 1) --name local-1", "--worker", "local-1",
        ], cluster: c)
        let figures = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any], "\(out)")
        #expect(figures["heat_layers"] as? Int == 4)
        #expect((figures["tok_s"] as? Double ?? 0) > 0)
        #expect((figures["script_bytes"] as? Int ?? .max) < 200_000)
        #expect(figures["down_after_s"] != nil && figures["recovery_after_s"] != nil, "\(out)")
        let event = figures["recovery_event"] as? String ?? ""
        #expect(event.contains("local-1") && !event.contains("failed"), "\(event)")
        #expect(FileManager.default.fileExists(atPath: shot))
        // The experts worker's served calls have a time (the script waited for a figure above zero).
        #expect((figures["expert_ms"] as? String)?.contains(" ms /") == true, "\(out)")
        let narrow = figures["narrow"] as? [String: Any] ?? [:]
        #expect((narrow["scroll_width"] as? Int ?? .max) <= (narrow["inner_width"] as? Int ?? 0) + 1, "\(out)")
        print("dashboard: \(out)")
    }

    /// With --api-key the page and its data need the key: the page challenges with Basic (a browser asks once),
    /// and the same key as Basic's password opens the page and the routes it polls.
    @Test func pageIsBehindTheAPIKey() async throws { try await onThread { [self] in try self.keyBlocking() } }
    func keyBlocking() throws {
        let c = try ProcessCluster()
        defer { c.stop() }
        let port = ProcessCluster.freePorts(1)
        try c.start("serve", ["serve", "--http", "127.0.0.1:\(port)", "--threads", "1", "--api-key", "sesame"])
        try c.waitFor("serve", "OpenAI-compatible API on", timeout: 120)
        let url = "http://127.0.0.1:\(port)"
        let (status, headers, _) = try Self.get(url + "/", auth: nil)
        #expect(status == 401)
        #expect((headers["Www-Authenticate"] ?? headers["WWW-Authenticate"] ?? "").hasPrefix("Basic"), "\(headers)")
        let basic = "Basic " + Data("user:sesame".utf8).base64EncodedString()
        let (ok, pageHeaders, page) = try Self.get(url + "/", auth: basic)
        #expect(ok == 200 && (pageHeaders["Content-Type"] ?? "").hasPrefix("text/html"))
        #expect(page.contains("<title>Conclave</title>") && page.contains("/v1/cluster/experts"))
        let (wrong, _, _) = try Self.get(url + "/", auth: "Basic " + Data("user:open".utf8).base64EncodedString())
        #expect(wrong == 401)
        let (experts, _, body) = try Self.get(url + "/v1/cluster/experts", auth: basic)
        #expect(experts == 200 && body.contains(#""object":"cluster.experts""#))
        let (metrics, _, _) = try Self.get(url + "/metrics", auth: basic)
        #expect(metrics == 200)
    }

    /// A plain HTTP/1.1 GET over a socket: URLSession waits forever on a 401 that carries a Basic challenge and
    /// no credential to answer it with.
    static func get(_ url: String, auth: String?) throws -> (Int, [String: String], String) {
        let u = URL(string: url)!
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var timeout = timeval(tv_sec: 60, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(u.port!).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard connected == 0 else { throw ProcessCluster.Failure(description: "cannot connect to \(url)") }
        let request = "GET \(u.path.isEmpty ? "/" : u.path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + (auth.map { "Authorization: \($0)\r\n" } ?? "") + "\r\n"
        _ = request.utf8CString.withUnsafeBufferPointer { send(fd, $0.baseAddress, $0.count - 1, 0) }
        var data = [UInt8](), buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            data += buffer[0..<n]
        }
        let text = String(decoding: data, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else { return (0, [:], "") }
        let lines = text[..<split.lowerBound].components(separatedBy: "\r\n")
        let status = Int(lines.first?.split(separator: " ").dropFirst().first ?? "") ?? 0
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            if let colon = line.firstIndex(of: ":") { headers[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces) }
        }
        return (status, headers, String(text[split.upperBound...]))
    }
}
