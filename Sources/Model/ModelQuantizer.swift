import GGUF
import Runtime
import Kernels
import Synchronization

/// Rewrites a GGUF model with the tensor types a `QuantizationRecipe` chooses, streaming tensor by tensor.
public enum ModelQuantizer {
    public struct TensorReport: Sendable {
        public let index: Int, count: Int
        public let name: String
        public let from: GGMLType, to: GGMLType
        public let shape: [Int]
        public let bytesIn: Int, bytesOut: Int
    }

    public struct Summary: Sendable {
        public let bytesIn: Int, bytesOut: Int, fileBytes: Int
        public let typeCounts: [String: Int]
    }

    /// Rows converted per step: bounds memory to a few megabytes per thread whatever the tensor's size.
    static let chunkRows = 256

    public static func quantize(_ input: GGUFFile, to path: String, recipe: QuantizationRecipe, pool: ThreadPool,
                                progress: (TensorReport) -> Void = { _ in }) throws -> Summary {
        let types = try recipe.plan(input.tensorInfos)
        for (info, type) in zip(input.tensorInfos, types) where info.type != type {
            guard Dequantize.supported.contains(info.type) else {
                throw ModelError("tensor '\(info.name)' is \(info.type.name), which Conclave cannot read back to float to requantize")
            }
            guard Quantize.supported.contains(type) else {
                throw ModelError("tensor '\(info.name)' would be \(type.name), which Conclave cannot quantize to yet (supported: \(Quantize.supported.map(\.name).sorted().joined(separator: ", ")))")
            }
        }

        let writer = GGUFWriter(path: path, alignment: input.alignment)
        var sawFileType = false, sawVersion = false
        for (key, value) in input.metadata where key != "general.alignment" {
            switch key {
            case "general.file_type":
                try writer.set(key, .uint32(UInt32(recipe.fileType.rawValue)))
                sawFileType = true
            case "general.quantization_version":
                try writer.set(key, .uint32(2))
                sawVersion = true
            default:
                try writer.set(key, value)
            }
        }
        if !sawVersion { try writer.set("general.quantization_version", .uint32(2)) }
        if !sawFileType { try writer.set("general.file_type", .uint32(UInt32(recipe.fileType.rawValue))) }
        for (info, type) in zip(input.tensorInfos, types) {
            try writer.addTensor(name: info.name, type: type, shape: info.shape)
        }

        var bytesIn = 0, bytesOut = 0, index = 0
        var counts: [String: Int] = [:]
        try writer.write { out, sink in
            let src = input.tensor(named: out.name)!
            if src.type == out.type {
                try sink.write(src.bytes)
            } else {
                try convert(src, to: out.type, sink: sink, pool: pool)
            }
            bytesIn += src.info.byteCount
            bytesOut += out.byteCount
            counts[out.type.name, default: 0] += 1
            index += 1
            progress(TensorReport(index: index, count: input.tensorCount, name: out.name, from: src.type, to: out.type,
                                  shape: out.shape, bytesIn: src.info.byteCount, bytesOut: out.byteCount))
        }
        let size = (try? GGUFFile(path: path).fileSize) ?? 0
        return Summary(bytesIn: bytesIn, bytesOut: bytesOut, fileBytes: size, typeCounts: counts)
    }

    /// Converts a tensor row by row (float in between), in parallel, streaming chunks of rows to the sink.
    static func convert(_ src: GGUFTensor, to type: GGMLType, sink: TensorSink, pool: ThreadPool) throws {
        let cols = src.shape[0], rows = src.info.rowCount
        let inRow = src.info.rowBytes
        guard let outRow = type.rowBytes(elements: cols) else {
            throw ModelError("tensor '\(src.name)': rows of \(cols) are not whole \(type.name) blocks")
        }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: outRow * min(rows, chunkRows), alignment: 64)
        defer { buffer.deallocate() }
        var start = 0
        while start < rows {
            let n = min(chunkRows, rows - start)
            let failure = ErrorBox()
            pool.parallelFor(n) { range in
                let floats = UnsafeMutablePointer<Float>.allocate(capacity: cols)
                defer { floats.deallocate() }
                for r in range {
                    do throws(KernelError) {
                        try Dequantize.row(src.type, src.data + (start + r) * inRow, floats, count: cols)
                        try Quantize.row(floats, count: cols, to: type, buffer + r * outRow)
                    } catch { failure.set(error) }
                }
            }
            if let error = failure.error { throw ModelError("tensor '\(src.name)': \(error)") }
            try sink.write(UnsafeRawBufferPointer(start: buffer, count: n * outRow))
            start += n
        }
    }
}

/// The first error raised by any of a parallel job's threads.
final class ErrorBox: Sendable {
    private let stored = Mutex<String?>(nil)
    func set(_ e: Error) { stored.withLock { if $0 == nil { $0 = "\(e)" } } }
    var error: String? { stored.withLock { $0 } }
}
