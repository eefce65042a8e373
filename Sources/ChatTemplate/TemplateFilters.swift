import JSON

/// jinja2's filters and tests (the ones chat templates use, and the common rest); an unknown one is an error
/// naming it, never a silent pass-through.
extension TemplateBuiltins {
    func filter(_ name: String, _ v: TemplateValue, _ args: [TemplateValue], _ kwargs: [(String, TemplateValue)]) throws(TemplateError) -> TemplateValue {
        func arg(_ i: Int, _ key: String) -> TemplateValue? {
            i < args.count ? args[i] : kwargs.first { $0.0 == key }?.1
        }
        func items(_ what: String = name) throws(TemplateError) -> [TemplateValue] {
            guard let items = v.iterationItems else { throw Self.fail("the '\(what)' filter needs a list, not \(v.typeName)") }
            return items
        }
        switch name {
        case "trim":
            return .string(Self.strip(v.str, arg(0, "chars"), leading: true, trailing: true))
        case "tojson":
            // Hugging Face's tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False).
            var indent: Int?
            if let i = arg(1, "indent") {
                if let n = i.integer { indent = n } else if !i.isNone { throw Self.fail("tojson indent must be an integer") }
            }
            var separators: (String, String)?
            if case .array(let s)? = arg(2, "separators"), s.count == 2 { separators = (s[0].str, s[1].str) }
            let sortKeys = arg(3, "sort_keys")?.truthy ?? false
            let asciiOnly = arg(0, "ensure_ascii")?.truthy ?? false
            var out = ""
            try PythonJSON(indent: indent, separators: separators, sortKeys: sortKeys, asciiOnly: asciiOnly).write(v, into: &out, level: 0)
            return .string(out)
        case "length", "count":
            switch v {
            case .string(let s): return .int(s.unicodeScalars.count)
            case .array(let a): return .int(a.count)
            case .object(let o): return .int(o.count)
            case .undefined: return .int(0)
            default: throw Self.fail("object of type '\(v.typeName)' has no len()")
            }
        case "string":
            return .string(v.str)
        case "list":
            return .array(try items())
        case "first":
            return try items().first ?? .undefined("the list is empty")
        case "last":
            if case .string(let s) = v { return s.unicodeScalars.last.map { .string(String($0)) } ?? .undefined("the string is empty") }
            return try items().last ?? .undefined("the list is empty")
        case "reverse":
            if case .string(let s) = v { return .string(Self.string(s.unicodeScalars.reversed())) }
            return .array(try items().reversed())
        case "join":
            let sep = arg(0, "d")?.str ?? ""
            var parts: [String] = []
            for i in try items() {
                if let attr = arg(1, "attribute") { parts.append(try attribute(i, attr.str).str) } else { parts.append(i.str) }
            }
            // A long separator between many items: counted before it is made.
            try budget.mayMake(bytes: parts.reduce(0) { $0 + $1.utf8.count } + sep.utf8.count * max(0, parts.count - 1))
            return .string(parts.joined(separator: sep))
        case "upper": return .string(v.str.uppercased())
        case "lower": return .string(v.str.lowercased())
        case "capitalize": return .string(Self.capitalize(v.str))
        case "title": return .string(Self.title(v.str))
        case "replace":
            guard let old = arg(0, "old"), let new = arg(1, "new") else { throw Self.fail("replace needs the text to find and its replacement") }
            // The most it can make: every possible match (an empty one between any two characters) replaced.
            let (text, o, n) = (v.str.utf8.count, old.str.utf8.count, new.str.utf8.count)
            if n > o { try budget.mayMake(bytes: text + (text / max(1, o) + 1) * (n - o)) }
            return .string(Self.replace(v.str, old.str, new.str, arg(2, "count")?.integer ?? -1))
        case "default", "d":
            let useFalsy = arg(1, "boolean")?.truthy ?? false
            if v.isUndefined || (useFalsy && !v.truthy) { return arg(0, "default_value") ?? .string("") }
            return v
        case "items":
            switch v {
            case .object(let o): return .array(o.map { .array([.string($0.0), $0.1]) })
            case .undefined: return .array([])
            default: throw Self.fail("the 'items' filter needs a mapping, not \(v.typeName)")
            }
        case "dictsort":
            guard case .object(let o) = v else { throw Self.fail("dictsort needs a mapping") }
            let reverse = arg(2, "reverse")?.truthy ?? false
            let sorted = o.sorted { Self.string($0.0.lowercased().unicodeScalars).unicodeScalars.lexicographicallyPrecedes($1.0.lowercased().unicodeScalars) }
            return .array((reverse ? sorted.reversed() : sorted).map { .array([.string($0.0), $0.1]) })
        case "select", "reject":
            guard case .string(let test)? = args.first else {
                return .array(try items().filter { $0.truthy == (name == "select") })
            }
            var kept: [TemplateValue] = []
            for i in try items() where try self.test(test, i, Array(args.dropFirst())) == (name == "select") { kept.append(i) }
            return .array(kept)
        case "selectattr", "rejectattr":
            guard case .string(let attr)? = args.first else { throw Self.fail("\(name) needs an attribute name") }
            var kept: [TemplateValue] = []
            for i in try items() {
                let a = try attribute(i, attr)
                let pass = args.count > 1 ? try self.test(args[1].str, a, Array(args.dropFirst(2))) : a.truthy
                if pass == (name == "selectattr") { kept.append(i) }
            }
            return .array(kept)
        case "map":
            var out: [TemplateValue] = []
            if let attr = kwargs.first(where: { $0.0 == "attribute" })?.1 {
                let dflt = kwargs.first { $0.0 == "default" }?.1
                for i in try items() {
                    let a = try attribute(i, attr.str)
                    out.append(a.isUndefined ? (dflt ?? a) : a)
                }
                return .array(out)
            }
            guard case .string(let f)? = args.first else { throw Self.fail("map needs a filter name or attribute=") }
            for i in try items() { out.append(try filter(f, i, Array(args.dropFirst()), kwargs)) }
            return .array(out)
        case "unique":
            var out: [TemplateValue] = []
            let caseSensitive = arg(0, "case_sensitive")?.truthy ?? false
            for i in try items() {
                let key = caseSensitive ? i : Self.folded(i)
                if !out.contains(where: { TemplateValue.equal(caseSensitive ? $0 : Self.folded($0), key) }) { out.append(i) }
            }
            return .array(out)
        case "sort":
            let reverse = arg(0, "reverse")?.truthy ?? false
            let caseSensitive = arg(1, "case_sensitive")?.truthy ?? false
            let attr = arg(2, "attribute")
            var keyed: [(TemplateValue, TemplateValue)] = []
            for i in try items() {
                var k = i
                if let attr { k = try attribute(i, attr.str) }
                keyed.append((caseSensitive ? k : Self.folded(k), i))
            }
            var failed = false
            keyed.sort { a, b in
                guard let lt = TemplateValue.less(a.0, b.0) else { failed = true; return false }
                return reverse ? TemplateValue.less(b.0, a.0) ?? false : lt
            }
            if failed { throw Self.fail("the list has values that cannot be compared") }
            return .array(keyed.map(\.1))
        case "min", "max":
            var best: TemplateValue?
            for i in try items() {
                guard let b = best else { best = i; continue }
                guard let lt = TemplateValue.less(Self.folded(i), Self.folded(b)) else { throw Self.fail("the list has values that cannot be compared") }
                if lt == (name == "min") { best = i }
            }
            return best ?? .undefined("the list is empty")
        case "sum":
            var total: TemplateValue = arg(1, "start") ?? .int(0)
            for i in try items() {
                let x = try arg(0, "attribute").map { a throws(TemplateError) in try attribute(i, a.str) } ?? i
                total = try binary("+", total, x)
            }
            return total
        case "abs":
            switch v {
            case .int(let i): return .int(abs(i))
            case .double(let d): return .double(abs(d))
            default: throw Self.fail("bad operand type for abs(): '\(v.typeName)'")
            }
        case "int":
            switch v {
            case .int: return v
            case .bool(let b): return .int(b ? 1 : 0)
            case .double(let d): return .int(Int(d))
            case .string(let s): return .int(Int(Self.strip(s, nil, leading: true, trailing: true)) ?? Double(s).map { Int($0) } ?? (arg(0, "default")?.integer ?? 0))
            default: return arg(0, "default") ?? .int(0)
            }
        case "float":
            if let n = v.number { return .double(n) }
            if case .string(let s) = v, let d = Double(Self.strip(s, nil, leading: true, trailing: true)) { return .double(d) }
            return arg(0, "default") ?? .double(0)
        case "round":
            guard let x = v.number else { throw Self.fail("round needs a number") }
            let p = arg(0, "precision")?.integer ?? 0
            let method = arg(1, "method")?.str ?? "common"
            var m = 1.0
            for _ in 0..<max(0, p) { m *= 10 }
            let r: Double
            switch method {
            case "ceil": r = (x * m).rounded(.up) / m
            case "floor": r = (x * m).rounded(.down) / m
            default: r = (x * m).rounded(.toNearestOrAwayFromZero) / m
            }
            return .double(r)
        case "safe", "e", "escape", "forceescape":
            if name == "safe" { return v }
            var out = ""
            for c in v.str.unicodeScalars {
                switch c {
                case "&": out += "&amp;"
                case "<": out += "&lt;"
                case ">": out += "&gt;"
                case "\"": out += "&#34;"
                case "'": out += "&#39;"
                default: out.unicodeScalars.append(c)
                }
            }
            return .string(out)
        case "indent":
            if let w = arg(0, "width")?.integer { try budget.mayMake(bytes: max(0, w)) }
            let width = arg(0, "width").map { $0.integer.map { String(repeating: " ", count: max(0, $0)) } ?? $0.str } ?? "    "
            let first = arg(1, "first")?.truthy ?? false
            let blank = arg(2, "blank")?.truthy ?? false
            var lines = Self.scalars(v.str).split(omittingEmptySubsequences: false) { $0 == "\n" }.map { Self.string($0) }
            try budget.mayMake(bytes: v.str.utf8.count + width.utf8.count * lines.count)
            for i in lines.indices where (i > 0 || first) && (blank || !lines[i].allSatisfy(\.isWhitespace)) { lines[i] = width + lines[i] }
            return .string(lines.joined(separator: "\n"))
        case "wordcount":
            return .int(try Self.split(v.str, nil, -1).count)
        case "attr":
            guard let a = args.first else { throw Self.fail("attr needs a name") }
            return v.lookup(a.str) ?? .undefined("no attribute '\(a.str)'")
        default:
            throw Self.fail("the template uses the filter '\(name)', which this renderer does not support")
        }
    }

    /// Strings lowercased, for jinja2's case-insensitive `sort`, `unique`, `min` and `max`.
    static func folded(_ v: TemplateValue) -> TemplateValue {
        if case .string(let s) = v { return .string(s.lowercased()) }
        return v
    }

    func test(_ name: String, _ v: TemplateValue, _ args: [TemplateValue]) throws(TemplateError) -> Bool {
        func other() throws(TemplateError) -> TemplateValue {
            guard let a = args.first else { throw Self.fail("the test '\(name)' needs a value to compare with") }
            return a
        }
        switch name {
        case "defined": return !v.isUndefined
        case "undefined": return v.isUndefined
        case "none": return v.isNone
        case "string": if case .string = v { return true }; return false
        case "number": if case .int = v { return true }; if case .double = v { return true }; if case .bool = v { return true }; return false
        case "integer": if case .int = v { return true }; return false
        case "float": if case .double = v { return true }; return false
        case "boolean": if case .bool = v { return true }; return false
        case "true": if case .bool(true) = v { return true }; return false
        case "false": if case .bool(false) = v { return true }; return false
        case "mapping": if case .object = v { return true }; return false
        case "iterable": return v.iterationItems != nil
        case "sequence":
            switch v {
            case .string, .array, .object: return true
            default: return false
            }
        case "callable": if case .callable = v { return true }; return false
        case "equalto", "eq", "==", "sameas": return TemplateValue.equal(v, try other())
        case "ne", "!=": return !TemplateValue.equal(v, try other())
        case "lt", "lessthan", "<": return try binary("<", v, try other()).truthy
        case "le", "<=": return try binary("<=", v, try other()).truthy
        case "gt", "greaterthan", ">": return try binary(">", v, try other()).truthy
        case "ge", ">=": return try binary(">=", v, try other()).truthy
        case "in": return try contains(try other(), v)
        case "odd", "even":
            guard let i = v.integer else { throw Self.fail("the test '\(name)' needs an integer") }
            return (i % 2 != 0) == (name == "odd")
        case "divisibleby":
            guard let i = v.integer, let d = try other().integer, d != 0 else { throw Self.fail("divisibleby needs non-zero integers") }
            return i % d == 0
        case "lower": return v.str == v.str.lowercased()
        case "upper": return v.str == v.str.uppercased()
        case "escaped": return false
        default:
            throw Self.fail("the template uses the test '\(name)', which this renderer does not support")
        }
    }
}

/// `json.dumps` as Python writes it: separators `", "`/`": "` (or `","` with an indent), keys in order unless
/// sorted, floats as `repr`, non-ASCII as is unless `ensure_ascii`.
struct PythonJSON {
    let indent: Int?
    let separators: (String, String)?
    let sortKeys: Bool
    let asciiOnly: Bool

    func write(_ v: TemplateValue, into out: inout String, level: Int) throws(TemplateError) {
        let (item, key) = separators ?? (indent == nil ? (", ", ": ") : (",", ": "))
        func newline(_ l: Int) {
            if let indent { out += "\n" + String(repeating: " ", count: indent * l) }
        }
        switch v {
        case .none: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .double(let d):
            if d.isNaN { out += "NaN" } else if d.isInfinite { out += d < 0 ? "-Infinity" : "Infinity" } else { out += TemplateValue.pyFloat(d) }
        case .string(let s): quote(s, into: &out)
        case .array(let a):
            if a.isEmpty { out += "[]"; return }
            out += "["
            for (i, x) in a.enumerated() {
                if i > 0 { out += item }
                newline(level + 1)
                try write(x, into: &out, level: level + 1)
            }
            newline(level)
            out += "]"
        case .object(let o):
            if o.isEmpty { out += "{}"; return }
            let pairs = sortKeys ? o.sorted { $0.0.unicodeScalars.lexicographicallyPrecedes($1.0.unicodeScalars) } : o
            out += "{"
            for (i, (k, x)) in pairs.enumerated() {
                if i > 0 { out += item }
                newline(level + 1)
                quote(k, into: &out)
                out += key
                try write(x, into: &out, level: level + 1)
            }
            newline(level)
            out += "}"
        case .undefined:
            throw TemplateBuiltins.fail("Object of type Undefined is not JSON serializable")
        case .namespace, .callable:
            throw TemplateBuiltins.fail("Object of type \(v.typeName) is not JSON serializable")
        }
    }

    func quote(_ s: String, into out: inout String) {
        guard asciiOnly else { return JSONValue.quote(s, into: &out) }
        var plain = ""
        JSONValue.quote(s, into: &plain)
        for u in plain.unicodeScalars {
            if u.value < 0x80 { out.unicodeScalars.append(u); continue }
            for unit in String(u).utf16 {
                let h = String(unit, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
            }
        }
    }
}
