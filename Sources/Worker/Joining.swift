import ClusterProtocol
import Foundation
import Runtime
import Wire

/// A worker started with `--join`: it is not in the coordinator's cluster file, so it asks to be used. The Join
/// goes to the coordinator's client endpoint (under CurveZMQ proving a key the cluster file's `join_keys` lists);
/// the coordinator says Hello back on our listener and re-plans to use us, exactly as it does for the workers it
/// knew from the start.
extension WorkerService {
    /// Why a join cannot succeed by trying again (the coordinator refused it), or nil for "try again".
    static func refusal(_ e: Error) -> String? {
        guard let w = e as? WireError else { return "\(e)" }
        switch w.code {
        // Still starting, unreachable, no answer yet (a timeout is reported as internalError, locally).
        case .unavailable, .internalError: return nil
        default: return w.message
        }
    }

    /// Sends Join until the coordinator takes it or refuses it; while it is starting or unreachable, again every
    /// `retryDelay` seconds (logged at once, then every 30 s). A Join is answered within `timeout` seconds or
    /// sent again: the coordinator answers a repeated Join of the same worker as the first. Once joined, the Join
    /// is sent again every `keepalive` seconds: a coordinator that restarted (its cluster file does not list us)
    /// takes us in again within that, and the one that knows us answers at once. Returns the first Join's
    /// refusal, or nil when `stopping` turns true. Blocks: run it on a thread of its own.
    func joinCluster(at endpoint: String, retryDelay: Double = 2, timeout: Double = 5, keepalive: Double = 10,
                     stopping: @Sendable () -> Bool) -> String? {
        let client = RemoteClient(endpoint: endpoint, clock: options.clock, connect: { [transports] in try transports.connect(endpoint) })
        defer { client.close() }
        var join = Conclave_V1_Join()
        join.workerName = options.name
        join.listenEndpoint = options.endpoint
        join.memoryBudget = UInt64(options.memory)
        join.role = options.joinRole
        var joined = false
        var lastLogged = -Double.infinity
        func note(_ line: @autoclosure () -> String) {
            let now = options.clock.now()
            guard now - lastLogged >= 30 else { return }
            log(line())
            lastLogged = now
        }
        while !stopping() {
            var e = Envelope()
            e.join = join
            var wait = retryDelay
            do {
                let answer = try client.finish(try client.start(e, tensors: [], timeout: timeout))
                guard case .join(let taken) = answer.envelope.kind else { throw WireError(.malformed, "the coordinator answered the Join with something else") }
                if !joined {
                    log("joined the cluster of the coordinator at \(endpoint) as '\(taken.workerName)' (role \(taken.role), budget \(taken.memoryBudget) bytes): it re-plans to use this worker")
                    joined = true
                    lastLogged = -Double.infinity
                }
                wait = keepalive
            } catch {
                let message = (error as? WireError)?.message ?? "\(error)"
                if let reason = Self.refusal(error) {
                    if !joined { return reason }
                    // Joined before: keep serving whoever assigned us, and keep asking.
                    note("the coordinator at \(endpoint) refuses this worker's Join now (\(reason)); asking again every \(Int(keepalive)) s")
                    wait = keepalive
                } else if joined {
                    note("no answer to this worker's Join from the coordinator at \(endpoint) (\(message)); asking again every \(Int(retryDelay)) s")
                } else {
                    note("not joined yet (\(message)); asking again every \(Int(retryDelay)) s"
                         + (transports.authenticates ? ". With CurveZMQ the coordinator's cluster file must list this worker's public key in join_keys" : ""))
                }
            }
            options.clock.sleep(until: options.clock.now() + wait)
        }
        return nil
    }
}
