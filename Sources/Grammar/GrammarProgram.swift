/// A grammar lowered to bytes: every rule a list of alternatives, each a run of elements in one flat array ending
/// with an `end` element. An element matches a set of bytes, a special token, or expands a rule. Character classes
/// over code points become alternatives of UTF-8 byte sequences here, so the matcher works on bytes alone and a
/// token that ends inside a multi-byte character simply leaves the match inside it.
public struct GrammarProgram: Sendable {
    enum Kind: UInt8, Sendable { case end, bytes, rule, token }
    var kinds: [Kind] = []
    /// Per element: the byte set's index (bytes), the rule's index (rule), the token reference's index (token).
    var args: [Int32] = []
    /// 256-bit sets, four words each.
    var byteSets: [UInt64] = []
    /// Per rule: where each alternative starts in `kinds`.
    var alternatives: [[Int32]] = []
    public private(set) var tokenReferences: [GrammarSyntax.TokenReference] = []
    let root: Int32
    /// Named rules and the helpers lowering made (groups, repetitions, classes).
    public var ruleCount: Int { alternatives.count }
    public var elementCount: Int { kinds.count }

    /// Lowers a parsed grammar; refuses left recursion (`a ::= a "x"`), which matching could never resolve.
    public init(_ syntax: GrammarSyntax) throws(GrammarError) {
        var lower = Lowering()
        for (i, r) in syntax.rules.enumerated() { lower.index[r.name] = i }
        lower.rules = Array(repeating: [], count: syntax.rules.count)
        for (i, r) in syntax.rules.enumerated() {
            lower.rules[i] = try lower.alternatives(r.expr)
        }
        root = Int32(lower.index["root"]!)
        tokenReferences = lower.tokens
        byteSets = lower.sets
        let names = syntax.rules.map(\.name) + (syntax.rules.count..<lower.rules.count).map { "helper #\($0)" }
        try Self.refuseLeftRecursion(lower.rules, names: names)
        for alts in lower.rules {
            var starts: [Int32] = []
            for seq in alts {
                starts.append(Int32(kinds.count))
                for e in seq {
                    switch e {
                    case .bytes(let s): kinds.append(.bytes); args.append(Int32(s))
                    case .rule(let r): kinds.append(.rule); args.append(Int32(r))
                    case .token(let t): kinds.append(.token); args.append(Int32(t))
                    }
                }
                kinds.append(.end)
                args.append(0)
            }
            alternatives.append(starts)
        }
    }

    public init(parsing text: String) throws(GrammarError) {
        try self.init(GrammarSyntax(parsing: text))
    }

    func contains(set: Int32, byte: UInt8) -> Bool {
        byteSets[Int(set) * 4 + Int(byte >> 6)] & (1 << UInt64(byte & 63)) != 0
    }

    enum Element: Hashable { case bytes(Int), rule(Int), token(Int) }

    struct Lowering {
        var index: [String: Int] = [:]
        var rules: [[[Element]]] = []
        var sets: [UInt64] = []
        var setIndex: [[UInt64]: Int] = [:]
        var tokens: [GrammarSyntax.TokenReference] = []
        var tokenIndex: [GrammarSyntax.TokenReference: Int] = [:]
        var classRules: [[ClosedRange<UInt32>]: Int] = [:]

        mutating func helper(_ alts: [[Element]]) -> Int {
            rules.append(alts)
            return rules.count - 1
        }

        mutating func set(_ words: [UInt64]) -> Int {
            if let i = setIndex[words] { return i }
            let i = sets.count / 4
            sets += words
            setIndex[words] = i
            return i
        }

        mutating func byteRange(_ r: ClosedRange<UInt8>) -> Element {
            var w = [UInt64](repeating: 0, count: 4)
            for b in r { w[Int(b >> 6)] |= 1 << UInt64(b & 63) }
            return .bytes(set(w))
        }

        mutating func alternatives(_ e: GrammarSyntax.Expr) throws(GrammarError) -> [[Element]] {
            if case .choice(let alts) = e {
                var out: [[Element]] = []
                for a in alts { out.append(try sequence(a)) }
                return out
            }
            return [try sequence(e)]
        }

        mutating func sequence(_ e: GrammarSyntax.Expr) throws(GrammarError) -> [Element] {
            switch e {
            case .sequence(let xs):
                var out: [Element] = []
                for x in xs { out += try sequence(x) }
                return out
            case .literal(let bytes):
                return bytes.map { byteRange($0...$0) }
            case .rule(let name):
                return [.rule(index[name]!)]
            case .token(let t):
                if let i = tokenIndex[t] { return [.token(i)] }
                tokens.append(t)
                tokenIndex[t] = tokens.count - 1
                return [.token(tokens.count - 1)]
            case .choice:
                return [.rule(helper(try alternatives(e)))]
            case .characterClass(let ranges, let negated):
                return [characterClass(ranges, negated: negated)]
            case .repetition(let x, let lo, let hi):
                var body = try sequence(x)
                if body.count != 1 { body = [.rule(helper([body]))] }
                var out: [Element] = []
                for _ in 0..<lo { out += body }
                if let hi {
                    guard hi > lo else { return out }
                    // x{0,k}: o1 ::= x | ε, oj ::= x o(j-1) | ε — optional copies, each leading to the next.
                    var previous = helper([body, []])
                    for _ in 1..<(hi - lo) { previous = helper([body + [.rule(previous)], []]) }
                    out.append(.rule(previous))
                } else {
                    // x*: s ::= x s | ε (a tail call: the stack does not grow with the count).
                    let s = rules.count
                    rules.append([])
                    rules[s] = [body + [.rule(s)], []]
                    out.append(.rule(s))
                }
                return out
            }
        }

        /// A class as one byte set (ASCII only) or a helper rule of UTF-8 sequences (anything beyond ASCII).
        mutating func characterClass(_ ranges: [ClosedRange<UInt32>], negated: Bool) -> Element {
            var cps = Self.normalized(ranges)
            if negated { cps = Self.complement(cps) }
            cps = Self.subtract(cps, 0xD800...0xDFFF)
            if let i = classRules[cps] { return .rule(i) }
            var ascii: [ClosedRange<UInt8>] = []
            var multi: [[ClosedRange<UInt8>]] = []
            for r in cps {
                if r.lowerBound < 0x80 { ascii.append(UInt8(r.lowerBound)...UInt8(min(r.upperBound, 0x7F))) }
                if r.upperBound >= 0x80 { utf8Sequences(max(r.lowerBound, 0x80), r.upperBound, into: &multi) }
            }
            var w = [UInt64](repeating: 0, count: 4)
            for r in ascii { for b in r { w[Int(b >> 6)] |= 1 << UInt64(b & 63) } }
            if multi.isEmpty { return .bytes(set(w)) }
            var alts: [[Element]] = []
            if !ascii.isEmpty { alts.append([.bytes(set(w))]) }
            for s in multi { alts.append(s.map { byteRange($0) }) }
            let i = helper(alts)
            classRules[cps] = i
            return .rule(i)
        }

        static func normalized(_ ranges: [ClosedRange<UInt32>]) -> [ClosedRange<UInt32>] {
            var out: [ClosedRange<UInt32>] = []
            for r in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
                if let last = out.last, r.lowerBound <= last.upperBound &+ 1 {
                    out[out.count - 1] = last.lowerBound...max(last.upperBound, r.upperBound)
                } else {
                    out.append(r)
                }
            }
            return out
        }

        static func complement(_ ranges: [ClosedRange<UInt32>]) -> [ClosedRange<UInt32>] {
            var out: [ClosedRange<UInt32>] = []
            var next: UInt32 = 0
            for r in ranges {
                if r.lowerBound > next { out.append(next...(r.lowerBound - 1)) }
                next = r.upperBound + 1
            }
            if next <= 0x10FFFF { out.append(next...0x10FFFF) }
            return out
        }

        static func subtract(_ ranges: [ClosedRange<UInt32>], _ cut: ClosedRange<UInt32>) -> [ClosedRange<UInt32>] {
            ranges.flatMap { r -> [ClosedRange<UInt32>] in
                guard r.overlaps(cut) else { return [r] }
                var parts: [ClosedRange<UInt32>] = []
                if r.lowerBound < cut.lowerBound { parts.append(r.lowerBound...(cut.lowerBound - 1)) }
                if r.upperBound > cut.upperBound { parts.append((cut.upperBound + 1)...r.upperBound) }
                return parts
            }
        }

        /// Code points lo...hi (all ≥ 0x80, none a surrogate) as sequences of byte ranges, each sequence
        /// matching exactly the UTF-8 encodings of a sub-range (split where encodings change length or a
        /// continuation byte stops covering its whole range).
        func utf8Sequences(_ lo: UInt32, _ hi: UInt32, into out: inout [[ClosedRange<UInt8>]]) {
            for bound: UInt32 in [0x7FF, 0xFFFF] where lo <= bound && hi > bound {
                utf8Sequences(lo, bound, into: &out)
                utf8Sequences(bound + 1, hi, into: &out)
                return
            }
            let n = lo < 0x800 ? 2 : lo < 0x10000 ? 3 : 4
            for i in 1..<n {
                let m: UInt32 = (1 << (6 * UInt32(i))) - 1
                if lo & ~m != hi & ~m {
                    if lo & m != 0 {
                        utf8Sequences(lo, lo | m, into: &out)
                        utf8Sequences((lo | m) + 1, hi, into: &out)
                        return
                    }
                    if hi & m != m {
                        utf8Sequences(lo, (hi & ~m) - 1, into: &out)
                        utf8Sequences(hi & ~m, hi, into: &out)
                        return
                    }
                }
            }
            var a: [UInt8] = [], b: [UInt8] = []
            appendUTF8(lo, to: &a)
            appendUTF8(hi, to: &b)
            out.append(zip(a, b).map { $0...$1 })
        }
    }

    /// Whether some rule can reach itself without consuming a byte first (left recursion): expanding it would
    /// never end.
    static func refuseLeftRecursion(_ rules: [[[Element]]], names: [String]) throws(GrammarError) {
        var nullable = [Bool](repeating: false, count: rules.count)
        var changed = true
        while changed {
            changed = false
            for (r, alts) in rules.enumerated() where !nullable[r] {
                if alts.contains(where: { seq in seq.allSatisfy { if case .rule(let x) = $0 { return nullable[x] } else { return false } } }) {
                    nullable[r] = true
                    changed = true
                }
            }
        }
        // starts[r]: rules r may expand first.
        var starts = [[Int]](repeating: [], count: rules.count)
        for (r, alts) in rules.enumerated() {
            for seq in alts {
                for e in seq {
                    guard case .rule(let x) = e else { break }
                    starts[r].append(x)
                    if !nullable[x] { break }
                }
            }
        }
        // Depth-first search for a cycle.
        var color = [UInt8](repeating: 0, count: rules.count)  // 0 new, 1 on the path, 2 done
        for root in 0..<rules.count where color[root] == 0 {
            var stack: [(Int, Int)] = [(root, 0)]
            color[root] = 1
            while let (r, k) = stack.last {
                if k < starts[r].count {
                    stack[stack.count - 1].1 += 1
                    let x = starts[r][k]
                    if color[x] == 1 { throw GrammarError("grammar: rule '\(names[x])' is left-recursive (it can expand to itself before matching anything)") }
                    if color[x] == 0 { color[x] = 1; stack.append((x, 0)) }
                } else {
                    color[r] = 2
                    stack.removeLast()
                }
            }
        }
    }
}
