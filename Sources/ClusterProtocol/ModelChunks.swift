import Foundation
import GGUF
import Wire

/// Model chunks for a worker that has no copy of the model (it asks with FetchModel; `Worker/ModelFetch` is the
/// asking side).
public enum ModelChunks {
    /// The coordinator's answer to a FetchModel: the bytes of `file` asked for and their SHA-256, or an Error
    /// when the range is outside the file or larger than 64 MiB.
    public static func chunk(_ f: Conclave_V1_FetchModel, id: UInt64, of file: GGUFFile) -> WireMessage {
        let length = Int(f.length)
        guard f.offset <= UInt64(file.fileSize), length > 0, length <= 64 << 20, Int(f.offset) + length <= file.fileSize else {
            return WireMessage.errorReply(to: id, WireError(.malformed, "model fetch \(f.offset)+\(length) is outside the \(file.fileSize)-byte file"))
        }
        let bytes = UnsafeRawBufferPointer(start: file.mapping.base! + Int(f.offset), count: length)
        var c = Conclave_V1_ModelChunk()
        c.offset = f.offset
        c.total = UInt64(file.fileSize)
        c.sha256 = Data(SHA256.hash(bytes))
        var e = Envelope()
        e.requestID = id
        e.modelChunk = c
        return WireMessage.make(e, tensors: [(.u8, [length], Data(bytes))])
    }
}
