import Foundation
import GGUF
import TestSupport

/// ggml's own quantization vectors (Tests/Fixtures/quants, from ../shared/reference/quants; README there).
struct Golden: Sendable, CustomStringConvertible {
    let name: String  // ggml's spelling: q4_K
    let type: GGMLType
    let dotType: GGMLType
    static let rows = 8, cols = 512

    var description: String { name }

    static let all: [Golden] = {
        let index = try! String(contentsOfFile: Fixtures.path("quants/INDEX.tsv"), encoding: .utf8)
        return index.split(separator: "\n").dropFirst().map { line in
            let f = line.split(separator: "\t").map(String.init)
            return Golden(name: f[0], type: GGMLType(rawValue: UInt32(f[1])!)!, dotType: GGMLType(name: f[6])!)
        }
    }()

    func bytes(_ kind: String) -> [UInt8] {
        Array(try! Data(contentsOf: URL(fileURLWithPath: Fixtures.path("quants/\(name).\(kind).bin"))))
    }

    func floats(_ kind: String) -> [Float] {
        bytes(kind).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    var rowBytes: Int { type.rowBytes(elements: Golden.cols)! }
}
