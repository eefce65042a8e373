import JSON

/// Splits a finished answer into reasoning, content and tool calls, in its family's syntax. Text that only looks
/// like a call but does not parse (a JSON error, a missing name, no closing tag) stays content: a model quoting
/// the syntax must not turn into a call, and nothing it wrote is lost.
extension OutputFormat {
    /// `reasoningOpen`: the prompt ended inside a reasoning block (templates that open `<think>` in the generation
    /// prompt), so the answer starts with reasoning and only its close tag shows. `textParameters`: per tool, the
    /// parameters its schema declares strings — in the text-parameter families their values are the text as written
    /// ("02139" stays a string), where otherwise a value is the JSON it spells.
    public func parse(_ text: String, reasoningOpen: Bool = false, textParameters: [String: Set<String>] = [:]) -> ParsedOutput {
        var rest = text
        var reasoning: String?
        if let (open, close) = self.reasoning {
            let lead = rest.drop { $0.isWhitespace }
            if reasoningOpen || lead.hasPrefix(open) {
                let body = reasoningOpen && !lead.hasPrefix(open) ? Substring(rest) : lead.dropFirst(open.count)
                if let end = body.range(of: close) {
                    reasoning = String(body[..<end.lowerBound])
                    rest = String(body[end.upperBound...])
                } else {
                    // Cut off while thinking: all of it is reasoning.
                    reasoning = String(body)
                    rest = ""
                }
                reasoning = reasoning?.trimmingWhitespace
            }
        }
        var out: ParsedOutput
        switch calls {
        case .none: out = ParsedOutput(content: rest)
        case .tagged(let open, let close, let key): out = Self.tagged(rest, open: open, close: close, argumentsKey: key)
        case .prefixedList(let prefix): out = Self.prefixedList(rest, prefix: prefix)
        case .bareObject(let key): out = Self.bareObject(rest, argumentsKey: key)
        case .delimited(let begin, let end, let callBegin, let separator, let callEnd):
            out = Self.delimited(rest, begin: begin, end: end, callBegin: callBegin, separator: separator, callEnd: callEnd)
        case .harmony: out = Self.harmony(rest)
        case .parameters(let syntax): out = Self.parameters(rest, syntax, textParameters: textParameters)
        }
        if out.reasoning == nil { out.reasoning = reasoning }
        out.content = out.content.trimmingWhitespace
        return out
    }

    /// `{"name": …, key: {…}}` as a call (arguments written as a JSON string are read as the object they hold).
    static func call(from v: JSONValue, argumentsKey: String) -> ToolCall? {
        guard let name = v["name"]?.stringValue, !name.isEmpty else { return nil }
        var args = v[argumentsKey] ?? .object([])
        if case .string(let s) = args, let parsed = try? JSONValue.parse(s) { args = parsed }
        guard case .object = args else { return nil }
        return ToolCall(name: name, arguments: args, id: v["id"]?.stringValue)
    }

    static func tagged(_ text: String, open: String, close: String, argumentsKey: String) -> ParsedOutput {
        var content = "", calls: [ToolCall] = []
        var rest = Substring(text)
        while let start = rest.range(of: open) {
            content += rest[..<start.lowerBound]
            let bytes = Array(rest[start.upperBound...].utf8)
            if let (v, end) = JSONValue.parsePrefix(bytes), let c = call(from: v, argumentsKey: argumentsKey) {
                let after = String(decoding: bytes[end...], as: UTF8.self)
                let trimmed = after.drop { $0.isWhitespace }
                if trimmed.hasPrefix(close) {
                    calls.append(c)
                    rest = trimmed.dropFirst(close.count)
                    continue
                }
            }
            // Not a call after all: the tag stays text, and the search goes on after it.
            content += open
            rest = rest[start.upperBound...]
        }
        content += rest
        return ParsedOutput(content: content, toolCalls: calls)
    }

    static func prefixedList(_ text: String, prefix: String) -> ParsedOutput {
        guard let start = text.range(of: prefix) else { return ParsedOutput(content: text) }
        let bytes = Array(text[start.upperBound...].utf8)
        guard let (v, end) = JSONValue.parsePrefix(bytes), case .array(let items) = v, !items.isEmpty else { return ParsedOutput(content: text) }
        let calls = items.compactMap { call(from: $0, argumentsKey: "arguments") }
        guard calls.count == items.count else { return ParsedOutput(content: text) }
        return ParsedOutput(content: String(text[..<start.lowerBound]) + String(decoding: bytes[end...], as: UTF8.self), toolCalls: calls)
    }

    static func bareObject(_ text: String, argumentsKey: String) -> ParsedOutput {
        let bytes = Array(text.utf8)
        guard let (v, end) = JSONValue.parsePrefix(bytes), bytes[end...].allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }),
              let c = call(from: v, argumentsKey: argumentsKey) else { return ParsedOutput(content: text) }
        return ParsedOutput(content: "", toolCalls: [c])
    }

    /// A call that does not read (cut off, not JSON, no name) ends the section there: the calls before it are
    /// kept and the rest is text, so a stream that sent those calls as they closed said what the parse says.
    static func delimited(_ text: String, begin: String, end: String, callBegin: String, separator: String, callEnd: String) -> ParsedOutput {
        guard let section = text.range(of: begin) else { return ParsedOutput(content: text) }
        var calls: [ToolCall] = []
        var rest = text[section.upperBound...]
        while true {
            rest = rest.drop { $0.isWhitespace }
            guard rest.hasPrefix(callBegin) else { break }
            let afterBegin = rest.dropFirst(callBegin.count)
            guard let sep = afterBegin.range(of: separator) else { break }
            let name = String(afterBegin[..<sep.lowerBound]).trimmingWhitespace
            let bytes = Array(afterBegin[sep.upperBound...].utf8)
            guard !name.isEmpty, let (v, stop) = JSONValue.parsePrefix(bytes), case .object = v else { break }
            let after = String(decoding: bytes[stop...], as: UTF8.self).drop { $0.isWhitespace }
            guard after.hasPrefix(callEnd) else { break }
            calls.append(Self.namespaced(name, arguments: v))
            rest = Substring(after.dropFirst(callEnd.count))
        }
        guard !calls.isEmpty else { return ParsedOutput(content: text) }
        rest = rest.drop { $0.isWhitespace }
        if rest.hasPrefix(end) { rest = rest.dropFirst(end.count) }
        return ParsedOutput(content: String(text[..<section.lowerBound]) + rest, toolCalls: calls)
    }

    /// Kimi-K2 names a call `functions.NAME:INDEX`, which is also its id; other names are the function's.
    static func namespaced(_ written: String, arguments: JSONValue) -> ToolCall {
        guard written.hasPrefix("functions."), let colon = written.lastIndex(of: ":"), Int(written[written.index(after: colon)...]) != nil else {
            return ToolCall(name: written, arguments: arguments)
        }
        return ToolCall(name: String(written[written.index(written.startIndex, offsetBy: "functions.".count)..<colon]), arguments: arguments, id: written)
    }

    /// Calls with text parameters (Qwen3-Coder, GLM, MiniMax). A value is the JSON it spells when it spells a
    /// number, boolean, null, object or array, and text otherwise (the model writes strings unquoted); one
    /// newline either side of it is the layout, not the value. A block that does not read as calls stays text.
    static func parameters(_ text: String, _ p: ParameterSyntax, textParameters: [String: Set<String>] = [:]) -> ParsedOutput {
        var content = "", calls: [ToolCall] = []
        var rest = Substring(text)
        while let start = rest.range(of: p.blockOpen) {
            content += rest[..<start.lowerBound]
            let afterOpen = rest[start.upperBound...]
            if let close = afterOpen.range(of: p.blockClose), let found = invocations(afterOpen[..<close.lowerBound], p, textParameters: textParameters), !found.isEmpty {
                calls += found
                rest = afterOpen[close.upperBound...]
                continue
            }
            content += p.blockOpen
            rest = afterOpen
        }
        content += rest
        return ParsedOutput(content: content, toolCalls: calls)
    }

    static func invocations(_ block: Substring, _ p: ParameterSyntax, textParameters: [String: Set<String>]) -> [ToolCall]? {
        var out: [ToolCall] = []
        var rest = block
        while true {
            rest = rest.drop { $0.isWhitespace }
            if rest.isEmpty { break }
            var body: Substring
            let name: String
            if p.invokeOpen.isEmpty {
                // GLM: the name first, up to its line's end or the first key.
                let end = [rest.range(of: p.nameEnd)?.lowerBound, rest.range(of: p.keyOpen)?.lowerBound].compactMap { $0 }.min() ?? rest.endIndex
                name = String(rest[..<end]).trimmingWhitespace
                body = rest[end...]
                rest = rest[rest.endIndex...]
            } else {
                guard rest.hasPrefix(p.invokeOpen), let nameEnd = rest.range(of: p.nameEnd) else { return nil }
                name = String(rest[rest.index(rest.startIndex, offsetBy: p.invokeOpen.count)..<nameEnd.lowerBound]).trimmingWhitespace
                let after = rest[nameEnd.upperBound...]
                guard let close = after.range(of: p.invokeClose) else { return nil }
                body = after[..<close.lowerBound]
                rest = after[close.upperBound...]
            }
            guard !name.isEmpty else { return nil }
            var args: [(String, JSONValue)] = []
            while true {
                body = body.drop { $0.isWhitespace }
                if body.isEmpty { break }
                guard body.hasPrefix(p.keyOpen), let keyClose = body.range(of: p.keyClose) else { return nil }
                let key = String(body[body.index(body.startIndex, offsetBy: p.keyOpen.count)..<keyClose.lowerBound]).trimmingWhitespace
                var value = body[keyClose.upperBound...]
                if !p.valueOpen.isEmpty {
                    value = value.drop { $0.isWhitespace }
                    guard value.hasPrefix(p.valueOpen) else { return nil }
                    value = value.dropFirst(p.valueOpen.count)
                }
                guard !key.isEmpty, let valueClose = value.range(of: p.valueClose) else { return nil }
                args.append((key, Self.parameterValue(value[..<valueClose.lowerBound], text: textParameters[name]?.contains(key) ?? false)))
                body = value[valueClose.upperBound...]
            }
            out.append(ToolCall(name: name, arguments: .object(args)))
        }
        return out
    }

    static func parameterValue(_ raw: Substring, text: Bool = false) -> JSONValue {
        var v = raw
        if v.hasPrefix("\n") { v = v.dropFirst() }
        if v.hasSuffix("\n") { v = v.dropLast() }
        if text { return .string(String(v)) }
        if let parsed = try? JSONValue.parse(String(v)), parsed.stringValue == nil { return parsed }
        return .string(String(v))
    }

    /// Harmony: `[<|start|>assistant][ to=RECIPIENT]<|channel|>CHANNEL[ to=RECIPIENT][ <|constrain|>TYPE| TYPE]<|message|>BODY`
    /// ended by `<|end|>`, `<|call|>`, `<|return|>` or the end of the text (the first message's header was the prompt).
    static func harmony(_ text: String) -> ParsedOutput {
        guard text.contains("<|channel|>") || text.contains("<|message|>") else { return ParsedOutput(content: text) }
        var content: [String] = [], reasoning: [String] = [], calls: [ToolCall] = []
        var rest = Substring(text)
        while !rest.isEmpty {
            if rest.hasPrefix("<|start|>") { rest = rest.dropFirst("<|start|>".count) }
            guard let message = rest.range(of: "<|message|>") else {
                content.append(String(rest))
                break
            }
            let header = rest[..<message.lowerBound]
            var body = rest[message.upperBound...]
            var terminator = body.endIndex
            for t in ["<|end|>", "<|call|>", "<|return|>"] {
                if let r = body.range(of: t), r.lowerBound < terminator { terminator = r.lowerBound }
            }
            let next = body[terminator...]
            body = body[..<terminator]
            rest = next.drop { $0 != ">" }.dropFirst()  // past the terminator tag
            if next.isEmpty { rest = "" }
            let channel = header.range(of: "<|channel|>").map { header[$0.upperBound...].prefix { !$0.isWhitespace && $0 != "<" } } ?? ""
            let recipient = header.range(of: "to=").map { String(header[$0.upperBound...].prefix { !$0.isWhitespace && $0 != "<" }) }
            if let recipient, recipient.hasPrefix("functions.") {
                let name = String(recipient.dropFirst("functions.".count))
                if !name.isEmpty, let args = try? JSONValue.parse(String(body)), case .object = args {
                    calls.append(ToolCall(name: name, arguments: args))
                } else {
                    content.append(String(body))
                }
            } else if channel == "analysis" {
                reasoning.append(String(body))
            } else {
                content.append(String(body))
            }
        }
        return ParsedOutput(content: content.joined(separator: "\n"), reasoning: reasoning.isEmpty ? nil : reasoning.joined(separator: "\n"), toolCalls: calls)
    }
}

extension StringProtocol {
    var trimmingWhitespace: String {
        let start = firstIndex { !$0.isWhitespace } ?? endIndex
        let end = lastIndex { !$0.isWhitespace }.map { index(after: $0) } ?? start
        return start < end ? String(self[start..<end]) : ""
    }
}
