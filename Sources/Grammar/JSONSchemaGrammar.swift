import JSON

/// A JSON Schema as a GBNF grammar whose every complete match is a JSON text the schema accepts (as llama.cpp's
/// json-schema-to-grammar does). Covered: `type` (one or a list), `properties` / `required` /
/// `additionalProperties`, `enum`, `const`, `items` / `prefixItems` / `minItems` / `maxItems`, `minLength` /
/// `maxLength`, `format` (date, time, date-time, uuid), integer and number bounds that can be written as
/// alternatives, `anyOf` / `oneOf`, `$ref` into `$defs` / `definitions` (recursion included), `nullable`.
/// Anything that constrains beyond that (`pattern`, `not`, `allOf` of several, `uniqueItems`, …) is refused with
/// a message naming the keyword and where it is, rather than ignored: output that would not validate is worse
/// than a clear 400.
///
/// Properties come in the order the schema lists them; optional ones may be left out. Properties the schema does
/// not list are not generated (they are never needed for the output to validate). Numbers are written with at
/// most 16 integral and 16 fractional digits and whitespace is one optional newline and an indent of at most 16, so only strings
/// without `maxLength`, unbounded arrays and recursion can make the output unbounded.
public struct JSONSchemaGrammar {
    /// GBNF text for `schema`.
    public static func compile(_ schema: JSONValue) throws(GrammarError) -> String {
        var c = JSONSchemaGrammar()
        _ = try c.add(schema, as: "root")
        return c.text()
    }

    /// Any JSON object (`response_format: {"type": "json_object"}`).
    public static func anyObject() -> String {
        var c = JSONSchemaGrammar()
        c.define("root", c.primitive("object"))
        return c.text()
    }

    /// The schema whose `$ref`s are being resolved.
    private var rootSchema: JSONValue = .null
    private var order: [String] = []
    private var bodies: [String: String] = [:]
    private var refs: [String: String] = [:]
    private var counter = 0

    /// A builder of one grammar from several schemas (a forced call's alternatives, one per tool) and rules of
    /// the caller's own (`define`); `text()` is the grammar, `root` first.
    public init() {}

    /// Adds `schema` (its `$ref`s resolved within it) as the rule `name`, which must not end in `-` and a number.
    public mutating func add(_ schema: JSONValue, as name: String) throws(GrammarError) -> String {
        rootSchema = schema
        refs = [:]
        define(name, try visit(schema, name: name, path: "#"))
        return name
    }

    public mutating func define(_ name: String, _ body: String) {
        if bodies[name] == nil { order.append(name) }
        bodies[name] = body
    }

    public func text() -> String {
        (["root"] + order.filter { $0 != "root" }).map { "\($0) ::= \(bodies[$0]!)" }.joined(separator: "\n") + "\n"
    }

    mutating func fresh(_ hint: String) -> String {
        counter += 1
        let clean = String(hint.lowercased().map { $0.isLetter && $0.isASCII || $0.isNumber && $0.isASCII ? $0 : "-" }.prefix(24))
        return "\(clean.isEmpty ? "r" : clean)-\(counter)"
    }

    /// The rule for a shared building block, defined on first use.
    mutating func primitive(_ name: String) -> String {
        let table: [String: (String, [String])] = [
            "space": (#"| " " | "\n" [ \t]{0,16}"#, []),
            "boolean": (#"("true" | "false") space"#, ["space"]),
            "null": (#""null" space"#, ["space"]),
            "char": (#"[^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt/] | "u" [0-9a-fA-F]{4})"#, []),
            "string": (#""\"" char* "\"" space"#, ["char", "space"]),
            "integral-part": ("[0] | [1-9] [0-9]{0,15}", []),
            "integer": (#"("-"? integral-part) space"#, ["integral-part", "space"]),
            "number": (#"("-"? integral-part) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})? space"#, ["integral-part", "space"]),
            "value": ("object | array | string | number | boolean | null", ["object", "array", "string", "number", "boolean", "null"]),
            "object": (#""{" space ( string ":" space value ("," space string ":" space value)* )? "}" space"#, ["string", "space", "value"]),
            "array": (#""[" space ( value ("," space value)* )? "]" space"#, ["value", "space"]),
            "date": (#"[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )"#, []),
            "time": (#"([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? ( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )"#, []),
            "uuid": (#"[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12}"#, []),
        ]
        guard bodies[name] == nil, let (body, uses) = table[name] else { return name }
        define(name, body)
        for u in uses { _ = primitive(u) }
        return name
    }

    /// `s` as a GBNF literal: GBNF's escapes are JSON's, so a JSON string literal is one.
    public static func literal(_ s: String) -> String {
        var out = ""
        JSONValue.quote(s, into: &out)
        return out
    }

    /// A JSON value written exactly, then the optional space.
    mutating func constant(_ v: JSONValue) -> String {
        _ = primitive("space")
        return Self.literal(v.render()) + " space"
    }

    static let annotations: Set<String> = ["title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
                                            "readOnly", "writeOnly", "$defs", "definitions", "discriminator"]

    mutating func visit(_ schema: JSONValue, name: String, path: String) throws(GrammarError) -> String {
        if case .bool(let b) = schema {
            guard b else { throw GrammarError("json_schema at \(path): `false` accepts no value") }
            return primitive("value")
        }
        guard case .object(let fields) = schema else {
            throw GrammarError("json_schema at \(path): a schema must be an object or a boolean, not \(schema.typeName)")
        }
        if fields.isEmpty { return primitive("value") }
        if schema["nullable"]?.boolValue == true {
            var rest = fields
            rest.removeAll { $0.0 == "nullable" }
            return "(\(try visit(.object(rest), name: name, path: path)) | \(primitive("null")))"
        }
        if let ref = schema["$ref"] {
            guard let r = ref.stringValue else { throw GrammarError("json_schema at \(path)/$ref: must be a string") }
            return try reference(r, path: path)
        }
        if let c = schema["const"] { return constant(c) }
        if let e = schema["enum"] {
            guard let values = e.arrayValue, !values.isEmpty else { throw GrammarError("json_schema at \(path)/enum: must be a non-empty array") }
            return "(" + values.map { constant($0) }.joined(separator: " | ") + ")"
        }
        for key in ["anyOf", "oneOf"] {
            if let alts = schema[key] {
                guard let list = alts.arrayValue, !list.isEmpty else { throw GrammarError("json_schema at \(path)/\(key): must be a non-empty array") }
                var out: [String] = []
                for (i, s) in list.enumerated() { out.append(try visit(s, name: "\(name)-\(i)", path: "\(path)/\(key)/\(i)")) }
                return "(" + out.joined(separator: " | ") + ")"
            }
        }
        if let all = schema["allOf"] {
            guard let list = all.arrayValue, list.count == 1 else {
                throw GrammarError("json_schema at \(path)/allOf: only a single-element allOf is supported (merge the schemas)")
            }
            return try visit(list[0], name: name, path: "\(path)/allOf/0")
        }
        let known: Set<String> = ["type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
                                  "minLength", "maxLength", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]
        for (k, _) in fields where !known.contains(k) && !Self.annotations.contains(k) {
            throw GrammarError("json_schema at \(path): keyword '\(k)' is not supported (it cannot be enforced while sampling)")
        }
        let types: [String]
        switch schema["type"] {
        case .string(let t)?: types = [t]
        case .array(let ts)?:
            types = ts.compactMap(\.stringValue)
            guard types.count == ts.count, !types.isEmpty else { throw GrammarError("json_schema at \(path)/type: must be a type name or a list of them") }
        case nil:
            // No type: infer it from the keywords present, as validators read them.
            if schema["properties"] != nil || schema["additionalProperties"] != nil { types = ["object"] }
            else if schema["items"] != nil || schema["prefixItems"] != nil { types = ["array"] }
            else if schema["minLength"] != nil || schema["maxLength"] != nil || schema["format"] != nil { types = ["string"] }
            else { return primitive("value") }
        default: throw GrammarError("json_schema at \(path)/type: must be a type name or a list of them")
        }
        var out: [String] = []
        for t in types { out.append(try visit(type: t, schema, name: name, path: path)) }
        return out.count == 1 ? out[0] : "(" + out.joined(separator: " | ") + ")"
    }

    mutating func reference(_ ref: String, path: String) throws(GrammarError) -> String {
        if let rule = refs[ref] { return rule }
        let target: JSONValue
        if ref == "#" {
            target = rootSchema
        } else {
            let parts = ref.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count == 3, parts[0] == "#", parts[1] == "$defs" || parts[1] == "definitions",
                  let t = rootSchema[String(parts[1])]?[String(parts[2]).replacingTildes] else {
                throw GrammarError("json_schema at \(path)/$ref: '\(ref)' does not name an entry of this schema's $defs or definitions")
            }
            target = t
        }
        // Named before it is visited, so a schema that refers to itself becomes a recursive rule.
        let rule = fresh("ref-" + (ref.split(separator: "/").last.map(String.init) ?? "root"))
        refs[ref] = rule
        define(rule, "\"\"")
        define(rule, try visit(target, name: rule, path: ref))
        return rule
    }

    func count(_ schema: JSONValue, _ key: String, path: String) throws(GrammarError) -> Int? {
        guard let v = schema[key] else { return nil }
        guard let n = v.intValue, n >= 0 else { throw GrammarError("json_schema at \(path)/\(key): must be a non-negative integer") }
        guard n <= GrammarSyntax.maxRepetition else { throw GrammarError("json_schema at \(path)/\(key): \(n) is above the \(GrammarSyntax.maxRepetition) this server enforces") }
        return n
    }

    mutating func visit(type: String, _ schema: JSONValue, name: String, path: String) throws(GrammarError) -> String {
        switch type {
        case "null": return primitive("null")
        case "boolean": return primitive("boolean")
        case "string":
            let lo = try count(schema, "minLength", path: path) ?? 0
            let hi = try count(schema, "maxLength", path: path)
            if let f = schema["format"] {
                guard lo == 0, hi == nil else { throw GrammarError("json_schema at \(path): a format with length bounds is not supported") }
                let formats = ["date": "date", "time": "time", "uuid": "uuid"]
                _ = primitive("space")
                if f.stringValue == "date-time" { return #""\"" "# + primitive("date") + #" "T" "# + primitive("time") + #" "\"" space"# }
                guard let s = f.stringValue, let rule = formats[s] else {
                    throw GrammarError("json_schema at \(path)/format: '\(f.stringValue ?? f.render())' is not supported (date, time, date-time, uuid are)")
                }
                return #""\"" "# + primitive(rule) + #" "\"" space"#
            }
            if lo == 0, hi == nil { return primitive("string") }
            if let hi, hi < lo { throw GrammarError("json_schema at \(path): maxLength \(hi) is below minLength \(lo)") }
            _ = primitive("char")
            _ = primitive("space")
            return #""\"" char{\#(lo),\#(hi.map(String.init) ?? "")} "\"" space"#
        case "integer", "number":
            return try numeric(type, schema, path: path)
        case "array":
            return try array(schema, name: name, path: path)
        case "object":
            return try object(schema, name: name, path: path)
        default:
            throw GrammarError("json_schema at \(path)/type: unknown type '\(type)'")
        }
    }

    mutating func numeric(_ type: String, _ schema: JSONValue, path: String) throws(GrammarError) -> String {
        var lo: Double? = schema["minimum"]?.numberValue
        var hi: Double? = schema["maximum"]?.numberValue
        if let x = schema["exclusiveMinimum"]?.numberValue { lo = type == "integer" ? (x + 1).rounded(.down) : x }
        if let x = schema["exclusiveMaximum"]?.numberValue { hi = type == "integer" ? (x - 1).rounded(.up) : x }
        let plain = primitive(type)
        guard lo != nil || hi != nil else { return plain }
        if type == "integer", let l = lo, let h = hi, l.rounded(.up) <= h.rounded(.down), h.rounded(.down) - l.rounded(.up) < 1000 {
            // A small range: every value written out.
            _ = primitive("space")
            let values = stride(from: Int(l.rounded(.up)), through: Int(h.rounded(.down)), by: 1).map { "\"\($0)\"" }
            return "(" + values.joined(separator: " | ") + ") space"
        }
        // A lower bound of 0 (or 1 for integers) with no upper one: no minus sign (and no leading zero value).
        if hi == nil, let l = lo, schema["exclusiveMinimum"] == nil || type == "integer", l == 0 || (type == "integer" && l == 1) {
            _ = primitive("space")
            _ = primitive("integral-part")
            if type == "integer" { return l == 0 ? "integral-part space" : "[1-9] [0-9]{0,15} space" }
            return #"integral-part ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})? space"#
        }
        throw GrammarError("json_schema at \(path): these \(type) bounds are not supported (a minimum of 0, or an integer range of fewer than 1000 values, is)")
    }

    mutating func array(_ schema: JSONValue, name: String, path: String) throws(GrammarError) -> String {
        _ = primitive("space")
        var lo = try count(schema, "minItems", path: path) ?? 0
        let hi = try count(schema, "maxItems", path: path)
        if let hi, hi < lo { throw GrammarError("json_schema at \(path): maxItems \(hi) is below minItems \(lo)") }
        var prefix: [String] = []
        if let p = schema["prefixItems"] {
            guard let list = p.arrayValue else { throw GrammarError("json_schema at \(path)/prefixItems: must be an array") }
            for (i, s) in list.enumerated() { prefix.append(try visit(s, name: "\(name)-\(i)", path: "\(path)/prefixItems/\(i)")) }
        }
        let item: String? = switch schema["items"] {
        case nil: prefix.isEmpty ? primitive("value") : nil
        case .bool(false)?: nil
        case let s?: try visit(s, name: "\(name)-item", path: "\(path)/items")
        }
        if !prefix.isEmpty {
            // A tuple: the prefix items in order, then (when allowed) more items.
            guard lo <= prefix.count || item != nil else { throw GrammarError("json_schema at \(path): minItems \(lo) needs more items than prefixItems allows") }
            var seq = #""[" space "# + prefix.enumerated().map { $0.offset == 0 ? $0.element : #""," space "# + $0.element }.joined(separator: " ")
            if let item, (hi ?? Int.max) > prefix.count {
                lo = max(0, lo - prefix.count)
                let extra = hi.map { String($0 - prefix.count) } ?? ""
                seq += #" ("," space \#(item)){\#(lo),\#(extra)}"#
            }
            return seq + #" "]" space"#
        }
        guard let item else { return #""[" space "]" space"# }
        let rule = fresh(name + "-item")
        define(rule, item)
        if hi == 0 { return #""[" space "]" space"# }
        let rest = #"("," space \#(rule)){\#(max(0, lo - 1)),\#(hi.map { String($0 - 1) } ?? "")}"#
        let list = "\(rule) \(rest)"
        return lo == 0 ? #""[" space (\#(list))? "]" space"# : #""[" space \#(list) "]" space"#
    }

    mutating func object(_ schema: JSONValue, name: String, path: String) throws(GrammarError) -> String {
        _ = primitive("space")
        let required = Set((schema["required"]?.arrayValue ?? []).compactMap(\.stringValue))
        var props: [(key: String, rule: String, required: Bool)] = []
        if let p = schema["properties"] {
            guard case .object(let list) = p else { throw GrammarError("json_schema at \(path)/properties: must be an object") }
            for (k, s) in list {
                let value = try visit(s, name: "\(name)-\(k)", path: "\(path)/properties/\(k)")
                let rule = fresh("\(name)-\(k)-kv")
                define(rule, Self.literal(JSONValue.string(k).render()) + #" space ":" space "# + value)
                props.append((k, rule, required.contains(k)))
            }
        }
        for k in required.sorted() where !props.contains(where: { $0.key == k }) {
            let rule = fresh("\(name)-\(k)-kv")
            define(rule, Self.literal(JSONValue.string(k).render()) + #" space ":" space "# + primitive("value"))
            props.append((k, rule, true))
        }
        if props.isEmpty {
            switch schema["additionalProperties"] {
            case nil, .bool(true)?: return primitive("object")
            case .bool(false)?: return #""{" space "}" space"#
            case let s?:
                let value = try visit(s, name: "\(name)-value", path: "\(path)/additionalProperties")
                let kv = fresh("\(name)-kv")
                define(kv, primitive("string") + #" ":" space "# + value)
                return #""{" space (\#(kv) ("," space \#(kv))*)? "}" space"#
            }
        }
        // first[i]: properties i… when none has been written yet; after[i]: when one has (a comma comes first).
        var first = Array(repeating: "", count: props.count + 1)
        var after = Array(repeating: "", count: props.count + 1)
        for i in stride(from: props.count - 1, through: 0, by: -1) {
            let p = props[i]
            let tailAfter = i + 1 < props.count ? " " + after[i + 1] : ""
            let withFirst = p.rule + tailAfter
            let withComma = #""," space "# + p.rule + tailAfter
            if p.required {
                first[i] = withFirst
                after[i] = withComma
            } else {
                let skipFirst = i + 1 < props.count ? first[i + 1] : ""
                let skipAfter = i + 1 < props.count ? after[i + 1] : ""
                first[i] = skipFirst.isEmpty ? "(\(withFirst))?" : "(\(withFirst) | \(skipFirst))"
                after[i] = skipAfter.isEmpty ? "(\(withComma))?" : "(\(withComma) | \(skipAfter))"
            }
            // Each suffix once as a rule, so the grammar grows linearly with the properties.
            if i > 0 {
                let f = fresh("\(name)-from-\(i)"), a = fresh("\(name)-after-\(i)")
                define(f, first[i])
                define(a, after[i])
                first[i] = f
                after[i] = a
            }
        }
        return #""{" space "# + first[0] + #" "}" space"#
    }
}

extension String {
    /// A JSON pointer segment's escapes undone (~1 is /, ~0 is ~).
    var replacingTildes: String { replacing("~1", with: "/").replacing("~0", with: "~") }
}
