/// Variables visible at one point of a template. A `for` body and a macro call get a scope of their own, as in
/// jinja2: a `set` inside a loop does not outlive its iteration (templates use `namespace` for that); `if` does
/// not open one.
final class Scope {
    var vars: [String: TemplateValue] = [:]
    let parent: Scope?
    init(parent: Scope?) { self.parent = parent }

    func get(_ name: String) -> TemplateValue? {
        var s: Scope? = self
        while let c = s {
            if let v = c.vars[name] { return v }
            s = c.parent
        }
        return nil
    }
}

/// What is left of one render's `ChatTemplate.Budget`, shared by the renderer and the builtins.
final class TemplateBudget {
    let limit: ChatTemplate.Budget
    private var steps = 0
    init(_ limit: ChatTemplate.Budget) { self.limit = limit }

    func spend(_ n: Int = 1) throws(TemplateError) {
        steps += max(0, n)
        guard steps <= limit.steps else {
            throw .exceeded("stopped after \(limit.steps) steps (a template loop that does not end, or a conversation far larger than chat templates are made for)")
        }
    }

    private var bytesMade = 0
    /// A value an operator, filter or call made: a string costs its bytes, a list a step per item.
    func made(_ v: TemplateValue) throws(TemplateError) -> TemplateValue {
        switch v {
        case .string(let s):
            bytesMade += s.utf8.count
            guard bytesMade <= limit.madeBytes else {
                throw .exceeded("stopped after making \(limit.madeBytes >> 20) MiB of strings (a loop that grows a string by copying it)")
            }
        case .array(let items):
            try spend(items.count)
        default:
            break
        }
        return v
    }

    /// Before making a value of `bytes` (a string) or `items` (a list) whose size is known in advance (a
    /// repeat): refused when it alone would pass what is left, instead of being allocated first.
    func mayMake(bytes: Int = 0, items: Int = 0) throws(TemplateError) {
        if bytes > limit.madeBytes - bytesMade {
            throw .exceeded("stopped before making a string of \(bytes >> 20) MiB, past its \(limit.madeBytes >> 20) MiB of strings")
        }
        if items > limit.steps - steps { throw .exceeded("stopped before making a list of \(items) items, past its \(limit.steps) steps") }
    }

    func check(output: String) throws(TemplateError) {
        guard output.utf8.count <= limit.outputBytes else {
            throw .exceeded("stopped after writing \(limit.outputBytes >> 20) MiB of prompt")
        }
    }
}

/// Walks the syntax tree, writing text.
struct TemplateRenderer {
    enum Flow { case normal, breakLoop, continueLoop }

    let builtins: TemplateBuiltins
    let budget: TemplateBudget
    /// Macro calls in progress: a template that recurses without end is stopped, not the process.
    final class Depth { var value = 0 }
    let depth = Depth()
    static let maxMacroDepth = 64
    static let constantTimeFilters: Set<String> = ["length", "count", "first", "last", "default", "d"]

    func render(_ nodes: [Node], _ scope: Scope, _ out: inout String) throws(TemplateError) -> Flow {
        for node in nodes {
            try budget.spend()
            switch node {
            case .text(let t):
                out += t
                try budget.check(output: out)
            case .output(let e, _):
                out += try eval(e, scope).str
                try budget.check(output: out)
            case .ifBlock(let branches, let otherwise):
                var taken = false
                for (cond, body) in branches where try eval(cond, scope).truthy {
                    taken = true
                    let f = try render(body, scope, &out)
                    if f != .normal { return f }
                    break
                }
                if !taken {
                    let f = try render(otherwise, scope, &out)
                    if f != .normal { return f }
                }
            case .forLoop(let targets, let iterable, let filter, let body, let otherwise, let line):
                let source = try eval(iterable, scope)
                guard var items = source.iterationItems else {
                    throw TemplateError.render("'\(source.typeName)' object is not iterable", line: line)
                }
                if let filter {
                    var kept: [TemplateValue] = []
                    for item in items {
                        try budget.spend()
                        let s = Scope(parent: scope)
                        try bind(targets, item, in: s, line: line)
                        if try eval(filter, s).truthy { kept.append(item) }
                    }
                    items = kept
                }
                if items.isEmpty {
                    let f = try render(otherwise, scope, &out)
                    if f != .normal { return f }
                    continue
                }
                let n = items.count
                for (i, item) in items.enumerated() {
                    try budget.spend()
                    let s = Scope(parent: scope)
                    try bind(targets, item, in: s, line: line)
                    s.vars["loop"] = .object([
                        ("index", .int(i + 1)), ("index0", .int(i)), ("revindex", .int(n - i)), ("revindex0", .int(n - i - 1)),
                        ("first", .bool(i == 0)), ("last", .bool(i == n - 1)), ("length", .int(n)),
                        ("previtem", i > 0 ? items[i - 1] : .undefined("loop.previtem")),
                        ("nextitem", i + 1 < n ? items[i + 1] : .undefined("loop.nextitem")),
                        ("depth", .int(1)), ("depth0", .int(0)),
                        ("cycle", .callable(Callable(name: "loop.cycle") { args, _ throws(TemplateError) in
                            guard !args.isEmpty else { throw TemplateError.render("loop.cycle needs at least one value", line: 0) }
                            return args[i % args.count]
                        })),
                    ])
                    if try render(body, s, &out) == .breakLoop { break }
                }
            case .set(let target, let value, let line):
                try assign(target, try eval(value, scope), in: scope, line: line)
            case .setBlock(let target, let body, let line):
                var captured = ""
                _ = try render(body, scope, &captured)
                try assign(target, .string(captured), in: scope, line: line)
            case .macro(let name, let params, let body):
                scope.vars[name] = .callable(macro(name, params, body, defined: scope))
            case .loopBreak:
                return .breakLoop
            case .loopContinue:
                return .continueLoop
            }
        }
        return .normal
    }

    private func bind(_ targets: [String], _ item: TemplateValue, in s: Scope, line: Int) throws(TemplateError) {
        if targets.count == 1 { s.vars[targets[0]] = item; return }
        guard case .array(let parts) = item, parts.count == targets.count else {
            throw TemplateError.render("cannot unpack a \(item.typeName) into \(targets.count) names", line: line)
        }
        for (t, v) in zip(targets, parts) { s.vars[t] = v }
    }

    private func assign(_ target: SetTarget, _ value: TemplateValue, in scope: Scope, line: Int) throws(TemplateError) {
        switch target {
        case .names(let names):
            try bind(names, value, in: scope, line: line)
        case .attribute(let name, let attr):
            guard case .namespace(let ns)? = scope.get(name) else {
                throw TemplateError.render("cannot assign attribute '\(attr)' on '\(name)', which is not a namespace", line: line)
            }
            ns[attr] = value
        }
    }

    /// A macro as a callable: its parameters bound from positional then keyword arguments, the rest undefined or
    /// their defaults; the body renders in a scope under the one it was defined in.
    private func macro(_ name: String, _ params: [(String, Expr?)], _ body: [Node], defined: Scope) -> Callable {
        Callable(name: name) { args, kwargs throws(TemplateError) in
            guard args.count <= params.count else {
                throw TemplateError.render("macro '\(name)' takes not more than \(params.count) argument(s)", line: 0)
            }
            depth.value += 1
            defer { depth.value -= 1 }
            guard depth.value <= Self.maxMacroDepth else {
                throw TemplateError.render("macro '\(name)' recursed deeper than \(Self.maxMacroDepth) calls", line: 0)
            }
            let s = Scope(parent: defined)
            for (i, (p, dflt)) in params.enumerated() {
                if i < args.count {
                    s.vars[p] = args[i]
                } else if let kw = kwargs.first(where: { $0.0 == p }) {
                    s.vars[p] = kw.1
                } else if let dflt {
                    s.vars[p] = try eval(dflt, s)
                } else {
                    s.vars[p] = .undefined(p)
                }
            }
            if let unknown = kwargs.first(where: { kw in !params.contains { $0.0 == kw.0 } }) {
                throw TemplateError.render("macro '\(name)' takes no keyword argument '\(unknown.0)'", line: 0)
            }
            var out = ""
            _ = try render(body, s, &out)
            return .string(out)
        }
    }

    // MARK: Expressions

    func eval(_ e: Expr, _ scope: Scope) throws(TemplateError) -> TemplateValue {
        switch e {
        case .literal(let v):
            return v
        case .name(let n, _):
            return scope.get(n) ?? builtins.global(n) ?? .undefined("'\(n)' is undefined")
        case .list(let items), .tuple(let items):
            var out: [TemplateValue] = []
            for i in items { out.append(try eval(i, scope)) }
            return .array(out)
        case .dict(let pairs):
            var out: [(String, TemplateValue)] = []
            for (k, v) in pairs {
                guard case .string(let key) = try eval(k, scope) else { throw TemplateError.render("dict keys in a template must be strings", line: 0) }
                let value = try eval(v, scope)
                if let i = out.firstIndex(where: { TemplateValue.sameKey($0.0, key) }) { out[i].1 = value } else { out.append((key, value)) }
            }
            return .object(out)
        case .attribute(let base, let name, let line):
            let b = try eval(base, scope)
            do { return try builtins.attribute(b, name) } catch { throw error.at(line) }
        case .item(let base, let index, let line):
            let (b, i) = (try eval(base, scope), try eval(index, scope))
            do { return try builtins.item(b, i) } catch { throw error.at(line) }
        case .slice(let base, let start, let stop, let step, let line):
            let b = try eval(base, scope)
            func bound(_ x: Expr?) throws(TemplateError) -> Int? {
                guard let x else { return nil }
                let v = try eval(x, scope)
                if v.isNone { return nil }
                guard let i = v.integer else { throw TemplateError.render("slice indices must be integers", line: line) }
                return i
            }
            let (lo, hi, st) = (try bound(start), try bound(stop), try bound(step))
            do { return try builtins.slice(b, lo, hi, st) } catch { throw error.at(line) }
        case .call(let fn, let args, let kwargs, let line):
            let f = try eval(fn, scope)
            var a: [TemplateValue] = []
            for x in args { a.append(try eval(x, scope)) }
            var kw: [(String, TemplateValue)] = []
            for (k, x) in kwargs { kw.append((k, try eval(x, scope))) }
            switch f {
            case .callable(let c):
                do { return try budget.made(try c.call(a, kw)) } catch { throw error.at(line) }
            case .undefined(let why):
                throw TemplateError.render(why + " (called as a function)", line: line)
            default:
                throw TemplateError.render("'\(f.typeName)' object is not callable", line: line)
            }
        case .filter(let base, let name, let args, let kwargs, let line):
            let v = try eval(base, scope)
            var a: [TemplateValue] = []
            for x in args { a.append(try eval(x, scope)) }
            var kw: [(String, TemplateValue)] = []
            for (k, x) in kwargs { kw.append((k, try eval(x, scope))) }
            // A filter that walks its input costs a step per item of a list (`length`, `first` and the like do not
            // walk it: templates ask `messages|length` once per message).
            if case .array(let items) = v, !Self.constantTimeFilters.contains(name) { try budget.spend(items.count) }
            do { return try budget.made(try builtins.filter(name, v, a, kw)) } catch { throw error.at(line) }
        case .test(let base, let name, let args, let negated, let line):
            let v = try eval(base, scope)
            var a: [TemplateValue] = []
            for x in args { a.append(try eval(x, scope)) }
            do { return .bool(try builtins.test(name, v, a) != negated) } catch { throw error.at(line) }
        case .unary(let op, let x, let line):
            let v = try eval(x, scope)
            switch (op, v) {
            case ("-", .int(let i)): return .int(-i)
            case ("-", .double(let d)): return .double(-d)
            case ("+", .int), ("+", .double): return v
            default: throw TemplateError.render("bad operand type for unary \(op): '\(v.typeName)'", line: line)
            }
        case .binary(let op, let l, let r, let line):
            let (a, b) = (try eval(l, scope), try eval(r, scope))
            do { return try budget.made(try builtins.binary(op, a, b)) } catch { throw error.at(line) }
        case .and(let l, let r):
            let a = try eval(l, scope)
            return a.truthy ? try eval(r, scope) : a
        case .or(let l, let r):
            let a = try eval(l, scope)
            return a.truthy ? a : try eval(r, scope)
        case .not(let x):
            return .bool(!(try eval(x, scope).truthy))
        case .conditional(let cond, let then, let otherwise):
            if try eval(cond, scope).truthy { return try eval(then, scope) }
            guard let otherwise else { return .undefined("the conditional expression has no else") }
            return try eval(otherwise, scope)
        }
    }
}

