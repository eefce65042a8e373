import Synchronization

/// Where one sequence is in its grammar: the generated tokens it has matched and the state after each, so the
/// state for any history is found by matching only what is new. The history is the truth — the trail follows it
/// back when speculative proposals are rejected, and is rebuilt from it after a recovery replays the sequence on
/// new workers — so the grammar needs no state of its own on the wire.
public struct GrammarTrail: Sendable {
    public let matcher: GrammarMatcher
    /// The position of the first generated token: what comes before it (the prompt) is not matched.
    public let start: Int
    private var tokens: [Int32] = []
    private var states: [Int32]
    private var epoch: Int

    public init(matcher: GrammarMatcher, start: Int) {
        self.matcher = matcher
        self.start = max(0, start)
        states = [matcher.initial]
        epoch = matcher.epoch
    }

    /// The state after the generated part of `history` (the tokens from `start` on).
    public mutating func state(after history: [Int32]) -> Int32 {
        let generated = history.count > start ? history[start...] : []
        if epoch != matcher.epoch {
            tokens = []
            states = [matcher.initial]
            epoch = matcher.epoch
        }
        var common = 0
        for (a, b) in zip(tokens, generated) {
            guard a == b else { break }
            common += 1
        }
        tokens.removeLast(tokens.count - common)
        states.removeLast(states.count - 1 - common)
        for t in generated.dropFirst(common) {
            tokens.append(t)
            states.append(states.last! < 0 ? GrammarMatcher.dead : matcher.next(states.last!, token: t))
        }
        return states.last!
    }
}

/// What a sampler needs of a grammar at one step: whether a token may come next, and when that is not enough,
/// every token that may.
public struct GrammarConstraint {
    public let matcher: GrammarMatcher
    public let state: Int32

    public init(matcher: GrammarMatcher, state: Int32) {
        self.matcher = matcher
        self.state = state
    }

    public func allows(_ token: Int32) -> Bool { matcher.next(state, token: token) >= 0 }
    public func mask() -> [UInt64] { matcher.mask(state) }
    /// What to emit when no token at all is allowed: the end of generation.
    public var fallback: Int32 { matcher.vocabulary.endOfGeneration.first ?? 0 }
}

/// Compiled grammars by their text, so every request with the same schema shares one matcher and its caches.
/// One owner at a time, like the matchers it holds.
public final class GrammarCache: @unchecked Sendable {
    private let vocabulary: () throws -> GrammarVocabulary
    private var loaded: GrammarVocabulary?
    private var matchers: [String: GrammarMatcher] = [:]
    private var order: [String] = []
    public let capacity: Int
    /// The most bytes the matchers' caches may hold between steps (`byteLimit(vocabularySize:)`, counted in the
    /// stage's scratch by the memory budget).
    public let byteLimit: Int
    /// Seconds spent sampling constrained tokens (checks and masks included) and how many, for /metrics: written
    /// by the owner, read by a metrics scrape or heartbeat on another thread.
    private let counters = Mutex<(seconds: Double, tokens: Int)>((0, 0))
    public var figures: (seconds: Double, tokens: Int) { counters.withLock { $0 } }
    public func record(seconds: Double) { counters.withLock { $0.seconds += seconds; $0.tokens += 1 } }

    /// `vocabulary` is called once, on the first grammar (building the trie of a 150k vocabulary takes a moment).
    public init(capacity: Int = 8, byteLimit: Int = 64 << 20, vocabulary: @escaping () throws -> GrammarVocabulary) {
        self.capacity = capacity
        self.byteLimit = byteLimit
        self.vocabulary = vocabulary
    }

    /// What a sampling stage sets aside for grammar caches, by its vocabulary: 1 MiB for states and their
    /// transitions (1 KiB a state) and 64 token masks. `bench decode --schema` on an 8-field schema meets 133 states
    /// and 24 masks (0.70 MiB at 152k tokens, of 2.16 set aside); past the limit the caches are shed between steps
    /// and found again. (The vocabulary's trie is built once per process, like the tokenizer's tables, and
    /// counted with them in the runtime's fixed overhead.)
    public static func byteLimit(vocabularySize: Int) -> Int {
        (1 << 20) + 64 * 8 * ((vocabularySize + 63) / 64)
    }

    /// The bytes the matchers' caches hold now.
    public var bytes: Int { matchers.values.reduce(0) { $0 + $1.bytes } }

    public func matcher(for text: String) throws(GrammarError) -> GrammarMatcher {
        if let m = matchers[text] { return m }
        let v: GrammarVocabulary
        if let loaded { v = loaded } else {
            do { v = try vocabulary() } catch { throw GrammarError("grammar: this process cannot read the model's vocabulary: \(error)") }
            loaded = v
        }
        let m = try GrammarMatcher(program: GrammarProgram(parsing: text), vocabulary: v)
        if order.count >= capacity { matchers[order.removeFirst()] = nil }
        matchers[text] = m
        order.append(text)
        return m
    }

    /// Lets every matcher drop caches grown past their bounds, then, while all of them hold more than
    /// `byteLimit`, sheds the least recently compiled ones' masks and then their whole caches (between steps).
    public func trim() {
        for m in matchers.values { m.trim() }
        guard bytes > byteLimit else { return }
        for everything in [false, true] {
            for text in order {
                matchers[text]?.shed(everything: everything)
                if bytes <= byteLimit { return }
            }
        }
    }
}
