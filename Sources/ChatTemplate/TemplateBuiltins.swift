#if canImport(Glibc)
import Glibc
#endif

/// Filters, tests, methods, operators and globals, with the semantics of jinja2 over Python objects in Hugging
/// Face's sandbox (lists and dicts cannot be modified; `tojson` is `json.dumps(ensure_ascii=False)`).
struct TemplateBuiltins {
    /// Seconds since the epoch for `strftime_now`, and whether to format it in UTC (tests) or local time.
    let clock: () -> Int
    let utc: Bool
    /// The render's budget: what a builtin makes counts too.
    let budget: TemplateBudget

    static func fail(_ m: String) -> TemplateError { .render(m, line: 0) }

    // MARK: Globals

    func global(_ name: String) -> TemplateValue? {
        switch name {
        case "range":
            return .callable(Callable(name: "range") { args, _ throws(TemplateError) in
                let ints = args.compactMap(\.integer)
                guard ints.count == args.count, (1...3).contains(ints.count) else { throw Self.fail("range() takes one to three integers") }
                let (start, stop, step) = ints.count == 1 ? (0, ints[0], 1) : (ints[0], ints[1], ints.count == 3 ? ints[2] : 1)
                guard step != 0 else { throw Self.fail("range() step must not be zero") }
                let count = step > 0 ? max(0, (stop - start + step - 1) / step) : max(0, (start - stop - step - 1) / -step)
                guard count <= 100_000 else { throw Self.fail("range() of \(count) items is more than a chat template may make") }
                try budget.spend(count)
                return .array(stride(from: start, to: stop, by: step).map { .int($0) })
            })
        case "namespace":
            return .callable(Callable(name: "namespace") { args, kwargs throws(TemplateError) in
                var attrs: [(String, TemplateValue)] = []
                if let first = args.first, case .object(let o) = first { attrs = o }
                for (k, v) in kwargs { attrs.removeAll { $0.0 == k }; attrs.append((k, v)) }
                return .namespace(Namespace(attrs))
            })
        case "dict":
            return .callable(Callable(name: "dict") { _, kwargs throws(TemplateError) in .object(kwargs) })
        case "raise_exception":
            return .callable(Callable(name: "raise_exception") { args, _ throws(TemplateError) in
                throw TemplateError.refused(args.first?.str ?? "")
            })
        case "strftime_now":
            return .callable(Callable(name: "strftime_now") { args, _ throws(TemplateError) in
                guard case .string(let fmt)? = args.first else { throw Self.fail("strftime_now() takes a format string") }
                return .string(strftime(fmt))
            })
        default:
            return nil
        }
    }

    func strftime(_ fmt: String) -> String {
        var t = time_t(clock())
        var parts = tm()
        if utc { gmtime_r(&t, &parts) } else { localtime_r(&t, &parts) }
        var buf = [CChar](repeating: 0, count: 256)
        let n = Glibc.strftime(&buf, buf.count, fmt, &parts)
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: Attributes and items

    /// `x.name`: a method first, then a key (jinja2's `getattr` order, so `d.items` is the method).
    func attribute(_ base: TemplateValue, _ name: String) throws(TemplateError) -> TemplateValue {
        if case .undefined(let why) = base { throw Self.fail(why) }
        if let m = method(base, name) { return m }
        if let v = base.lookup(name) { return v }
        return .undefined("'\(base.typeName) object' has no attribute '\(name)'")
    }

    /// `x[key]`: a key or index first, then a method (jinja2's `getitem` order).
    func item(_ base: TemplateValue, _ key: TemplateValue) throws(TemplateError) -> TemplateValue {
        switch (base, key) {
        case (.undefined(let why), _):
            throw Self.fail(why)
        case (.array(let a), _):
            guard let i = key.integer else { return .undefined("list indices must be integers") }
            let j = i < 0 ? a.count + i : i
            return j >= 0 && j < a.count ? a[j] : .undefined("list index \(i) is out of range")
        case (.string(let s), _):
            guard let i = key.integer else { return .undefined("string indices must be integers") }
            let u = Array(s.unicodeScalars)
            let j = i < 0 ? u.count + i : i
            return j >= 0 && j < u.count ? .string(String(u[j])) : .undefined("string index \(i) is out of range")
        case (.object, .string(let k)), (.namespace, .string(let k)):
            if let v = base.lookup(k) { return v }
            if let m = method(base, k) { return m }
            return .undefined("'\(base.typeName) object' has no attribute '\(k)'")
        default:
            return .undefined("'\(base.typeName) object' has no item \(key.repr)")
        }
    }

    func slice(_ base: TemplateValue, _ start: Int?, _ stop: Int?, _ step: Int?) throws(TemplateError) -> TemplateValue {
        let st = step ?? 1
        guard st != 0 else { throw Self.fail("slice step cannot be zero") }
        func indices(_ n: Int) -> [Int] {
            func clamp(_ v: Int?, _ dflt: Int, lo: Int, hi: Int) -> Int {
                guard var x = v else { return dflt }
                if x < 0 { x += n }
                return min(max(x, lo), hi)
            }
            if st > 0 {
                let a = clamp(start, 0, lo: 0, hi: n), b = clamp(stop, n, lo: 0, hi: n)
                return a < b ? Array(stride(from: a, to: b, by: st)) : []
            }
            let a = clamp(start, n - 1, lo: -1, hi: n - 1), b = clamp(stop, -1, lo: -1, hi: n - 1)
            return a > b ? Array(stride(from: a, to: b, by: st)) : []
        }
        switch base {
        case .array(let a): return .array(indices(a.count).map { a[$0] })
        case .string(let s):
            let u = Array(s.unicodeScalars)
            return .string(String(String.UnicodeScalarView(indices(u.count).map { u[$0] })))
        case .undefined(let why): throw Self.fail(why)
        default: throw Self.fail("'\(base.typeName)' object cannot be sliced")
        }
    }

    // MARK: Methods

    private static let mutating: Set<String> = ["append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse",
                                                "update", "setdefault", "popitem", "__setitem__", "__delitem__"]

    /// A bound method of a string, list or dict, or nil when there is none by that name.
    func method(_ base: TemplateValue, _ name: String) -> TemplateValue? {
        func bound(_ f: @escaping ([TemplateValue], [(String, TemplateValue)]) throws(TemplateError) -> TemplateValue) -> TemplateValue {
            .callable(Callable(name: name, call: f))
        }
        switch base {
        case .string(let s):
            guard let f = stringMethod(s, name) else { return nil }
            return bound(f)
        case .object(let o):
            switch name {
            case "items": return bound { _, _ in .array(o.map { .array([.string($0.0), $0.1]) }) }
            case "keys": return bound { _, _ in .array(o.map { .string($0.0) }) }
            case "values": return bound { _, _ in .array(o.map { $0.1 }) }
            case "get":
                return bound { args, _ throws(TemplateError) in
                    guard case .string(let k)? = args.first else { return args.count > 1 ? args[1] : .none }
                    return base.lookup(k) ?? (args.count > 1 ? args[1] : .none)
                }
            default:
                if Self.mutating.contains(name) { return bound { _, _ throws(TemplateError) in throw Self.unsafe(name, base) } }
                return nil
            }
        case .array(let a):
            switch name {
            case "count": return bound { args, _ in .int(a.filter { TemplateValue.equal($0, args.first ?? .none) }.count) }
            case "index":
                return bound { args, _ throws(TemplateError) in
                    guard let i = a.firstIndex(where: { TemplateValue.equal($0, args.first ?? .none) }) else { throw Self.fail("the value is not in the list") }
                    return .int(i)
                }
            default:
                if Self.mutating.contains(name) { return bound { _, _ throws(TemplateError) in throw Self.unsafe(name, base) } }
                return nil
            }
        default:
            return nil
        }
    }

    static func unsafe(_ name: String, _ base: TemplateValue) -> TemplateError {
        fail("access to attribute '\(name)' of '\(base.typeName)' object is unsafe (the sandbox does not let a template modify a \(base.typeName))")
    }

    // Python's str.isspace: Unicode White_Space and the four ASCII separators 0x1C–0x1F.
    static func isSpace(_ u: Unicode.Scalar) -> Bool { u.properties.isWhitespace || (0x1C...0x1F).contains(u.value) }

    static func strip(_ s: String, _ chars: TemplateValue?, leading: Bool, trailing: Bool) -> String {
        var u = Array(s.unicodeScalars)
        let set: Set<Unicode.Scalar>? = chars.flatMap { if case .string(let c) = $0 { return Set(c.unicodeScalars) }; return nil }
        let drop: (Unicode.Scalar) -> Bool = { set?.contains($0) ?? isSpace($0) }
        if trailing { while let l = u.last, drop(l) { u.removeLast() } }
        if leading {
            var i = 0
            while i < u.count, drop(u[i]) { i += 1 }
            u.removeFirst(i)
        }
        return String(String.UnicodeScalarView(u))
    }

    static func scalars(_ s: String) -> [Unicode.Scalar] { Array(s.unicodeScalars) }
    static func string(_ u: some Sequence<Unicode.Scalar>) -> String { String(String.UnicodeScalarView(u)) }

    static func find(_ hay: [Unicode.Scalar], _ needle: [Unicode.Scalar], from: Int = 0) -> Int? {
        guard needle.count <= hay.count else { return nil }
        if needle.isEmpty { return from <= hay.count ? from : nil }
        var i = from
        while i + needle.count <= hay.count {
            if hay[i] == needle[0], Array(hay[i..<(i + needle.count)]) == needle { return i }
            i += 1
        }
        return nil
    }

    /// Python's `str.split`: on a separator, or on runs of whitespace when none is given.
    static func split(_ s: String, _ sep: TemplateValue?, _ maxsplit: Int) throws(TemplateError) -> [String] {
        let u = scalars(s)
        var parts: [String] = []
        if let sep, case .string(let sp) = sep {
            let n = scalars(sp)
            guard !n.isEmpty else { throw fail("empty separator") }
            var start = 0
            while maxsplit < 0 || parts.count < maxsplit, let i = find(u, n, from: start) {
                parts.append(string(u[start..<i]))
                start = i + n.count
            }
            parts.append(string(u[start...]))
            return parts
        }
        var i = 0
        while i < u.count {
            while i < u.count, isSpace(u[i]) { i += 1 }
            guard i < u.count else { break }
            if maxsplit >= 0, parts.count == maxsplit {
                parts.append(strip(string(u[i...]), nil, leading: false, trailing: true))
                return parts
            }
            let start = i
            while i < u.count, !isSpace(u[i]) { i += 1 }
            parts.append(string(u[start..<i]))
        }
        return parts
    }

    private func stringMethod(_ s: String, _ name: String) -> (([TemplateValue], [(String, TemplateValue)]) throws(TemplateError) -> TemplateValue)? {
        func arg(_ args: [TemplateValue], _ kwargs: [(String, TemplateValue)], _ i: Int, _ key: String) -> TemplateValue? {
            i < args.count ? args[i] : kwargs.first { $0.0 == key }?.1
        }
        func text(_ v: TemplateValue?, _ what: String) throws(TemplateError) -> String {
            guard case .string(let t)? = v else { throw Self.fail("\(name)() needs a string \(what)") }
            return t
        }
        switch name {
        case "strip", "lstrip", "rstrip":
            return { args, _ in .string(Self.strip(s, args.first, leading: name != "rstrip", trailing: name != "lstrip")) }
        case "split", "rsplit":
            return { args, kwargs throws(TemplateError) in
                let sep = arg(args, kwargs, 0, "sep").flatMap { $0.isNone ? nil : $0 }
                let max = arg(args, kwargs, 1, "maxsplit")?.integer ?? -1
                if name == "rsplit", max >= 0 {
                    // Split from the right: reverse, split, reverse back.
                    let rev = String(String.UnicodeScalarView(s.unicodeScalars.reversed()))
                    let revSep = sep.map { v -> TemplateValue in if case .string(let x) = v { return .string(String(String.UnicodeScalarView(x.unicodeScalars.reversed()))) }; return v }
                    return .array(try Self.split(rev, revSep, max).reversed().map { .string(String(String.UnicodeScalarView($0.unicodeScalars.reversed()))) })
                }
                return .array(try Self.split(s, sep, max).map { .string($0) })
            }
        case "startswith", "endswith":
            return { args, _ throws(TemplateError) in
                let options: [TemplateValue]
                switch args.first {
                case .string?: options = [args[0]]
                case .array(let a)?: options = a
                default: throw Self.fail("\(name)() needs a string or a tuple of strings")
                }
                let u = Self.scalars(s)
                for o in options {
                    let p = Self.scalars(try text(o, "prefix"))
                    if p.count <= u.count, (name == "startswith" ? Array(u.prefix(p.count)) : Array(u.suffix(p.count))) == p { return .bool(true) }
                }
                return .bool(false)
            }
        case "upper": return { _, _ in .string(s.uppercased()) }
        case "lower": return { _, _ in .string(s.lowercased()) }
        case "title": return { _, _ in .string(Self.title(s)) }
        case "capitalize": return { _, _ in .string(Self.capitalize(s)) }
        case "replace":
            return { args, _ throws(TemplateError) in
                .string(try Self.replace(s, text(args.first, "to find"), text(args.count > 1 ? args[1] : nil, "replacement"), args.count > 2 ? args[2].integer ?? -1 : -1))
            }
        case "find", "rfind", "index", "rindex", "count":
            return { args, _ throws(TemplateError) in
                let n = Self.scalars(try text(args.first, "to find"))
                let u = Self.scalars(s)
                var hits: [Int] = []
                var start = 0
                while let i = Self.find(u, n, from: start) {
                    hits.append(i)
                    start = n.isEmpty ? i + 1 : i + n.count
                    if start > u.count { break }
                }
                if name == "count" { return .int(hits.count) }
                guard let h = name.hasPrefix("r") ? hits.last : hits.first else {
                    if name.hasSuffix("index") { throw Self.fail("substring not found") }
                    return .int(-1)
                }
                return .int(h)
            }
        case "join":
            return { args, _ throws(TemplateError) in
                guard let items = args.first?.iterationItems else { throw Self.fail("join() needs a list") }
                var parts: [String] = []
                for i in items {
                    guard case .string(let x) = i else { throw Self.fail("join() needs a list of strings, found \(i.typeName)") }
                    parts.append(x)
                }
                return .string(parts.joined(separator: s))
            }
        case "removeprefix", "removesuffix":
            return { args, _ throws(TemplateError) in
                let p = Self.scalars(try text(args.first, "affix")), u = Self.scalars(s)
                if name == "removeprefix", u.starts(with: p) { return .string(Self.string(u.dropFirst(p.count))) }
                if name == "removesuffix", !p.isEmpty, Array(u.suffix(p.count)) == p { return .string(Self.string(u.dropLast(p.count))) }
                return .string(s)
            }
        case "splitlines":
            return { _, _ in
                var lines = Self.scalars(s).split(omittingEmptySubsequences: false) { $0 == "\n" }.map { Self.string($0) }
                if lines.last == "" { lines.removeLast() }
                return .array(lines.map { .string($0) })
            }
        case "isdigit": return { _, _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.numericType == .decimal }) }
        case "isalpha": return { _, _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.isAlphabetic }) }
        case "isspace": return { _, _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy(Self.isSpace)) }
        case "islower": return { _, _ in .bool(s.contains { $0.isLetter } && s == s.lowercased()) }
        case "isupper": return { _, _ in .bool(s.contains { $0.isLetter } && s == s.uppercased()) }
        default:
            return nil
        }
    }

    static func replace(_ s: String, _ old: String, _ new: String, _ count: Int) -> String {
        let u = scalars(s), o = scalars(old), n = scalars(new)
        var out: [Unicode.Scalar] = []
        var i = 0, done = 0
        if o.isEmpty {
            // Python inserts the replacement between every character (and at both ends).
            for c in u where count < 0 || done < count { out += n; out.append(c); done += 1; i += 1 }
            out += u[i...]
            if count < 0 || done < count { out += n }
            return string(out)
        }
        while count < 0 || done < count, let j = find(u, o, from: i) {
            out += u[i..<j]
            out += n
            i = j + o.count
            done += 1
        }
        out += u[i...]
        return string(out)
    }

    static func capitalize(_ s: String) -> String {
        guard let f = s.first else { return s }
        return f.uppercased() + s.dropFirst().lowercased()
    }

    /// jinja2's `title`: the first letter of each word upper, the rest lower (words split at spaces, -, (, {, [, <).
    static func title(_ s: String) -> String {
        var out = ""
        var start = true
        for c in s {
            out += start ? c.uppercased() : c.lowercased()
            start = c.isWhitespace || "-({[<".contains(c)
        }
        return out
    }

    // MARK: Operators

    func binary(_ op: String, _ a: TemplateValue, _ b: TemplateValue) throws(TemplateError) -> TemplateValue {
        switch op {
        case "==": return .bool(TemplateValue.equal(a, b))
        case "!=": return .bool(!TemplateValue.equal(a, b))
        case "<", ">", "<=", ">=":
            let (x, y) = op.hasPrefix("<") ? (a, b) : (b, a)
            guard let lt = TemplateValue.less(x, y) else {
                throw Self.fail("'\(op)' not supported between instances of '\(a.typeName)' and '\(b.typeName)'")
            }
            return .bool(op.count == 2 ? (lt || TemplateValue.equal(a, b)) : lt)
        case "in": return .bool(try contains(b, a))
        case "~": return .string(a.str + b.str)
        default: break
        }
        if case .undefined(let why) = a { throw Self.fail(why) }
        if case .undefined(let why) = b { throw Self.fail(why) }
        switch (op, a, b) {
        case ("+", .string(let x), .string(let y)): return .string(x + y)
        case ("+", .array(let x), .array(let y)): return .array(x + y)
        case ("*", .string(let x), .int(let n)), ("*", .int(let n), .string(let x)):
            guard n <= 1 << 20 else { throw Self.fail("a string repeated \(n) times is more than a chat template may make") }
            try budget.mayMake(bytes: x.utf8.count * max(0, n))
            return .string(n > 0 ? String(repeating: x, count: n) : "")
        case ("*", .array(let x), .int(let n)), ("*", .int(let n), .array(let x)):
            guard n <= 1 << 16 else { throw Self.fail("a list repeated \(n) times is more than a chat template may make") }
            try budget.mayMake(items: x.count * max(0, n))
            return .array(n > 0 ? Array([[TemplateValue]](repeating: x, count: n).joined()) : [])
        case ("%", .string, _):
            throw Self.fail("printf-style '%' formatting of strings is not supported")
        default: break
        }
        if let x = a.integer, let y = b.integer {
            switch op {
            case "+": return .int(x &+ y)
            case "-": return .int(x &- y)
            case "*": return .int(x &* y)
            case "/":
                guard y != 0 else { throw Self.fail("division by zero") }
                return .double(Double(x) / Double(y))
            case "//":
                guard y != 0 else { throw Self.fail("integer division by zero") }
                let q = x / y
                return .int((x % y != 0 && (x < 0) != (y < 0)) ? q - 1 : q)
            case "%":
                guard y != 0 else { throw Self.fail("integer modulo by zero") }
                let r = x % y
                return .int(r != 0 && (r < 0) != (y < 0) ? r + y : r)
            case "**":
                guard y >= 0 else { return .double(power(Double(x), Double(y))) }
                var r = 1
                for _ in 0..<min(y, 64) { r = r &* x }
                return .int(r)
            default: break
            }
        }
        if let x = a.number, let y = b.number {
            switch op {
            case "+": return .double(x + y)
            case "-": return .double(x - y)
            case "*": return .double(x * y)
            case "/":
                guard y != 0 else { throw Self.fail("float division by zero") }
                return .double(x / y)
            case "//":
                guard y != 0 else { throw Self.fail("float floor division by zero") }
                return .double((x / y).rounded(.down))
            case "%":
                guard y != 0 else { throw Self.fail("float modulo") }
                let r = x.truncatingRemainder(dividingBy: y)
                return .double(r != 0 && (r < 0) != (y < 0) ? r + y : r)
            case "**": return .double(power(x, y))
            default: break
            }
        }
        throw Self.fail("unsupported operand type(s) for \(op): '\(a.typeName)' and '\(b.typeName)'")
    }

    /// Python's `needle in container`.
    func contains(_ container: TemplateValue, _ needle: TemplateValue) throws(TemplateError) -> Bool {
        switch container {
        case .undefined: return false
        case .string(let s):
            guard case .string(let n) = needle else { throw Self.fail("'in <string>' requires string as left operand, not \(needle.typeName)") }
            return Self.find(Self.scalars(s), Self.scalars(n)) != nil
        case .array(let a): return a.contains { TemplateValue.equal($0, needle) }
        case .object(let o):
            guard case .string(let k) = needle else { return false }
            return o.contains { TemplateValue.sameKey($0.0, k) }
        default:
            throw Self.fail("argument of type '\(container.typeName)' is not iterable")
        }
    }
}

private func power(_ x: Double, _ y: Double) -> Double { Glibc.pow(x, y) }
