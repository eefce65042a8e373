import GGUF
import Model

/// `conclave inspect --json`: the schema is documented in README.md; keys only ever get added.
enum InspectJSON {
    /// Arrays longer than this are summarised as `{"array_of": TYPE, "length": N}` (vocabularies, merges).
    static let maxInlineArray = 16

    static func render(file: GGUFFile, summary s: ModelSummary, withTensors: Bool) -> JSON {
        let h = s.hyperparameters
        func opt(_ v: Int?) -> JSON { v.map { .int($0) } ?? .null }
        func opt(_ v: Double?) -> JSON { v.map { .double($0) } ?? .null }
        func opt(_ v: String?) -> JSON { v.map { .string($0) } ?? .null }
        func bytes(_ b: ModelSummary.Bytes) -> [(String, JSON)] {
            TensorRole.Category.allCases.map { ($0.rawValue, JSON.int(b[$0])) } + [("total", .int(b.total))]
        }

        var fields: [(String, JSON)] = [
            ("file", .string(file.path)),
            ("file_bytes", .int(s.fileBytes)),
            ("gguf_version", .int(Int(file.version))),
            ("alignment", .int(file.alignment)),
            ("architecture", opt(s.architecture)),
            ("name", opt(s.name)),
            ("tensor_count", .int(s.tensorCount)),
            ("tensor_types", .object(s.tensorTypes.sorted { $0.key < $1.key }.map { ($0.key, .int($0.value)) })),
            ("tensor_bytes", .int(s.tensorBytes)),
            ("parameters", .int(s.parameters)),
            ("hyperparameters", .object([
                ("block_count", opt(h.blockCount)),
                ("embedding_length", opt(h.embeddingLength)),
                ("feed_forward_length", opt(h.feedForwardLength)),
                ("head_count", opt(h.headCount)),
                ("head_count_kv", opt(h.headCountKV)),
                ("key_length", opt(h.keyLength)),
                ("value_length", opt(h.valueLength)),
                ("expert_count", opt(h.expertCount)),
                ("expert_used_count", opt(h.expertUsedCount)),
                ("expert_feed_forward_length", opt(h.expertFeedForwardLength)),
                ("expert_shared_feed_forward_length", opt(h.expertSharedFeedForwardLength)),
                ("context_length", opt(h.contextLength)),
                ("rope_freq_base", opt(h.ropeFreqBase)),
                ("rope_dimension_count", opt(h.ropeDimensionCount)),
                ("rope_scaling_type", opt(h.ropeScalingType)),
                ("rope_scaling_factor", opt(h.ropeScalingFactor)),
                ("rms_epsilon", opt(h.rmsEpsilon)),
                ("vocab_size", opt(h.vocabSize)),
            ])),
            ("tokenizer", .object([
                ("model", opt(s.tokenizerModel)),
                ("pre", opt(s.tokenizerPre)),
                ("tokens", opt(s.tokenCount)),
            ])),
            ("bytes", .object([
                ("global", .object(bytes(s.global))),
                ("layers", .array(s.layers.enumerated().map { i, b in .object([("layer", .int(i))] + bytes(b)) })),
            ])),
            ("unknown_tensors", .array(s.unknownTensors.map { .string($0) })),
            ("metadata", .object(file.metadata.map { ($0.key, value($0.value)) })),
        ]
        if withTensors {
            fields.append(("tensors", .array(file.tensorInfos.map { t in
                .object([
                    ("name", .string(t.name)),
                    ("type", .string(t.type.name)),
                    ("shape", .array(t.shape.map { .int($0) })),
                    ("offset", .int(file.dataOffset + t.offset)),
                    ("bytes", .int(t.byteCount)),
                ])
            })))
        }
        return .object(fields)
    }

    static func value(_ v: GGUFValue) -> JSON {
        switch v {
        case .uint8(let x): return .int(Int(x))
        case .int8(let x): return .int(Int(x))
        case .uint16(let x): return .int(Int(x))
        case .int16(let x): return .int(Int(x))
        case .uint32(let x): return .int(Int(x))
        case .int32(let x): return .int(Int(x))
        case .uint64(let x): return .uint(x)
        case .int64(let x): return .int(Int(x))
        case .float32(let x): return .double(Double(x))
        case .float64(let x): return .double(x)
        case .bool(let x): return .bool(x)
        case .string(let x): return .string(x)
        case .array(let a):
            if a.count > maxInlineArray {
                return .object([("array_of", .string(a.elementType.name)), ("length", .int(a.count))])
            }
            return .array(a.values.map(value))
        }
    }
}

/// `conclave inspect` without `--json`: a report for people.
enum InspectText {
    static func render(file: GGUFFile, summary s: ModelSummary, withTensors: Bool) -> String {
        let h = s.hyperparameters
        func show(_ v: Int?) -> String { v.map(String.init) ?? "-" }
        func show(_ v: Double?) -> String { v.map { "\($0)" } ?? "-" }
        var lines: [String] = []
        lines.append("file          \(file.path)")
        lines.append("              \(formatBytes(s.fileBytes)), GGUF v\(file.version), \(s.tensorCount) tensors, \(file.metadata.count) metadata keys")
        lines.append("architecture  \(s.architecture ?? "(none)")\(s.name.map { "  \"\($0)\"" } ?? "")")
        lines.append("parameters    \(formatCount(s.parameters)) (\(formatBytes(s.tensorBytes)) of tensor data)")
        lines.append("layers        \(show(h.blockCount))    embedding \(show(h.embeddingLength))    feed-forward \(show(h.feedForwardLength))")
        lines.append("attention     \(show(h.headCount)) heads, \(show(h.headCountKV)) KV heads, head dim \(show(h.keyLength ?? headDim(h)))")
        if let experts = h.expertCount, experts > 0 {
            var line = "experts       \(experts), \(show(h.expertUsedCount)) used per token, expert FFN \(show(h.expertFeedForwardLength))"
            if let shared = h.expertSharedFeedForwardLength { line += ", shared expert FFN \(shared)" }
            lines.append(line)
        }
        var rope = "context       \(show(h.contextLength))    rope base \(show(h.ropeFreqBase)), dims \(show(h.ropeDimensionCount))"
        if let t = h.ropeScalingType { rope += ", scaling \(t) ×\(show(h.ropeScalingFactor))" }
        lines.append(rope)
        lines.append("rms epsilon   \(show(h.rmsEpsilon))")
        lines.append("tokenizer     \(s.tokenizerModel ?? "-") (pre: \(s.tokenizerPre ?? "-")), \(show(s.tokenCount)) tokens")
        let types = s.tensorTypes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        lines.append("tensor types  \(types)")
        if !s.unknownTensors.isEmpty {
            lines.append("unknown       \(s.unknownTensors.count) tensors not in the name table: \(s.unknownTensors.prefix(5).joined(separator: ", "))")
        }

        if !s.layers.isEmpty || s.global.total > 0 {
            lines.append("")
            let cats: [TensorRole.Category] = [.attention, .norm, .router, .experts, .sharedExpert, .denseFFN]
            let headers = ["layer"] + ["attention", "norms", "router", "experts", "shared exp", "dense ffn", "total"]
            var rows: [[String]] = []
            for (i, b) in s.layers.enumerated() {
                rows.append([String(i)] + cats.map { formatBytes(b[$0]) } + [formatBytes(b.total)])
            }
            rows.append(["global"] + [
                "embd " + formatBytes(s.global[.embedding]), "norms " + formatBytes(s.global[.norm]),
                "head " + formatBytes(s.global[.head]), "", "", "",
                formatBytes(s.global.total),
            ])
            lines.append(contentsOf: table(headers: headers, rows: rows))
        }

        if withTensors {
            lines.append("")
            let rows = file.tensorInfos.map { t in
                [t.name, t.type.name, t.shape.map(String.init).joined(separator: " × "), formatBytes(t.byteCount)]
            }
            lines.append(contentsOf: table(headers: ["tensor", "type", "shape", "bytes"], rows: rows))
        }
        return lines.joined(separator: "\n")
    }

    private static func headDim(_ h: ModelSummary.Hyperparameters) -> Int? {
        guard let e = h.embeddingLength, let n = h.headCount, n > 0 else { return nil }
        return e / n
    }
}

/// `1.91 B`, `437.0 M`, `12.3 K`.
func formatCount(_ n: Int) -> String {
    let d = Double(n)
    if d >= 1e9 { return fixed(d / 1e9, 2) + " B" }
    if d >= 1e6 { return fixed(d / 1e6, 2) + " M" }
    if d >= 1e3 { return fixed(d / 1e3, 1) + " K" }
    return String(n)
}

/// Left-aligned first column, right-aligned others, two spaces between.
func table(headers: [String], rows: [[String]]) -> [String] {
    let all = [headers] + rows
    let widths = headers.indices.map { c in all.map { $0.indices.contains(c) ? $0[c].count : 0 }.max() ?? 0 }
    return all.map { row in
        row.enumerated().map { c, cell in
            let pad = String(repeating: " ", count: widths[c] - cell.count)
            return c == 0 ? cell + pad : pad + cell
        }.joined(separator: "  ")
    }
}
