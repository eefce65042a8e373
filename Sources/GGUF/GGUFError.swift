/// Everything that can go wrong reading or writing a GGUF file.
///
/// A struct over a code, so callers can match on `code` while the message stays free to name the file,
/// the field and the offending value — which is what a user needs to act on a bad file.
public struct GGUFError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Code: Sendable, Equatable {
        case io
        case truncated
        case badMagic
        case unsupportedVersion
        case bigEndian
        case outOfBounds
        case unknownType
        case duplicateKey
        case duplicateTensor
        case invalidValue
        case missingKey
        case missingTensor
        case writeMismatch
    }

    public let code: Code
    /// The file the error is about.
    public let path: String
    /// The field being read (`"header.version"`, `"metadata[3] 'general.alignment'"`, `"tensor 'blk.0.attn_q.weight'"`).
    public let field: String
    public let detail: String

    public init(_ code: Code, path: String, field: String, _ detail: String) {
        self.code = code
        self.path = path
        self.field = field
        self.detail = detail
    }

    public var description: String { "\(path): \(field): \(detail)" }
}
