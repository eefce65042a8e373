import Foundation
import Glibc
import Testing
import TestSupport

/// What only a real `serve` process shows about its HTTP front: idle connections closed, a cap on connections at
/// once, and SIGTERM while a chat template renders.
@Suite struct HTTPLimitsTests {
    /// A TCP connection to 127.0.0.1:port (-1 when refused).
    static func connect(_ port: Int) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        if ok != 0 { close(fd); return -1 }
        return fd
    }

    static func send(_ fd: Int32, _ text: String) { _ = text.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) } }

    /// What the peer sent within `seconds` (until it closed, or a pause once something came): nil when nothing came
    /// and the connection stays open; "" when it was closed.
    static func read(_ fd: Int32, within seconds: Double) -> String? {
        var got: [UInt8] = []
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let waitMs = Int32(max(1, min(200, deadline.timeIntervalSinceNow * 1000)))
            guard poll(&p, 1, waitMs) > 0 else {
                if !got.isEmpty { return String(decoding: got, as: UTF8.self) }
                continue
            }
            var buf = [UInt8](repeating: 0, count: 65536)
            let n = Glibc.read(fd, &buf, buf.count)
            if n <= 0 { return String(decoding: got, as: UTF8.self) }
            got += buf[0..<n]
        }
        return got.isEmpty ? nil : String(decoding: got, as: UTF8.self)
    }

    func serve(_ c: ProcessCluster, _ extra: [String]) throws -> Int {
        let port = ProcessCluster.freePorts(1)
        try c.start("serve", ["serve", "-m", Fixtures.shippedModel, "--threads", "1", "--http", "127.0.0.1:\(port)"] + extra)
        try c.waitFor("serve", "OpenAI-compatible API", timeout: 120)
        return port
    }

    /// `--http-idle-timeout 1`: a connection that never sends a request is closed by the server (a thousand such
    /// connections would otherwise hold every descriptor).
    @Test func anIdleConnectionIsClosed() async throws {
        try await onThread { [self] in
            let c = try ProcessCluster()
            defer { c.stop() }
            let port = try serve(c, ["--http-idle-timeout", "1"])
            let fd = Self.connect(port)
            #expect(fd >= 0)
            defer { close(fd) }
            let t0 = Date()
            let got = Self.read(fd, within: 120)
            #expect(got == "", "the server closed the idle connection (it sent \(got.map { "\"\($0)\"" } ?? "nothing and kept it open"))")
            #expect(Date().timeIntervalSince(t0) >= 0.9, "not before the timeout")
            // The server still answers.
            let ok = Self.connect(port)
            defer { close(ok) }
            Self.send(ok, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(Self.read(ok, within: 60)?.hasPrefix("HTTP/1.1 200") == true)
        }
    }

    /// `--http-max-connections 2`: with two connections open, a third is not served until one of them closes;
    /// then it is.
    @Test func connectionsBeyondTheCapWaitTheirTurn() async throws {
        try await onThread { [self] in
            let c = try ProcessCluster()
            defer { c.stop() }
            let port = try serve(c, ["--http-max-connections", "2"])
            let first = Self.connect(port), second = Self.connect(port)
            #expect(first >= 0 && second >= 0)
            defer { close(second) }
            // Both are served (the cap counts them).
            for fd in [first, second] {
                Self.send(fd, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                #expect(Self.read(fd, within: 60)?.hasPrefix("HTTP/1.1 200") == true)
            }
            let third = Self.connect(port)
            defer { close(third) }
            Self.send(third, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(Self.read(third, within: 1.5) == nil, "the third waits while two are open")
            close(first)
            #expect(Self.read(third, within: 60)?.hasPrefix("HTTP/1.1 200") == true, "served once one closed")
        }
    }

    /// A chat template that loops (templates come from model files) ends in its budget with an error, and
    /// SIGTERM while it renders ends the process promptly.
    @Test func sigtermDuringARenderExitsPromptly() async throws {
        try await onThread { [self] in
            let c = try ProcessCluster()
            defer { c.stop() }
            let template = c.dir.appendingPathComponent("loop.jinja").path
            try "{% for i in range(100000) %}{% for j in range(100000) %}{% if j == -1 %}x{% endif %}{% endfor %}{% endfor %}".write(toFile: template, atomically: true, encoding: .utf8)
            let port = try serve(c, ["--chat-template", template])
            let body = #"{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#
            let request = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
            // Alone, the render ends in its budget with a clear error.
            let fd = Self.connect(port)
            Self.send(fd, request)
            let answer = Self.read(fd, within: 120) ?? ""
            close(fd)
            #expect(answer.contains("template_budget_exceeded"), "\(answer)")
            // Again, and SIGTERM while it renders.
            let again = Self.connect(port)
            defer { close(again) }
            Self.send(again, request)
            usleep(200_000)
            let t0 = Date()
            c.signal("serve", SIGTERM)
            let status = c.exitStatus("serve", within: 60)
            let took = Date().timeIntervalSince(t0)
            print("serve exited \(String(format: "%.2f", took)) s after SIGTERM during a render")
            #expect(status != nil, "serve still runs 60 s after SIGTERM: \(c.logText("serve"))")
            #expect(took < 20, "took \(took) s")
        }
    }
}
