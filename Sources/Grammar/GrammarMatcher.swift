/// Matches a `GrammarProgram` against a vocabulary, one token at a time, and says which tokens may come next.
///
/// A match state is the set of parse stacks alive after the bytes so far (llama.cpp's representation: each stack
/// lists where to continue, innermost last, and every top is a byte set or a token). States are interned to small
/// integers and their byte transitions cached in a table, so the automaton is built lazily as generation needs it;
/// a token-mask walk over the vocabulary trie then costs one table read per trie node visited, and each state's
/// mask is kept once computed. JSON output revisits the same few states (inside a string, after a comma), so after
/// the first tokens of the first request nearly every mask is a cache hit.
///
/// One owner at a time (the last stage's queue): the caches are mutated without locks.
public final class GrammarMatcher: @unchecked Sendable {
    public let program: GrammarProgram
    public let vocabulary: GrammarVocabulary
    /// Resolved ids of the program's token references.
    private let tokenIDs: [Int32]

    /// The state before any byte.
    public private(set) var initial: Int32 = 0
    /// A state that matched nothing: no stack survived.
    public static let dead: Int32 = -1
    private static let unknown: Int32 = -2

    private var stacks: [[[Int32]]] = []
    private var interned: [[[Int32]]: Int32] = [:]
    private var accepting: [Bool] = []
    /// transitions[state * 256 + byte]: the next state, `dead`, or `unknown` until first asked. A raw buffer
    /// (grown by doubling) because the mask walk reads it once per trie node.
    private var transitions = UnsafeMutablePointer<Int32>.allocate(capacity: 256 * 16)
    private var transitionCapacity = 16

    deinit { transitions.deallocate() }
    private var tokenTransitions: [Int64: Int32] = [:]
    private var masks: [Int32: [UInt64]] = [:]
    /// Bumped when the caches are cleared: a state number from an older epoch means nothing any more.
    public private(set) var epoch = 0

    /// Caches are cleared past these (the transition table is 1 KiB a state, a mask one bit a token); a
    /// `GrammarCache` holds all its matchers to a tighter byte limit (`bytes`, `shed`). JSON output meets a few
    /// hundred states, and the sampler needs a whole mask only when the top tokens are refused.
    public var maxStates = 8192
    public var maxMasks = 256
    /// A state with more live stacks than this is refused (dead): an ambiguous grammar would otherwise grow
    /// without bound.
    static let maxStacks = 4096
    static let maxDepth = 4096

    /// States interned so far (since the caches were last cleared).
    public var stateCount: Int { stacks.count }

    /// Bytes the interned stack sets take (arrays' storage and headers, the interning table's entry).
    private var stackBytes = 0

    /// The bytes this matcher's caches hold now: the transition table, the masks, the interned states and the
    /// token transitions (the program itself is a few KiB, not counted).
    public var bytes: Int {
        256 * 4 * transitionCapacity + masks.count * 8 * ((vocabulary.count + 63) / 64) + stackBytes + 48 * tokenTransitions.count
    }

    /// Gives memory back: first the masks (each found again by one trie walk), then, when `everything`, every
    /// cache (state numbers held by callers are void after it; compare `epoch`). Between tokens only.
    public func shed(everything: Bool) {
        if everything { reset() } else { masks = [:] }
    }

    /// Counters for /metrics and the benchmark.
    public private(set) var masksComputed = 0
    public private(set) var maskHits = 0

    public init(program: GrammarProgram, vocabulary: GrammarVocabulary) throws(GrammarError) {
        self.program = program
        self.vocabulary = vocabulary
        var ids: [Int32] = []
        for r in program.tokenReferences {
            switch r {
            case .id(let id):
                guard Int(id) < vocabulary.count else { throw GrammarError("grammar: token <[\(id)]> is outside the vocabulary of \(vocabulary.count)") }
                ids.append(id)
            case .text(let t):
                guard let id = vocabulary.id(ofText: t) else { throw GrammarError("grammar: the vocabulary has no token \(t)") }
                ids.append(id)
            }
        }
        tokenIDs = ids
        reset()
    }

    private func reset() {
        stacks = []
        interned = [:]
        accepting = []
        tokenTransitions = [:]
        masks = [:]
        stackBytes = 0
        if transitionCapacity > 16 {
            transitions.deallocate()
            transitions = UnsafeMutablePointer<Int32>.allocate(capacity: 256 * 16)
            transitionCapacity = 16
        }
        epoch += 1
        var start = Set<[Int32]>()
        for a in program.alternatives[Int(program.root)] {
            expand(program.kinds[Int(a)] == .end ? [] : [a], into: &start)
        }
        initial = intern(start)
    }

    public func isAccepting(_ state: Int32) -> Bool { state >= 0 && accepting[Int(state)] }

    /// Whether nothing more can be matched from `state` (complete, and no stack wants another byte or token).
    public func isComplete(_ state: Int32) -> Bool { state >= 0 && stacks[Int(state)].allSatisfy(\.isEmpty) }

    private func intern(_ set: Set<[Int32]>) -> Int32 {
        if set.isEmpty || set.count > Self.maxStacks { return Self.dead }
        let key = set.sorted { $0.lexicographicallyPrecedes($1) }
        if let s = interned[key] { return s }
        let s = Int32(stacks.count)
        stackBytes += key.reduce(64) { $0 + 32 + 4 * $1.count }
        stacks.append(key)
        interned[key] = s
        accepting.append(key.contains { $0.isEmpty })
        if stacks.count > transitionCapacity {
            let grown = UnsafeMutablePointer<Int32>.allocate(capacity: 256 * transitionCapacity * 2)
            grown.moveInitialize(from: transitions, count: 256 * transitionCapacity)
            transitions.deallocate()
            transitions = grown
            transitionCapacity *= 2
        }
        // Bytes no stack's top accepts are dead at once: a walk from a literal's state then costs one read per
        // refused child rather than a transition computed for each.
        var first = [UInt64](repeating: 0, count: 4)
        for st in key {
            guard let top = st.last, program.kinds[Int(top)] == .bytes else { continue }
            let set = Int(program.args[Int(top)]) * 4
            for w in 0..<4 { first[w] |= program.byteSets[set + w] }
        }
        let row = transitions + 256 * Int(s)
        for b in 0..<256 { row[b] = first[b >> 6] & (1 << UInt64(b & 63)) != 0 ? Self.unknown : Self.dead }
        return s
    }

    /// Resolves `stack`'s top to terminals: a rule reference is replaced by each of its alternatives (with the
    /// rest of the referencing alternative beneath), until every stack's top is a byte set or a token, or the
    /// stack is empty (the grammar is complete on it).
    private func expand(_ stack: [Int32], into out: inout Set<[Int32]>) {
        guard let top = stack.last else { out.insert(stack); return }
        let p = Int(top)
        switch program.kinds[p] {
        case .bytes, .token:
            out.insert(stack)
        case .rule:
            guard stack.count < Self.maxDepth else { return }
            var base = stack
            base.removeLast()
            if program.kinds[p + 1] != .end { base.append(top + 1) }
            for a in program.alternatives[Int(program.args[p])] {
                if program.kinds[Int(a)] == .end {
                    expand(base, into: &out)
                } else {
                    var s = base
                    s.append(a)
                    expand(s, into: &out)
                }
            }
        case .end:
            out.insert(stack)  // never pushed; kept total
        }
    }

    /// The stack after its top terminal matched.
    private func advanced(_ stack: [Int32], into out: inout Set<[Int32]>) {
        var s = stack
        let top = s.removeLast()
        if program.kinds[Int(top) + 1] != .end { s.append(top + 1) }
        expand(s, into: &out)
    }

    /// The state after `byte`, or `dead` (also from `dead`).
    public func next(_ state: Int32, byte: UInt8) -> Int32 {
        state < 0 ? Self.dead : step(state, byte)
    }

    /// `next` for a live state: one table read once the transition is known.
    @inline(__always)
    private func step(_ state: Int32, _ byte: UInt8) -> Int32 {
        let t = transitions[Int(state) &* 256 &+ Int(byte)]
        return t != Self.unknown ? t : computeNext(state, byte: byte)
    }

    private func computeNext(_ state: Int32, byte: UInt8) -> Int32 {
        var out = Set<[Int32]>()
        for st in stacks[Int(state)] {
            guard let top = st.last, program.kinds[Int(top)] == .bytes, program.contains(set: program.args[Int(top)], byte: byte) else { continue }
            advanced(st, into: &out)
        }
        let n = intern(out)
        transitions[Int(state) * 256 + Int(byte)] = n
        return n
    }

    /// The state after special token `token` (matched by a `<…>` reference), or `dead`.
    private func next(_ state: Int32, specialToken token: Int32) -> Int32 {
        let key = Int64(state) << 32 | Int64(token)
        if let t = tokenTransitions[key] { return t }
        var out = Set<[Int32]>()
        for st in stacks[Int(state)] {
            guard let top = st.last, program.kinds[Int(top)] == .token, tokenIDs[Int(program.args[Int(top)])] == token else { continue }
            advanced(st, into: &out)
        }
        let n = intern(out)
        tokenTransitions[key] = n
        return n
    }

    /// The state after `token` (its bytes, or the special token itself), or `dead`; end-of-generation tokens
    /// keep an accepting state.
    public func next(_ state: Int32, token: Int32) -> Int32 {
        guard state >= 0, token >= 0, Int(token) < vocabulary.count else { return Self.dead }
        if vocabulary.endOfGeneration.contains(token) { return accepting[Int(state)] ? state : Self.dead }
        if let bytes = textOf(token) {
            var s = state
            for b in bytes {
                s = step(s, b)
                if s < 0 { return Self.dead }
            }
            return s
        }
        return next(state, specialToken: token)
    }

    /// A text token's bytes, read back from the trie's tokens (the vocabulary keeps no other copy).
    private lazy var pieces: [[UInt8]?] = {
        var out = [[UInt8]?](repeating: nil, count: vocabulary.count)
        var stack: [(Int32, [UInt8])] = [(0, [])]
        while let (n, prefix) = stack.popLast() {
            for k in vocabulary.tokenStart[Int(n)]..<vocabulary.tokenStart[Int(n) + 1] { out[Int(vocabulary.tokenIDs[Int(k)])] = prefix }
            for c in vocabulary.childStart[Int(n)]..<vocabulary.childStart[Int(n) + 1] {
                stack.append((vocabulary.childNode[Int(c)], prefix + [vocabulary.childByte[Int(c)]]))
            }
        }
        return out
    }()

    private func textOf(_ token: Int32) -> [UInt8]? { pieces[Int(token)] }

    /// Which tokens may come next in `state`: one bit per token (bit t of word t/64). A dead state allows the
    /// end-of-generation tokens only, so a sequence that somehow left the grammar ends rather than wanders.
    public func mask(_ state: Int32) -> [UInt64] {
        if state >= 0, let m = masks[state] {
            maskHits += 1
            return m
        }
        var m = [UInt64](repeating: 0, count: (vocabulary.count + 63) / 64)
        func allow(_ t: Int32) { m[Int(t) >> 6] |= 1 << UInt64(t & 63) }
        guard state >= 0 else {
            for t in vocabulary.endOfGeneration { allow(t) }
            return m
        }
        masksComputed += 1
        if accepting[Int(state)] { for t in vocabulary.endOfGeneration { allow(t) } }
        for st in stacks[Int(state)] {
            if let top = st.last, program.kinds[Int(top)] == .token { allow(tokenIDs[Int(program.args[Int(top)])]) }
        }
        walkTrie(from: state, into: &m)
        if masks.count >= maxMasks { masks.removeAll(keepingCapacity: true) }
        masks[state] = m
        return m
    }

    /// Every text token whose bytes the grammar accepts from `state`, by a depth-first walk of the trie that
    /// stops where a prefix is refused.
    private func walkTrie(from state: Int32, into m: inout [UInt64]) {
        let v = vocabulary
        let childStart = v.childStart.baseAddress!, childByte = v.childByte.baseAddress!, childNode = v.childNode.baseAddress!
        let tokenStart = v.tokenStart.baseAddress!, tokenIDs = v.tokenIDs.baseAddress!
        var work: [(node: Int32, state: Int32)] = [(0, state)]
        work.reserveCapacity(4096)
        m.withUnsafeMutableBufferPointer { bits in
            let bits = bits.baseAddress!
            var table = transitions
            while let (n, s) = work.popLast() {
                var c = Int(childStart[Int(n)])
                let end = Int(childStart[Int(n) + 1])
                let row = Int(s) &* 256
                while c < end {
                    var t = table[row &+ Int(childByte[c])]
                    if t == Self.unknown {
                        t = computeNext(s, byte: childByte[c])
                        table = transitions  // may have grown
                    }
                    if t >= 0 {
                        let child = Int(childNode[c])
                        var k = Int(tokenStart[child])
                        let kEnd = Int(tokenStart[child + 1])
                        while k < kEnd {
                            let id = tokenIDs[k]
                            bits[Int(id) >> 6] |= 1 << UInt64(id & 63)
                            k += 1
                        }
                        if childStart[child] < childStart[child + 1] { work.append((Int32(child), t)) }
                    }
                    c += 1
                }
            }
        }
    }

    /// Clears the caches when they have grown past their bounds. Call between tokens only: state numbers held
    /// by callers are void after it (compare `epoch`).
    public func trim() {
        if stacks.count > maxStates { reset() }
    }
}
