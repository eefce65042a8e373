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

    func run() throws {
        let file = try openGGUF(model)
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

