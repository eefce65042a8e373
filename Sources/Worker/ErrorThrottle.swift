import Runtime
import Synchronization

/// Bounds what bad input costs a worker: a peer that sends thousands of messages it should not (stale plans,
/// guessed request ids, garbage) gets at most `perSecond` Error replies a second, and the log at most that many
/// lines plus one a second saying how many more were dropped. Replies to the coordinator about its own requests
/// are not counted: those it needs to fail a request at once.
final class ErrorThrottle: Sendable {
    struct Window {
        var start = -Double.infinity
        var admitted = 0
        var suppressed = 0
    }
    private let window = Mutex(Window())
    let perSecond: Int
    let clock: any Clock

    init(perSecond: Int = 100, clock: any Clock) {
        self.perSecond = perSecond
        self.clock = clock
    }

    static func dropped(_ n: Int) -> String {
        "\(n) more error replies (and their log lines) dropped in the last second: a peer is sending messages this worker refuses"
    }

    /// The line about a window that has ended with errors dropped, once (the worker's heartbeat asks every
    /// second): a flood that stops within its first second is still reported.
    func flush() -> String? {
        let now = clock.now()
        return window.withLock { w in
            guard now - w.start >= 1, w.suppressed > 0 else { return nil }
            let line = Self.dropped(w.suppressed)
            w.suppressed = 0
            return line
        }
    }

    /// Whether this error is answered and logged; `closed` is a line to log about the window that just ended
    /// when it dropped some.
    func admit() -> (allowed: Bool, closed: String?) {
        let now = clock.now()
        return window.withLock { w in
            var closed: String?
            if now - w.start >= 1 {
                if w.suppressed > 0 { closed = Self.dropped(w.suppressed) }
                w = Window(start: now)
            }
            guard w.admitted < perSecond else {
                w.suppressed += 1
                return (false, closed)
            }
            w.admitted += 1
            return (true, closed)
        }
    }
}
