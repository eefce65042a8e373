/// The syntax tree of a template: statements over expressions, each with the line it came from so that an error
/// names it.
indirect enum Expr {
    case literal(TemplateValue)
    case name(String, line: Int)
    case list([Expr])
    case tuple([Expr])
    case dict([(Expr, Expr)])
    case attribute(Expr, String, line: Int)
    case item(Expr, Expr, line: Int)
    case slice(Expr, start: Expr?, stop: Expr?, step: Expr?, line: Int)
    case call(Expr, args: [Expr], kwargs: [(String, Expr)], line: Int)
    case filter(Expr, name: String, args: [Expr], kwargs: [(String, Expr)], line: Int)
    case test(Expr, name: String, args: [Expr], negated: Bool, line: Int)
    case unary(String, Expr, line: Int)
    case binary(String, Expr, Expr, line: Int)
    case and(Expr, Expr)
    case or(Expr, Expr)
    case not(Expr)
    case conditional(cond: Expr, then: Expr, otherwise: Expr?)
}

indirect enum Node {
    case text(String)
    case output(Expr, line: Int)
    case ifBlock([(Expr, [Node])], otherwise: [Node])
    case forLoop(targets: [String], iterable: Expr, filter: Expr?, body: [Node], otherwise: [Node], line: Int)
    case set(target: SetTarget, value: Expr, line: Int)
    case setBlock(target: SetTarget, body: [Node], line: Int)
    case macro(name: String, params: [(String, Expr?)], body: [Node])
    case loopBreak(line: Int)
    case loopContinue(line: Int)
}

enum SetTarget {
    case names([String])
    case attribute(String, String)
}

struct TemplateParser {
    private var segments: [TemplateLexer.Segment]
    private var index = 0

    init(_ source: String) throws(TemplateError) {
        segments = try TemplateLexer.segments(source)
    }

    /// The whole template; an end tag without its block, or a block left open, is an error naming the line.
    mutating func parse() throws(TemplateError) -> [Node] {
        let (nodes, end) = try block(until: [])
        if let end { throw TemplateError.syntax("'{% \(end.0) %}' has no block to end", line: end.1) }
        return nodes
    }

    /// Nodes until a statement whose first word is in `ends`; returns that word, its line and the rest of its tokens.
    private mutating func block(until ends: Set<String>) throws(TemplateError) -> ([Node], (String, Int, [TemplateLexer.Token])?) {
        var nodes: [Node] = []
        while index < segments.count {
            let seg = segments[index]
            index += 1
            switch seg {
            case .text(let t):
                nodes.append(.text(t))
            case .output(let tokens, let line):
                var p = ExprParser(tokens: tokens, line: line)
                let e = try p.expression()
                try p.expectEnd("'}}'")
                nodes.append(.output(e, line: line))
            case .statement(let tokens, let line):
                guard let first = tokens.first, first.kind == .name else {
                    throw TemplateError.syntax("a '{% %}' tag needs a statement name", line: line)
                }
                let rest = Array(tokens.dropFirst())
                if ends.contains(first.text) { return (nodes, (first.text, line, rest)) }
                nodes.append(try statement(first.text, rest, line: line))
            }
        }
        return (nodes, nil)
    }

    private mutating func expectEnd(_ end: (String, Int, [TemplateLexer.Token])?, of tag: String, line: Int, _ names: Set<String>) throws(TemplateError) -> (String, Int, [TemplateLexer.Token]) {
        guard let end else {
            throw TemplateError.syntax("'{% \(tag) %}' opened here is never closed (expected \(names.sorted().map { "'{% \($0) %}'" }.joined(separator: " or ")))", line: line)
        }
        return end
    }

    private mutating func statement(_ word: String, _ tokens: [TemplateLexer.Token], line: Int) throws(TemplateError) -> Node {
        switch word {
        case "if":
            var p = ExprParser(tokens: tokens, line: line)
            var cond = try p.expression()
            try p.expectEnd("'%}'")
            var branches: [(Expr, [Node])] = []
            var otherwise: [Node] = []
            while true {
                let (body, e) = try block(until: ["elif", "else", "endif"])
                let end = try expectEnd(e, of: "if", line: line, ["endif"])
                branches.append((cond, body))
                if end.0 == "elif" {
                    var q = ExprParser(tokens: end.2, line: end.1)
                    cond = try q.expression()
                    try q.expectEnd("'%}'")
                    continue
                }
                if end.0 == "else" {
                    let (body, e2) = try block(until: ["endif"])
                    _ = try expectEnd(e2, of: "if", line: line, ["endif"])
                    otherwise = body
                }
                break
            }
            return .ifBlock(branches, otherwise: otherwise)
        case "for":
            var p = ExprParser(tokens: tokens, line: line)
            var targets = [try p.name()]
            while p.accept(",") { targets.append(try p.name()) }
            try p.expectWord("in")
            let iterable = try p.expression(allowConditional: false)
            var filter: Expr?
            if p.acceptWord("if") { filter = try p.expression(allowConditional: false) }
            if p.acceptWord("recursive") { throw TemplateError.syntax("recursive loops are not supported", line: line) }
            try p.expectEnd("'%}'")
            let (body, e) = try block(until: ["else", "endfor"])
            let end = try expectEnd(e, of: "for", line: line, ["endfor"])
            var otherwise: [Node] = []
            if end.0 == "else" {
                let (b, e2) = try block(until: ["endfor"])
                _ = try expectEnd(e2, of: "for", line: line, ["endfor"])
                otherwise = b
            }
            return .forLoop(targets: targets, iterable: iterable, filter: filter, body: body, otherwise: otherwise, line: line)
        case "set":
            var p = ExprParser(tokens: tokens, line: line)
            let first = try p.name()
            let target: SetTarget
            if p.accept(".") {
                target = .attribute(first, try p.name())
            } else {
                var names = [first]
                while p.accept(",") { names.append(try p.name()) }
                target = .names(names)
            }
            if p.accept("=") {
                let value = try p.expression()
                try p.expectEnd("'%}'")
                return .set(target: target, value: value, line: line)
            }
            try p.expectEnd("'=' or '%}'")
            let (body, e) = try block(until: ["endset"])
            _ = try expectEnd(e, of: "set", line: line, ["endset"])
            return .setBlock(target: target, body: body, line: line)
        case "macro":
            var p = ExprParser(tokens: tokens, line: line)
            let name = try p.name()
            try p.expect("(")
            var params: [(String, Expr?)] = []
            if !p.accept(")") {
                repeat {
                    let n = try p.name()
                    params.append((n, p.accept("=") ? try p.expression() : nil))
                } while p.accept(",")
                try p.expect(")")
            }
            try p.expectEnd("'%}'")
            let (body, e) = try block(until: ["endmacro"])
            _ = try expectEnd(e, of: "macro", line: line, ["endmacro"])
            return .macro(name: name, params: params, body: body)
        case "break", "continue":
            guard tokens.isEmpty else { throw TemplateError.syntax("'{% \(word) %}' takes nothing after it", line: line) }
            return word == "break" ? .loopBreak(line: line) : .loopContinue(line: line)
        case "elif", "else", "endif", "endfor", "endset", "endmacro":
            throw TemplateError.syntax("'{% \(word) %}' has no block to end", line: line)
        default:
            throw TemplateError.syntax("the template uses '{% \(word) %}', which this renderer does not support", line: line)
        }
    }
}

/// Expressions with jinja2's precedence: conditional, or, and, not, comparisons and `in`, `+ -`, `~`, `* / // %`,
/// `**`, unary minus, then postfix (attribute, item, call) and filters/tests, which bind tightest of all.
struct ExprParser {
    let tokens: [TemplateLexer.Token]
    let line: Int
    var i = 0

    init(tokens: [TemplateLexer.Token], line: Int) {
        self.tokens = tokens
        self.line = line
    }

    var peek: TemplateLexer.Token? { i < tokens.count ? tokens[i] : nil }
    var currentLine: Int { peek?.line ?? tokens.last?.line ?? line }

    func error(_ m: String) -> TemplateError { TemplateError.syntax(m, line: currentLine) }

    mutating func accept(_ op: String) -> Bool {
        if let t = peek, t.kind == .op, t.text == op { i += 1; return true }
        return false
    }

    mutating func acceptWord(_ w: String) -> Bool {
        if let t = peek, t.kind == .name, t.text == w { i += 1; return true }
        return false
    }

    func isWord(_ w: String, at k: Int = 0) -> Bool {
        i + k < tokens.count && tokens[i + k].kind == .name && tokens[i + k].text == w
    }

    mutating func expect(_ op: String) throws(TemplateError) {
        guard accept(op) else { throw error("expected '\(op)'\(peek.map { " but found '\($0.text)'" } ?? " at the end of the tag")") }
    }

    mutating func expectWord(_ w: String) throws(TemplateError) {
        guard acceptWord(w) else { throw error("expected '\(w)'\(peek.map { " but found '\($0.text)'" } ?? "")") }
    }

    mutating func expectEnd(_ what: String) throws(TemplateError) {
        if let t = peek { throw error("unexpected '\(t.text)' (expected \(what))") }
    }

    mutating func name() throws(TemplateError) -> String {
        guard let t = peek, t.kind == .name else { throw error("expected a name\(peek.map { " but found '\($0.text)'" } ?? "")") }
        i += 1
        return t.text
    }

    mutating func expression(allowConditional: Bool = true) throws(TemplateError) -> Expr {
        let e = try orExpr()
        guard allowConditional, acceptWord("if") else { return e }
        let cond = try orExpr()
        let otherwise: Expr? = acceptWord("else") ? try expression() : nil
        return .conditional(cond: cond, then: e, otherwise: otherwise)
    }

    mutating func orExpr() throws(TemplateError) -> Expr {
        var e = try andExpr()
        while acceptWord("or") { e = .or(e, try andExpr()) }
        return e
    }

    mutating func andExpr() throws(TemplateError) -> Expr {
        var e = try notExpr()
        while acceptWord("and") { e = .and(e, try notExpr()) }
        return e
    }

    mutating func notExpr() throws(TemplateError) -> Expr {
        if isWord("not") { i += 1; return .not(try notExpr()) }
        return try compare()
    }

    mutating func compare() throws(TemplateError) -> Expr {
        var e = try math1()
        while true {
            let l = currentLine
            if let t = peek, t.kind == .op, ["==", "!=", "<", ">", "<=", ">="].contains(t.text) {
                i += 1
                e = .binary(t.text, e, try math1(), line: l)
            } else if acceptWord("in") {
                e = .binary("in", e, try math1(), line: l)
            } else if isWord("not"), isWord("in", at: 1) {
                i += 2
                e = .not(.binary("in", e, try math1(), line: l))
            } else {
                return e
            }
        }
    }

    mutating func math1() throws(TemplateError) -> Expr {
        var e = try concat()
        while let t = peek, t.kind == .op, t.text == "+" || t.text == "-" {
            i += 1
            e = .binary(t.text, e, try concat(), line: t.line)
        }
        return e
    }

    mutating func concat() throws(TemplateError) -> Expr {
        var e = try math2()
        while let t = peek, t.kind == .op, t.text == "~" {
            i += 1
            e = .binary("~", e, try math2(), line: t.line)
        }
        return e
    }

    mutating func math2() throws(TemplateError) -> Expr {
        var e = try pow()
        while let t = peek, t.kind == .op, ["*", "/", "//", "%"].contains(t.text) {
            i += 1
            e = .binary(t.text, e, try pow(), line: t.line)
        }
        return e
    }

    mutating func pow() throws(TemplateError) -> Expr {
        var e = try unary()
        while let t = peek, t.kind == .op, t.text == "**" {
            i += 1
            e = .binary("**", e, try unary(), line: t.line)
        }
        return e
    }

    mutating func unary(withFilter: Bool = true) throws(TemplateError) -> Expr {
        var e: Expr
        if let t = peek, t.kind == .op, t.text == "-" || t.text == "+" {
            i += 1
            e = .unary(t.text, try unary(withFilter: false), line: t.line)
        } else {
            e = try primary()
        }
        e = try postfix(e)
        return withFilter ? try filters(e) : e
    }

    mutating func primary() throws(TemplateError) -> Expr {
        guard let t = peek else { throw error("expected an expression at the end of the tag") }
        i += 1
        switch t.kind {
        case .name:
            switch t.text {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(t.text, line: t.line)
            }
        case .string:
            var s = t.text
            while let n = peek, n.kind == .string { s += n.text; i += 1 }  // adjacent literals join, as in Python
            return .literal(.string(s))
        case .int:
            guard let v = Int(t.text) else { throw error("the number \(t.text) is too large") }
            return .literal(.int(v))
        case .double:
            return .literal(.double(Double(t.text) ?? 0))
        case .op:
            switch t.text {
            case "(":
                if accept(")") { return .tuple([]) }
                let first = try expression()
                if accept(")") { return first }
                var items = [first]
                while accept(",") {
                    if peek?.text == ")" { break }
                    items.append(try expression())
                }
                try expect(")")
                return .tuple(items)
            case "[":
                var items: [Expr] = []
                while !accept("]") {
                    if !items.isEmpty { try expect(","); if accept("]") { break } }
                    items.append(try expression())
                }
                return .list(items)
            case "{":
                var pairs: [(Expr, Expr)] = []
                while !accept("}") {
                    if !pairs.isEmpty { try expect(","); if accept("}") { break } }
                    let k = try expression()
                    try expect(":")
                    pairs.append((k, try expression()))
                }
                return .dict(pairs)
            default:
                throw TemplateError.syntax("unexpected '\(t.text)'", line: t.line)
            }
        }
    }

    mutating func postfix(_ base: Expr) throws(TemplateError) -> Expr {
        var e = base
        while let t = peek, t.kind == .op {
            if t.text == "." {
                i += 1
                guard let n = peek, n.kind == .name || n.kind == .int else { throw error("expected an attribute name after '.'") }
                i += 1
                e = n.kind == .int ? .item(e, .literal(.int(Int(n.text) ?? 0)), line: n.line) : .attribute(e, n.text, line: n.line)
            } else if t.text == "[" {
                i += 1
                e = try subscriptExpr(e, line: t.line)
            } else if t.text == "(" {
                i += 1
                let (args, kwargs) = try arguments()
                e = .call(e, args: args, kwargs: kwargs, line: t.line)
            } else {
                break
            }
        }
        return e
    }

    mutating func subscriptExpr(_ base: Expr, line: Int) throws(TemplateError) -> Expr {
        var parts: [Expr?] = []
        var current: Expr?
        var isSlice = false
        while true {
            if accept("]") { parts.append(current); break }
            if accept(":") {
                isSlice = true
                parts.append(current)
                current = nil
                continue
            }
            guard current == nil else { throw error("expected ':' or ']' in a subscript") }
            current = try expression()
        }
        guard isSlice else {
            guard let index = parts.first ?? nil else { throw error("an empty subscript '[]'") }
            return .item(base, index, line: line)
        }
        guard parts.count <= 3 else { throw error("a slice takes at most three parts") }
        return .slice(base, start: parts[0], stop: parts.count > 1 ? parts[1] : nil, step: parts.count > 2 ? parts[2] : nil, line: line)
    }

    /// `(a, b, k=v)` after the opening parenthesis.
    mutating func arguments() throws(TemplateError) -> ([Expr], [(String, Expr)]) {
        var args: [Expr] = []
        var kwargs: [(String, Expr)] = []
        while !accept(")") {
            if !args.isEmpty || !kwargs.isEmpty { try expect(","); if accept(")") { break } }
            if let t = peek, t.kind == .name, i + 1 < tokens.count, tokens[i + 1].kind == .op, tokens[i + 1].text == "=" {
                i += 2
                kwargs.append((t.text, try expression()))
            } else {
                guard kwargs.isEmpty else { throw error("a positional argument after a keyword argument") }
                args.append(try expression())
            }
        }
        return (args, kwargs)
    }

    mutating func filters(_ base: Expr) throws(TemplateError) -> Expr {
        var e = base
        while true {
            if accept("|") {
                let l = currentLine
                var name = try name()
                while accept(".") { name += "." + (try self.name()) }
                var args: [Expr] = [], kwargs: [(String, Expr)] = []
                if accept("(") { (args, kwargs) = try arguments() }
                e = .filter(e, name: name, args: args, kwargs: kwargs, line: l)
            } else if isWord("is") {
                let l = currentLine
                i += 1
                let negated = acceptWord("not")
                var name = try self.name()
                if name == "none" || name == "true" || name == "false" { name = name.lowercased() }
                var args: [Expr] = []
                if accept("(") {
                    let (a, kw) = try arguments()
                    guard kw.isEmpty else { throw error("tests take no keyword arguments") }
                    args = a
                } else if let t = peek, t.kind == .string || t.kind == .int || t.kind == .double
                            || (t.kind == .name && !["and", "or", "else", "if", "is", "in", "not"].contains(t.text)) {
                    // One bare argument (`is divisibleby 3`, `is equalto 'x'`).
                    args = [try postfix(try primary())]
                }
                e = .test(e, name: name, args: args, negated: negated, line: l)
            } else {
                return e
            }
        }
    }
}
