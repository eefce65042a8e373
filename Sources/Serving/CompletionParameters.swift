import Grammar
import JSON
import Model

/// The sampling and stopping fields of a chat or text completion body, checked one by one: a wrong type or an
/// out-of-range value is a 400 naming the field, never a silent default.
public struct CompletionParameters: Sendable, Equatable {
    public var maxTokens: Int?
    public var stop: [String] = []
    public var sampling = SamplingParams()
    public var stream = false
    public var includeUsage = false
    /// nil: none; 0: each token's log-probability; N: also the N most likely alternatives.
    public var logprobs: Int?
    /// llama-server's `ignore_eos`: generate to `max_tokens` (or the context's end) through end-of-generation tokens.
    public var ignoreEOS = false
    /// llama-server's `cache_prompt`: start from a cached prefix and keep this request's KV (false: neither).
    public var cachePrompt = true
    /// What `sampling.grammar` came from (json_schema, json_object, grammar, tool_call), for /metrics.
    public var constraint: String?

    /// Fields this server reads; a field that would change the answer and that we do not implement is a 400
    /// naming it (a client must not get an answer that silently ignored what it asked); anything else a client
    /// sends (`user`, `metadata`, …) is ignored, as OpenAI's API and llama-server do.
    /// `chat`: chat completions take `logprobs: true` + `top_logprobs: N`; text completions `logprobs: N`.
    public init(body: JSONValue, chat: Bool = true, randomSeed: () -> UInt64) throws(APIError) {
        let f = Fields(body)
        let newer = try f.int("max_completion_tokens", 0...)
        let older = try f.int("max_tokens", 0...)
        maxTokens = newer ?? older
        if let t = try f.number("temperature", 0...2) { sampling.temperature = Float(t) }
        if let p = try f.number("top_p", 0...1) { sampling.topP = Float(p) }
        if let k = try f.int("top_k", 0...) { sampling.topK = k }
        if let m = try f.number("min_p", 0...1) { sampling.minP = Float(m) }
        if let r = try f.number("repeat_penalty", 0.0...) {
            guard r > 0 else { throw APIError.invalid("'repeat_penalty' must be greater than 0", param: "repeat_penalty") }
            sampling.repeatPenalty = Float(r)
        }
        if let n = try f.int("repeat_last_n", 0...) { sampling.repeatLastN = n }
        if let p = try f.number("frequency_penalty", -2...2) { sampling.frequencyPenalty = Float(p) }
        if let p = try f.number("presence_penalty", -2...2) { sampling.presencePenalty = Float(p) }
        if let s = try f.int("seed", Int.min...) {
            sampling.seed = UInt64(bitPattern: Int64(s))
        } else {
            // Like OpenAI and llama-server: without a seed, every request samples differently.
            sampling.seed = randomSeed()
        }
        switch body["stop"] {
        case nil, .null?: break
        case .string(let s)?: stop = [s]
        case .array(let items)?:
            guard items.count <= 16 else { throw APIError.invalid("'stop' takes at most 16 strings", param: "stop") }
            stop = try items.map { v throws(APIError) in
                guard let s = v.stringValue else { throw APIError.invalid("'stop' must be a string or a list of strings", param: "stop") }
                return s
            }
        default:
            throw APIError.invalid("'stop' must be a string or a list of strings", param: "stop")
        }
        stream = try f.bool("stream") ?? false
        ignoreEOS = try f.bool("ignore_eos") ?? false
        cachePrompt = try f.bool("cache_prompt") ?? true
        if let options = body["stream_options"], !options.isNull {
            guard case .object = options else { throw APIError.invalid("'stream_options' must be an object", param: "stream_options") }
            includeUsage = try Fields(options).bool("include_usage", path: "stream_options.include_usage") ?? false
        }
        try Self.refuseUnsupported(body, chat: chat)
        if let (kind, grammar) = try Self.outputGrammar(body) {
            sampling.grammar = grammar
            constraint = kind
        }
        if let n = try f.int("n", 0...), n != 1 {
            throw APIError.invalid("only n = 1 is supported (one choice per request); send several requests for several completions", param: "n")
        }
        if chat {
            let top = try f.int("top_logprobs", 0...)
            if let top, top > SampledToken.maxTop { throw APIError.invalid("'top_logprobs' must be at most \(SampledToken.maxTop)", param: "top_logprobs") }
            if try f.bool("logprobs") == true {
                logprobs = top ?? 0
            } else if top != nil {
                throw APIError.invalid("'top_logprobs' needs 'logprobs': true", param: "top_logprobs")
            }
        } else if let n = try f.int("logprobs", 0...) {
            guard n <= SampledToken.maxTop else { throw APIError.invalid("'logprobs' must be at most \(SampledToken.maxTop)", param: "logprobs") }
            logprobs = n
        }
    }
}

extension CompletionParameters {
    /// Fields that change the answer and that this server does not implement, given a value that asks for it.
    static func refuseUnsupported(_ body: JSONValue, chat: Bool) throws(APIError) {
        func refuse(_ field: String, _ why: String) throws(APIError) { throw APIError.invalid("'\(field)' is not supported by this server: \(why)", param: field) }
        if case .object(let pairs)? = body["logit_bias"], !pairs.isEmpty { try refuse("logit_bias", "remove it (token biases are not applied)") }
        if let b = body["best_of"], !b.isNull, b.intValue != 1 { try refuse("best_of", "only one candidate is generated per request") }
        if body["echo"]?.boolValue == true { try refuse("echo", "the prompt is not echoed; it is in your request") }
        if let s = body["suffix"]?.stringValue, !s.isEmpty { try refuse("suffix", "insertion (fill-in-the-middle) is not supported") }
    }

    /// The grammar a body asks its output to follow, as GBNF: OpenAI's `response_format` (`json_object`, or
    /// `json_schema` with its `schema`), or llama-server's `json_schema` (a schema) or `grammar` (GBNF) fields;
    /// nil for free text. At most one of them; a schema or grammar that cannot be enforced is a 400 naming what.
    static func outputGrammar(_ body: JSONValue) throws(APIError) -> (kind: String, grammar: String)? {
        var found: [(field: String, kind: String, grammar: String)] = []
        func compile(_ schema: JSONValue, field: String) throws(APIError) -> String {
            do { return try JSONSchemaGrammar.compile(schema) } catch { throw APIError.invalid(error.message, param: field) }
        }
        if let format = body["response_format"], !format.isNull {
            guard case .object = format, let type = format["type"]?.stringValue else {
                throw APIError.invalid("'response_format' must be an object with a 'type' (text, json_object or json_schema)", param: "response_format")
            }
            switch type {
            case "text": break
            case "json_object":
                // llama-server also takes a schema here.
                if let schema = format["schema"], !schema.isNull {
                    found.append(("response_format", "json_object", try compile(schema, field: "response_format.schema")))
                } else {
                    found.append(("response_format", "json_object", JSONSchemaGrammar.anyObject()))
                }
            case "json_schema":
                guard let wrapper = format["json_schema"], case .object = wrapper else {
                    throw APIError.invalid("'response_format.json_schema' must be an object with the 'schema'", param: "response_format.json_schema")
                }
                guard let schema = wrapper["schema"], !schema.isNull else {
                    throw APIError.invalid("'response_format.json_schema.schema' is missing", param: "response_format.json_schema.schema")
                }
                found.append(("response_format", "json_schema", try compile(schema, field: "response_format.json_schema.schema")))
            default:
                throw APIError.invalid("'response_format.type' must be text, json_object or json_schema, not '\(type)'", param: "response_format.type")
            }
        }
        if let schema = body["json_schema"], !schema.isNull {
            found.append(("json_schema", "json_schema", try compile(schema, field: "json_schema")))
        }
        if let g = body["grammar"], !g.isNull {
            guard let text = g.stringValue else { throw APIError.invalid("'grammar' must be a string of GBNF", param: "grammar") }
            if !text.isEmpty {
                do { _ = try GrammarProgram(parsing: text) } catch { throw APIError.invalid(error.message, param: "grammar") }
                found.append(("grammar", "grammar", text))
            }
        }
        guard found.count <= 1 else {
            throw APIError.invalid("send one of \(found.map { "'\($0.field)'" }.joined(separator: " and ")), not both", param: found[1].field)
        }
        return found.first.map { ($0.kind, $0.grammar) }
    }
}

/// Typed reads of an object's fields, each failing with the field's name.
struct Fields {
    let body: JSONValue
    init(_ body: JSONValue) { self.body = body }

    func present(_ key: String) -> JSONValue? {
        guard let v = body[key], !v.isNull else { return nil }
        return v
    }

    func number(_ key: String, _ range: ClosedRange<Double>) throws(APIError) -> Double? {
        guard let v = present(key) else { return nil }
        guard let d = v.numberValue, d.isFinite else { throw APIError.invalid("'\(key)' must be a number, not \(v.typeName)", param: key) }
        guard range.contains(d) else { throw APIError.invalid("'\(key)' must be between \(range.lowerBound) and \(range.upperBound), not \(d)", param: key) }
        return d
    }

    func number(_ key: String, _ range: PartialRangeFrom<Double>) throws(APIError) -> Double? {
        guard let v = present(key) else { return nil }
        guard let d = v.numberValue, d.isFinite else { throw APIError.invalid("'\(key)' must be a number, not \(v.typeName)", param: key) }
        guard d >= range.lowerBound else { throw APIError.invalid("'\(key)' must be at least \(range.lowerBound), not \(d)", param: key) }
        return d
    }

    func int(_ key: String, _ range: PartialRangeFrom<Int>) throws(APIError) -> Int? {
        guard let v = present(key) else { return nil }
        guard let i = v.intValue else { throw APIError.invalid("'\(key)' must be an integer, not \(v.typeName)", param: key) }
        guard i >= range.lowerBound else { throw APIError.invalid("'\(key)' must be at least \(range.lowerBound), not \(i)", param: key) }
        return i
    }

    func bool(_ key: String, path: String? = nil) throws(APIError) -> Bool? {
        guard let v = present(key) else { return nil }
        guard let b = v.boolValue else { throw APIError.invalid("'\(path ?? key)' must be true or false, not \(v.typeName)", param: path ?? key) }
        return b
    }

    func string(_ key: String) throws(APIError) -> String? {
        guard let v = present(key) else { return nil }
        guard let s = v.stringValue else { throw APIError.invalid("'\(key)' must be a string, not \(v.typeName)", param: key) }
        return s
    }
}
