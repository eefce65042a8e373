import Foundation

/// Runs blocking work (sockets, child processes, sleeps) on a thread of its own and awaits it. A test that
/// blocks a thread of Swift's cooperative pool for long — there are as many as cores, two on CI — starves every
/// async task of the test process meanwhile, such as the HTTP server another test is talking to.
public func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, Error>) in
        let t = Thread {
            do { c.resume(returning: try body()) } catch { c.resume(throwing: error) }
        }
        t.stackSize = 8 << 20
        t.start()
    }
}
