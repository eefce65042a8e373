import ArgumentParser
import GGUF
import Model

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Describe a GGUF model file: architecture, hyper-parameters, tokenizer, tensor types and sizes.",
        discussion: """
        The file is mapped, not read: only its header, metadata and tensor table are touched, so inspecting a
        many-gigabyte model is instant. With --json, one object is printed (keys documented in README.md).
        """
    )

    @Argument(help: "Path to a .gguf file.")
    var model: String

    @Flag(help: "Print one JSON object instead of the text report.")
    var json = false

    @Flag(help: "List every tensor with its type, shape and size.")
    var tensors = false

    @Option(help: "Describe one tensor (by its GGUF name) instead of the model.")
    var tensor: String?

    @Flag(help: "With --tensor: print its values, dequantized to float, one row per line.")
    var dequantize = false

    @Flag(help: "With --tensor --dequantize: write the values to stdout as raw little-endian float32.")
    var raw = false

    func validate() throws {
        if (dequantize || raw) && tensor == nil { throw ValidationError("--dequantize and --raw need --tensor NAME") }
        if raw && !dequantize { throw ValidationError("--raw goes with --dequantize") }
    }

    func run() throws {
        let file = try openGGUF(model)
        if let tensor {
            return try TensorDump.run(file: file, name: tensor, dequantize: dequantize, raw: raw, json: json)
        }
        let summary = ModelSummary(file: file)
        if json {
            print(InspectJSON.render(file: file, summary: summary, withTensors: tensors).render(indent: 2))
        } else {
            print(InspectText.render(file: file, summary: summary, withTensors: tensors))
        }
    }
}

/// Opens a GGUF file, turning its typed error into a one-line message and exit status 1.
func openGGUF(_ path: String) throws -> GGUFFile {
    do {
        return try GGUFFile(path: path)
    } catch {
        printError("error: \(error)")
        throw ExitCode(1)
    }
}

