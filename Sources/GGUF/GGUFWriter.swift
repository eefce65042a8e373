#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes a GGUF v3 file: metadata, a tensor table, then each tensor's bytes streamed in order.
///
/// Tensors are declared first (name, type, shape) so the table and every offset are known before any data is
/// written; the data is then pulled one tensor at a time, so a model never has to be held in memory whole.
/// Output goes to `PATH.partial` and is renamed into place only when complete.
public final class GGUFWriter {
    public let path: String
    public let alignment: Int
    private var metadata: [(key: String, value: GGUFValue)] = []
    private var keys: Set<String> = []
    private(set) public var tensors: [GGUFTensorInfo] = []
    private var tensorNames: Set<String> = []
    private var dataSize = 0

    public init(path: String, alignment: Int = GGUFFile.defaultAlignment) {
        precondition(alignment > 0 && alignment & (alignment - 1) == 0, "alignment must be a power of two")
        self.path = path
        self.alignment = alignment
        if alignment != GGUFFile.defaultAlignment {
            metadata.append(("general.alignment", .uint32(UInt32(alignment))))
            keys.insert("general.alignment")
        }
    }

    private func fail(_ code: GGUFError.Code, _ field: String, _ detail: String) -> GGUFError {
        GGUFError(code, path: path, field: field, detail)
    }

    public func set(_ key: String, _ value: GGUFValue) throws(GGUFError) {
        guard !keys.contains(key) else { throw fail(.duplicateKey, "metadata '\(key)'", "key set twice") }
        keys.insert(key)
        metadata.append((key, value))
    }

    /// Declares the next tensor; its data is written by `write(_:)` in declaration order.
    @discardableResult
    public func addTensor(name: String, type: GGMLType, shape: [Int]) throws(GGUFError) -> GGUFTensorInfo {
        let field = "tensor '\(name)'"
        guard !tensorNames.contains(name) else { throw fail(.duplicateTensor, field, "tensor declared twice") }
        guard (1...GGUFFile.maxDimensions).contains(shape.count), shape.allSatisfy({ $0 >= 0 }) else {
            throw fail(.invalidValue, field, "shape \(shape) must have 1 to \(GGUFFile.maxDimensions) non-negative dimensions")
        }
        guard shape[0] % type.blockSize == 0 else {
            throw fail(.invalidValue, field, "row length \(shape[0]) is not a multiple of \(type.name)'s block size \(type.blockSize)")
        }
        let bytes = shape.reduce(1, *) / type.blockSize * type.bytesPerBlock
        let info = GGUFTensorInfo(name: name, type: type, shape: shape, offset: dataSize, byteCount: bytes)
        tensorNames.insert(name)
        tensors.append(info)
        dataSize += padded(bytes)
        return info
    }

    private func padded(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    /// Writes the file. `body` is called once per declared tensor, in order, and must write exactly its bytes.
    public func write(_ body: (GGUFTensorInfo, TensorSink) throws -> Void) throws {
        let out = try OutputFile(path: path + ".partial")
        var committed = false
        defer { if !committed { out.abandon() } }

        try out.append(UInt32(GGUFFile.magic))
        try out.append(UInt32(3))
        try out.append(UInt64(tensors.count))
        try out.append(UInt64(metadata.count))
        for (key, value) in metadata {
            try out.appendString(key)
            try out.append(value.type.rawValue)
            try writeValue(value, to: out)
        }
        for t in tensors {
            try out.appendString(t.name)
            try out.append(UInt32(t.shape.count))
            for d in t.shape { try out.append(UInt64(d)) }
            try out.append(t.type.rawValue)
            try out.append(UInt64(t.offset))
        }
        try out.pad(to: alignment)

        for t in tensors {
            let sink = TensorSink(out: out, expected: t.byteCount)
            try body(t, sink)
            guard sink.written == t.byteCount else {
                throw fail(.writeMismatch, "tensor '\(t.name)'", "wrote \(sink.written) bytes, expected \(t.byteCount)")
            }
            try out.pad(to: alignment)
        }
        try out.finish(renamingTo: path)
        committed = true
    }

    private func writeValue(_ value: GGUFValue, to out: OutputFile) throws {
        switch value {
        case .uint8(let v): try out.append(v)
        case .int8(let v): try out.append(v)
        case .uint16(let v): try out.append(v)
        case .int16(let v): try out.append(v)
        case .uint32(let v): try out.append(v)
        case .int32(let v): try out.append(v)
        case .uint64(let v): try out.append(v)
        case .int64(let v): try out.append(v)
        case .float32(let v): try out.append(v.bitPattern)
        case .float64(let v): try out.append(v.bitPattern)
        case .bool(let v): try out.append(UInt8(v ? 1 : 0))
        case .string(let s): try out.appendString(s)
        case .array(let a):
            try out.append(a.elementType.rawValue)
            try out.append(UInt64(a.count))
            if a.elementType == .string {
                // Raw bytes, so tokens that are not valid UTF-8 survive a rewrite unchanged.
                for i in 0..<a.count { try out.appendStringBytes(a.stringBytes(at: i)) }
            } else {
                for i in 0..<a.count { try writeValue(a[i], to: out) }
            }
        }
    }
}

/// Receives one tensor's bytes during `GGUFWriter.write`.
public final class TensorSink {
    private let out: OutputFile
    public let expected: Int
    public private(set) var written = 0

    init(out: OutputFile, expected: Int) {
        self.out = out
        self.expected = expected
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard written + bytes.count <= expected else {
            throw GGUFError(.writeMismatch, path: out.path, field: "tensor data", "more than the \(expected) bytes declared")
        }
        try out.append(bytes)
        written += bytes.count
    }

    public func write<T>(contentsOf array: [T]) throws {
        try array.withUnsafeBytes { try write($0) }
    }
}

/// A buffered, append-only file.
final class OutputFile {
    let path: String
    private let fd: Int32
    private var buffer: [UInt8] = []
    private var position = 0
    private static let flushSize = 1 << 20

    init(path: String) throws(GGUFError) {
        self.path = path
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw GGUFError(.io, path: path, field: "create", String(cString: strerror(errno)))
        }
        buffer.reserveCapacity(Self.flushSize * 2)
    }

    func append<T: FixedWidthInteger>(_ v: T) throws {
        try withUnsafeBytes(of: v.littleEndian) { try append($0) }
    }

    func appendString(_ s: String) throws { try appendStringBytes(Array(s.utf8)) }

    func appendStringBytes(_ b: [UInt8]) throws {
        try append(UInt64(b.count))
        try b.withUnsafeBytes { try append($0) }
    }

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        position += bytes.count
        if bytes.count >= Self.flushSize {
            try flush()
            try writeAll(bytes)
        } else {
            buffer.append(contentsOf: bytes)
            if buffer.count >= Self.flushSize { try flush() }
        }
    }

    func pad(to alignment: Int) throws {
        let n = (alignment - position % alignment) % alignment
        if n > 0 { try [UInt8](repeating: 0, count: n).withUnsafeBytes { try append($0) } }
    }

    private func flush() throws {
        try buffer.withUnsafeBytes { try writeAll($0) }
        buffer.removeAll(keepingCapacity: true)
    }

    private func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw GGUFError(.io, path: path, field: "write", String(cString: strerror(errno)))
            }
            done += n
        }
    }

    func finish(renamingTo final: String) throws {
        try flush()
        guard close(fd) == 0 else { throw GGUFError(.io, path: path, field: "close", String(cString: strerror(errno))) }
        guard rename(path, final) == 0 else {
            throw GGUFError(.io, path: final, field: "rename", String(cString: strerror(errno)))
        }
    }

    func abandon() {
        close(fd)
        unlink(path)
    }
}
