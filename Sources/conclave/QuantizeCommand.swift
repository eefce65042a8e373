import ArgumentParser
import GGUF
import Runtime
import Kernels
import Model

struct QuantizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quantize",
        abstract: "Rewrite a GGUF model at a lower precision, choosing each tensor's type as llama-quantize does.",
        discussion: """
        TYPE is a llama.cpp file type: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q2_K_S, Q3_K_S, Q3_K_M,
        Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K. Norms and expert routers stay F32; the head goes to Q6_K;
        the _M mixtures keep sensitive tensors at more bits. Quantized blocks are bit-identical to llama-quantize's
        (without an importance matrix).

        Example — attention at Q8_0, experts at Q4_K:
          conclave quantize model-f16.gguf model-q4k.gguf Q4_K_M --tensor-type 'attn_.*=Q8_0'
        """
    )

    @Argument(help: "Input .gguf file.") var input: String
    @Argument(help: "Output .gguf file.") var output: String
    @Argument(help: "Target file type (see above).") var type: String

    @Option(name: .customLong("keep-f32"), help: "Regular expression: matching tensors are written as F32.")
    var keepF32: String?

    @Option(name: .customLong("tensor-type"), help: "PATTERN=TYPE: matching tensors (regular expression) get TYPE. Repeatable; first match wins.")
    var tensorTypes: [String] = []

    @Option(help: "Threads (default: every core).")
    var threads: Int = ThreadPool.availableCores

    func run() throws {
        guard let fileType = FileType(name: type) else {
            throw ValidationError("unknown type '\(type)'; one of \(FileType.allCases.map(\.name).joined(separator: ", "))")
        }
        let overrides = try tensorTypes.map { spec -> (pattern: String, type: GGMLType) in
            guard let eq = spec.lastIndex(of: "="), let t = GGMLType(name: String(spec[spec.index(after: eq)...])) else {
                throw ValidationError("--tensor-type expects PATTERN=TYPE (e.g. 'attn_.*=Q8_0'), got '\(spec)'")
            }
            return (String(spec[..<eq]), t)
        }
        guard input != output else { throw ValidationError("input and output must be different files") }
        let file = try openGGUF(input)
        let recipe = QuantizationRecipe(fileType: fileType, overrides: overrides, keepF32: keepF32, file: file)
        let pool = ThreadPool(threads: threads)
        let start = MonotonicClock.seconds()
        do {
            let summary = try ModelQuantizer.quantize(file, to: output, recipe: recipe, pool: pool) { r in
                let shape = r.shape.map(String.init).joined(separator: "×")
                printError("[\(r.index)/\(r.count)] \(r.name) \(r.from.name) → \(r.to.name) [\(shape)] \(formatBytes(r.bytesIn)) → \(formatBytes(r.bytesOut))")
            }
            let types = summary.typeCounts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            printError("wrote \(output): \(formatBytes(summary.fileBytes)) (tensors \(formatBytes(summary.bytesIn)) → \(formatBytes(summary.bytesOut))), \(types), in \(fixed(MonotonicClock.seconds() - start, 1)) s")
        } catch let error as ModelError {
            printError("error: \(error)")
            throw ExitCode(1)
        }
    }
}
