import Tokenizer

/// Why a generation ended, in the OpenAI API's words: `stop` (an end-of-generation token or a stop string),
/// `length` (max tokens, or the context is full).
public enum FinishReason: String, Sendable, Equatable {
    case stop, length
}

/// The rules that end a generation and turn its tokens into text — the same for `conclave run`, the cluster's
/// scheduler and the HTTP API: end-of-generation tokens, stop strings (matched across token boundaries: text that
/// could still become a stop string is held back until it cannot), max tokens, the context's end. Text comes out
/// in whole UTF-8 characters only.
public struct GenerationPolicy: Sendable, Equatable {
    public var maxTokens: Int
    public var stop: [String]
    /// Positions the sequence's cache holds.
    public var capacity: Int
    /// End-of-generation tokens are ordinary tokens (llama-server's `ignore_eos`): the generation runs to
    /// max tokens or the context's end — how benchmarks get the length they ask for.
    public var ignoreEOS: Bool

    public init(maxTokens: Int, stop: [String] = [], capacity: Int, ignoreEOS: Bool = false) {
        self.maxTokens = maxTokens
        self.stop = stop.filter { !$0.isEmpty }
        self.capacity = capacity
        self.ignoreEOS = ignoreEOS
    }

    public func start(tokenizer: Tokenizer) -> GenerationProgress { GenerationProgress(policy: self, tokenizer: tokenizer) }
}

/// One sequence's way through its policy: feed each sampled token, get the text to emit and whether it ended.
public struct GenerationProgress: Sendable {
    public let policy: GenerationPolicy
    let tokenizer: Tokenizer
    public private(set) var generated = 0
    public private(set) var finished: FinishReason?
    /// The stop string that ended the generation, if one did (Anthropic reports it as `stop_sequence`).
    public private(set) var matchedStop: String?
    private var pendingBytes: [UInt8] = []  // an incomplete UTF-8 character
    private var held: [Unicode.Scalar] = []  // text that may be the start of a stop string
    private let stops: [[Unicode.Scalar]]

    init(policy: GenerationPolicy, tokenizer: Tokenizer) {
        self.policy = policy
        self.tokenizer = tokenizer
        stops = policy.stop.map { Array($0.unicodeScalars) }
    }

    public struct Step: Sendable, Equatable {
        /// The token counts as generated (false for an end-of-generation token, which is not part of the text).
        public var counted: Bool
        /// Text to emit now (may be empty while it could still become a stop string).
        public var text: String
        /// Set when this token ended the generation.
        public var finish: FinishReason?
    }

    /// Applies a sampled token. `fed` is how many positions of the cache are filled before this token is fed.
    public mutating func accept(_ token: Int32, fed: Int) -> Step {
        precondition(finished == nil, "accept after the generation finished")
        if generated >= policy.maxTokens {
            return end(.length, counted: false)
        }
        if !policy.ignoreEOS, tokenizer.isEndOfGeneration(token) {
            return end(.stop, counted: false)
        }
        generated += 1
        pendingBytes += tokenizer.piece(token)
        let cut = completeUTF8Prefix(pendingBytes)
        if cut > 0 {
            held += String(decoding: pendingBytes[..<cut], as: UTF8.self).unicodeScalars
            pendingBytes.removeFirst(cut)
        }
        if let (at, which) = firstStopMatch() {
            matchedStop = policy.stop[which]
            let text = String(String.UnicodeScalarView(held[..<at]))
            held.removeAll()
            pendingBytes.removeAll()
            finished = .stop
            return Step(counted: true, text: text, finish: .stop)
        }
        if generated >= policy.maxTokens || fed >= policy.capacity {
            return end(.length, counted: true)
        }
        // Emit all but the longest tail that is a prefix of some stop string.
        let keep = heldTail()
        let text = String(String.UnicodeScalarView(held[..<(held.count - keep)]))
        held.removeFirst(held.count - keep)
        return Step(counted: true, text: text, finish: nil)
    }

    /// Ends with everything held back emitted (an incomplete character as U+FFFD, as a lossy decoder would).
    private mutating func end(_ reason: FinishReason, counted: Bool) -> Step {
        var text = String(String.UnicodeScalarView(held))
        if !pendingBytes.isEmpty { text += String(decoding: pendingBytes, as: UTF8.self) }
        held.removeAll()
        pendingBytes.removeAll()
        finished = reason
        return Step(counted: counted, text: text, finish: reason)
    }

    /// Where the earliest stop string begins in the held text, and which it is.
    private func firstStopMatch() -> (at: Int, stop: Int)? {
        var best: (at: Int, stop: Int)?
        for (k, s) in stops.enumerated() where s.count <= held.count {
            var i = 0
            while i + s.count <= held.count, best.map({ i < $0.at }) ?? true {
                if held[i] == s[0], Array(held[i..<(i + s.count)]) == s { best = (i, k); break }
                i += 1
            }
        }
        return best
    }

    /// Length of the longest suffix of the held text that is a proper prefix of a stop string.
    private func heldTail() -> Int {
        var longest = 0
        for s in stops {
            var k = min(s.count - 1, held.count)
            while k > longest {
                if Array(held[(held.count - k)...]) == Array(s[..<k]) { longest = k; break }
                k -= 1
            }
        }
        return longest
    }
}

/// Length of the longest prefix of `b` that ends on a UTF-8 character boundary (an invalid byte counts as one
/// character, so malformed text never stalls).
public func completeUTF8Prefix(_ b: [UInt8]) -> Int {
    var i = b.count
    var back = 0
    while i > 0 && back < 4 {
        let c = b[i - 1]
        if c & 0xC0 != 0x80 {
            let need = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1
            return back + 1 >= need ? b.count : i - 1
        }
        i -= 1
        back += 1
    }
    return b.count
}
