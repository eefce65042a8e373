#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Kernels
import Synchronization

/// What an open dashboard costs the server, for `bench serve --page-watchers N`: N watchers fetch the page once and
/// then, every second, exactly what its script polls (`Dashboard.html`'s tick: the cluster, the expert counts,
/// /metrics and /v1/models). The server does the same work for this as for a browser; a browser's own rendering
/// happens on the viewer's machine and is not the server's cost.
final class PageWatchers: Sendable {
    /// The paths one refresh of the page fetches.
    static let feed = ["/v1/cluster", "/v1/cluster/experts", "/metrics", "/v1/models"]

    private let stopped = Atomic<Bool>(false)
    private let refreshes = Atomic<Int>(0)
    private let group = DispatchGroup()

    /// Starts `count` watchers against the server at `port` (nothing with 0).
    init(port: Int, count: Int) {
        for _ in 0..<count {
            group.enter()
            Thread.detachNewThread { [self] in
                _ = try? HTTPClient.fetch(port: port, path: "/")
                while !stopped.load(ordering: .relaxed) {
                    let t0 = KernelBench.now()
                    // A server without the cluster (one process) answers 404 for /v1/cluster: the page asks anyway.
                    for path in Self.feed { _ = try? HTTPClient.fetch(port: port, path: path) }
                    refreshes.add(1, ordering: .relaxed)
                    let rest = 1.0 - (KernelBench.now() - t0)
                    if rest > 0 { usleep(UInt32(rest * 1_000_000)) }
                }
                group.leave()
            }
        }
    }

    /// Stops the watchers and returns how many refreshes they made.
    func stop() -> Int {
        stopped.store(true, ordering: .relaxed)
        group.wait()
        return refreshes.load(ordering: .relaxed)
    }

    /// CPU seconds (user + system, all threads) the process `pid` has used, from /proc/PID/stat.
    static func cpuSeconds(pid: Int32) -> Double? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        // Fields after "(comm)": state is field 3, utime 14, stime 15.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    struct IdleCost {
        var closedCPU = 0.0, openCPU = 0.0, seconds = 0.0
        var refreshes = 0
        /// CPU seconds the feed cost per refresh.
        var perRefresh: Double { refreshes > 0 ? max(0, openCPU - closedCPU) / Double(refreshes) : 0 }
        /// The feed's share of the machine's CPU with the watchers refreshing once a second each.
        func share(cores: Int, watchers: Int) -> Double { perRefresh * Double(watchers) / Double(max(1, cores)) }
    }

    /// The server's CPU use while idle, page closed, then open, `seconds` each: the difference is what the feed costs
    /// (an idle server's own heartbeats and timers are in both windows and cancel out).
    static func idleCost(port: Int, pid: Int32, watchers: Int, seconds: Double) -> IdleCost? {
        var cost = IdleCost(seconds: seconds)
        guard let a = cpuSeconds(pid: pid) else { return nil }
        usleep(UInt32(seconds * 1_000_000))
        guard let b = cpuSeconds(pid: pid) else { return nil }
        let page = PageWatchers(port: port, count: watchers)
        usleep(UInt32(seconds * 1_000_000))
        cost.refreshes = page.stop()
        guard let c = cpuSeconds(pid: pid) else { return nil }
        cost.closedCPU = b - a
        cost.openCPU = c - b
        return cost
    }
}
