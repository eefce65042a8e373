import Foundation
import Kernels
import Model
import Synchronization
import Wire
import Worker

/// Runs generation requests across the pipeline, one step at a time on a thread of its own (it blocks waiting
/// for the last stage). Every step batches the rows of all active sequences — a prefill chunk or one decode
/// token each — into one StageInput for stage 0; the last stage answers with the sampled tokens. The decisions
/// after each token mirror `Engine.generate` exactly, so a distributed run prints what `conclave run` prints.
final class Scheduler: @unchecked Sendable {
    unowned let coordinator: Coordinator
    /// Most rows in one step (llama.cpp's n_ubatch; the same chunking as `Engine.evaluate`).
    let maxBatch = 512
    /// A step with no answer for this long fails even if every worker still heartbeats.
    let stepTimeout = 120.0

    final class Request: @unchecked Sendable {
        let sequence: UInt64
        let client: Data?
        let clientRequestID: UInt64
        let prompt: [Int32]
        let maxTokens: Int
        let capacity: Int
        let sampling: Conclave_V1_Sampling
        var fed = 0  // tokens sent through the pipeline (the sequence's length)
        var next: Int32?  // the sampled token to feed next
        var generated = 0
        var samplerSent = false
        let t0 = KernelBench.now()
        var prefillEnd: Double?
        init(sequence: UInt64, client: Data?, clientRequestID: UInt64, prompt: [Int32], maxTokens: Int, capacity: Int, sampling: Conclave_V1_Sampling) {
            self.sequence = sequence
            self.client = client
            self.clientRequestID = clientRequestID
            self.prompt = prompt
            self.maxTokens = maxTokens
            self.capacity = capacity
            self.sampling = sampling
        }
    }

    struct Shared {
        var incoming: [Request] = []
        var active = 0
        var tokens: UInt64 = 0
        var failed = 0
        var running = false
    }
    private let shared = Mutex(Shared())
    private let wake = DispatchSemaphore(value: 0)
    private let idLock = Mutex<UInt64>(1)
    private var thread: Thread?

    init(coordinator: Coordinator) { self.coordinator = coordinator }

    func start() {
        shared.withLock { $0.running = true }
        let t = Thread { [self] in loop() }
        t.name = "conclave.scheduler"
        t.start()
        thread = t
    }

    func stop() {
        shared.withLock { $0.running = false }
        wake.signal()
    }

    func stats() -> (active: Int, tokens: UInt64, failed: Int) { shared.withLock { ($0.active, $0.tokens, $0.failed) } }

    /// Validates and queues a client's request; a bad one is answered with an Error at once.
    func submit(_ g: Conclave_V1_Generate, client: Data?, requestID: UInt64) {
        let c = coordinator
        let prompt = c.tokenizer.encode(g.prompt)
        let capacity = g.contextLength > 0 ? min(Int(g.contextLength), c.contextLength) : c.contextLength
        guard prompt.count <= capacity else {
            return fail(client, requestID, WireError(.contextExceeded, "the prompt has \(prompt.count) tokens but the context holds \(capacity); use a shorter prompt or a larger context"))
        }
        guard shared.withLock({ $0.running }) else {
            return fail(client, requestID, WireError(.internalError, "the coordinator is not serving yet (workers are still joining or loading)"))
        }
        if let down = c.links.first(where: { $0.state == .down }) {
            return fail(client, requestID, WireError(.internalError, "worker '\(down.worker.name)' at \(down.worker.endpoint) is down; the cluster cannot generate until it is back (restart the worker and the coordinator)"))
        }
        let seq = idLock.withLock { v -> UInt64 in defer { v += 1 }; return v }
        let r = Request(sequence: seq, client: client, clientRequestID: requestID, prompt: prompt, maxTokens: Int(g.maxTokens),
                        capacity: capacity, sampling: g.sampling)
        shared.withLock { $0.incoming.append(r) }
        wake.signal()
    }

    private func fail(_ client: Data?, _ id: UInt64, _ e: WireError) {
        shared.withLock { $0.failed += 1 }
        coordinator.log("request failed: \(e.message)")
        coordinator.reply(client, WireMessage.errorReply(to: id, e))
    }

    // MARK: The loop

    private func loop() {
        var active: [Request] = []
        while shared.withLock({ $0.running }) {
            let incoming = shared.withLock { s -> [Request] in defer { s.incoming.removeAll() }; return s.incoming }
            active += incoming
            shared.withLock { $0.active = active.count }
            if active.isEmpty {
                _ = wake.wait(timeout: .now() + 0.5)
                continue
            }
            active = step(active)
            shared.withLock { $0.active = active.count }
        }
    }

    /// One pipeline step over the active requests; returns those still generating.
    private func step(_ active: [Request]) -> [Request] {
        var input = Conclave_V1_StageInput()
        var inStep: [(Request, sampleRow: Int?)] = []
        var budget = maxBatch
        var anyNewSampler = false
        for r in active where budget > 0 {
            var tokens: [Int32]
            var sample: Bool
            if r.fed < r.prompt.count {
                tokens = Array(r.prompt[r.fed..<min(r.prompt.count, r.fed + budget)])
                sample = r.fed + tokens.count == r.prompt.count
            } else if let t = r.next {
                tokens = [t]
                sample = true
            } else {
                continue
            }
            for (i, t) in tokens.enumerated() {
                var row = Conclave_V1_BatchRow()
                row.sequence = r.sequence
                row.position = UInt32(r.fed + i)
                input.rows.append(row)
                input.tokens.append(t)
            }
            var sampleRow: Int?
            if sample {
                sampleRow = input.rows.count - 1
                input.sampleRows.append(UInt32(sampleRow!))
                if !r.samplerSent { anyNewSampler = true }
            }
            r.fed += tokens.count
            budget -= tokens.count
            inStep.append((r, sampleRow))
        }
        if anyNewSampler {
            // One entry per sample row, or none: each sequence keeps the first sampling it is given.
            input.sampling = inStep.compactMap { $0.sampleRow == nil ? nil : $0.0.sampling }
            for (r, s) in inStep where s != nil { r.samplerSent = true }
        }
        let result = runStep(input)
        var still: [Request] = []
        var finished: [UInt64] = []
        switch result {
        case .failure(let e):
            for r in active {
                fail(r.client, r.clientRequestID, e)
                finished.append(r.sequence)
            }
        case .success(let out):
            var byToken: [UInt64: Int32] = [:]
            for (s, t) in zip(out.sequences, out.tokens) { byToken[s] = t }
            let stepped = Set(inStep.map { ObjectIdentifier($0.0) })
            for r in active {
                guard stepped.contains(ObjectIdentifier(r)) else { still.append(r); continue }
                guard r.fed >= r.prompt.count else { still.append(r); continue }  // more prompt chunks to go
                if r.prefillEnd == nil { r.prefillEnd = KernelBench.now() }
                guard let token = byToken[r.sequence] else {
                    fail(r.client, r.clientRequestID, WireError(.internalError, "the last stage returned no token for sequence \(r.sequence)"))
                    finished.append(r.sequence)
                    continue
                }
                if !advance(r, token) { finished.append(r.sequence) } else { still.append(r) }
            }
        }
        if !finished.isEmpty { release(finished) }
        return still
    }

    /// Applies a sampled token the way `Engine.generate` does; false when the request is complete.
    private func advance(_ r: Request, _ token: Int32) -> Bool {
        let tk = coordinator.tokenizer
        if r.generated >= r.maxTokens || tk.isEndOfGeneration(token) {
            finish(r)
            return false
        }
        r.generated += 1
        shared.withLock { $0.tokens += 1 }
        var out = Conclave_V1_TokenOut()
        out.sequences = [r.sequence]
        out.tokens = [token]
        out.text = Data(tk.piece(token))
        var e = Envelope()
        e.requestID = r.clientRequestID
        e.tokenOut = out
        coordinator.reply(r.client, WireMessage.make(e))
        if r.generated >= r.maxTokens || r.fed >= r.capacity {
            finish(r)
            return false
        }
        r.next = token
        return true
    }

    private func finish(_ r: Request) {
        let end = KernelBench.now()
        var out = Conclave_V1_TokenOut()
        out.sequences = [r.sequence]
        out.done = true
        out.promptTokens = UInt32(r.prompt.count)
        out.generatedTokens = UInt32(r.generated)
        let prefill = (r.prefillEnd ?? end) - r.t0, decode = end - (r.prefillEnd ?? end)
        out.prefillTokS = prefill > 0 ? Double(r.prompt.count) / prefill : 0
        out.decodeTokS = decode > 0 ? Double(r.generated) / decode : 0
        var e = Envelope()
        e.requestID = r.clientRequestID
        e.tokenOut = out
        coordinator.reply(r.client, WireMessage.make(e))
    }

    /// Frees finished sequences' caches on every stage (fire and forget: it travels the pipeline like a step).
    private func release(_ sequences: [UInt64]) {
        guard let first = firstStage else { return }
        var input = Conclave_V1_StageInput()
        input.release = sequences
        var e = Envelope()
        e.stageInput = input
        first.send(WireMessage.make(e))
    }

    private var firstStage: WorkerLink? {
        let c = coordinator
        guard let s = c.plan.stages.first else { return nil }
        return c.links.first { $0.worker.name == s.worker }
    }

    /// Sends the step to stage 0 and waits for the last stage's tokens, failing (never hanging) when a worker
    /// of the plan goes down or reports an error.
    private func runStep(_ input: Conclave_V1_StageInput) -> Result<Conclave_V1_TokenOut, WireError> {
        guard let first = firstStage else { return .failure(WireError(.internalError, "the plan has no stages")) }
        let c = coordinator
        let waiter = c.replies.waiter()
        var e = Envelope()
        e.requestID = waiter.id
        e.stageInput = input
        first.send(WireMessage.make(e))
        let t0 = KernelBench.now()
        while true {
            do {
                if let reply = try waiter.poll(timeout: 0.2) {
                    guard case .tokenOut(let out) = reply.envelope.kind else {
                        return .failure(WireError(.internalError, "the last stage answered a step with something else"))
                    }
                    return .success(out)
                }
            } catch {
                return .failure(WireError(error.code, "generation failed: \(error.message)"))
            }
            if let down = c.links.first(where: { $0.state == .down }) {
                c.replies.cancel(waiter.id)
                down.info.withLock { $0.state = .down }
                let age = down.heartbeatAge.map { String(format: "%.1f", $0) } ?? "?"
                return .failure(WireError(.internalError, "worker '\(down.worker.name)' at \(down.worker.endpoint) stopped answering (last heartbeat \(age) s ago); the request failed"))
            }
            if KernelBench.now() - t0 > stepTimeout {
                c.replies.cancel(waiter.id)
                return .failure(WireError(.internalError, "a generation step got no answer within \(Int(stepTimeout)) s"))
            }
        }
    }
}
