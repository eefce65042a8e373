import Foundation
import Runtime
import Testing
import TestSupport
import GGUF
import Kernels
@testable import Model

/// Speculative decoding in one process: the same text as without a draft, whatever the draft proposes.
@Suite final class SpeculativeTests {
    let dir = Fixtures.temporaryDirectory()
    deinit { try? FileManager.default.removeItem(at: dir) }

    /// A one-layer random model with the tokenizer of `vocabulary`: a draft that is always wrong.
    func tinyModel(_ name: String, vocabulary: String) throws -> String {
        let path = dir.appendingPathComponent("\(name).gguf").path
        _ = try ModelSynthesizer(shape: .minimal, fileType: .q8_0, seed: 1, vocabulary: try GGUFFile(path: vocabulary)).write(to: path, pool: ThreadPool(threads: 2))
        return path
    }

    func text(_ engine: Engine, params: SamplingParams, draft: Engine?, options: DraftOptions = DraftOptions()) throws -> ([Int32], DraftStats) {
        let seq = engine.newSequence(capacity: 256)
        var tokens: [Int32] = []
        var stats = DraftStats()
        let policy = GenerationPolicy(maxTokens: 48, capacity: 256)
        let prompt = engine.tokenizer.encode("Once upon a time")
        if let draft {
            _ = try engine.generate(prompt: prompt, policy: policy, params: params, in: seq, draft: draft, draftSequence: draft.newSequence(capacity: 256),
                                    options: options, draftStats: &stats) { t, _ in
                if let t { tokens.append(t) }
                return true
            }
        } else {
            _ = try engine.generate(prompt: prompt, policy: policy, params: params, in: seq) { t, _ in
                if let t { tokens.append(t) }
                return true
            }
        }
        // No stale positions: the cache holds exactly the history, as a fresh evaluation of it would.
        let fresh = engine.newSequence(capacity: 256)
        let history = seq.tokens
        #expect(seq.length == history.count)
        let next: [Int32] = [42]
        let continued = try engine.evaluate(next, in: seq)
        let clean = try engine.evaluate(history + next, in: fresh)
        #expect(continued == clean, "the cache after speculative decoding differs from one built from its tokens")
        return (tokens, stats)
    }

    /// The model drafting for itself (most proposals accepted) and a random model whose proposals are always
    /// wrong: greedy and seeded sampled text equal to plain decoding.
    @Test func sameTokensWithAnyDraft() throws {
        let target = try Engine(path: Fixtures.shippedModel, threads: 2)
        let wrong = try tinyModel("wrong", vocabulary: Fixtures.shippedModel)
        var options = DraftOptions()
        options.minProbability = 0  // propose every time
        options.maxTokens = 6
        var greedy = SamplingParams()
        greedy.temperature = 0
        greedy.repeatPenalty = 1
        var sampled = SamplingParams()
        sampled.temperature = 0.8
        sampled.seed = 5
        for params in [greedy, sampled] {
            let (plain, _) = try text(target, params: params, draft: nil)
            #expect(plain.count == 48)
            let (selfDrafted, s1) = try text(target, params: params, draft: try Engine(path: Fixtures.shippedModel, threads: 2), options: options)
            #expect(selfDrafted == plain)
            #expect(s1.accepted > 0 && s1.passes < plain.count)
            let (wrongDrafted, s2) = try text(target, params: params, draft: try Engine(path: wrong, threads: 2), options: options)
            #expect(wrongDrafted == plain)
            #expect(s2.proposed > 0 && s2.accepted <= s2.proposed / 10)
        }
    }

    @Test func aDraftWithAnotherVocabularyIsRefused() throws {
        let target = try Engine(path: Fixtures.shippedModel, threads: 1)
        let other = try tinyModel("other", vocabulary: Fixtures.path("vocab/ggml-vocab-gpt-2.gguf"))
        #expect(throws: ModelError.self) { try target.checkDraft(try Engine(path: other, threads: 1)) }
    }
}
