/// The metadata value types of the GGUF format, with their on-disk ids.
public enum GGUFValueType: UInt32, Sendable, CaseIterable {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7
    case string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12

    /// Bytes one element takes on disk, or nil for the variable-size string and array.
    public var fixedSize: Int? {
        switch self {
        case .uint8, .int8, .bool: return 1
        case .uint16, .int16: return 2
        case .uint32, .int32, .float32: return 4
        case .uint64, .int64, .float64: return 8
        case .string, .array: return nil
        }
    }

    /// The smallest number of bytes an element can take; bounds an array's claimed count before walking it.
    var minimumSize: Int {
        switch self {
        case .string: return 8
        case .array: return 12
        default: return fixedSize!
        }
    }

    /// Lower-case name as gguf-py prints it (`"uint32"`, `"string"`).
    public var name: String {
        switch self {
        case .uint8: return "uint8"
        case .int8: return "int8"
        case .uint16: return "uint16"
        case .int16: return "int16"
        case .uint32: return "uint32"
        case .int32: return "int32"
        case .float32: return "float32"
        case .bool: return "bool"
        case .string: return "string"
        case .array: return "array"
        case .uint64: return "uint64"
        case .int64: return "int64"
        case .float64: return "float64"
        }
    }
}

/// One metadata value.
public enum GGUFValue: Sendable, Equatable {
    case uint8(UInt8)
    case int8(Int8)
    case uint16(UInt16)
    case int16(Int16)
    case uint32(UInt32)
    case int32(Int32)
    case float32(Float)
    case bool(Bool)
    case string(String)
    case array(GGUFArray)
    case uint64(UInt64)
    case int64(Int64)
    case float64(Double)

    public var type: GGUFValueType {
        switch self {
        case .uint8: return .uint8
        case .int8: return .int8
        case .uint16: return .uint16
        case .int16: return .int16
        case .uint32: return .uint32
        case .int32: return .int32
        case .float32: return .float32
        case .bool: return .bool
        case .string: return .string
        case .array: return .array
        case .uint64: return .uint64
        case .int64: return .int64
        case .float64: return .float64
        }
    }

    /// The value as an integer, for any integer type that fits (files disagree on u32 vs i32 vs u64 for counts).
    public var intValue: Int? {
        switch self {
        case .uint8(let v): return Int(v)
        case .int8(let v): return Int(v)
        case .uint16(let v): return Int(v)
        case .int16(let v): return Int(v)
        case .uint32(let v): return Int(v)
        case .int32(let v): return Int(v)
        case .uint64(let v): return v <= UInt64(Int.max) ? Int(v) : nil
        case .int64(let v): return Int(v)
        default: return nil
        }
    }

    /// The value as a floating-point number, for any numeric type.
    public var doubleValue: Double? {
        switch self {
        case .float32(let v): return Double(v)
        case .float64(let v): return v
        default: return intValue.map(Double.init)
        }
    }

    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    public var arrayValue: GGUFArray? {
        if case .array(let a) = self { return a }
        return nil
    }
}

/// A metadata array: typed elements, possibly nested.
///
/// Arrays read from a file stay in the mapping and are decoded element by element on demand: a vocabulary of
/// 150,000 strings costs one walk to validate and index it, not 150,000 allocations at open time.
public struct GGUFArray: Sendable, Equatable {
    public let elementType: GGUFValueType
    public let count: Int
    let storage: Storage

    enum Storage: Sendable {
        /// Elements in a mapped file from `start`; `offsets` gives each variable-size element's start (count + 1).
        case mapped(MappedFile, start: Int, offsets: [Int]?)
        case owned([GGUFValue])
    }

    /// An array built in memory, for writing. All elements must have `elementType`.
    public init(_ elementType: GGUFValueType, _ values: [GGUFValue]) {
        precondition(values.allSatisfy { $0.type == elementType }, "GGUFArray elements must share one type")
        self.elementType = elementType
        self.count = values.count
        self.storage = .owned(values)
    }

    init(elementType: GGUFValueType, count: Int, file: MappedFile, start: Int, offsets: [Int]?) {
        self.elementType = elementType
        self.count = count
        self.storage = .mapped(file, start: start, offsets: offsets)
    }

    public static func strings(_ values: [String]) -> GGUFArray { GGUFArray(.string, values.map { .string($0) }) }
    public static func int32s(_ values: [Int32]) -> GGUFArray { GGUFArray(.int32, values.map { .int32($0) }) }
    public static func float32s(_ values: [Float]) -> GGUFArray { GGUFArray(.float32, values.map { .float32($0) }) }

    public subscript(index: Int) -> GGUFValue {
        precondition(index >= 0 && index < count, "GGUFArray index \(index) out of range 0..<\(count)")
        switch storage {
        case .owned(let values):
            return values[index]
        case .mapped(let file, let start, let offsets):
            let offset = offsets?[index] ?? (start + index * elementType.fixedSize!)
            // The walk at open time validated every element, so decoding here cannot fail.
            var reader = ByteReader(file: file, offset: offset)
            return try! reader.value(of: elementType, field: "")
        }
    }

    /// The raw bytes of string element `index`, without decoding; for tokenizers, whose tokens need not be UTF-8.
    public func stringBytes(at index: Int) -> [UInt8] {
        precondition(elementType == .string, "stringBytes on an array of \(elementType.name)")
        switch storage {
        case .owned(let values):
            return Array(values[index].stringValue!.utf8)
        case .mapped(let file, _, let offsets):
            let offset = offsets![index]
            let length = offsets![index + 1] - offset - 8
            return Array(UnsafeRawBufferPointer(rebasing: file.bytes[(offset + 8)..<(offset + 8 + length)]))
        }
    }

    public var values: [GGUFValue] { (0..<count).map { self[$0] } }
    public var strings: [String]? { elementType == .string ? values.compactMap(\.stringValue) : nil }
    public var ints: [Int]? {
        let out = values.compactMap(\.intValue)
        return out.count == count ? out : nil
    }
    public var doubles: [Double]? {
        let out = values.compactMap(\.doubleValue)
        return out.count == count ? out : nil
    }

    public static func == (a: GGUFArray, b: GGUFArray) -> Bool {
        a.elementType == b.elementType && a.count == b.count && a.values == b.values
    }
}
