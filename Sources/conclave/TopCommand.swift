#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import ClusterProtocol
import Foundation
import Runtime
import Telemetry
import Wire

/// `conclave top`: the dashboard in a terminal, for people on ssh. Asks the coordinator for its status every
/// --interval seconds and redraws in place: the cluster's figures, tokens per second (from the growth of the
/// tokens generated), a row per worker and the routers' heat map, one character per expert (or per group of
/// experts when a layer has more than fit). `q` (or Ctrl-C) quits and gives the terminal back as it was.
struct TopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top",
        abstract: "Watch the cluster live in the terminal: workers, throughput, the experts' heat map. q quits.",
        discussion: "Heat map: per MoE layer, each expert's recent router choices relative to the layer's busiest (' .:-=+*#%@', @ the busiest), then the layer's imbalance (the busiest worker's share; 1/workers is even)."
    )

    @Option(help: "The coordinator's endpoint.") var coordinator: String = "tcp://127.0.0.1:7000"
    @Option(help: "Seconds between refreshes.") var interval: Double = 1
    @Option(help: "Seconds to wait for each answer.") var timeout: Double = 3
    @OptionGroup var keys: ClientKeyOptions

    func validate() throws {
        guard interval >= 0.1, interval <= 3600 else { throw ValidationError("--interval \(interval) is outside 0.1…3600 seconds") }
    }

    func run() throws {
        let client = try CoordinatorClient(endpoint: coordinator, transports: keys.transports(to: coordinator), failWhenNothingListens: true)
        let terminal = RawTerminal()
        defer { terminal.restore() }
        var previous: (tokens: Double, at: Double)?
        var quit = false
        while !quit {
            let status: Conclave_V1_StatusReply?
            do { status = try client.status(timeout: timeout) } catch {
                terminal.restore()
                printError("error: \(error)")
                throw ExitCode(1)
            }
            let now = MonotonicClock.seconds()
            var screen: [String]
            if let s = status {
                let tokens = s.serving.figures.first { $0.key == "tokens_generated" }?.value ?? 0
                let rate = previous.map { p in now > p.at ? max(0, tokens - p.tokens) / (now - p.at) : 0 }
                previous = (tokens, now)
                screen = TopScreen.lines(s, tokensPerSecond: rate, width: terminal.columns)
            } else {
                screen = ["no status from the coordinator at \(coordinator) within \(fixed(timeout, 0)) s; trying again"]
            }
            screen.append("")
            screen.append("q quits; refreshing every \(fixed(interval, 1)) s")
            terminal.draw(screen)
            quit = terminal.waitForQuit(seconds: interval)
        }
    }
}

/// What `top` draws from one status reply.
enum TopScreen {
    static let shades = Array(" .:-=+*#%@")

    static func lines(_ s: Conclave_V1_StatusReply, tokensPerSecond: Double?, width: Int) -> [String] {
        let (figures, _) = s.serving
        func figure(_ key: String) -> Int { Int(figures.first { $0.key == key }?.value ?? 0) }
        let count = { (state: String) in s.workers.filter { $0.state == state }.count }
        var out = [
            "conclave top — \(s.model), epoch \(s.epoch), \(s.security == "curve" ? "CurveZMQ" : "no encryption")",
            "workers \(count("ready")) ready / \(count("suspect")) suspect / \(count("down")) down;  running \(figure("sequences")), queued \(figure("queued"));  "
                + "tokens/s \(tokensPerSecond.map { fixed($0, 1) } ?? "…");  generated \(figure("tokens_generated"));  recoveries \(s.recoveries.count)",
            "",
        ]
        let rows = s.workers.map { w -> [String] in
            let m = w.samples
            return [w.name, w.state, w.layersCell, String(w.experts), w.memoryCell, formatBytes(Int(m.value(WorkerMetric.rss))),
                    String(Int(m.value(WorkerMetric.tokens))), String(Int(m.value(WorkerMetric.expertCalls))),
                    fixed(m.value(WorkerMetric.stepP50) * 1000, 2), fixed(w.heartbeatAgeS, 1)]
        }
        out += table(headers: ["worker", "state", "layers", "experts", "resident / planned / budget", "RSS", "tokens", "expert calls", "step p50 ms", "heartbeat s"], rows: rows)
        if let last = s.recoveries.last {
            out += ["", "last recovery: epoch \(last.epoch), \(last.recovered ? "recovered" : "failed") in \(fixed(last.seconds, 2)) s — \(last.cause)"]
        }
        if s.heat.problem == nil, !s.heat.isEmpty {
            out += ["", "expert heat (recent choices per layer; @ the layer's busiest)"]
            let room = max(8, min(128, width - 24))
            for (l, row) in s.heat.enumerated() {
                out.append(String(format: "L%-4d ", l) + heatLine(row.recent, room: room)
                           + (row.imbalance < 0 ? "  idle" : "  imb \(fixed(row.imbalance, 2))"))
            }
        }
        return out.map { String($0.prefix(max(20, width))) }
    }

    /// One character per expert (per group of experts when there are more than `room`), by its share of the
    /// layer's busiest.
    static func heatLine(_ recent: [Float], room: Int) -> String {
        guard !recent.isEmpty else { return "" }
        let group = (recent.count + room - 1) / room
        let cells = stride(from: 0, to: recent.count, by: group).map { recent[$0..<min(recent.count, $0 + group)].reduce(0, +) }
        let peak = cells.max() ?? 0
        return String(cells.map { v in peak > 0 ? shades[min(shades.count - 1, Int((v / peak * Float(shades.count - 1)).rounded(.up)))] : " " })
    }
}

/// The terminal in raw mode (keys without Enter, no echo) on the alternate screen, restored on exit and on
/// Ctrl-C. Without a terminal (output to a pipe), it draws each frame after the last.
final class RawTerminal {
    private var saved = termios()
    private let raw: Bool
    private var restored = false

    init() {
        raw = isatty(0) == 1 && isatty(1) == 1 && tcgetattr(0, &saved) == 0
        guard raw else { return }
        var t = saved
        t.c_lflag &= ~tcflag_t(ICANON | ECHO)
        tcsetattr(0, TCSANOW, &t)
        // Alternate screen, cursor hidden: the shell's screen comes back as it was.
        write("\u{1B}[?1049h\u{1B}[?25l")
        signal(SIGINT) { _ in
            // Give the terminal back before the default action ends the process.
            _ = Glibc.write(1, "\u{1B}[?25h\u{1B}[?1049l", 14)
            signal(SIGINT, SIG_DFL)
            raise(SIGINT)
        }
    }

    var columns: Int {
        var size = winsize()
        return ioctl(1, UInt(TIOCGWINSZ), &size) == 0 && size.ws_col > 0 ? Int(size.ws_col) : 120
    }

    func draw(_ lines: [String]) {
        if raw {
            write("\u{1B}[H" + lines.map { $0 + "\u{1B}[K" }.joined(separator: "\r\n") + "\u{1B}[J")
        } else {
            write(lines.joined(separator: "\n") + "\n\n")
        }
    }

    /// Waits `seconds` for a key; true when it was q (or the terminal closed).
    func waitForQuit(seconds: Double) -> Bool {
        let deadline = MonotonicClock.seconds() + seconds
        while true {
            let left = deadline - MonotonicClock.seconds()
            if left <= 0 { return false }
            var p = pollfd(fd: 0, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, Int32(left * 1000)) > 0 else { continue }
            var byte: UInt8 = 0
            let n = read(0, &byte, 1)
            if n <= 0 {
                // A terminal that closed: quit. Input from a file or pipe that ended: keep refreshing (poll would
                // report the end at once, every time), waiting out the interval.
                if raw { return true }
                usleep(useconds_t(max(0, deadline - MonotonicClock.seconds()) * 1_000_000))
                return false
            }
            if byte == UInt8(ascii: "q") || byte == UInt8(ascii: "Q") { return true }
        }
    }

    func restore() {
        guard raw, !restored else { return }
        restored = true
        write("\u{1B}[?25h\u{1B}[?1049l")
        tcsetattr(0, TCSANOW, &saved)
    }

    private func write(_ s: String) {
        var s = s
        s.withUTF8 { _ = Glibc.write(1, $0.baseAddress, $0.count) }
    }
}
