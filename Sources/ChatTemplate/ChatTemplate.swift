@_exported import JSON

/// A chat template (`tokenizer.chat_template` in a GGUF, or a file), parsed once and rendered per request as
/// Hugging Face renders it with jinja2 (`trim_blocks`, `lstrip_blocks`, loop controls, the immutable sandbox):
/// the prompt the model was trained on, byte for byte. A construct this renderer does not know is an error naming
/// the line at parse time, never a prompt that is silently wrong.
public struct ChatTemplate: @unchecked Sendable {  // immutable after init; the tree holds no shared state
    public let source: String
    let nodes: [Node]

    /// The template llama-server falls back to for a model without one.
    public static let chatml = """
        {%- for message in messages -%}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}{%- endfor -%}\
        {%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}
        """

    public init(_ source: String) throws(TemplateError) {
        self.source = source
        var p = try TemplateParser(source)
        nodes = try p.parse()
    }

    /// The time `strftime_now` formats: seconds since the epoch, in UTC or local time (as Python's `datetime.now()`).
    public struct Clock: Sendable {
        public var seconds: @Sendable () -> Int
        public var utc: Bool
        public init(seconds: @escaping @Sendable () -> Int, utc: Bool) {
            self.seconds = seconds
            self.utc = utc
        }
        public static let system = Clock(seconds: { Int(time(nil)) }, utc: false)
    }

    /// What one render may do: the template usually comes from the model file, so a loop of loops must end in
    /// an error, not hold a thread. A step is a node rendered, a loop iteration, an item a builtin makes or walks
    /// (`range`, filters over lists, a list an operator makes); a chat of 3 000 messages takes a few hundred
    /// thousand. Bytes made count every string an operator, filter or call returns: a loop that appends to a
    /// growing string (`ns.x = ns.x ~ '…'`) copies it each time, so its cost is the sum of those lengths, which
    /// a step count alone does not bound (1 000 000 such steps would copy 18 TB).
    public struct Budget: Sendable {
        public var steps: Int
        public var outputBytes: Int
        public var madeBytes: Int
        public init(steps: Int = 4_000_000, outputBytes: Int = 64 << 20, madeBytes: Int = 512 << 20) {
            self.steps = steps
            self.outputBytes = outputBytes
            self.madeBytes = madeBytes
        }
        public static let standard = Budget()
    }

    /// Renders with these variables (besides the globals `range`, `namespace`, `raise_exception`, `strftime_now`).
    public func render(_ variables: [(String, JSONValue)], clock: Clock = .system, budget: Budget = .standard) throws(TemplateError) -> String {
        let root = Scope(parent: nil)
        for (k, v) in variables { root.vars[k] = TemplateValue(v) }
        let spent = TemplateBudget(budget)
        let r = TemplateRenderer(builtins: TemplateBuiltins(clock: clock.seconds, utc: clock.utc, budget: spent), budget: spent)
        var out = ""
        _ = try r.render(nodes, root, &out)
        return out
    }

    /// A conversation as llama-server and transformers pass it: `messages`, `add_generation_prompt`, `bos_token`,
    /// `eos_token`, `tools` when there are any, then the caller's extra variables (`chat_template_kwargs`).
    public func render(messages: [JSONValue], tools: [JSONValue]? = nil, addGenerationPrompt: Bool, bosToken: String, eosToken: String,
                       extra: [(String, JSONValue)] = [], clock: Clock = .system, budget: Budget = .standard) throws(TemplateError) -> String {
        var vars: [(String, JSONValue)] = [
            ("messages", .array(messages)), ("add_generation_prompt", .bool(addGenerationPrompt)),
            ("bos_token", .string(bosToken)), ("eos_token", .string(eosToken)),
        ]
        if let tools { vars.append(("tools", .array(tools))) }
        for (k, v) in extra {
            vars.removeAll { $0.0 == k }
            vars.append((k, v))
        }
        return try render(vars, clock: clock, budget: budget)
    }
}

#if canImport(Glibc)
import Glibc
#endif
