/// Splits a template into text and tags as jinja2 does with `trim_blocks` and `lstrip_blocks` on (how Hugging Face
/// renders chat templates): `{%-`/`-%}` strip all whitespace on that side, `trim_blocks` drops the one newline
/// after a block or comment tag, `lstrip_blocks` drops spaces and tabs from a line's start up to a block or
/// comment tag (not before `{{`, and not with `{%+`).
struct TemplateLexer {
    enum Segment {
        case text(String)
        case output([Token], line: Int)
        case statement([Token], line: Int)
    }

    struct Token: Equatable {
        enum Kind: Equatable { case name, string, int, double, op }
        let kind: Kind
        let text: String
        let line: Int
    }

    static func segments(_ source: String) throws(TemplateError) -> [Segment] {
        var s = Array(source.unicodeScalars)
        // jinja2's default keep_trailing_newline=False: one newline at the very end of the source is dropped.
        if s.last == "\n" { s.removeLast() }
        var out: [Segment] = []
        var text: [Unicode.Scalar] = []
        var i = 0, line = 1
        var stripNextLeading = false, trimNextNewline = false
        // jinja2's `line_starting`: the text begins a line (the template's start, or the last tag's end consumed
        // whitespace ending in a newline), so `lstrip_blocks` may strip its first line too.
        var lineStarting = true

        func flushText(lstrip: Bool, rstrip: Bool) {
            var t = text
            if stripNextLeading {
                var removed: Unicode.Scalar?
                while let f = t.first, f.properties.isWhitespace { removed = t.removeFirst() }
                lineStarting = removed.map { $0 == "\n" } ?? false
            } else if trimNextNewline, t.first == "\n" {
                t.removeFirst()
                lineStarting = true
            } else if trimNextNewline {
                lineStarting = false
            }
            if rstrip {
                while let l = t.last, l.properties.isWhitespace { t.removeLast() }
            } else if lstrip {
                let lineStart = (t.lastIndex(of: "\n").map { $0 + 1 }) ?? 0
                if lineStart > 0 || lineStarting, lineStart < t.count,
                   t[lineStart...].allSatisfy({ $0 != "\n" && $0.properties.isWhitespace }) {
                    t.removeSubrange(lineStart...)
                }
            }
            if !t.isEmpty { out.append(.text(String(String.UnicodeScalarView(t)))) }
            text.removeAll()
            stripNextLeading = false
            trimNextNewline = false
            lineStarting = false
        }

        while i < s.count {
            let c = s[i]
            guard c == "{", i + 1 < s.count, s[i + 1] == "{" || s[i + 1] == "%" || s[i + 1] == "#" else {
                if c == "\n" { line += 1 }
                text.append(c)
                i += 1
                continue
            }
            let kind = s[i + 1]
            let tagLine = line
            var j = i + 2
            let minus = j < s.count && s[j] == "-"
            let plus = j < s.count && s[j] == "+"
            if minus || plus { j += 1 }
            let isBlock = kind == "%" || kind == "#"
            // A raw block is copied as text up to its end tag.
            if kind == "%", let (body, end, bodyLines) = rawBlock(s, from: j) {
                flushText(lstrip: isBlock && !plus, rstrip: minus)
                if !body.isEmpty { out.append(.text(body)) }
                line += bodyLines
                i = end
                trimNextNewline = true
                continue
            }
            flushText(lstrip: isBlock && !plus, rstrip: minus)
            if kind == "#" {
                // A comment: up to `#}`.
                var k = j
                while k + 1 < s.count, !(s[k] == "#" && s[k + 1] == "}") {
                    if s[k] == "\n" { line += 1 }
                    k += 1
                }
                guard k + 1 < s.count else { throw TemplateError.syntax("a comment opened here is never closed with '#}'", line: tagLine) }
                if k > j, s[k - 1] == "-" { stripNextLeading = true } else { trimNextNewline = true }
                i = k + 2
                continue
            }
            let close: Unicode.Scalar = kind == "{" ? "}" : "%"
            var tokens: [Token] = []
            var k = j
            var closedWithMinus = false
            var depth = 0  // open brackets: `}}` inside a dict literal does not end the tag
            while true {
                while k < s.count, s[k] == " " || s[k] == "\t" || s[k] == "\n" || s[k] == "\r" {
                    if s[k] == "\n" { line += 1 }
                    k += 1
                }
                guard k < s.count else {
                    throw TemplateError.syntax("a tag opened here is never closed with '\(close)}'", line: tagLine)
                }
                if depth == 0, s[k] == "-", k + 2 < s.count, s[k + 1] == close, s[k + 2] == "}" {
                    closedWithMinus = true
                    k += 3
                    break
                }
                if depth == 0, s[k] == "+", k + 2 < s.count, s[k + 1] == close, s[k + 2] == "}" {
                    k += 3
                    break
                }
                if depth == 0, s[k] == close, k + 1 < s.count, s[k + 1] == "}" {
                    k += 2
                    if isBlock { trimNextNewline = true }
                    break
                }
                let (tok, next) = try token(s, at: k, line: line)
                if tok.kind == .op {
                    if ["(", "[", "{"].contains(tok.text) { depth += 1 }
                    if [")", "]", "}"].contains(tok.text) { depth = max(0, depth - 1) }
                }
                tokens.append(tok)
                k = next
            }
            if closedWithMinus { stripNextLeading = true }
            out.append(kind == "{" ? .output(tokens, line: tagLine) : .statement(tokens, line: tagLine))
            i = k
        }
        flushText(lstrip: false, rstrip: false)
        return out
    }

    /// `{% raw %}…{% endraw %}` starting after `{%`: the body, the index after the end tag, and newlines crossed.
    private static func rawBlock(_ s: [Unicode.Scalar], from j: Int) -> (String, Int, Int)? {
        var k = j
        while k < s.count, s[k] == " " { k += 1 }
        guard k + 3 <= s.count, String(String.UnicodeScalarView(s[k..<(k + 3)])) == "raw" else { return nil }
        k += 3
        while k < s.count, s[k] == " " || s[k] == "-" { k += 1 }
        guard k + 1 < s.count, s[k] == "%", s[k + 1] == "}" else { return nil }
        let bodyStart = k + 2
        var m = bodyStart
        while m + 1 < s.count {
            if s[m] == "{", s[m + 1] == "%" {
                var n = m + 2
                while n < s.count, s[n] == " " || s[n] == "-" { n += 1 }
                if n + 6 <= s.count, String(String.UnicodeScalarView(s[n..<(n + 6)])) == "endraw" {
                    var e = n + 6
                    while e < s.count, s[e] == " " || s[e] == "-" { e += 1 }
                    if e + 1 < s.count, s[e] == "%", s[e + 1] == "}" {
                        let body = Array(s[bodyStart..<m])
                        return (String(String.UnicodeScalarView(body)), e + 2, body.filter { $0 == "\n" }.count)
                    }
                }
            }
            m += 1
        }
        return nil
    }

    private static let twoCharOps: Set<String> = ["==", "!=", "<=", ">=", "//", "**"]
    private static let oneCharOps: Set<Unicode.Scalar> = ["+", "-", "*", "/", "%", "~", "<", ">", "=", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|"]

    private static func token(_ s: [Unicode.Scalar], at k: Int, line: Int) throws(TemplateError) -> (Token, Int) {
        let c = s[k]
        if c == "_" || c.properties.isAlphabetic {
            var e = k
            while e < s.count, s[e] == "_" || s[e].properties.isAlphabetic || ("0"..."9").contains(s[e]) { e += 1 }
            return (Token(kind: .name, text: String(String.UnicodeScalarView(s[k..<e])), line: line), e)
        }
        if ("0"..."9").contains(c) {
            var e = k
            while e < s.count, ("0"..."9").contains(s[e]) || s[e] == "_" { e += 1 }
            var isFloat = false
            if e + 1 < s.count, s[e] == ".", ("0"..."9").contains(s[e + 1]) {
                isFloat = true
                e += 1
                while e < s.count, ("0"..."9").contains(s[e]) || s[e] == "_" { e += 1 }
            }
            if e < s.count, s[e] == "e" || s[e] == "E" {
                var f = e + 1
                if f < s.count, s[f] == "+" || s[f] == "-" { f += 1 }
                if f < s.count, ("0"..."9").contains(s[f]) {
                    isFloat = true
                    e = f
                    while e < s.count, ("0"..."9").contains(s[e]) { e += 1 }
                }
            }
            let text = String(String.UnicodeScalarView(s[k..<e])).replacingUnderscores()
            return (Token(kind: isFloat ? .double : .int, text: text, line: line), e)
        }
        if c == "'" || c == "\"" {
            var e = k + 1
            var value = String.UnicodeScalarView()
            while true {
                guard e < s.count else { throw TemplateError.syntax("a string literal is never closed", line: line) }
                let d = s[e]
                if d == c { e += 1; break }
                if d == "\\", e + 1 < s.count {
                    let n = s[e + 1]
                    e += 2
                    switch n {
                    case "n": value.append("\n")
                    case "t": value.append("\t")
                    case "r": value.append("\r")
                    case "0": value.append("\0")
                    case "\\": value.append("\\")
                    case "'": value.append("'")
                    case "\"": value.append("\"")
                    case "\n": break
                    case "x", "u", "U":
                        let width = n == "x" ? 2 : n == "u" ? 4 : 8
                        guard e + width <= s.count, let v = UInt32(String(String.UnicodeScalarView(s[e..<(e + width)])), radix: 16),
                              let u = Unicode.Scalar(v) else {
                            throw TemplateError.syntax("a bad \\\(n) escape in a string literal", line: line)
                        }
                        value.append(u)
                        e += width
                    default:
                        // Python keeps an unknown escape as written.
                        value.append("\\")
                        value.append(n)
                    }
                    continue
                }
                value.append(d)
                e += 1
            }
            return (Token(kind: .string, text: String(value), line: line), e)
        }
        if k + 1 < s.count {
            let two = String(String.UnicodeScalarView([c, s[k + 1]]))
            if twoCharOps.contains(two) { return (Token(kind: .op, text: two, line: line), k + 2) }
        }
        if oneCharOps.contains(c) { return (Token(kind: .op, text: String(c), line: line), k + 1) }
        throw TemplateError.syntax("unexpected character '\(c)' in a tag", line: line)
    }
}

private extension String {
    func replacingUnderscores() -> String { String(filter { $0 != "_" }) }
}
