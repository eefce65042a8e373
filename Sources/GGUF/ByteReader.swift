/// A bounds-checked little-endian cursor over a mapped file.
///
/// Every read checks the remaining length first and throws a `GGUFError` naming the field, so a corrupt or
/// truncated file can never make us read outside the mapping.
struct ByteReader {
    let file: MappedFile
    private(set) var offset: Int

    init(file: MappedFile, offset: Int = 0) {
        self.file = file
        self.offset = offset
    }

    var remaining: Int { file.count - offset }

    private func fail(_ code: GGUFError.Code, _ field: String, _ detail: String) -> GGUFError {
        GGUFError(code, path: file.path, field: field, detail)
    }

    mutating func need(_ n: Int, _ field: String) throws(GGUFError) {
        guard n >= 0, n <= remaining else {
            throw fail(.truncated, field, "needs \(n) bytes at offset \(offset) but the file ends at \(file.count)")
        }
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type, _ field: String) throws(GGUFError) -> T {
        try need(MemoryLayout<T>.size, field)
        let v = T(littleEndian: file.bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset += MemoryLayout<T>.size
        return v
    }

    mutating func u32(_ field: String) throws(GGUFError) -> UInt32 { try read(UInt32.self, field) }
    mutating func u64(_ field: String) throws(GGUFError) -> UInt64 { try read(UInt64.self, field) }

    /// A u64 count or length that must also fit in what is left of the file at `minimumSize` bytes each.
    mutating func count(_ field: String, minimumSize: Int) throws(GGUFError) -> Int {
        let start = offset
        let raw = try u64(field)
        let limit = UInt64(max(remaining, 0) / max(minimumSize, 1))
        guard raw <= limit else {
            // Either the file was cut short or this field is garbage; both leave the claim unbacked by bytes.
            throw fail(.truncated, field, "value \(raw) at offset \(start) is more than the \(remaining) bytes left in the file can hold (at most \(limit)): the file is truncated or corrupt")
        }
        return Int(raw)
    }

    mutating func stringBytes(_ field: String) throws(GGUFError) -> UnsafeRawBufferPointer {
        let length = try count(field + " (string length)", minimumSize: 1)
        try need(length, field)
        let slice = UnsafeRawBufferPointer(rebasing: file.bytes[offset..<(offset + length)])
        offset += length
        return slice
    }

    mutating func string(_ field: String) throws(GGUFError) -> String {
        String(decoding: try stringBytes(field), as: UTF8.self)
    }

    mutating func valueType(_ field: String) throws(GGUFError) -> GGUFValueType {
        let start = offset
        let raw = try u32(field)
        guard let t = GGUFValueType(rawValue: raw) else {
            throw fail(.unknownType, field, "unknown metadata value type \(raw) at offset \(start)")
        }
        return t
    }

    /// Reads one value of `type`. Arrays are walked (validated and indexed) but their elements are not decoded.
    mutating func value(of type: GGUFValueType, field: String, depth: Int = 0) throws(GGUFError) -> GGUFValue {
        switch type {
        case .uint8: return .uint8(try read(UInt8.self, field))
        case .int8: return .int8(try read(Int8.self, field))
        case .uint16: return .uint16(try read(UInt16.self, field))
        case .int16: return .int16(try read(Int16.self, field))
        case .uint32: return .uint32(try read(UInt32.self, field))
        case .int32: return .int32(try read(Int32.self, field))
        case .uint64: return .uint64(try read(UInt64.self, field))
        case .int64: return .int64(try read(Int64.self, field))
        case .float32: return .float32(Float(bitPattern: try read(UInt32.self, field)))
        case .float64: return .float64(Double(bitPattern: try read(UInt64.self, field)))
        case .bool: return .bool(try read(UInt8.self, field) != 0)
        case .string: return .string(try string(field))
        case .array: return .array(try array(field, depth: depth))
        }
    }

    private mutating func array(_ field: String, depth: Int) throws(GGUFError) -> GGUFArray {
        // Nesting is legal but real files use one level; a bound keeps a hostile file from exhausting the stack.
        guard depth < 8 else { throw fail(.invalidValue, field, "arrays nested deeper than 8 levels") }
        let elementType = try valueType(field + " (array element type)")
        let n = try count(field + " (array length)", minimumSize: elementType.minimumSize)
        let start = offset
        if let size = elementType.fixedSize {
            try need(n * size, field)
            offset += n * size
            return GGUFArray(elementType: elementType, count: n, file: file, start: start, offsets: nil)
        }
        var offsets = [Int]()
        offsets.reserveCapacity(n + 1)
        for i in 0..<n {
            offsets.append(offset)
            if elementType == .string {
                let length = try count("\(field)[\(i)] (string length)", minimumSize: 1)
                try need(length, "\(field)[\(i)]")
                offset += length
            } else {
                _ = try value(of: elementType, field: "\(field)[\(i)]", depth: depth + 1)
            }
        }
        offsets.append(offset)
        return GGUFArray(elementType: elementType, count: n, file: file, start: start, offsets: offsets)
    }
}
