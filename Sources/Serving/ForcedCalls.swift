import Grammar
import JSON
import Tokenizer

/// `tool_choice: "required"` or a named function: the answer is constrained to well-formed calls in the model's
/// own syntax, each call's arguments to its function's `parameters` schema, so even a small model answers with a
/// call that parses and validates. A family without a call syntax (a template that teaches none) is given
/// Hermes' `<tool_call>` one, which the answer is then read back with.
extension OutputFormat {
    static let hermes = all.first { $0.name == "hermes" }!

    /// The syntax forced calls are written in: the family's own, Hermes' for a family without one or whose
    /// arguments are text parameters (a schema's JSON does not map onto them; these models read Hermes' too).
    var forcedCallFormat: OutputFormat {
        if case .parameters = calls { return .hermes }
        return hasToolCalls ? self : .hermes
    }

    /// Whether calls are named `functions.NAME:INDEX` (Kimi-K2; the parser reads the name and id back from it).
    var writesNamespacedCalls: Bool { name == "kimi-k2" }

    /// A GBNF grammar whose matches are one call (or, with `parallel`, one or more) to one of `tools` (name,
    /// parameters schema). `tokenizer` decides how a marker is matched: as a special token when the vocabulary
    /// has it as one (`[TOOL_CALLS]`, DeepSeek's `<｜tool▁calls▁begin｜>`), as text otherwise.
    func callGrammar(tools: [(name: String, parameters: JSONValue)], parallel: Bool, tokenizer: Tokenizer) throws(GrammarError) -> String {
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
            switch forcedCallFormat.calls {
            case .tagged(let open, let close, let key):
                call = "\(marker(open)) \(lit("\n{\"name\": ")) \(quotedName) \(lit(", \"\(key)\": ")) \(args) \(lit("}\n")) \(marker(close))"
            case .prefixedList, .bareObject(argumentsKey: _):
                let key: String = if case .bareObject(let k) = forcedCallFormat.calls { k } else { "arguments" }
                call = "\(lit("{\"name\": ")) \(quotedName) \(lit(", \"\(key)\": ")) \(args) \(lit("}"))"
            case .delimited(_, _, let callBegin, let separator, let callEnd):
                // Kimi-K2 writes `functions.NAME:INDEX` (its call id), as its template shows the model.
                let written = writesNamespacedCalls ? "\(lit("functions." + tool.name + ":")) [0-9]" : name
                call = "\(marker(callBegin)) \(written) \(marker(separator)) \(args) \(marker(callEnd))"
            case .harmony:
                call = "\(lit("<|channel|>commentary to=functions.")) \(name) \(lit(" <|constrain|>json<|message|>")) \(args)"
            case .none, .parameters:
                throw GrammarError("this model's chat template writes no tool calls")
            }
            g.define("call\(i)", call)
            calls.append("call\(i)")
        }
        let one = calls.count == 1 ? calls[0] : "(" + calls.joined(separator: " | ") + ")"
        // Harmony ends the message with <|call|>, which ends generation: one call per answer.
        let many = parallel && !{ if case .harmony = forcedCallFormat.calls { true } else { false } }()
        switch forcedCallFormat.calls {
        case .prefixedList(let prefix):
            g.define("root", "\(marker(prefix)) \(lit("[")) \(one) \(many ? "(\(lit(", ")) \(one))*" : "") \(lit("]"))")
        case .delimited(let begin, let end, _, _, _):
            g.define("root", "\(marker(begin)) \(one) \(many ? "\(one)*" : "") \(marker(end))")
        case .tagged:
            g.define("root", many ? "\(one) (\(lit("\n")) \(one))*" : one)
        default:
            g.define("root", one)
        }
        return g.text()
    }
}
