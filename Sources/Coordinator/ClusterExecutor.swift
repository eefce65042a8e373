import Foundation
import Generation
import Model
import Synchronization
import Wire
import Worker

/// Steps over the cluster's pipeline: each becomes a StageInput to the first stage's worker, and the last stage's
/// TokenOut comes back through the coordinator's reply table. The scheduler above it knows none of this.
final class ClusterExecutor: StepExecutor, @unchecked Sendable {
    let links: [WorkerLink]
    let replies: PendingReplies
    let pipelineDepth: Int
    let stepTimeout: Double? = 120
    /// The first stage's worker and the workers of the plan in force, set at each (re-)assignment.
    private let first = Mutex<WorkerLink?>(nil)
    private let planned = Mutex<Set<String>>([])
    /// The plan in force: every StageInput names it, and workers refuse input of another.
    private let epochValue = Mutex<UInt64>(0)
    /// Re-plans the cluster after a failure (the coordinator's); nil: failures stand.
    var onRecover: (@Sendable (GenerationError, Int) -> GenerationError?)?
    /// Step id → the request id its StageInput carries.
    private let requests = Mutex<[UInt64: UInt64]>([:])

    init(links: [WorkerLink], replies: PendingReplies, pipelineDepth: Int) {
        self.links = links
        self.replies = replies
        self.pipelineDepth = max(1, pipelineDepth)
    }

    var epoch: UInt64 { epochValue.withLock { $0 } }

    /// A new plan's number, for its Assigns.
    func nextEpoch() -> UInt64 { epochValue.withLock { $0 += 1; return $0 } }

    func setPlan(first link: WorkerLink?, workers: Set<String>) {
        first.withLock { $0 = link }
        planned.withLock { $0 = workers }
    }

    func start(_ step: Step, id: UInt64, done: @escaping @Sendable (Result<[UInt64: [SampledToken]], GenerationError>) -> Void) {
        var input = Conclave_V1_StageInput()
        for r in step.rows {
            var row = Conclave_V1_BatchRow()
            row.sequence = r.sequence
            row.position = UInt32(r.position)
            input.rows.append(row)
            input.tokens.append(r.token)
        }
        input.sampleRows = step.sampleRows.map(UInt32.init)
        input.sampling = step.sampling.map(\.wire)
        input.logprobs = step.logprobs.map { Int32(clamping: $0) }
        let requestID = replies.register { [weak self] result in
            _ = self?.requests.withLock { $0.removeValue(forKey: id) }
            switch result {
            case .success(let m):
                guard case .tokenOut(let out) = m.envelope.kind, out.sequences.count == out.tokens.count,
                      out.logprobs.isEmpty || out.logprobs.count == out.tokens.count, out.top.isEmpty || out.top.count == out.tokens.count,
                      out.top.allSatisfy({ $0.tokens.count == $0.logprobs.count && $0.tokens.count <= SampledToken.maxTop }) else {
                    return done(.failure(GenerationError(.internal, "the last stage answered a step with something else, or with mismatched lists")))
                }
                var tokens: [UInt64: [SampledToken]] = [:]
                for (i, (s, t)) in zip(out.sequences, out.tokens).enumerated() {
                    var sampled = SampledToken(token: t)
                    if !out.logprobs.isEmpty, !out.logprobs[i].isNaN {
                        sampled.logprob = out.logprobs[i]
                        if !out.top.isEmpty { sampled.top = zip(out.top[i].tokens, out.top[i].logprobs).map { TokenLogprob(token: $0, logprob: $1) } }
                    }
                    tokens[s, default: []].append(sampled)
                }
                done(.success(tokens))
            case .failure(let e):
                done(.failure(GenerationError(wire: e, "generation failed: ")))
            }
        }
        requests.withLock { $0[id] = requestID }
        guard let link = first.withLock({ $0 }) else {
            _ = replies.resolve(.failure(WireError(.unavailable, "the plan has no stages")), id: requestID)
            return
        }
        var e = Envelope()
        e.requestID = requestID
        e.epoch = epoch
        e.stageInput = input
        link.send(WireMessage.make(e))
    }

    func cancel(_ id: UInt64) {
        if let r = requests.withLock({ $0.removeValue(forKey: id) }) { replies.cancel(r) }
    }

    /// Fire and forget: the release travels the pipeline behind every step already sent, like a step.
    func release(_ sequences: [UInt64]) {
        guard let link = first.withLock({ $0 }) else { return }
        var input = Conclave_V1_StageInput()
        input.release = sequences
        var e = Envelope()
        e.epoch = epoch
        e.stageInput = input
        link.send(WireMessage.make(e))
    }

    /// While a worker of the plan is down, nothing can be generated (until a re-plan leaves it out).
    func unavailable() -> GenerationError? {
        let names = planned.withLock { $0 }
        guard let down = links.first(where: { names.contains($0.worker.name) && $0.state == .down }) else { return nil }
        down.info.withLock { $0.state = .down }
        let age = down.heartbeatAge.map { String(format: "%.1f", $0) } ?? "?"
        return GenerationError(.unavailable, "worker '\(down.worker.name)' at \(down.worker.endpoint) stopped answering (last heartbeat \(age) s ago)")
    }

    func recover(after cause: GenerationError, sequences: Int) -> GenerationError? {
        guard let onRecover else { return cause }
        return onRecover(cause, sequences)
    }
}

extension GenerationError {
    /// A wire error as the generation layer classifies it: the request's fault, the cluster's state, or a bug.
    init(wire e: WireError, _ prefix: String = "") {
        let code: Code
        switch e.code {
        case .contextExceeded: code = .contextExceeded
        case .overBudget, .unavailable, .unknownWorker: code = .unavailable
        default: code = .internal
        }
        self.init(code, prefix + e.message)
    }
}

extension WireError {
    /// The generation layer's error on the wire, its class kept.
    init(generation e: GenerationError) {
        switch e.code {
        case .invalidRequest: self.init(.malformed, e.message)
        case .contextExceeded: self.init(.contextExceeded, e.message)
        case .unavailable: self.init(.unavailable, e.message)
        case .internal: self.init(.internalError, e.message)
        }
    }
}
