import Foundation
import Runtime
import GGUF
import Generation
import Model
import TestSupport
import Testing
import Tokenizer

/// The prefix cache through the scheduler and the in-process stages (the path of `serve -m`; the cluster's stages
/// apply the same `CacheOps`, see InProcessClusterTests): a conversation replayed turn by turn gives exactly the
/// tokens and log-probabilities of a cold cache while computing only what each turn adds; reuse is by exact
/// token prefix, from position 0; everything stays within the stages' room, evicting least recently used.
@Suite(.serialized) struct PrefixCacheTests {
    static let shipped = try! Engine(path: Fixtures.shippedModel, threads: 2)

    struct Answer {
        var tokens: [Int32] = []
        var logprobs: [Float] = []
        var finish: FinishReason?
        var usage = GenerationUsage()
    }

    func scheduler(_ engine: Engine, caching: Bool, maxSequences: Int = 4, capacity: Int = 512, cacheBytes: Int = 0) -> (Scheduler, LocalExecutor) {
        let executor = LocalExecutor(engine: engine, capacity: capacity, maxSequences: maxSequences, prefixCacheBytes: cacheBytes)
        let s = Scheduler(executor: executor, tokenizer: engine.tokenizer, contextLength: capacity)
        s.maxSequences = maxSequences
        s.prefixCaching = caching
        s.start()
        return (s, executor)
    }

    func ask(_ s: Scheduler, _ prompt: [Int32], _ n: Int, _ sampling: SamplingParams, cache: Bool = true) async throws -> Answer {
        var a = Answer()
        for try await e in s.submit(GenerationRequest(prompt: prompt, maxTokens: n, sampling: sampling, logprobs: 0, cachePrompt: cache)).events {
            switch e {
            case .token(let t, _, let lp):
                if let t { a.tokens.append(t) }
                if let l = lp?.logprob { a.logprobs.append(l) }
            case .finished(let f, let u):
                a.finish = f
                a.usage = u
            }
        }
        return a
    }

    /// Waits (bounded) for what the scheduler's loop sends after a stream has ended.
    func eventually(_ condition: () -> Bool) async throws {
        for _ in 0..<1500 where !condition() { try await Task.sleep(nanoseconds: 20_000_000) }
    }

    /// Positions a request that ended with `a` computed: its prompt and every token it fed (the last one sampled
    /// is fed only when the answer went on after it, i.e. it ended on an end token the answer does not show).
    func computed(prompt: Int, _ a: Answer) -> Int { prompt + a.tokens.count - (a.finish == .length ? 1 : 0) }

    /// A conversation: each turn is the whole context so far (system text, earlier turns and the model's
    /// replies) plus the turn's text, as a chat client sends it.
    func converse(_ s: Scheduler, _ engine: Engine, system: String, turns: [String], n: Int, _ sampling: SamplingParams) async throws -> [(prompt: Int, answer: Answer)] {
        let tk = engine.tokenizer
        var context = tk.encode(system)
        var out: [(Int, Answer)] = []
        for turn in turns {
            context += tk.encode(turn, addSpecial: false)
            let a = try await ask(s, context, n, sampling)
            out.append((context.count, a))
            context += a.tokens
        }
        return out
    }

    static let turns = [" The first question is about caches.", " Then what about memory?", " And the network between hosts?", " Finally, the disk."]

    func replayMatchesCold(_ engine: Engine, _ label: String) async throws {
        var seeded = SamplingParams()
        seeded.seed = 17
        seeded.repeatPenalty = 1.1
        for (name, sampling) in [("greedy", SamplingParams.greedy), ("seeded", seeded)] {
            let (cold, c1) = scheduler(engine, caching: false)
            let want = try await converse(cold, engine, system: "You are a helpful assistant.", turns: Self.turns, n: 12, sampling)
            cold.stop(); c1.close()
            let (warm, c2) = scheduler(engine, caching: true)
            defer { warm.stop(); c2.close() }
            let got = try await converse(warm, engine, system: "You are a helpful assistant.", turns: Self.turns, n: 12, sampling)
            for (i, (w, g)) in zip(want, got).enumerated() {
                #expect(g.answer.tokens == w.answer.tokens, "\(label) \(name) turn \(i)")
                #expect(g.answer.logprobs == w.answer.logprobs, "\(label) \(name) turn \(i): log-probabilities")
                #expect(w.answer.usage.cachedTokens == 0)
                // Every turn after the first starts from everything the one before computed.
                #expect(g.answer.usage.cachedTokens == (i == 0 ? 0 : computed(prompt: got[i - 1].prompt, got[i - 1].answer)), "\(label) \(name) turn \(i)")
            }
            // The same request again reuses all of its prompt but the last token, and gives the same answer.
            let last = try #require(got.last)
            let again = try await converse(warm, engine, system: "You are a helpful assistant.", turns: Self.turns, n: 12, sampling)
            #expect(again.last?.answer.tokens == last.answer.tokens && again.last?.answer.logprobs == last.answer.logprobs)
            #expect(again.first?.answer.usage.cachedTokens == again.first!.prompt - 1, "\(label) \(name): a repeated request")
            let st = warm.stats()
            #expect(st.completed == 2 * Self.turns.count)
        }
    }

    @Test func aConversationReplayedGivesTheColdTokensAndLogprobs() async throws {
        try await replayMatchesCold(Self.shipped, "f16 KV")
        try await replayMatchesCold(try Engine(path: Fixtures.shippedModel, threads: 2, cacheTypes: try CacheTypes(key: .q8_0, value: .q8_0)), "q8_0 KV")
    }

    /// deepseek2's latent attention (the cache holds the latent and rope key only) and gpt-oss's sliding window
    /// (every other layer sees the last 8 positions: a reused prefix longer than the window) reuse as exactly.
    @Test(arguments: ["deepseek2", "gpt-oss"])
    func otherAttentionsReuseExactly(_ arch: String) async throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        var shape = ModelSynthesizer.Shape()
        shape.architecture = arch
        shape.layers = 3
        shape.kvHeads = 2
        shape.expertFF = 128
        shape.slidingWindow = 8
        let path = dir.appendingPathComponent("\(arch).gguf").path
        _ = try ModelSynthesizer(shape: shape, fileType: .f16, seed: 7, vocabulary: try GGUFFile(path: Fixtures.shippedModel)).write(to: path, pool: ThreadPool(threads: 2))
        try await replayMatchesCold(try Engine(path: path, threads: 2), arch)
    }

    /// Two conversations with the same system text reuse exactly their common token prefix; a prompt that differs
    /// in its first token reuses nothing; a request with cache_prompt false neither reuses nor is kept.
    @Test func onlyTheCommonTokenPrefixIsReused() async throws {
        let engine = Self.shipped, tk = engine.tokenizer
        let (s, executor) = scheduler(engine, caching: true)
        defer { s.stop(); executor.close() }
        let system = tk.encode("You are a careful assistant who answers in one line.")
        let a = system + tk.encode(" Tell me about cats.", addSpecial: false)
        let b = system + tk.encode(" Tell me about dogs and wolves.", addSpecial: false)
        let first = try await ask(s, a, 8, .greedy)
        #expect(first.usage.cachedTokens == 0)
        let second = try await ask(s, b, 8, .greedy)
        let common = zip(a, b).prefix { $0 == $1 }.count
        #expect(common >= system.count && common < a.count)
        #expect(second.usage.cachedTokens == common)
        // The same text behind another first token shares no prefix from position 0.
        var shifted = a
        shifted[0] = shifted[0] == 1 ? 2 : 1
        let other = try await ask(s, shifted, 8, .greedy)
        #expect(other.usage.cachedTokens == 0)
        // cache_prompt false: computed from position 0 and not kept. The stages apply the scheduler's changes in
        // order, so once a later request's prefix is kept, the plain one's would have been: b's and the shifted
        // one's are kept, then the fresh one's, and nothing else.
        let plain = try await ask(s, a, 8, .greedy, cache: false)
        #expect(plain.usage.cachedTokens == 0 && plain.tokens == first.tokens && plain.logprobs == first.logprobs)
        _ = try await ask(s, tk.encode("Something else entirely."), 4, .greedy)
        try await eventually { executor.keptPrefixes().entries >= 3 }
        #expect(executor.keptPrefixes().entries == 3)
        #expect(s.stats().completed == 5)
    }

    /// A prefix shared with a request still running is copied from it (the system prompt of concurrent
    /// conversations), and the answers are those of a cold cache.
    @Test func aRunningSequenceSharesItsPrefix() async throws {
        let engine = Self.shipped, tk = engine.tokenizer
        let system = tk.encode(String(repeating: "Rules of the house: be brief, be kind. ", count: 6))
        let prompts = [" First guest.", " Second guest, later.", " A third one."].map { system + tk.encode($0, addSpecial: false) }
        let (cold, c1) = scheduler(engine, caching: false)
        var want: [Answer] = []
        for p in prompts { want.append(try await ask(cold, p, 40, .greedy)) }
        cold.stop(); c1.close()
        let (s, executor) = scheduler(engine, caching: true)
        defer { s.stop(); executor.close() }
        // The first runs long; the others arrive while it decodes.
        let firstTask = Task { try await ask(s, prompts[0], 40, .greedy) }
        try await Task.sleep(nanoseconds: 50_000_000)
        async let b = ask(s, prompts[1], 40, .greedy)
        async let c = ask(s, prompts[2], 40, .greedy)
        let got = [try await firstTask.value, try await b, try await c]
        for (i, (g, w)) in zip(got, want).enumerated() {
            #expect(g.tokens == w.tokens && g.logprobs == w.logprobs, "request \(i)")
        }
        #expect(got[1].usage.cachedTokens >= system.count && got[2].usage.cachedTokens >= system.count)
    }

    /// A room for one running sequence and a few hundred kept positions: many conversations evict the least
    /// recently used prefixes, the stages never hold more than their room, and every answer is the cold one.
    @Test func aSmallRoomEvictsAndStaysExact() async throws {
        let engine = Self.shipped, tk = engine.tokenizer
        let perPosition = KVRoom.bytesPerPosition(layers: engine.config.layerCount, config: engine.config, types: .f16)
        let (cold, c1) = scheduler(engine, caching: false, maxSequences: 1, capacity: 256)
        let (s, executor) = scheduler(engine, caching: true, maxSequences: 1, capacity: 256, cacheBytes: 300 * perPosition)
        defer { s.stop(); executor.close() }
        let room = try #require(executor.kvRoom)
        for round in 0..<2 {
            for k in 0..<5 {
                let p = tk.encode("Conversation \(k): " + String(repeating: "word\(k) ", count: 20 + 3 * k))
                let w = try await ask(cold, p, 10, .greedy)
                let g = try await ask(s, p, 10, .greedy)
                #expect(g.tokens == w.tokens && g.logprobs == w.logprobs, "round \(round), conversation \(k)")
                let kept = executor.keptPrefixes()
                #expect(kept.positions + kept.entries * room.overhead <= room.positions, "kept \(kept) in \(room)")
            }
        }
        cold.stop(); c1.close()
        #expect(s.stats().prefixEvictions > 0)
    }
}
