#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import GGUF
import Kernels

/// `conclave inspect FILE --tensor NAME [--dequantize [--raw]]`: one tensor's facts and values — the tool for
/// checking a kernel against ggml (`gguf-py` or llama.cpp dumps the same values).
enum TensorDump {
    static func run(file: GGUFFile, name: String, dequantize: Bool, raw: Bool, json: Bool) throws {
        guard let t = file.tensor(named: name) else {
            let near = file.tensorInfos.map(\.name).filter { $0.contains(name) || name.contains($0) }.prefix(5)
            printError("error: \(file.path): no tensor named '\(name)'" + (near.isEmpty ? "" : "; similar: \(near.joined(separator: ", "))"))
            throw ExitCode(1)
        }
        if !dequantize {
            let info: JSON = .object([
                ("name", .string(t.name)), ("type", .string(t.type.name)), ("shape", .array(t.shape.map { .int($0) })),
                ("offset", .int(t.fileOffset)), ("bytes", .int(t.info.byteCount)), ("elements", .int(t.info.elementCount)),
            ])
            print(json ? info.render(indent: 2) : "\(t.name)  \(t.type.name)  [\(t.shape.map(String.init).joined(separator: " × "))]  \(formatBytes(t.info.byteCount)) at offset \(t.fileOffset)")
            return
        }
        guard Dequantize.supported.contains(t.type) else {
            printError("error: tensor '\(name)' is \(t.type.name); Conclave has no dequantizer for it yet")
            throw ExitCode(1)
        }
        let cols = t.shape[0], rows = t.info.rowCount
        var row = [Float](repeating: 0, count: cols)
        for r in 0..<rows {
            try row.withUnsafeMutableBufferPointer { (p: inout UnsafeMutableBufferPointer<Float>) throws(KernelError) in
                try Dequantize.row(t.type, t.data + r * t.info.rowBytes, p.baseAddress!, count: cols)
            }
            if raw {
                row.withUnsafeBytes { writeAll(1, $0) }
            } else {
                print(row.map { "\($0)" }.joined(separator: " "))
            }
        }
    }

    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) {
        var done = 0
        while done < bytes.count {
            let n = write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n <= 0 { return }
            done += n
        }
    }
}
