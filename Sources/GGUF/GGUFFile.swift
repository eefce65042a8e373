/// Where one tensor lives in a GGUF file and what it holds.
public struct GGUFTensorInfo: Sendable, Equatable {
    public let name: String
    public let type: GGMLType
    /// Dimensions in ggml order: `shape[0]` is the contiguous (row) dimension.
    public let shape: [Int]
    /// Offset of the data from the start of the data section, as stored in the file.
    public let offset: Int
    public let byteCount: Int

    public init(name: String, type: GGMLType, shape: [Int], offset: Int, byteCount: Int) {
        self.name = name
        self.type = type
        self.shape = shape
        self.offset = offset
        self.byteCount = byteCount
    }

    public var elementCount: Int { shape.reduce(1, *) }
    /// Number of rows (every dimension but the first).
    public var rowCount: Int { shape.dropFirst().reduce(1, *) }
    public var rowBytes: Int { type.rowBytes(elements: shape.first ?? 1)! }
}

/// A zero-copy view of one tensor's bytes in the mapped file; keeps the mapping alive.
public struct GGUFTensor: @unchecked Sendable {
    public let info: GGUFTensorInfo
    public let file: MappedFile
    /// Absolute offset of the first byte in the file.
    public let fileOffset: Int

    public var name: String { info.name }
    public var type: GGMLType { info.type }
    public var shape: [Int] { info.shape }
    public var data: UnsafeRawPointer { file.base! + fileOffset }
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: data, count: info.byteCount) }
}

/// A GGUF file (versions 2 and 3, little-endian), mapped and validated.
///
/// Opening reads the header, metadata and tensor table and checks every offset and size against the file's
/// length; tensor bytes are not touched. The file holds no model semantics: see `Model` for that.
public final class GGUFFile: Sendable {
    public static let magic: UInt32 = 0x4655_4747  // "GGUF" read as little-endian u32
    public static let defaultAlignment = 32
    /// ggml's GGML_MAX_DIMS.
    public static let maxDimensions = 4

    public let mapping: MappedFile
    public let version: UInt32
    /// Metadata in file order.
    public let metadata: [(key: String, value: GGUFValue)]
    public let tensorInfos: [GGUFTensorInfo]
    public let alignment: Int
    /// Absolute offset of the data section.
    public let dataOffset: Int

    private let metadataIndex: [String: Int]
    private let tensorIndex: [String: Int]

    public var path: String { mapping.path }
    public var fileSize: Int { mapping.count }

    public convenience init(path: String) throws(GGUFError) {
        try self.init(mapping: MappedFile(path: path))
    }

    public init(mapping: MappedFile) throws(GGUFError) {
        self.mapping = mapping
        let path = mapping.path
        func fail(_ code: GGUFError.Code, _ field: String, _ detail: String) -> GGUFError {
            GGUFError(code, path: path, field: field, detail)
        }

        var r = ByteReader(file: mapping)
        guard mapping.count >= 4 else {
            throw fail(.truncated, "header.magic", "file is \(mapping.count) bytes, too short to be GGUF")
        }
        let magic = try r.u32("header.magic")
        guard magic == Self.magic else {
            let shown = String(magic, radix: 16, uppercase: true)
            throw fail(.badMagic, "header.magic", "expected \"GGUF\" (0x46554747), found 0x\(shown): not a GGUF file")
        }
        let version = try r.u32("header.version")
        // A big-endian file's small version number reads as a huge one with its low half zero.
        if version & 0xFFFF == 0 && version != 0 {
            throw fail(.bigEndian, "header.version", "version reads as \(version) (0x\(String(version, radix: 16))): the file is big-endian; only little-endian GGUF is supported")
        }
        guard version == 2 || version == 3 else {
            throw fail(.unsupportedVersion, "header.version", "version \(version) is not supported (2 and 3 are)")
        }
        self.version = version
        // Each tensor info takes at least 8 (name) + 4 (dims) + 4 (type) + 8 (offset) bytes; each key-value 8 + 4 + 1.
        let tensorCount = try r.count("header.tensor_count", minimumSize: 24)
        let kvCount = try r.count("header.metadata_kv_count", minimumSize: 13)

        var metadata = [(key: String, value: GGUFValue)]()
        var metadataIndex = [String: Int]()
        metadata.reserveCapacity(kvCount)
        for i in 0..<kvCount {
            let key = try r.string("metadata[\(i)].key")
            let field = "metadata[\(i)] '\(key)'"
            let type = try r.valueType(field + " (type)")
            let value = try r.value(of: type, field: field)
            guard metadataIndex[key] == nil else {
                throw fail(.duplicateKey, field, "key '\(key)' appears twice")
            }
            metadataIndex[key] = metadata.count
            metadata.append((key, value))
        }

        var alignment = Self.defaultAlignment
        if let i = metadataIndex["general.alignment"] {
            let value = metadata[i].value
            guard let a = value.intValue, a > 0, a & (a - 1) == 0, a <= 1 << 30 else {
                throw fail(.invalidValue, "metadata 'general.alignment'", "alignment must be a positive power of two, found \(value)")
            }
            alignment = a
        }

        var infos = [GGUFTensorInfo]()
        var tensorIndex = [String: Int]()
        infos.reserveCapacity(tensorCount)
        for i in 0..<tensorCount {
            let name = try r.string("tensor[\(i)].name")
            let field = "tensor[\(i)] '\(name)'"
            let nDims = Int(try r.u32(field + " n_dims"))
            guard nDims >= 1, nDims <= Self.maxDimensions else {
                throw fail(.invalidValue, field + " n_dims", "\(nDims) dimensions; ggml allows 1 to \(Self.maxDimensions)")
            }
            var shape = [Int]()
            var elements = 1
            for d in 0..<nDims {
                let raw = try r.u64(field + " ne[\(d)]")
                let (product, overflow) = elements.multipliedReportingOverflow(by: Int(truncatingIfNeeded: raw))
                guard raw <= UInt64(Int.max), !overflow else {
                    throw fail(.invalidValue, field + " ne[\(d)]", "dimension \(raw) makes the element count overflow")
                }
                shape.append(Int(raw))
                elements = product
            }
            let typeRaw = try r.u32(field + " type")
            guard let type = GGMLType(rawValue: typeRaw) else {
                throw fail(.unknownType, field + " type", "unknown ggml type id \(typeRaw)")
            }
            let rawOffset = try r.u64(field + " offset")
            guard shape[0] % type.blockSize == 0 else {
                throw fail(.invalidValue, field + " ne[0]", "row length \(shape[0]) is not a multiple of \(type.name)'s block size \(type.blockSize)")
            }
            let (bytes, bytesOverflow) = (elements / type.blockSize).multipliedReportingOverflow(by: type.bytesPerBlock)
            guard !bytesOverflow, rawOffset <= UInt64(Int.max) else {
                throw fail(.outOfBounds, field, "size or offset \(rawOffset) overflows")
            }
            let offset = Int(rawOffset)
            guard offset % alignment == 0 else {
                throw fail(.invalidValue, field + " offset", "offset \(offset) is not a multiple of the alignment \(alignment)")
            }
            guard tensorIndex[name] == nil else {
                throw fail(.duplicateTensor, field, "tensor name '\(name)' appears twice")
            }
            tensorIndex[name] = infos.count
            infos.append(GGUFTensorInfo(name: name, type: type, shape: shape, offset: offset, byteCount: bytes))
        }

        let headerEnd = r.offset
        let dataOffset = (headerEnd + alignment - 1) / alignment * alignment
        for (i, info) in infos.enumerated() {
            let (end, overflow) = dataOffset.addingReportingOverflow(info.offset)
            guard !overflow, end <= mapping.count, info.byteCount <= mapping.count - end else {
                throw fail(.outOfBounds, "tensor[\(i)] '\(info.name)'",
                           "data at offset \(info.offset) + \(info.byteCount) bytes runs past the end of the file (\(mapping.count) bytes, data section at \(dataOffset))")
            }
        }
        // Overlapping tensors mean a corrupt table: each byte belongs to one tensor.
        let byOffset = infos.indices.sorted { infos[$0].offset < infos[$1].offset }
        for (a, b) in zip(byOffset, byOffset.dropFirst()) where infos[a].offset + infos[a].byteCount > infos[b].offset {
            throw fail(.outOfBounds, "tensor '\(infos[b].name)'", "data at offset \(infos[b].offset) overlaps tensor '\(infos[a].name)' (\(infos[a].offset) + \(infos[a].byteCount))")
        }

        self.metadata = metadata
        self.metadataIndex = metadataIndex
        self.tensorInfos = infos
        self.tensorIndex = tensorIndex
        self.alignment = alignment
        self.dataOffset = dataOffset
    }

    // MARK: Metadata access

    public subscript(key: String) -> GGUFValue? {
        metadataIndex[key].map { metadata[$0].value }
    }

    public func int(_ key: String) -> Int? { self[key]?.intValue }
    public func double(_ key: String) -> Double? { self[key]?.doubleValue }
    public func string(_ key: String) -> String? { self[key]?.stringValue }
    public func bool(_ key: String) -> Bool? { self[key]?.boolValue }
    public func array(_ key: String) -> GGUFArray? { self[key]?.arrayValue }

    /// `general.architecture`, the prefix of every hyper-parameter key.
    public var architecture: String? { string("general.architecture") }

    // MARK: Tensors

    public var tensorCount: Int { tensorInfos.count }

    public func tensorInfo(named name: String) -> GGUFTensorInfo? {
        tensorIndex[name].map { tensorInfos[$0] }
    }

    public func tensor(named name: String) -> GGUFTensor? {
        tensorInfo(named: name).map { GGUFTensor(info: $0, file: mapping, fileOffset: dataOffset + $0.offset) }
    }

    public var tensors: [GGUFTensor] {
        tensorInfos.map { GGUFTensor(info: $0, file: mapping, fileOffset: dataOffset + $0.offset) }
    }
}
