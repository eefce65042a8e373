#if canImport(Glibc)
import Glibc
#endif
import Foundation
import GGUF
import Wire

/// Model chunks for a worker that has no copy of the model (it asks with FetchModel; `Worker/ModelFetch` is the
/// asking side).
public enum ModelChunks {
    /// The coordinator's answer to a FetchModel: the bytes of `file` asked for and their SHA-256, or an Error
    /// when the range is outside the file or larger than 64 MiB. The bytes are read with `pread`, not through the
    /// mapping, and dropped from the page cache after: serving the whole file to workers does not leave it in the
    /// coordinator's memory (through the mapping, its RSS grew by the model's size).
    public static func chunk(_ f: Conclave_V1_FetchModel, id: UInt64, of file: GGUFFile) -> WireMessage {
        let length = Int(f.length)
        guard f.offset <= UInt64(file.fileSize), length > 0, length <= 64 << 20, Int(f.offset) + length <= file.fileSize else {
            return WireMessage.errorReply(to: id, WireError(.malformed, "model fetch \(f.offset)+\(length) is outside the \(file.fileSize)-byte file"))
        }
        var bytes = Data(count: length)
        let fd = open(file.path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return WireMessage.errorReply(to: id, WireError(.internalError, "cannot open \(file.path) to serve it: \(String(cString: strerror(errno)))")) }
        defer { close(fd) }
        var done = 0
        let failure: String? = bytes.withUnsafeMutableBytes { b in
            while done < length {
                let n = pread(fd, b.baseAddress! + done, length - done, off_t(Int(f.offset) + done))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { return n == 0 ? "the file ends early" : String(cString: strerror(errno)) }
                done += n
            }
            return nil
        }
        if let failure { return WireMessage.errorReply(to: id, WireError(.internalError, "reading \(file.path) at \(f.offset) to serve it: \(failure)")) }
        _ = posix_fadvise(fd, off_t(f.offset), off_t(length), Int32(POSIX_FADV_DONTNEED))
        var c = Conclave_V1_ModelChunk()
        c.offset = f.offset
        c.total = UInt64(file.fileSize)
        c.sha256 = Data(bytes.withUnsafeBytes { SHA256.hash($0) })
        var e = Envelope()
        e.requestID = id
        e.modelChunk = c
        return WireMessage.make(e, tensors: [(.u8, [length], bytes)])
    }

    /// The coordinator's answer to a FetchPieces: every piece of the model with its hash.
    public static func pieceTable(_ digest: ModelDigest, id: UInt64) -> WireMessage {
        var t = Conclave_V1_PieceTable()
        t.dataOffset = UInt64(digest.dataOffset)
        t.offsets = digest.pieces.map { UInt64($0.offset) }
        t.counts = digest.pieces.map { UInt64($0.count) }
        var hashes = Data(capacity: 32 * digest.pieces.count)
        for p in digest.pieces { hashes.append(contentsOf: ModelDigest.bytes(hex: p.sha256)) }
        t.sha256 = hashes
        var e = Envelope()
        e.requestID = id
        e.pieceTable = t
        return WireMessage.make(e)
    }
}
