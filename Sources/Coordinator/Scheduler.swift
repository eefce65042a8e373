import Foundation
import Kernels
import Model
import Synchronization
import Wire
import Worker

/// Runs generation requests across the pipeline on a thread of its own (it blocks waiting for the last stage).
/// Each step (micro-batch) batches rows of several sequences — a prefill chunk or one decode token each — into
/// one StageInput for stage 0; the last stage answers with the sampled tokens. Several micro-batches travel the
/// pipeline at once (see `loop`). The decisions after each token mirror `Engine.generate` exactly, so a
/// distributed run prints what `conclave run` prints.
final class Scheduler: @unchecked Sendable {
    unowned let coordinator: Coordinator
    /// Most rows in one step (llama.cpp's n_ubatch; 512 by default, the chunking of `Engine.evaluate`).
    let maxBatch: Int
    /// A step with no answer for this long fails even if every worker still heartbeats.
    let stepTimeout = 120.0
    /// Steps in the pipeline at once (the coordinator's option; by default one per stage).
    let microBatches: Int

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
        /// A step holding this sequence's prompt end or last token is in flight: nothing to send until it returns.
        var awaiting = false
        var done = false
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
        var peakInFlight = 0
        var running = false
    }
    private let shared = Mutex(Shared())
    private let wake = DispatchSemaphore(value: 0)
    private let stopped = DispatchSemaphore(value: 0)
    private let idLock = Mutex<UInt64>(1)
    private var thread: Thread?

    /// Sequences generating at once: the fewest any stage worker's KV budget holds (set before `start`).
    var maxSequences = Int.max

    init(coordinator: Coordinator, microBatches: Int, maxBatch: Int) {
        self.coordinator = coordinator
        self.maxBatch = max(1, maxBatch)
        self.microBatches = max(1, microBatches)
    }

    func start() {
        shared.withLock { $0.running = true }
        let t = Thread { [self] in loop() }
        t.name = "conclave.scheduler"
        t.start()
        thread = t
    }

    /// Ends the loop; waits (at most 2 s) until it has answered every unfinished request with an error.
    func stop() {
        shared.withLock { $0.running = false }
        wake.signal()
        if thread != nil { _ = stopped.wait(timeout: .now() + 2) }
    }

    func stats() -> (active: Int, tokens: UInt64, failed: Int, peakInFlight: Int) {
        shared.withLock { ($0.active, $0.tokens, $0.failed, $0.peakInFlight) }
    }

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

    /// A micro-batch on its way through the pipeline.
    struct InFlight {
        let waiter: PendingReplies.Waiter
        let entries: [(request: Request, sampleRow: Int?)]
        let sent: Double
    }

    /// Keeps up to `microBatches` steps in the pipeline: whenever one returns, its sequences' next rows go out
    /// at once while the others are still travelling, so with S stages and S micro-batches every stage has work.
    /// A sequence is in one micro-batch at a time while it decodes (its next token needs the last one), but a
    /// long prompt's chunks follow each other down the pipeline: each stage takes its inputs in order, so a chunk
    /// always finds the cache of the chunks before it.
    private func loop() {
        var active: [Request] = []
        var inFlight: [InFlight] = []
        while shared.withLock({ $0.running }) {
            // Admit only as many sequences as every stage has KV room for; the rest wait their turn in order.
            let room = max(0, maxSequences - active.count)
            active += shared.withLock { s -> [Request] in
                let admitted = Array(s.incoming.prefix(room))
                s.incoming.removeFirst(admitted.count)
                return admitted
            }
            while inFlight.count < microBatches, let step = compose(active) {
                inFlight.append(step)
            }
            shared.withLock { s in
                s.active = active.count
                s.peakInFlight = max(s.peakInFlight, inFlight.count)
            }
            _ = wake.wait(timeout: .now() + (inFlight.isEmpty ? 0.5 : 0.2))

            var finished: [UInt64] = []
            var i = 0
            while i < inFlight.count {
                let f = inFlight[i]
                let outcome: Result<Conclave_V1_TokenOut, WireError>?
                do {
                    if let reply = try f.waiter.poll(timeout: 0) {
                        if case .tokenOut(let out) = reply.envelope.kind {
                            outcome = .success(out)
                        } else {
                            outcome = .failure(WireError(.internalError, "the last stage answered a step with something else"))
                        }
                    } else if KernelBench.now() - f.sent > stepTimeout {
                        coordinator.replies.cancel(f.waiter.id)
                        outcome = .failure(WireError(.internalError, "a generation step got no answer within \(Int(stepTimeout)) s"))
                    } else {
                        outcome = nil
                    }
                } catch {
                    outcome = .failure(WireError(error.code, "generation failed: \(error.message)"))
                }
                guard let outcome else { i += 1; continue }
                inFlight.remove(at: i)
                finished += complete(f, outcome)
            }
            if let e = downWorkerError(), !inFlight.isEmpty || !active.isEmpty {
                // Nothing in the pipeline can finish: fail every step in flight and every waiting request.
                for f in inFlight { coordinator.replies.cancel(f.waiter.id) }
                inFlight.removeAll()
                for r in active where !r.done { fail(r, e); finished.append(r.sequence) }
            }
            active.removeAll { $0.done }
            if !finished.isEmpty { release(finished) }
        }
        // Stopped (SIGTERM): whatever is still running or queued gets an answer, not silence.
        active += shared.withLock { s -> [Request] in defer { s.incoming.removeAll() }; return s.incoming }
        for f in inFlight { coordinator.replies.cancel(f.waiter.id) }
        let stopping = WireError(.internalError, "the coordinator is shutting down; the request was not finished")
        for r in active where !r.done { fail(r, stopping) }
        shared.withLock { $0.active = 0 }
        stopped.signal()
    }

    /// The next micro-batch from the requests that have rows to send, or nil when none has. Decoding sequences
    /// are spread over the micro-batches (at most ⌈decoding / microBatches⌉ in one), prefill chunks fill the rest
    /// up to `maxBatch` rows.
    private func compose(_ active: [Request]) -> InFlight? {
        var input = Conclave_V1_StageInput()
        var entries: [(request: Request, sampleRow: Int?)] = []
        var budget = maxBatch
        let decoding = active.filter { !$0.done && $0.fed >= $0.prompt.count }.count
        var decodeSlots = max(1, (decoding + microBatches - 1) / microBatches)
        var anyNewSampler = false
        for r in active where budget > 0 && !r.done && !r.awaiting {
            var tokens: [Int32]
            if r.fed < r.prompt.count {
                tokens = Array(r.prompt[r.fed..<min(r.prompt.count, r.fed + budget)])
            } else if let t = r.next, decodeSlots > 0 {
                tokens = [t]
                r.next = nil
                decodeSlots -= 1
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
            if r.fed + tokens.count == r.prompt.count || r.fed >= r.prompt.count {
                // The prompt's last chunk or a decode row: the sequence waits for this step's token.
                sampleRow = input.rows.count - 1
                input.sampleRows.append(UInt32(sampleRow!))
                r.awaiting = true
                if !r.samplerSent { anyNewSampler = true }
            }
            r.fed += tokens.count
            budget -= tokens.count
            entries.append((r, sampleRow))
        }
        guard !entries.isEmpty else { return nil }
        if anyNewSampler {
            // One entry per sample row, or none: each sequence keeps the first sampling it is given.
            input.sampling = entries.compactMap { $0.sampleRow == nil ? nil : $0.request.sampling }
            for (r, s) in entries where s != nil { r.samplerSent = true }
        }
        return send(input, entries: entries)
    }

    /// Sends a micro-batch to stage 0; its answer (the last stage's tokens) wakes the loop.
    private func send(_ input: Conclave_V1_StageInput, entries: [(request: Request, sampleRow: Int?)]) -> InFlight {
        let waiter = coordinator.replies.waiter(notify: wake)
        var e = Envelope()
        e.requestID = waiter.id
        e.stageInput = input
        if let first = firstStage {
            first.send(WireMessage.make(e))
        } else {
            _ = coordinator.replies.resolve(.failure(WireError(.internalError, "the plan has no stages")), id: waiter.id)
        }
        return InFlight(waiter: waiter, entries: entries, sent: KernelBench.now())
    }

    /// Applies a returned step to its requests; returns the sequences that ended (to release on every stage).
    private func complete(_ f: InFlight, _ outcome: Result<Conclave_V1_TokenOut, WireError>) -> [UInt64] {
        var finished: [UInt64] = []
        switch outcome {
        case .failure(let e):
            for (r, _) in f.entries where !r.done {
                fail(r, e)
                finished.append(r.sequence)
            }
        case .success(let out):
            var byToken: [UInt64: Int32] = [:]
            for (s, t) in zip(out.sequences, out.tokens) { byToken[s] = t }
            for (r, sampleRow) in f.entries where !r.done && sampleRow != nil {
                r.awaiting = false
                if r.prefillEnd == nil { r.prefillEnd = KernelBench.now() }
                guard let token = byToken[r.sequence] else {
                    fail(r, WireError(.internalError, "the last stage returned no token for sequence \(r.sequence)"))
                    finished.append(r.sequence)
                    continue
                }
                if !advance(r, token) { finished.append(r.sequence) }
            }
        }
        return finished
    }

    private func fail(_ r: Request, _ e: WireError) {
        r.done = true
        fail(r.client, r.clientRequestID, e)
    }

    /// The failure every request gets while a worker of the cluster is down.
    private func downWorkerError() -> WireError? {
        guard let down = coordinator.links.first(where: { $0.state == .down }) else { return nil }
        down.info.withLock { $0.state = .down }
        let age = down.heartbeatAge.map { String(format: "%.1f", $0) } ?? "?"
        return WireError(.internalError, "worker '\(down.worker.name)' at \(down.worker.endpoint) stopped answering (last heartbeat \(age) s ago); the request failed")
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
        r.done = true
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
}
