/// A grammar that cannot be used, with what is wrong and where: the HTTP API answers 400 with it, a worker refuses
/// the step with it.
public struct GrammarError: Error, CustomStringConvertible, Sendable, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A grammar in llama.cpp's GBNF, parsed: named rules of alternatives, with character classes over Unicode code
/// points and `<…>` token references (llama.cpp's syntax for a special token: `<[151657]>` by id, `<|channel|>` by
/// its text).
///
/// ```
/// root   ::= "{" ws pair ("," ws pair)* "}"   # literals, groups, * + ? {m} {m,} {m,n}
/// pair   ::= [a-z]+ ":" [^"\\\x00-\x1F]*      # classes, negated classes, escapes \n \t \b \f \xHH \uHHHH
/// ```
public struct GrammarSyntax: Sendable, Equatable {
    public indirect enum Expr: Sendable, Equatable {
        case sequence([Expr])
        case choice([Expr])
        /// A literal's UTF-8 bytes.
        case literal([UInt8])
        /// Code point ranges (inclusive); negated: every code point outside them.
        case characterClass([ClosedRange<UInt32>], negated: Bool)
        case rule(String)
        case token(TokenReference)
        case repetition(Expr, min: Int, max: Int?)
    }

    public enum TokenReference: Sendable, Equatable, Hashable {
        case id(Int32)
        case text(String)
    }

    /// Rules in the order written; the first named `root` is where matching starts.
    public var rules: [(name: String, expr: Expr)]

    public static func == (a: GrammarSyntax, b: GrammarSyntax) -> Bool {
        a.rules.count == b.rules.count && zip(a.rules, b.rules).allSatisfy { $0.name == $1.name && $0.expr == $1.expr }
    }

    /// Bounded repetitions are written out, so a bound this large would make a grammar of millions of elements.
    public static let maxRepetition = 10_000

    public init(rules: [(name: String, expr: Expr)]) { self.rules = rules }

    /// Parses GBNF text; every rule referenced must be defined and `root` must exist.
    public init(parsing text: String) throws(GrammarError) {
        var p = Parser(bytes: Array(text.utf8))
        rules = try p.grammar()
        var defined = Set<String>()
        for r in rules {
            guard defined.insert(r.name).inserted else { throw GrammarError("grammar: rule '\(r.name)' is defined twice") }
        }
        guard defined.contains("root") else { throw GrammarError("grammar: there is no 'root' rule (matching starts there)") }
        func check(_ e: Expr) throws(GrammarError) {
            switch e {
            case .sequence(let xs), .choice(let xs): for x in xs { try check(x) }
            case .rule(let name): if !defined.contains(name) { throw GrammarError("grammar: rule '\(name)' is used but not defined") }
            case .repetition(let x, _, _): try check(x)
            default: break
            }
        }
        for r in rules { try check(r.expr) }
    }

    struct Parser {
        let bytes: [UInt8]
        var i = 0

        func fail(_ what: String) -> GrammarError {
            var line = 1, col = 1
            for b in bytes[..<min(i, bytes.count)] { if b == 0x0A { line += 1; col = 1 } else { col += 1 } }
            return GrammarError("grammar: \(what) at line \(line), column \(col)")
        }

        var atEnd: Bool { i >= bytes.count }
        var peek: UInt8? { i < bytes.count ? bytes[i] : nil }

        /// Skips spaces and comments; newlines too when `newlines` (inside parentheses a rule may span lines).
        mutating func space(newlines: Bool) {
            while let b = peek {
                if b == 0x20 || b == 0x09 || (newlines && (b == 0x0A || b == 0x0D)) {
                    i += 1
                } else if b == UInt8(ascii: "#") {
                    while let c = peek, c != 0x0A { i += 1 }
                } else {
                    break
                }
            }
        }

        static func isNameByte(_ b: UInt8) -> Bool {
            (b >= 0x61 && b <= 0x7A) || (b >= 0x41 && b <= 0x5A) || (b >= 0x30 && b <= 0x39) || b == UInt8(ascii: "-") || b == UInt8(ascii: "_")
        }

        mutating func name() -> String? {
            let start = i
            while let b = peek, Self.isNameByte(b) { i += 1 }
            return i > start ? String(decoding: bytes[start..<i], as: UTF8.self) : nil
        }

        mutating func grammar() throws(GrammarError) -> [(name: String, expr: Expr)] {
            var rules: [(name: String, expr: Expr)] = []
            while true {
                space(newlines: true)
                if atEnd { return rules }
                guard let n = name() else { throw fail("expected a rule name") }
                space(newlines: false)
                guard bytes[i...].starts(with: Array("::=".utf8)) else { throw fail("expected '::=' after '\(n)'") }
                i += 3
                let e = try alternatives(depth: 0, nested: false)
                rules.append((n, e))
                space(newlines: false)
                if let b = peek, b != 0x0A, b != 0x0D { throw fail("unexpected '\(Character(Unicode.Scalar(b)))'") }
            }
        }

        mutating func alternatives(depth: Int, nested: Bool) throws(GrammarError) -> Expr {
            guard depth < 100 else { throw fail("groups nested more than 100 deep") }
            var alts = [try sequence(depth: depth, nested: nested)]
            while true {
                space(newlines: nested)
                guard peek == UInt8(ascii: "|") else { break }
                i += 1
                space(newlines: true)  // an alternative may continue on the next line after '|'
                alts.append(try sequence(depth: depth, nested: nested))
            }
            return alts.count == 1 ? alts[0] : .choice(alts)
        }

        mutating func sequence(depth: Int, nested: Bool) throws(GrammarError) -> Expr {
            var items: [Expr] = []
            // Outside parentheses a newline ends the rule.
            while true {
                space(newlines: nested)
                guard let b = peek else { break }
                var item: Expr
                switch b {
                case UInt8(ascii: "\""):
                    i += 1
                    var lit: [UInt8] = []
                    while true {
                        guard let c = peek else { throw fail("unterminated literal") }
                        if c == UInt8(ascii: "\"") { i += 1; break }
                        if c == 0x0A { throw fail("newline inside a literal") }
                        appendUTF8(try character(), to: &lit)
                    }
                    item = .literal(lit)
                case UInt8(ascii: "["):
                    i += 1
                    var negated = false
                    if peek == UInt8(ascii: "^") { negated = true; i += 1 }
                    var ranges: [ClosedRange<UInt32>] = []
                    while true {
                        guard let c = peek else { throw fail("unterminated character class") }
                        if c == UInt8(ascii: "]") { i += 1; break }
                        let lo = try character()
                        var hi = lo
                        if peek == UInt8(ascii: "-"), i + 1 < bytes.count, bytes[i + 1] != UInt8(ascii: "]") {
                            i += 1
                            hi = try character()
                        }
                        guard lo <= hi else { throw fail("character range is backwards") }
                        ranges.append(lo...hi)
                    }
                    item = .characterClass(ranges, negated: negated)
                case UInt8(ascii: "."):
                    i += 1
                    item = .characterClass([], negated: true)
                case UInt8(ascii: "("):
                    i += 1
                    item = try alternatives(depth: depth + 1, nested: true)
                    space(newlines: true)
                    guard peek == UInt8(ascii: ")") else { throw fail("expected ')'") }
                    i += 1
                case UInt8(ascii: "<"):
                    i += 1
                    let start = i
                    while let c = peek, c != UInt8(ascii: ">"), c != 0x0A { i += 1 }
                    guard peek == UInt8(ascii: ">") else { throw fail("unterminated token reference") }
                    let inner = String(decoding: bytes[start..<i], as: UTF8.self)
                    i += 1
                    if inner.hasPrefix("["), inner.hasSuffix("]"), let id = Int32(inner.dropFirst().dropLast()), id >= 0 {
                        item = .token(.id(id))
                    } else if !inner.isEmpty {
                        item = .token(.text("<" + inner + ">"))
                    } else {
                        throw fail("empty token reference")
                    }
                default:
                    if Self.isNameByte(b), let n = name() {
                        item = .rule(n)
                    } else {
                        return items.count == 1 ? items[0] : .sequence(items)
                    }
                }
                // Postfix operators.
                while let op = peek {
                    if op == UInt8(ascii: "*") { item = .repetition(item, min: 0, max: nil); i += 1 }
                    else if op == UInt8(ascii: "+") { item = .repetition(item, min: 1, max: nil); i += 1 }
                    else if op == UInt8(ascii: "?") { item = .repetition(item, min: 0, max: 1); i += 1 }
                    else if op == UInt8(ascii: "{") {
                        i += 1
                        let lo = try number()
                        var hi: Int? = lo
                        if peek == UInt8(ascii: ",") {
                            i += 1
                            hi = peek == UInt8(ascii: "}") ? nil : try number()
                        }
                        guard peek == UInt8(ascii: "}") else { throw fail("expected '}'") }
                        i += 1
                        if let h = hi, h < lo { throw fail("repetition {\(lo),\(h)} is backwards") }
                        guard (hi ?? lo) <= GrammarSyntax.maxRepetition else { throw fail("repetition bound above \(GrammarSyntax.maxRepetition)") }
                        item = .repetition(item, min: lo, max: hi)
                    } else { break }
                }
                items.append(item)
            }
            return items.count == 1 ? items[0] : .sequence(items)
        }

        mutating func number() throws(GrammarError) -> Int {
            space(newlines: false)
            let start = i
            while let b = peek, b >= 0x30, b <= 0x39, i - start < 9 { i += 1 }
            guard i > start, let n = Int(String(decoding: bytes[start..<i], as: UTF8.self)) else { throw fail("expected a number") }
            space(newlines: false)
            return n
        }

        /// One character of a literal or class: an escape or a whole UTF-8 character, as a code point.
        mutating func character() throws(GrammarError) -> UInt32 {
            guard let b = peek else { throw fail("unexpected end") }
            if b == UInt8(ascii: "\\") {
                i += 1
                guard let e = peek else { throw fail("unterminated escape") }
                i += 1
                switch e {
                case UInt8(ascii: "n"): return 0x0A
                case UInt8(ascii: "r"): return 0x0D
                case UInt8(ascii: "t"): return 0x09
                case UInt8(ascii: "b"): return 0x08
                case UInt8(ascii: "f"): return 0x0C
                case UInt8(ascii: "x"): return try hex(2)
                case UInt8(ascii: "u"): return try hex(4)
                case UInt8(ascii: "U"): return try hex(8)
                case UInt8(ascii: "\\"), UInt8(ascii: "\""), UInt8(ascii: "["), UInt8(ascii: "]"), UInt8(ascii: "-"), UInt8(ascii: "^"):
                    return UInt32(e)
                default: i -= 1; throw fail("unknown escape '\\\(Character(Unicode.Scalar(e)))'")
                }
            }
            // A UTF-8 character.
            let len = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2
            guard i + len <= bytes.count, let s = String(validating: bytes[i..<i + len], as: UTF8.self), let u = s.unicodeScalars.first else {
                throw fail("invalid UTF-8")
            }
            i += len
            return u.value
        }

        mutating func hex(_ n: Int) throws(GrammarError) -> UInt32 {
            guard i + n <= bytes.count, let v = UInt32(String(decoding: bytes[i..<i + n], as: UTF8.self), radix: 16), v <= 0x10FFFF else {
                throw fail("expected \(n) hex digits")
            }
            i += n
            return v
        }
    }
}

func appendUTF8(_ cp: UInt32, to out: inout [UInt8]) {
    if cp < 0x80 {
        out.append(UInt8(cp))
    } else if cp < 0x800 {
        out += [UInt8(0xC0 | (cp >> 6)), UInt8(0x80 | (cp & 0x3F))]
    } else if cp < 0x10000 {
        out += [UInt8(0xE0 | (cp >> 12)), UInt8(0x80 | ((cp >> 6) & 0x3F)), UInt8(0x80 | (cp & 0x3F))]
    } else {
        out += [UInt8(0xF0 | (cp >> 18)), UInt8(0x80 | ((cp >> 12) & 0x3F)), UInt8(0x80 | ((cp >> 6) & 0x3F)), UInt8(0x80 | (cp & 0x3F))]
    }
}
