import Runtime
import Testing
@testable import Worker

/// What a flood of refused messages costs: at most 100 replies a second, and one line about the rest — also
/// when the flood stops inside its first second (the heartbeat flushes it).
@Suite struct ErrorThrottleTests {
    @Test func aFloodGetsAHundredRepliesASecondAndOneLine() {
        let clock = ManualClock()
        let throttle = ErrorThrottle(perSecond: 100, clock: clock)
        let admitted = (0..<20_000).filter { _ in throttle.admit().allowed }.count
        #expect(admitted == 100)
        #expect(throttle.flush() == nil, "the window has not ended")
        clock.advance(by: 1)
        let line = throttle.flush()
        #expect(line?.hasPrefix("19900 more error replies") == true, "\(line ?? "nil")")
        #expect(throttle.flush() == nil, "said once")
        // A new second admits again, and has nothing left to report about the last.
        let next = throttle.admit()
        #expect(next.allowed && next.closed == nil)
    }
}
