import Crypto

/// SHA-256 (FIPS 180-4) for the model identity check (Hello) and model streaming (checksummed chunks), by
/// swift-crypto (BoringSSL, with the CPU's SHA instructions): our own Swift version hashed about 200 MB/s, which
/// capped a model fetch well below what loopback carries.
public struct SHA256: Sendable {
    private var state = Crypto.SHA256()

    public init() {}

    public static func hash(_ bytes: UnsafeRawBufferPointer) -> [UInt8] { Array(Crypto.SHA256.hash(data: bytes)) }

    public static func hash(_ bytes: [UInt8]) -> [UInt8] { bytes.withUnsafeBytes { hash($0) } }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) { state.update(bufferPointer: bytes) }

    public mutating func finalize() -> [UInt8] { Array(state.finalize()) }
}

extension GGUFFile {
    /// SHA-256 of the header, metadata and tensor table (everything before the tensor data): two copies of a
    /// model agree on it exactly when they describe the same tensors, without hashing gigabytes of weights.
    public var metadataSHA256: [UInt8] {
        SHA256.hash(UnsafeRawBufferPointer(start: mapping.base, count: dataOffset))
    }
}
