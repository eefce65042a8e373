import JSON

/// One answer read as it is generated, in its family's syntax: reasoning, content and tool calls go out as soon
/// as they are known, and what they add up to is what `OutputReading.parse` makes of the whole text (the same
/// reasoning, content and calls; the tests feed every family's renderings a character at a time to hold that).
///
/// How soon depends on the syntax: reasoning and content as they come (a piece that could begin a tag waits until
/// it is or is not one); in the `<tool_call>` JSON families each call's name as soon as it is written and then its
/// arguments in fragments as written (`CallStream`); in the families with call sections (DeepSeek, Kimi-K2, the
/// text-parameter ones) each call whole as soon as it closes; in gpt-oss's harmony each channel's message as it
/// comes and each call when its message ends; Mistral's list and Llama 3's bare object when the answer ends (their
/// calls are the end of the answer). Whatever the live reading did not send, the final parse sends at the end.
struct AnswerStream {
    enum Event: Equatable {
        case reasoning(String)
        case content(String)
        /// A call begins: its index among the calls sent, its name, and the id the model wrote (Kimi-K2, Mistral).
        case callStart(index: Int, name: String, id: String?)
        /// A fragment of the call's arguments (JSON text; the fragments of a call add up to its arguments).
        case arguments(index: Int, String)
    }

    let reading: HTTPAPI.OutputReading
    /// Everything fed, for the parse at the end.
    private(set) var text = ""
    private var reasoningSplit: ReasoningStream?
    private var stage: Stage
    private var reasoningOut = TrimmedText(), contentOut = TrimmedText()
    private var sentReasoning = "", sentContent = ""
    /// Calls started (sent or, past the first when only one is asked for, dropped).
    private(set) var callsStarted = 0
    /// The argument text sent of each call started.
    private var argumentsSent: [Int: String] = [:]
    /// The whole answer's reading, once `finish` has run.
    private(set) var parsed: ParsedOutput?

    private enum Stage {
        case plain
        case tagged(CallStream)
        case section(CallSectionStream)
        case harmony(HarmonyStream)
    }

    init(reading: HTTPAPI.OutputReading) {
        self.reading = reading
        let format = reading.format
        if case .harmony = format.calls {
            stage = .harmony(HarmonyStream())
        } else {
            reasoningSplit = format.reasoning.map { ReasoningStream(open: $0.open, close: $0.close, reasoningOpen: reading.reasoningOpen) }
            switch format.calls {
            case .none, .harmony: stage = .plain
            case .tagged(let open, let close, let key): stage = .tagged(CallStream(open: open, close: close, argumentsKey: key))
            default: stage = .section(CallSectionStream(format: format.withoutReasoning(), textParameters: reading.textParameters))
            }
        }
        // Harmony's reasoning is its channel's text as written; tag families' reasoning is trimmed, as parse trims it.
        reasoningOut.trims = format.reasoning != nil
    }

    /// Whether any call went out.
    var sentCalls: Bool { callsStarted > 0 }

    mutating func feed(_ piece: String) -> [Event] {
        text += piece
        var out: [Event] = []
        let parts: [(ReasoningStream.Kind, String)] = reasoningSplit != nil ? reasoningSplit!.feed(piece) : [(.content, piece)]
        for (kind, t) in parts {
            if kind == .reasoning { emit(.reasoning(t), into: &out) } else { staged(t, into: &out) }
        }
        return out
    }

    /// The rest, once the answer is complete: the live reading's leftovers, then whatever the whole answer's parse
    /// holds beyond what was sent (text that turned out not to be a call, calls only known at the end).
    mutating func finish() -> [Event] {
        var out: [Event] = []
        if reasoningSplit != nil {
            for (kind, t) in reasoningSplit!.finish() {
                if kind == .reasoning { emit(.reasoning(t), into: &out) } else { staged(t, into: &out) }
            }
        }
        if case .tagged(var s) = stage {
            for e in s.finish() { emit(e, into: &out) }
            stage = .tagged(s)
        }
        let whole = reading.parse(text, counting: false)
        parsed = whole
        if let r = whole.reasoning, r.hasPrefix(sentReasoning), r.count > sentReasoning.count {
            emit(.reasoning(String(r.dropFirst(sentReasoning.count))), into: &out, trimmed: false)
        }
        if whole.content.hasPrefix(sentContent), whole.content.count > sentContent.count {
            emit(.content(String(whole.content.dropFirst(sentContent.count))), into: &out, trimmed: false)
        }
        // A call whose name went out but whose arguments the live reading could not follow (written as a string).
        for (i, c) in whole.toolCalls.prefix(callsStarted).enumerated() where (argumentsSent[i] ?? "").isEmpty {
            emit(.arguments(index: i, c.arguments.render()), into: &out)
        }
        var index = callsStarted
        for c in whole.toolCalls.dropFirst(callsStarted) {
            emit(.callStart(index: index, name: c.name, id: c.id), into: &out)
            emit(.arguments(index: index, c.arguments.render()), into: &out)
            index += 1
        }
        return out
    }

    private mutating func staged(_ t: String, into out: inout [Event]) {
        let events: [Event]
        switch stage {
        case .plain: events = [.content(t)]
        case .tagged(var s): events = s.feed(t); stage = .tagged(s)
        case .section(var s): events = s.feed(t); stage = .section(s)
        case .harmony(var s): events = s.feed(t); stage = .harmony(s)
        }
        for e in events { emit(e, into: &out) }
    }

    /// Sends an event: text through the trimming parse applies (edges' whitespace), calls past the first dropped
    /// when one call is asked for (as `parse` drops them).
    private mutating func emit(_ e: Event, into out: inout [Event], trimmed: Bool = true) {
        switch e {
        case .reasoning(let t):
            guard let s = trimmed ? reasoningOut.add(t) : t, !s.isEmpty else { return }
            sentReasoning += s
            out.append(.reasoning(s))
        case .content(let t):
            guard let s = trimmed ? contentOut.add(t) : t, !s.isEmpty else { return }
            sentContent += s
            out.append(.content(s))
        case .callStart(let i, _, _):
            callsStarted = max(callsStarted, i + 1)
            if reading.parallel || i == 0 { out.append(e) }
        case .arguments(let i, let t):
            argumentsSent[i, default: ""] += t
            if reading.parallel || i == 0 { out.append(e) }
        }
    }
}

/// Text sent with the whitespace at its edges dropped, as `parse` trims it: nothing before the first non-space,
/// and trailing whitespace held until more text follows it.
struct TrimmedText {
    var trims = true
    private var started = false
    private var space = ""

    /// What to send of `text` now (nil: nothing yet).
    mutating func add(_ text: String) -> String? {
        guard trims else { return text.isEmpty ? nil : text }
        guard !text.isEmpty else { return nil }
        if text.allSatisfy(\.isWhitespace) {
            if started { space += text }
            return nil
        }
        var t = Substring(text)
        if !started { t = t.drop { $0.isWhitespace }; started = true }
        let trailing = t.reversed().prefix { $0.isWhitespace }.count
        defer { space = String(t.suffix(trailing)) }
        return space + String(t.dropLast(trailing))
    }
}

/// Calls in a section opened by a marker (DeepSeek's and Kimi-K2's call sections, the text-parameter families'
/// blocks, Mistral's `[TOOL_CALLS]` list, Llama 3's bare object): text before the marker goes out as it comes;
/// from the marker on the text is held, and each time a call's closing tag arrives the section so far is parsed
/// and the calls it completes go out whole. What remains is left to the parse at the end.
struct CallSectionStream {
    let format: OutputFormat
    let textParameters: [String: Set<String>]
    /// What opens the section; `anchored`: only at the start of the answer (Llama 3's object).
    let marker: String, anchored: Bool
    /// What ends a call (nil: calls are known at the end only), and what the section so far needs after it to parse.
    let closer: String?, closing: String
    private var pending = ""
    private var section: String?
    /// The answer did not open with the marker (anchored only): everything is text.
    private var plain = false
    private var sent = 0

    init(format: OutputFormat, textParameters: [String: Set<String>] = [:]) {
        self.format = format
        self.textParameters = textParameters
        switch format.calls {
        case .delimited(let begin, _, _, _, let callEnd): (marker, anchored, closer, closing) = (begin, false, callEnd, "")
        // A block's calls are read together (one that does not parse leaves its whole block text), so when it closes.
        case .parameters(let p): (marker, anchored, closer, closing) = (p.blockOpen, false, p.blockClose, "")
        case .prefixedList(let prefix): (marker, anchored, closer, closing) = (prefix, false, nil, "")
        case .bareObject: (marker, anchored, closer, closing) = ("{", true, nil, "")
        case .tagged, .harmony, .none: (marker, anchored, closer, closing) = ("", false, nil, "")
        }
    }

    mutating func feed(_ piece: String) -> [AnswerStream.Event] {
        if plain { return [.content(piece)] }
        if section != nil {
            let tail = String(section!.suffix((closer?.count ?? 1) - 1))
            section! += piece
            return completedCalls(arrived: tail + piece)
        }
        pending += piece
        if anchored {
            let lead = pending.drop { $0.isWhitespace }
            if lead.hasPrefix(marker) {
                section = pending
                pending = ""
            } else if !lead.isEmpty {
                plain = true
                defer { pending = "" }
                return [.content(pending)]
            }
            return []
        }
        if let r = pending.range(of: marker) {
            let before = String(pending[..<r.lowerBound])
            section = String(pending[r.lowerBound...])
            pending = ""
            return (before.isEmpty ? [] : [.content(before)]) + completedCalls(arrived: section!)
        }
        let keep = ReasoningStream.partialSuffix(pending, of: marker)
        let out = String(pending.dropLast(keep))
        pending = String(pending.suffix(keep))
        return out.isEmpty ? [] : [.content(out)]
    }

    /// The calls the section's text completes, when what `arrived` (the new text and the tail a closing tag could
    /// have begun in) holds a closing tag: the section is parsed only then, so a long section costs little.
    private mutating func completedCalls(arrived: String) -> [AnswerStream.Event] {
        guard let closer, let s = section, arrived.contains(closer), let last = s.range(of: closer, options: .backwards) else { return [] }
        let calls = format.parse(String(s[..<last.upperBound]) + closing, textParameters: textParameters).toolCalls
        var out: [AnswerStream.Event] = []
        while sent < calls.count {
            out.append(.callStart(index: sent, name: calls[sent].name, id: calls[sent].id))
            out.append(.arguments(index: sent, calls[sent].arguments.render()))
            sent += 1
        }
        return out
    }
}

/// gpt-oss's harmony, as it comes: each message's header is read when its `<|message|>` arrives; the `analysis`
/// channel goes out as reasoning and other channels as content while they are written; a message to
/// `functions.NAME` is a call, sent when it ends (its arguments must parse as one object, or it is content, as
/// `parse` keeps it). Messages of one kind are joined by a newline, as `parse` joins them.
struct HarmonyStream {
    private enum Kind { case reasoning, content, call(String) }
    private static let terminators = ["<|end|>", "<|call|>", "<|return|>"]
    private var buffer = ""
    private var body: Kind?
    private var reasoningMessages = 0, contentMessages = 0, calls = 0

    mutating func feed(_ piece: String) -> [AnswerStream.Event] {
        buffer += piece
        var out: [AnswerStream.Event] = []
        while true {
            guard let kind = body else {
                // A header: wait for its `<|message|>`. Text with none at all is left to the parse at the end.
                guard let m = buffer.range(of: "<|message|>") else { return out }
                var header = buffer[..<m.lowerBound]
                if header.hasPrefix("<|start|>") { header = header.dropFirst("<|start|>".count) }
                let channel = header.range(of: "<|channel|>").map { header[$0.upperBound...].prefix { !$0.isWhitespace && $0 != "<" } } ?? ""
                let recipient = header.range(of: "to=").map { String(header[$0.upperBound...].prefix { !$0.isWhitespace && $0 != "<" }) }
                buffer = String(buffer[m.upperBound...])
                if let recipient, recipient.hasPrefix("functions."), recipient.count > "functions.".count {
                    body = .call(String(recipient.dropFirst("functions.".count)))
                } else if channel == "analysis" {
                    if reasoningMessages > 0 { out.append(.reasoning("\n")) }
                    reasoningMessages += 1
                    body = .reasoning
                } else {
                    if contentMessages > 0 { out.append(.content("\n")) }
                    contentMessages += 1
                    body = .content
                }
                continue
            }
            let end = Self.terminators.compactMap { buffer.range(of: $0) }.min { $0.lowerBound < $1.lowerBound }
            let text = String(buffer[..<(end?.lowerBound ?? buffer.endIndex)])
            switch kind {
            case .reasoning, .content:
                let keep = end == nil ? Self.terminators.map { ReasoningStream.partialSuffix(text, of: $0) }.max()! : 0
                let sendable = String(text.dropLast(keep))
                if !sendable.isEmpty {
                    if case .reasoning = kind { out.append(.reasoning(sendable)) } else { out.append(.content(sendable)) }
                }
                buffer = String(buffer.dropFirst(sendable.count))
            case .call(let name):
                guard end != nil else { return out }
                if let args = try? JSONValue.parse(text), case .object = args {
                    out.append(.callStart(index: calls, name: name, id: nil))
                    out.append(.arguments(index: calls, args.render()))
                    calls += 1
                } else {
                    if contentMessages > 0 { out.append(.content("\n")) }
                    contentMessages += 1
                    out.append(.content(text))
                }
                buffer = String(buffer.dropFirst(text.count))
            }
            guard let end else { return out }
            // Past the terminator (the buffer starts with it now); the next message's header follows.
            buffer = String(buffer.drop { $0 != ">" }.dropFirst())
            body = nil
        }
    }
}
