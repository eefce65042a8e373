import JSON

/// Streams a tagged family's answer (Hermes, Qwen 2.5/3: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`)
/// as OpenAI streams calls: content as it comes, then per call a first delta with its index, id and name, then
/// its arguments in fragments as the model writes them. Text that could still be the start of a call tag is held
/// until it is or is not one; a call that turns out not to parse before anything of it was sent goes out as
/// content, as `OutputFormat.parse` keeps it. One stage of `AnswerStream`, which trims the content's edges and
/// drops the calls not asked for.
struct CallStream {
    typealias Event = AnswerStream.Event

    let open: String, close: String, argumentsKey: String
    private var pending = ""
    private var inCall = false
    private var call = ""
    private var nameSent = false
    private var argumentsStart: String.Index?
    private var argumentsSent: String.Index?
    private var argumentsEnd: String.Index?
    private(set) var calls = 0

    init(open: String, close: String, argumentsKey: String) {
        self.open = open
        self.close = close
        self.argumentsKey = argumentsKey
    }

    mutating func feed(_ piece: String) -> [Event] {
        var out: [Event] = []
        if inCall { call += piece } else { pending += piece }
        while true {
            if !inCall {
                if let r = pending.range(of: open) {
                    content(String(pending[..<r.lowerBound]), into: &out)
                    call = String(pending[r.upperBound...])
                    pending = ""
                    inCall = true
                    continue
                }
                // All but the longest tail that could begin the tag.
                let keep = ReasoningStream.partialSuffix(pending, of: open)
                content(String(pending.dropLast(keep)), into: &out)
                pending = String(pending.suffix(keep))
                return out
            }
            guard progressCall(into: &out) else { return out }
        }
    }

    /// What is left at the end of the answer.
    mutating func finish() -> [Event] {
        var out: [Event] = []
        if inCall {
            // Cut off inside a call: text if nothing of it went out (parse keeps it as content).
            if !nameSent { content(open + call, into: &out) }
        } else {
            content(pending, into: &out)
        }
        pending = ""
        call = ""
        inCall = false
        return out
    }

    private func content(_ text: String, into out: inout [Event]) {
        if !text.isEmpty { out.append(.content(text)) }
    }

    /// Moves the current call on with what has come; true when it ended (and the text after it waits in `pending`).
    private mutating func progressCall(into out: inout [Event]) -> Bool {
        if !nameSent, let name = Self.stringValue(of: "name", in: call) {
            nameSent = true
            out.append(.callStart(index: calls, name: name, id: nil))
        }
        // Arguments written as an object stream as written; any other way (a JSON string holding the object) is
        // left to the parse at the end.
        if argumentsStart == nil, let start = Self.valueStart(of: argumentsKey, in: call), call[start] == "{" {
            argumentsStart = start
            argumentsSent = start
        }
        if nameSent, let start = argumentsStart, argumentsEnd == nil || argumentsSent! < argumentsEnd! {
            if argumentsEnd == nil { argumentsEnd = Self.valueEnd(in: call, from: start) }
            let upTo = argumentsEnd ?? call.endIndex
            if argumentsSent! < upTo {
                out.append(.arguments(index: calls, String(call[argumentsSent!..<upTo])))
                argumentsSent = upTo
            }
        }
        guard let end = argumentsEnd, let c = call.range(of: close, range: end..<call.endIndex) else { return false }
        let rest = String(call[c.upperBound...])
        if !nameSent {
            content(open + String(call[..<c.upperBound]), into: &out)  // not a call: text, as parse keeps it
        } else {
            calls += 1
        }
        inCall = false
        call = ""
        nameSent = false
        argumentsStart = nil
        argumentsSent = nil
        argumentsEnd = nil
        pending = rest
        return true
    }

    /// The string value of `"key": "…"` once it is complete in `text`.
    static func stringValue(of key: String, in text: String) -> String? {
        guard let start = valueStart(of: key, in: text), text[start...].hasPrefix("\"") else { return nil }
        return JSONValue.parsePrefix(Array(text[start...].utf8)).flatMap { $0.value.stringValue }
    }

    /// Where the value of `"key":` begins in `text` (after the colon and any space), once it has begun.
    static func valueStart(of key: String, in text: String) -> String.Index? {
        guard let k = text.range(of: "\"\(key)\"") else { return nil }
        var i = k.upperBound
        while i < text.endIndex, text[i].isWhitespace { i = text.index(after: i) }
        guard i < text.endIndex, text[i] == ":" else { return nil }
        i = text.index(after: i)
        while i < text.endIndex, text[i].isWhitespace { i = text.index(after: i) }
        return i < text.endIndex ? i : nil
    }

    /// Where a JSON object or array starting at `start` ends (just past its closing bracket), once it has.
    static func valueEnd(in text: String, from start: String.Index) -> String.Index? {
        var depth = 0, inString = false, escaped = false
        var i = start
        while i < text.endIndex {
            let c = text[i]
            if inString {
                if escaped { escaped = false } else if c == "\\" { escaped = true } else if c == "\"" { inString = false }
            } else if c == "\"" {
                inString = true
            } else if c == "{" || c == "[" {
                depth += 1
            } else if c == "}" || c == "]" {
                depth -= 1
                if depth == 0 { return text.index(after: i) }
            } else if depth == 0 && !c.isWhitespace {
                return nil  // not an object: left to the parser at the end
            }
            i = text.index(after: i)
        }
        return nil
    }
}
