import Foundation
import Runtime
import GGUF
import Kernels
import Generation
import Model
import TestSupport
import Testing
import Tokenizer

@Suite struct GenerationPolicyTests {
    static let tokenizer = try! Tokenizer(file: GGUFFileOpener.shipped)

    /// Feeds the tokens of `text` through a policy and returns what it emitted and how it ended.
    func feed(_ text: String, _ policy: GenerationPolicy) -> (text: String, counted: Int, finish: FinishReason?) {
        var p = policy.start(tokenizer: Self.tokenizer)
        var out = "", counted = 0
        for (i, t) in Self.tokenizer.encode(text, addSpecial: false).enumerated() {
            let step = p.accept(t, fed: i)
            out += step.text
            if step.counted { counted += 1 }
            if let f = step.finish { return (out, counted, f) }
        }
        return (out, counted, nil)
    }

    /// The policy says which stop string ended the generation (the earliest in the text), for Anthropic's
    /// `stop_sequence`.
    @Test func theMatchedStopStringIsKnown() {
        var p = GenerationPolicy(maxTokens: 100, stop: ["zzz", "is a", "this"], capacity: 100).start(tokenizer: Self.tokenizer)
        for (i, t) in Self.tokenizer.encode("Hello world, this is a test", addSpecial: false).enumerated() where p.finished == nil {
            _ = p.accept(t, fed: i)
        }
        #expect(p.finished == .stop && p.matchedStop == "this")
    }

    @Test func stopStringMatchesAcrossPieces() throws {
        let input = "Hello world, this is a test"
        let pieces = Self.tokenizer.encode(input, addSpecial: false).map { String(decoding: Self.tokenizer.piece($0), as: UTF8.self) }
        let text = pieces.joined()  // as the model would generate it (with the tokenizer's leading space, if any)
        // The stop string starts inside one piece and ends inside the next.
        let boundary = pieces[0].count
        #expect(pieces.count >= 3 && pieces[0].count >= 2 && pieces[1].count >= 2, "pieces: \(pieces)")
        let stop = String(text.dropFirst(boundary - 1).prefix(3))
        let r = feed(input, GenerationPolicy(maxTokens: 100, stop: [stop], capacity: 100))
        #expect(r.finish == .stop)
        #expect(r.text == String(text.prefix(boundary - 1)))
        // A near miss is held back only until it can no longer match, then emitted: nothing is lost.
        let miss = feed(input, GenerationPolicy(maxTokens: 100, stop: [stop + "\u{1}"], capacity: 100))
        #expect(miss.finish == nil)
        var p = GenerationPolicy(maxTokens: 100, stop: [String(text.suffix(2)) + "!"], capacity: 100).start(tokenizer: Self.tokenizer)
        var all = ""
        for (i, t) in Self.tokenizer.encode(input, addSpecial: false).enumerated() { all += p.accept(t, fed: i).text }
        // The tail that could begin the stop string waits; the end of generation releases it.
        #expect(text.hasPrefix(all) && all.count < text.count)
        let eos = Self.tokenizer.vocab.eos ?? Self.tokenizer.vocab.eot!
        let end = p.accept(eos, fed: 50)
        #expect(end.finish == .stop && !end.counted && all + end.text == text)
    }

    /// With ignoreEOS an end-of-generation token is one more token (llama-server's ignore_eos): only max tokens
    /// or the context's end stop the generation.
    @Test func ignoreEOSRunsToMaxTokens() throws {
        let eos = try #require(Self.tokenizer.vocab.eos ?? Self.tokenizer.vocab.eot)
        var plain = GenerationPolicy(maxTokens: 3, capacity: 100).start(tokenizer: Self.tokenizer)
        #expect(plain.accept(eos, fed: 1).finish == .stop)
        var p = GenerationPolicy(maxTokens: 3, capacity: 100, ignoreEOS: true).start(tokenizer: Self.tokenizer)
        let steps = (0..<3).map { p.accept(eos, fed: 1 + $0) }
        #expect(steps.prefix(2).allSatisfy { $0.counted && $0.finish == nil })
        #expect(steps[2].counted && steps[2].finish == .length && p.generated == 3)
    }

    @Test func maxTokensAndContextEndWithLength() {
        let text = "one two three four five six"
        let r = feed(text, GenerationPolicy(maxTokens: 3, capacity: 100))
        #expect(r.finish == .length && r.counted == 3)
        // Positions run out: the token sampled at the last position is still emitted, then the generation ends.
        let c = feed(text, GenerationPolicy(maxTokens: 100, capacity: 4))
        #expect(c.finish == .length && c.counted == 5)
        let zero = feed(text, GenerationPolicy(maxTokens: 0, capacity: 100))
        #expect(zero.finish == .length && zero.counted == 0 && zero.text.isEmpty)
    }
}

/// Opens the model the repository ships.
enum GGUFFileOpener {
    static var shipped: GGUFFile { try! GGUFFile(path: Fixtures.shippedModel) }
}

@Suite(.serialized) struct SchedulerTests {
    static let engine = try! Engine(path: Fixtures.shippedModel, threads: 2)

    func scheduler(maxSequences: Int = 8, capacity: Int = 256, drafter: Drafter? = nil) -> (Scheduler, LocalExecutor) {
        let executor = LocalExecutor(engine: Self.engine, capacity: capacity, maxSequences: maxSequences)
        let s = Scheduler(executor: executor, tokenizer: Self.engine.tokenizer, contextLength: capacity)
        s.maxSequences = maxSequences
        s.drafter = drafter
        s.start()
        return (s, executor)
    }

    func collect(_ events: AsyncThrowingStream<GenerationEvent, Error>) async throws -> (tokens: [Int32], text: String, finish: FinishReason?, usage: GenerationUsage?) {
        var tokens: [Int32] = [], text = "", finish: FinishReason?, usage: GenerationUsage?
        for try await e in events {
            switch e {
            case .token(let t, let s, _):
                if let t { tokens.append(t) }
                text += s
            case .finished(let f, let u):
                finish = f
                usage = u
            }
        }
        return (tokens, text, finish, usage)
    }

    /// Sequences still holding caches once the scheduler has released what ended: a stream ends before the
    /// scheduler's loop queues the release of its sequence, so poll (bounded) instead of reading once.
    func liveAfterRelease(_ executor: LocalExecutor) async throws -> Int {
        var live = executor.liveSequences()
        for _ in 0..<3000 where live > 0 {
            try await Task.sleep(nanoseconds: 20_000_000)
            live = executor.liveSequences()
        }
        return live
    }

    /// What `conclave run` gives for the same prompt and sampling.
    func alone(_ prompt: [Int32], _ n: Int, _ params: SamplingParams) throws -> (tokens: [Int32], text: String) {
        var tokens: [Int32] = [], text = ""
        try Self.engine.generate(prompt: prompt, maxTokens: n, params: params, in: Self.engine.newSequence(capacity: 256)) { t, s in
            if let t { tokens.append(t) }
            text += s
            return true
        }
        return (tokens, text)
    }

    @Test func concurrentRequestsGiveWhatEachGivesAlone() async throws {
        let (s, executor) = scheduler()
        defer { s.stop(); executor.close() }
        let tk = Self.engine.tokenizer
        var seeded = SamplingParams()
        seeded.seed = 11
        let asks: [(String, SamplingParams)] = [("The build system", .greedy), ("Once upon a time", seeded), ("A cache line", .greedy)]
        let streams = asks.map { s.submit(GenerationRequest(prompt: tk.encode($0.0), maxTokens: 12, sampling: $0.1)).events }
        for (i, stream) in streams.enumerated() {
            let got = try await collect(stream)
            let want = try alone(tk.encode(asks[i].0), 12, asks[i].1)
            #expect(got.tokens == want.tokens, "request \(i)")
            #expect(got.text == want.text)
            #expect(got.usage?.promptTokens == tk.encode(asks[i].0).count && got.usage?.completionTokens == got.tokens.count)
        }
        #expect(s.stats().completed == 3)
        #expect(try await liveAfterRelease(executor) == 0, "every finished sequence's caches are freed")
    }

    @Test func badRequestsFailAndServingGoesOn() async throws {
        let (s, executor) = scheduler(capacity: 16)
        defer { s.stop(); executor.close() }
        let tk = Self.engine.tokenizer
        let long = tk.encode(String(repeating: "word ", count: 40))
        await #expect(throws: GenerationError(.contextExceeded, "the prompt has \(long.count) tokens but the context holds 16; use a shorter prompt or a larger context")) {
            _ = try await collect(s.submit(GenerationRequest(prompt: long, maxTokens: 4)).events)
        }
        await #expect(throws: GenerationError(.invalidRequest, "the prompt is empty")) {
            _ = try await collect(s.submit(GenerationRequest(prompt: [], maxTokens: 4)).events)
        }
        // Sampling settings out of range (from any client) are refused, naming the setting.
        for (edit, name) in [({ (p: inout SamplingParams) in p.topP = 2 }, "top-p"), ({ $0.temperature = .nan }, "temperature"),
                             ({ $0.topK = -1 }, "top-k"), ({ $0.repeatPenalty = 0 }, "repeat penalty")] {
            var p = SamplingParams()
            edit(&p)
            do {
                _ = try await collect(s.submit(GenerationRequest(prompt: tk.encode("Hi"), maxTokens: 3, sampling: p)).events)
                Issue.record("accepted a bad \(name)")
            } catch let e as GenerationError {
                #expect(e.code == .invalidRequest && e.message.hasPrefix(name), "\(e)")
            }
        }
        let ok = try await collect(s.submit(GenerationRequest(prompt: tk.encode("Hi"), maxTokens: 3, sampling: .greedy)).events)
        #expect(ok.finish == .length && ok.tokens.count == 3)
        // The context runs out before max tokens: finish reason length, at the context's end.
        let full = try await collect(s.submit(GenerationRequest(prompt: tk.encode("Hi"), maxTokens: 100, sampling: .greedy)).events)
        #expect(full.finish == .length && tk.encode("Hi").count + full.tokens.count == 17)
    }

    @Test func cancellingFreesTheSequence() async throws {
        // Long enough that only the cancel can end it early, however far a loaded consumer lags behind.
        let (s, executor) = scheduler(capacity: 4096)
        defer { s.stop(); executor.close() }
        let (id, events) = s.submit(GenerationRequest(prompt: Self.engine.tokenizer.encode("The"), maxTokens: 4000, sampling: .greedy))
        var seen = 0
        do {
            for try await e in events {
                if case .token = e { seen += 1 }
                if seen == 2 { s.cancel(id) }
            }
            Issue.record("a cancelled stream ends with an error")
        } catch is CancellationError {}
        #expect(seen < 4000)
        // The step in flight returns, then the release runs.
        #expect(try await liveAfterRelease(executor) == 0)
        #expect(s.stats().cancelled == 1)
    }

    /// Speculative decoding through the scheduler, the path of `serve --draft`: each decode step carries a
    /// sequence's pending token and the draft's proposals, the stages verify them in one pass and roll back what
    /// they rejected. With the model drafting for itself (most proposals accepted) and with a random model whose
    /// proposals are always wrong, concurrent greedy and seeded requests (with a repetition penalty, which reads
    /// the rolled-back history) give exactly what each gives alone without a draft, and so does a request after
    /// them (no stale positions left in the stages' caches).
    @Test func draftedRequestsGiveWhatEachGivesAlone() async throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let wrong = dir.appendingPathComponent("wrong.gguf").path
        _ = try ModelSynthesizer(shape: .minimal, fileType: .q8_0, seed: 1, vocabulary: GGUFFileOpener.shipped).write(to: wrong, pool: ThreadPool(threads: 2))
        var options = DraftOptions()
        options.minProbability = 0  // propose every time
        options.maxTokens = 6
        var greedy = SamplingParams.greedy
        greedy.repeatPenalty = 1
        var seeded = SamplingParams()
        seeded.seed = 11
        seeded.repeatPenalty = 1.1
        // Under a grammar the draft proposes freely and the last stage verifies each proposal under the grammar.
        var constrained = seeded
        constrained.grammar = #"root ::= "[" [a-z ,]{1,60} "]""#
        let tk = Self.engine.tokenizer
        let asks: [(String, SamplingParams)] = [("The build system", greedy), ("Once upon a time", seeded), ("A cache line", .greedy),
                                                ("A list of words", constrained)]
        let n = 24
        let want = try asks.map { try alone(tk.encode($0.0), n, $0.1).tokens }
        #expect(tk.decode(want[3]).hasPrefix("[") && tk.decode(want[3]).dropFirst().allSatisfy { $0.isLowercase || " ,]".contains($0) }, "\(tk.decode(want[3]))")
        for (name, path) in [("self", Fixtures.shippedModel), ("wrong", wrong)] {
            let (s, executor) = scheduler(drafter: Drafter(engine: try Engine(path: path, threads: 2), options: options))
            defer { s.stop(); executor.close() }
            let streams = asks.map { s.submit(GenerationRequest(prompt: tk.encode($0.0), maxTokens: n, sampling: $0.1)).events }
            for (i, stream) in streams.enumerated() {
                #expect(try await collect(stream).tokens == want[i], "\(name) draft, request \(i)")
            }
            let after = try await collect(s.submit(GenerationRequest(prompt: tk.encode(asks[1].0), maxTokens: n, sampling: asks[1].1)).events)
            #expect(after.tokens == want[1], "\(name) draft, the request after")
            let st = s.stats()
            #expect(st.draft.proposed > 0)
            if name == "self" {
                #expect(st.draft.accepted > 0 && st.draft.passes < Int(st.tokens) * 3 / 4, "\(st)")
            } else {
                #expect(st.draft.accepted <= st.draft.proposed / 10, "\(st)")
            }
            #expect(try await liveAfterRelease(executor) == 0)
        }
    }

    @Test func queuedBeyondMaxSequencesAllComplete() async throws {
        let (s, executor) = scheduler(maxSequences: 2)
        defer { s.stop(); executor.close() }
        let tk = Self.engine.tokenizer
        let streams = (0..<5).map { i in s.submit(GenerationRequest(prompt: tk.encode("Number \(i)"), maxTokens: 4, sampling: .greedy)).events }
        for st in streams { #expect(try await collect(st).tokens.count == 4) }
        #expect(s.stats().completed == 5)
    }
}
