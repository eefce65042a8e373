import Foundation
import Synchronization
import Wire

/// A DEALER to the coordinator that collects replies for the synchronous client commands.
public final class CoordinatorClient: @unchecked Sendable {
    let socket: Transport
    final class Inbox: Sendable {
        let messages = Mutex<[WireMessage]>([])
        let arrived = DispatchSemaphore(value: 0)
    }
    private let inbox = Inbox()
    private var reader: Task<Void, Never>?
    /// Fail at once when nothing listens at the endpoint (`generate`, `status`), instead of waiting out the
    /// timeout; off for benches that connect before their coordinator has bound.
    let failWhenNothingListens: Bool

    /// Connects to the coordinator's client endpoint through `transports` (plain, CurveZMQ, or in memory).
    public init(endpoint: String, transports: TransportFactory, failWhenNothingListens: Bool = false) throws {
        socket = try transports.connect(endpoint)
        self.failWhenNothingListens = failWhenNothingListens
        let (s, inbox) = (socket, inbox)
        reader = Task.detached {
            for await f in s.messages {
                guard let m = try? WireMessage.decode(f.parts) else { continue }
                inbox.messages.withLock { $0.append(m) }
                inbox.arrived.signal()
            }
        }
    }

    deinit {
        reader?.cancel()
        socket.close()
    }

    public func send(_ e: Envelope) throws { socket.send(Frames(parts: try WireMessage.make(e).encode())) }

    /// The next message, or nil after `timeout` seconds of silence. Throws at once when the handshake failed
    /// (the coordinator refused our key, or wants CurveZMQ): no answer would ever come.
    /// With `dropsBefore`, also throws (an `interrupted` Failure) once the connection was lost after that many
    /// losses: the request it carried went to a coordinator that is gone.
    public func next(timeout: Double, dropsBefore: Int? = nil) throws -> WireMessage? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if inbox.arrived.wait(timeout: .now() + min(0.25, max(0, deadline.timeIntervalSinceNow))) == .success {
                return inbox.messages.withLock { $0.removeFirst() }
            }
            if let problem = socket.handshakeProblem { throw Failure(description: problem) }
            if failWhenNothingListens, socket.connectionRefused {
                throw Failure(description: "nothing listens at \(socket.endpoint) (connection refused): start `conclave serve` there, or check --coordinator")
            }
            if let dropsBefore, socket.disconnections > dropsBefore {
                // What the coordinator sent before it went (an error saying it shuts down) may still be on its
                // way from the socket to the inbox: that answer wins over the bare fact of the drop.
                // (Generous: on a loaded machine the reader thread can take a while to move it.)
                if inbox.arrived.wait(timeout: .now() + 2) == .success { return inbox.messages.withLock { $0.removeFirst() } }
                throw Failure(description: "the connection to the coordinator at \(socket.endpoint) was lost while the request ran (the coordinator stopped or restarted); it was not answered and may be sent again", interrupted: true)
            }
            if deadline.timeIntervalSinceNow <= 0 { return nil }
        }
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        /// The connection dropped with the request in flight: no answer will come, and nothing says whether
        /// the coordinator had started it.
        public let interrupted: Bool
        public init(description: String, interrupted: Bool = false) {
            self.description = description
            self.interrupted = interrupted
        }
    }
    private var nextID: UInt64 = 1

    /// Runs a generation, handing each streamed piece of text to `onText`; returns the final TokenOut (speeds).
    /// Throws the coordinator's Error, or after `timeout` seconds without a message.
    public func generate(_ g: Conclave_V1_Generate, timeout: Double, onText: ([UInt8]) -> Void) throws -> Conclave_V1_TokenOut {
        var e = Envelope()
        e.requestID = nextID
        nextID += 1
        e.generate = g
        let drops = socket.disconnections
        try send(e)
        while true {
            guard let m = try next(timeout: timeout, dropsBefore: drops) else {
                throw Failure(description: "no answer from the coordinator at \(socket.endpoint) within \(Int(timeout)) s")
            }
            guard m.envelope.requestID == e.requestID else { continue }
            switch m.envelope.kind {
            case .tokenOut(let t):
                if !t.text.isEmpty { onText([UInt8](t.text)) }
                if t.done { return t }
            case .error(let err):
                throw Failure(description: err.message)
            default:
                continue
            }
        }
    }

    /// The cluster's status, or nil when no answer comes within `timeout` seconds.
    public func status(timeout: Double) throws -> Conclave_V1_StatusReply? {
        var e = Envelope()
        e.requestID = 0
        e.statusQuery = Conclave_V1_StatusQuery()
        try send(e)
        let deadline = Date().addingTimeInterval(timeout)
        while let m = try next(timeout: max(0, deadline.timeIntervalSinceNow)) {
            if case .statusReply(let s) = m.envelope.kind { return s }
        }
        return nil
    }
}
