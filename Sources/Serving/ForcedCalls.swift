import Grammar
import JSON
import Tokenizer

/// `tool_choice: "required"` or a named function: the answer is constrained to well-formed calls in the model's
/// own syntax, each call's arguments to its function's `parameters` schema, so even a small model answers with a
/// call that parses and validates. A family without a call syntax (a template that teaches none) is given
/// Hermes' `<tool_call>` one, which the answer is then read back with.
extension OutputFormat {
    static let hermes = all.first { $0.name == "hermes" }!

    typealias Tool = (name: String, parameters: JSONValue)

    /// The syntax calls to `tools` are forced in: the family's own; Hermes' for a family without one, or for a
    /// text-parameter family when a parameter's schema asks what its unquoted text cannot be held to (a string
    /// `format` or `pattern`, a `$ref`, a choice of types).
    func forcedCallFormat(tools: [Tool]) -> OutputFormat {
        if case .parameters = calls { return tools.allSatisfy { Self.textParameterValues($0.parameters) != nil } ? self : .hermes }
        return hasToolCalls ? self : .hermes
    }

    /// Per tool, the parameters its schema declares strings (`"type": "string"`, or an enum or const of strings
    /// only): the text-parameter families write them unquoted, and they are read back as the text written.
    static func textParameters(_ tools: [Tool]) -> [String: Set<String>] {
        var out: [String: Set<String>] = [:]
        for (name, schema) in tools {
            guard case .object(let properties)? = schema["properties"] else { continue }
            let text = properties.filter { isText($0.1) }.map(\.0)
            if !text.isEmpty { out[name, default: []].formUnion(text) }
        }
        return out
    }

    static func isText(_ p: JSONValue) -> Bool {
        if let t = p["type"]?.stringValue { return t == "string" }
        if case .array(let ts)? = p["type"] { return ts.map(\.stringValue) == ["string"] }
        if case .array(let values)? = p["enum"] { return !values.isEmpty && values.allSatisfy { $0.stringValue != nil } }
        return p["const"]?.stringValue != nil
    }

    /// How each parameter of `schema` is written in a text-parameter family: (name, required, text) where text
    /// is nil for a JSON value; nil when one cannot be forced that way.
    static func textParameterValues(_ schema: JSONValue) -> [(name: String, required: Bool, text: TextValue?)]? {
        guard !schema.render().contains("\"$ref\"") else { return nil }
        guard case .object(let properties)? = schema["properties"] else { return schema["properties"] == nil ? [] : nil }
        let required = Set(schema["required"]?.arrayValue?.compactMap(\.stringValue) ?? [])
        var out: [(String, Bool, TextValue?)] = []
        for (name, p) in properties {
            guard isText(p) else {
                // Anything that could be a string as well as something else has no one way to be read back.
                if case .array(let ts)? = p["type"], ts.contains(.string("string")) { return nil }
                if p["anyOf"] != nil || p["oneOf"] != nil || p["type"] == nil && p["enum"] == nil { return nil }
                // A JSON string among the values would be read back with its quotes (unquoted text is the string).
                if p["enum"]?.arrayValue?.contains(where: { $0.stringValue != nil }) ?? false { return nil }
                out.append((name, required.contains(name), nil))
                continue
            }
            if p["pattern"] != nil || p["format"] != nil { return nil }
            if case .array(let values)? = p["enum"] {
                out.append((name, required.contains(name), .oneOf(values.compactMap(\.stringValue))))
            } else if let c = p["const"]?.stringValue {
                out.append((name, required.contains(name), .oneOf([c])))
            } else if p["minLength"] != nil || p["maxLength"] != nil {
                out.append((name, required.contains(name), .bounded(min: p["minLength"]?.intValue ?? 0, max: p["maxLength"]?.intValue)))
            } else {
                out.append((name, required.contains(name), .free))
            }
        }
        return out
    }

    /// An unquoted text value: one of some strings, a length-bounded line without `<`, or any text up to the
    /// value's closing tag.
    enum TextValue { case oneOf([String]), bounded(min: Int, max: Int?), free }

    /// Rules for text that never contains `end` (but may end with a part of it): one rule per prefix of `end`
    /// matched so far, as a string-search automaton; `name`-0 is the start. (`name` with an underscore: the
    /// schema compiler's rule names never have one.)
    static func textAvoiding(_ end: String, name: String, into g: inout JSONSchemaGrammar) -> String {
        let chars = Array(end.unicodeScalars)
        func cls(excluding: [Unicode.Scalar]) -> String {
            "[^" + Set(excluding).map { c -> String in
                switch c {
                case "\\", "]", "^", "-", "[": return "\\" + String(c)
                case "\n": return "\\n"
                default: return String(c)
                }
            }.sorted().joined() + "]"
        }
        let lit = { (c: Unicode.Scalar) in JSONSchemaGrammar.literal(String(c)) }
        for k in 0..<chars.count {
            // k characters of `end` matched: the next one advances, the first one starts again, others go back to 0.
            var alts = ["\"\""]
            if k + 1 < chars.count { alts.append("\(lit(chars[k])) \(name)-\(k + 1)") }
            if k > 0 && chars[k] != chars[0] { alts.append("\(lit(chars[0])) \(name)-1") }
            alts.append("\(cls(excluding: k > 0 ? [chars[k], chars[0]] : [chars[0]])) \(name)-0")
            g.define("\(name)-\(k)", alts.joined(separator: " | "))
        }
        return "\(name)-0"
    }

    /// Whether calls are named `functions.NAME:INDEX` (Kimi-K2; the parser reads the name and id back from it).
    var writesNamespacedCalls: Bool { name == "kimi-k2" }

    /// A GBNF grammar whose matches are one call (or, with `parallel`, one or more) to one of `tools` (name,
    /// parameters schema). `tokenizer` decides how a marker is matched: as a special token when the vocabulary
    /// has it as one (`[TOOL_CALLS]`, DeepSeek's `<｜tool▁calls▁begin｜>`), as text otherwise.
    func callGrammar(tools: [Tool], parallel: Bool, tokenizer: Tokenizer) throws(GrammarError) -> String {
        let format = forcedCallFormat(tools: tools)
        func marker(_ s: String) -> String {
            if let id = tokenizer.vocab.id(of: Array(s.utf8)), tokenizer.vocab.types[Int(id)] == .control { return "<[\(id)]>" }
            return JSONSchemaGrammar.literal(s)
        }
        let lit = JSONSchemaGrammar.literal
        var g = JSONSchemaGrammar()
        var calls: [String] = []
        for (i, tool) in tools.enumerated() {
            let args = try g.add(tool.parameters, as: "args\(i)")
            let name = lit(tool.name)
            let quotedName = lit(JSONValue.string(tool.name).render())
            let call: String
            switch format.calls {
            case .parameters(let p):
                call = try parameterCall(tool, index: i, syntax: p, into: &g)
            case .tagged(let open, let close, let key):
                call = "\(marker(open)) \(lit("\n{\"name\": ")) \(quotedName) \(lit(", \"\(key)\": ")) \(args) \(lit("}\n")) \(marker(close))"
            case .prefixedList, .bareObject(argumentsKey: _):
                let key: String = if case .bareObject(let k) = format.calls { k } else { "arguments" }
                call = "\(lit("{\"name\": ")) \(quotedName) \(lit(", \"\(key)\": ")) \(args) \(lit("}"))"
            case .delimited(_, _, let callBegin, let separator, let callEnd):
                // Kimi-K2 writes `functions.NAME:INDEX` (its call id), as its template shows the model.
                let written = writesNamespacedCalls ? "\(lit("functions." + tool.name + ":")) [0-9]" : name
                call = "\(marker(callBegin)) \(written) \(marker(separator)) \(args) \(marker(callEnd))"
            case .harmony:
                call = "\(lit("<|channel|>commentary to=functions.")) \(name) \(lit(" <|constrain|>json<|message|>")) \(args)"
            case .none:
                throw GrammarError("this model's chat template writes no tool calls")
            }
            g.define("call\(i)", call)
            calls.append("call\(i)")
        }
        let one = calls.count == 1 ? calls[0] : "(" + calls.joined(separator: " | ") + ")"
        // Harmony ends the message with <|call|>, which ends generation: one call per answer.
        let many = parallel && !{ if case .harmony = format.calls { true } else { false } }()
        switch format.calls {
        case .prefixedList(let prefix):
            g.define("root", "\(marker(prefix)) \(lit("[")) \(one) \(many ? "(\(lit(", ")) \(one))*" : "") \(lit("]"))")
        case .delimited(let begin, let end, _, _, _):
            g.define("root", "\(marker(begin)) \(one) \(many ? "\(one)*" : "") \(marker(end))")
        case .tagged, .parameters:
            g.define("root", many ? "\(one) (\(lit("\n")) \(one))*" : one)
        default:
            g.define("root", one)
        }
        return g.text()
    }

    /// One call in a text-parameter family's layout: the block, the name, then each parameter in schema order
    /// (optional ones may be left out) — text values unquoted, others as JSON of their schema.
    private func parameterCall(_ tool: Tool, index i: Int, syntax p: ParameterSyntax, into g: inout JSONSchemaGrammar) throws(GrammarError) -> String {
        let lit = JSONSchemaGrammar.literal
        guard let params = Self.textParameterValues(tool.parameters) else { throw GrammarError("tool \(tool.name): its parameters cannot be written as text parameters") }
        // Each value on lines of its own, as Qwen3-Coder writes them: the parser takes one newline either side as
        // layout, and a value that begins with a combining mark cannot join the tag before it into one character.
        let nl = "\n"
        var parts: [String] = []
        for (k, param) in params.enumerated() {
            let value: String
            switch param.text {
            case .oneOf(let options)?: value = "(" + options.map(lit).joined(separator: " | ") + ")"
            case .bounded(let min, let max)?: value = "[^<\\n]{\(min),\(max.map(String.init) ?? "")}"
            // The parser ends the value at the first closing tag, so the text never holds one.
            case .free?: value = Self.textAvoiding(p.valueClose, name: "text_\(i)_\(k)", into: &g)
            case nil: value = try g.add(tool.parameters["properties"]?[param.name] ?? .object([]), as: "value_\(i)_\(k)")
            }
            let written = "\(lit(p.keyOpen + param.name + p.keyClose + (p.valueOpen.isEmpty ? "" : "\n" + p.valueOpen) + nl)) \(value) \(lit(nl + p.valueClose + "\n"))"
            parts.append(param.required ? written : "(\(written))?")
        }
        let head = p.blockOpen + (p.invokeOpen.isEmpty ? "" : "\n" + p.invokeOpen) + tool.name + p.nameEnd + (p.nameEnd.hasSuffix("\n") ? "" : "\n")
        let tail = (p.invokeClose.isEmpty ? "" : p.invokeClose + "\n") + p.blockClose
        return ([lit(head)] + parts + [lit(tail)]).joined(separator: " ")
    }

    /// `grammar` (one of ours: its `root` rule on the first line, referred to by no other) with the family's
    /// reasoning allowed before its answer: `open` thought `close` and a little space, optional — or, when the
    /// prompt opened the block (`reasoningOpen`), the thought's rest and `close` first. The thought is any text
    /// without the close tag. Families without reasoning tags get `grammar` as it is.
    func reasoningFirst(_ grammar: String, reasoningOpen: Bool) -> String {
        guard let (open, close) = reasoning, grammar.hasPrefix("root ::= ") else { return grammar }
        let lit = JSONSchemaGrammar.literal
        var g = JSONSchemaGrammar()
        let thought = Self.textAvoiding(close, name: "think_text", into: &g)
        g.define("think_end", "\(lit(close)) [ \\t\\n]{0,4}")
        let think = reasoningOpen ? "\(thought) think_end" : "(\(lit(open)) \(thought) think_end)?"
        let lines = grammar.split(separator: "\n", omittingEmptySubsequences: false)
        let body = lines[0].dropFirst("root ::= ".count)
        // The builder's own rules (think_text-0…, think_end; underscores, which schema rules never have) follow the caller's; `text()` puts an empty root first.
        g.define("root", "x")
        let extra = g.text().split(separator: "\n").dropFirst().joined(separator: "\n")
        return (["root ::= \(think) (\(body))"] + lines.dropFirst().filter { !$0.isEmpty }.map(String.init) + [extra]).joined(separator: "\n") + "\n"
    }
}
