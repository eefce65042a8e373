import ClusterProtocol
import Foundation
import Generation
import Runtime
import ServiceLifecycle
import Synchronization
import Tokenizer
import Wire

/// The ZeroMQ front door (`conclave generate`, `status`, the benches), a Service of its own beside the HTTP API:
/// Generate requests are tokenized and run by the scheduler, each event answered as a TokenOut (an Error when it
/// fails, with the failure's class as its code); StatusQuery is answered at once, even mid-generation. On
/// shutdown it lets the answers already under way reach their clients (5 s at most, then 250 ms for libzmq to write
/// them), then closes its socket.
public final class ClientAPI: Service, @unchecked Sendable {
    let clients: Transport
    let scheduler: Scheduler
    let tokenizer: Tokenizer
    let status: @Sendable () -> Conclave_V1_StatusReply
    /// A worker's request to join (`Recovery.join`): blocks for its Hello, so it runs off the socket's loop.
    let join: @Sendable (Conclave_V1_Join, PeerRole?) -> Result<Conclave_V1_Join, WireError>
    let log: @Sendable (String) -> Void
    /// Client requests whose events are still being answered.
    private let answering = Mutex(0)
    /// Joins, one at a time (each waits up to seconds for the worker's Hello): a flood of them delays the next
    /// join, never the client socket or generation.
    private let joins = DispatchQueue(label: "conclave.coordinator.join")

    init(clients: Transport, scheduler: Scheduler, tokenizer: Tokenizer, status: @escaping @Sendable () -> Conclave_V1_StatusReply,
         join: @escaping @Sendable (Conclave_V1_Join, PeerRole?) -> Result<Conclave_V1_Join, WireError> = { _, _ in .failure(WireError(.malformed, "this coordinator takes no joins")) },
         log: @escaping @Sendable (String) -> Void) {
        self.join = join
        self.clients = clients
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.status = status
        self.log = log
    }

    public var endpoint: String { clients.endpoint }

    public func run() async throws {
        await withGracefulShutdownHandler {
            await self.serve()
        } onGracefulShutdown: {
            // The scheduler (stopped before us) has ended every stream; let their last answers go out. Real
            // time: a shutdown's grace is the machine's (generous: it ends as soon as the last answer is queued,
            // and on a loaded machine the tasks that write them can wait a while for a thread).
            let deadline = MonotonicClock.seconds() + 5
            while self.answering.withLock({ $0 }) > 0 && MonotonicClock.seconds() < deadline { usleep(5_000) }
            // The process ends soon after this service, and a reply queued in libzmq is written to its connection
            // by libzmq's I/O thread: its linger cannot outlive the process. A moment for the last answers (sent
            // when the scheduler stopped, just before) to leave; without it about one shutdown in eight lost them.
            usleep(250_000)
            self.clients.close()
        }
    }

    /// Client requests until the client socket closes.
    func serve() async {
        for await frames in clients.messages {
            let msg: WireMessage
            do {
                msg = try WireMessage.decode(frames.parts)
            } catch {
                let id = (try? Envelope(serializedBytes: frames.parts.first ?? Data()))?.requestID ?? 0
                reply(frames.peer, WireMessage.errorReply(to: id, error))
                continue
            }
            switch msg.envelope.kind {
            case .statusQuery:
                var e = Envelope()
                e.requestID = msg.envelope.requestID
                e.statusReply = status()
                reply(frames.peer, WireMessage.make(e))
            case .generate(let g):
                if case .joiner = frames.role {
                    reply(frames.peer, WireMessage.errorReply(to: msg.envelope.requestID, WireError(.malformed, "a key of join_keys may join, not generate")))
                    continue
                }
                generate(g, client: frames.peer, requestID: msg.envelope.requestID)
            case .join(let j):
                let id = msg.envelope.requestID, peer = frames.peer, role = frames.role
                joins.async { [self] in
                    switch join(j, role) {
                    case .success(let answer):
                        var e = Envelope()
                        e.requestID = id
                        e.join = answer
                        reply(peer, WireMessage.make(e))
                    case .failure(let error):
                        log("refused a join (\(j.workerName.prefix(64)) at \(j.listenEndpoint.prefix(80))): \(error.message)")
                        reply(peer, WireMessage.errorReply(to: id, error))
                    }
                }
            default:
                reply(frames.peer, WireMessage.errorReply(to: msg.envelope.requestID, WireError(.malformed, "the coordinator takes Generate, StatusQuery and (from workers) Join")))
            }
        }
    }

    func generate(_ g: Conclave_V1_Generate, client: Data?, requestID: UInt64) {
        let (sequence, events) = scheduler.submit(GenerationRequest(g, prompt: tokenizer.encode(g.prompt)))
        answering.withLock { $0 += 1 }
        Task.detached { [self] in
            defer { answering.withLock { $0 -= 1 } }
            do {
                for try await event in events {
                    var e = Envelope()
                    e.requestID = requestID
                    e.tokenOut = Conclave_V1_TokenOut(event: event, sequence: sequence)
                    reply(client, WireMessage.make(e))
                }
            } catch let e as GenerationError {
                reply(client, WireMessage.errorReply(to: requestID, WireError(generation: e)))
            } catch {
                reply(client, WireMessage.errorReply(to: requestID, WireError(.internalError, "generation ended: \(error)")))
            }
        }
    }

    func reply(_ peer: Data?, _ m: WireMessage) {
        guard let parts = try? m.encode() else { return }
        clients.send(Frames(peer: peer, parts: parts))
    }
}
