import JSON

/// Why a template did not render: a syntax error or an unsupported construct (with the line), an error while
/// rendering (with the line: an undefined attribute, a type mismatch), or the template's own refusal
/// (`raise_exception`, e.g. "roles must alternate").
public enum TemplateError: Error, CustomStringConvertible, Sendable, Equatable {
    case syntax(String, line: Int)
    case render(String, line: Int)
    case refused(String)
    /// The render went past its budget of steps or output (`ChatTemplate.Budget`).
    case exceeded(String)

    public var description: String {
        switch self {
        case .exceeded(let m): return "chat template: \(m)"
        case .syntax(let m, let l): return "chat template line \(l): \(m)"
        case .render(let m, let l): return l > 0 ? "chat template line \(l): \(m)" : "chat template: \(m)"
        case .refused(let m): return "the chat template refuses this conversation: \(m)"
        }
    }

    /// A render error raised without a line (by a filter or method) gets the line of the expression calling it.
    func at(_ line: Int) -> TemplateError {
        if case .render(let m, 0) = self { return .render(m, line: line) }
        return self
    }
}

/// A mutable attribute bag (`namespace(...)`): the one way a template carries state out of a loop.
final class Namespace {
    var attributes: [(String, TemplateValue)]
    init(_ a: [(String, TemplateValue)]) { attributes = a }
    subscript(name: String) -> TemplateValue? {
        get { attributes.first { $0.0 == name }?.1 }
        set {
            if let i = attributes.firstIndex(where: { $0.0 == name }) { attributes[i].1 = newValue ?? .none } else { attributes.append((name, newValue ?? .none)) }
        }
    }
}

/// A function a template can call: a global (`range`, `namespace`), a macro, or a bound method (`s.split`).
struct Callable {
    let name: String
    let call: ([TemplateValue], [(String, TemplateValue)]) throws(TemplateError) -> TemplateValue
}

/// A value inside a template, with Python's semantics (jinja2 evaluates templates as Python objects): truthiness,
/// `str()` and `repr()`, `==` across int and float, comparisons by code point.
enum TemplateValue {
    /// A missing variable, attribute or key: prints as nothing, is false, iterates as empty; using it further is an error.
    case undefined(String)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([TemplateValue])
    case object([(String, TemplateValue)])
    case namespace(Namespace)
    case callable(Callable)

    init(_ j: JSONValue) {
        switch j {
        case .null: self = .none
        case .bool(let b): self = .bool(b)
        case .int(let i): self = .int(i)
        case .double(let d): self = .double(d)
        case .string(let s): self = .string(s)
        case .array(let a): self = .array(a.map(TemplateValue.init))
        case .object(let o): self = .object(o.map { ($0.0, TemplateValue($0.1)) })
        }
    }

    var isUndefined: Bool { if case .undefined = self { return true }; return false }
    var isNone: Bool { if case .none = self { return true }; return false }

    /// Python's truth value.
    var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s): return !s.unicodeScalars.isEmpty
        case .array(let a): return !a.isEmpty
        case .object(let o): return !o.isEmpty
        case .namespace, .callable: return true
        }
    }

    /// Python's type name, for error messages as jinja2 words them.
    var typeName: String {
        switch self {
        case .undefined: return "Undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string: return "str"
        case .array: return "list"
        case .object: return "dict"
        case .namespace: return "Namespace"
        case .callable: return "function"
        }
    }

    /// `str(x)`: what `{{ x }}` prints.
    var str: String {
        switch self {
        case .undefined: return ""
        case .string(let s): return s
        default: return repr
        }
    }

    /// `repr(x)`: how Python prints a value inside a list or dict.
    var repr: String {
        switch self {
        case .undefined: return ""
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .double(let d): return TemplateValue.pyFloat(d)
        case .string(let s): return TemplateValue.pyQuote(s)
        case .array(let a): return "[" + a.map(\.repr).joined(separator: ", ") + "]"
        case .object(let o): return "{" + o.map { TemplateValue.pyQuote($0.0) + ": " + $0.1.repr }.joined(separator: ", ") + "}"
        case .namespace(let n): return "<Namespace " + n.attributes.map { "\($0.0)=\($0.1.repr)" }.joined(separator: ", ") + ">"
        case .callable(let c): return "<function \(c.name)>"
        }
    }

    static func pyFloat(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d < 0 ? "-inf" : "inf" }
        // The shortest text that reads back the same, `1.0` for whole numbers.
        if d.rounded() == d && abs(d) < 1e16 { return (d.sign == .minus ? "-" : "") + String(Int(abs(d))) + ".0" }
        return "\(d)"
    }

    /// Python's string repr: single quotes unless the text has a single quote and no double one.
    static func pyQuote(_ s: String) -> String {
        let q: Unicode.Scalar = s.unicodeScalars.contains("'") && !s.unicodeScalars.contains("\"") ? "\"" : "'"
        var out = String.UnicodeScalarView()
        out.append(q)
        for u in s.unicodeScalars {
            switch u {
            case "\\": out.append(contentsOf: "\\\\".unicodeScalars)
            case "\n": out.append(contentsOf: "\\n".unicodeScalars)
            case "\r": out.append(contentsOf: "\\r".unicodeScalars)
            case "\t": out.append(contentsOf: "\\t".unicodeScalars)
            default:
                if u == q {
                    out.append("\\")
                    out.append(u)
                } else if u.value < 0x20 || u.value == 0x7F {
                    let h = String(u.value, radix: 16)
                    out.append(contentsOf: ("\\x" + String(repeating: "0", count: 2 - h.count) + h).unicodeScalars)
                } else {
                    out.append(u)
                }
            }
        }
        out.append(q)
        return String(out)
    }

    /// A number as a Double when it is one (bools count, as in Python).
    var number: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }

    var integer: Int? {
        switch self {
        case .int(let i): return i
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }

    /// Python's `==`.
    static func equal(_ a: TemplateValue, _ b: TemplateValue) -> Bool {
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): return true
        case (.string(let x), .string(let y)): return x.unicodeScalars.elementsEqual(y.unicodeScalars)
        case (.array(let x), .array(let y)): return x.count == y.count && zip(x, y).allSatisfy { equal($0, $1) }
        case (.object(let x), .object(let y)):
            guard x.count == y.count else { return false }
            return x.allSatisfy { kv in y.contains { sameKey($0.0, kv.0) && equal($0.1, kv.1) } }
        case (.namespace(let x), .namespace(let y)): return x === y
        default:
            if let x = a.number, let y = b.number { return x == y }
            return false
        }
    }

    static func sameKey(_ a: String, _ b: String) -> Bool { a.unicodeScalars.elementsEqual(b.unicodeScalars) }

    /// Python's ordering for `<` and `sort`; nil when Python would raise (e.g. str < int).
    static func less(_ a: TemplateValue, _ b: TemplateValue) -> Bool? {
        switch (a, b) {
        case (.string(let x), .string(let y)): return x.unicodeScalars.lexicographicallyPrecedes(y.unicodeScalars)
        case (.array(let x), .array(let y)):
            for (p, q) in zip(x, y) where !equal(p, q) { return less(p, q) }
            return x.count < y.count
        default:
            if let x = a.number, let y = b.number { return x < y }
            return nil
        }
    }

    /// An object's value for `key`, if it has one.
    func lookup(_ key: String) -> TemplateValue? {
        switch self {
        case .object(let o): return o.first { TemplateValue.sameKey($0.0, key) }?.1
        case .namespace(let n): return n[key]
        default: return nil
        }
    }

    /// The items a `for` loop visits: a list's elements, a dict's keys, a string's characters; nil when not iterable.
    var iterationItems: [TemplateValue]? {
        switch self {
        case .undefined: return []
        case .array(let a): return a
        case .object(let o): return o.map { .string($0.0) }
        case .string(let s): return s.unicodeScalars.map { .string(String($0)) }
        default: return nil
        }
    }
}
