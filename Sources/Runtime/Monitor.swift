#if canImport(Glibc)
import Glibc
#endif

/// A mutex with a condition variable (pthread), for state that threads wait on.
public final class Monitor: @unchecked Sendable {
    public final class Box<T>: @unchecked Sendable {
        public var value: T
        public init(_ value: T) { self.value = value }
    }
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    public init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
    }
    deinit {
        pthread_cond_destroy(&cond)
        pthread_mutex_destroy(&mutex)
    }
    public func locked<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
    /// Inside `locked` only.
    public func wait() { pthread_cond_wait(&cond, &mutex) }
    /// Inside `locked` only.
    public func broadcast() { pthread_cond_broadcast(&cond) }
}

/// The first error thrown by any of the bodies of a parallel loop (whose bodies cannot throw), to rethrow once
/// the loop is over.
public final class FirstError: @unchecked Sendable {
    private let monitor = Monitor()
    private var error: Error?
    public init() {}
    public func record(_ e: Error) { monitor.locked { if error == nil { error = e } } }
    public func rethrow() throws { if let e = monitor.locked({ error }) { throw e } }
}
