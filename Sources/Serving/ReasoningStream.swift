/// Splits streamed text into reasoning and content as it comes, for families that write reasoning between tags
/// and no tool calls to wait for: a piece that could be the start of a tag is held until it is or is not one,
/// everything else goes out at once. The same split as `OutputFormat.parse`, edges' whitespace aside.
struct ReasoningStream {
    enum Kind { case reasoning, content }
    let open: String, close: String
    private enum State { case start, reasoning, content }
    private var state: State
    private var pending = ""
    /// Content has not started yet: its leading whitespace (after the close tag) is dropped, as parse trims it.
    private var contentStarted = false

    init(open: String, close: String, reasoningOpen: Bool) {
        self.open = open
        self.close = close
        state = reasoningOpen ? .reasoning : .start
    }

    /// What can be sent now of the text so far, in order.
    mutating func feed(_ piece: String) -> [(Kind, String)] {
        pending += piece
        var out: [(Kind, String)] = []
        while true {
            switch state {
            case .start:
                let lead = pending.drop { $0.isWhitespace }
                if lead.hasPrefix(open) {
                    pending = String(lead.dropFirst(open.count))
                    state = .reasoning
                } else if lead.isEmpty || open.hasPrefix(lead) {
                    return out  // could still become the open tag
                } else {
                    state = .content
                }
            case .reasoning:
                if let r = pending.range(of: close) {
                    let text = String(pending[..<r.lowerBound])
                    if !text.isEmpty { out.append((.reasoning, text)) }
                    pending = String(pending[r.upperBound...])
                    state = .content
                } else {
                    let keep = Self.partialSuffix(pending, of: close)
                    let sendable = String(pending.dropLast(keep))
                    if !sendable.isEmpty { out.append((.reasoning, sendable)) }
                    pending = String(pending.suffix(keep))
                    return out
                }
            case .content:
                if !contentStarted {
                    pending = String(pending.drop { $0.isWhitespace })
                    if pending.isEmpty { return out }
                    contentStarted = true
                }
                if !pending.isEmpty { out.append((.content, pending)) }
                pending = ""
                return out
            }
        }
    }

    /// The rest at the end of the answer.
    mutating func finish() -> [(Kind, String)] {
        guard !pending.isEmpty else { return [] }
        defer { pending = "" }
        switch state {
        case .reasoning: return [(.reasoning, pending)]
        case .start, .content:
            let text = contentStarted ? pending : String(pending.drop { $0.isWhitespace })
            return text.isEmpty ? [] : [(.content, text)]
        }
    }

    /// How many characters at the end of `text` are the start of `tag`.
    static func partialSuffix(_ text: String, of tag: String) -> Int {
        var n = min(text.count, tag.count - 1)
        while n > 0 {
            if tag.hasPrefix(text.suffix(n)) { return n }
            n -= 1
        }
        return 0
    }
}
