#if canImport(Glibc)
import Glibc
#endif
import Foundation
import GGUF
import Wire

/// Fetches the model file from the coordinator in checksummed chunks for a worker that has no copy, writing
/// `<path>.partial` and renaming it when complete, so a crash never leaves a truncated file under the final name.
struct ModelFetch {
    let replies: PendingReplies
    let send: (WireMessage) throws -> Void
    let log: @Sendable (String) -> Void
    static let chunkBytes = 4 << 20

    func fetch(total: Int, to path: String) throws {
        guard total > 0 else { throw WireError(.internalError, "the assignment does not say how large the model is") }
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let partial = path + ".partial"
        guard FileManager.default.createFile(atPath: partial, contents: nil), let out = FileHandle(forWritingAtPath: partial) else {
            throw WireError(.internalError, "cannot write \(partial) (check --cache-dir: it must be writable and have room for the model)")
        }
        defer { try? out.close() }
        log("fetching the model from the coordinator: \(total) bytes → \(path)")
        var offset = 0, lastPercent = -10
        let t0 = Date()
        while offset < total {
            let length = min(Self.chunkBytes, total - offset)
            var req = Conclave_V1_FetchModel()
            req.offset = UInt64(offset)
            req.length = UInt32(length)
            var e = Envelope()
            let id = replies.register()
            e.requestID = id
            e.fetchModel = req
            try send(WireMessage.make(e))
            let reply = try replies.wait(id, timeout: 60, from: "the coordinator")
            guard case .modelChunk(let chunk) = reply.envelope.kind, reply.frames.count == 1, chunk.offset == UInt64(offset),
                  reply.frames[0].count == length else {
                throw WireError(.malformed, "the coordinator answered a model fetch at offset \(offset) with something else")
            }
            let digest = reply.frames[0].withUnsafeBytes { SHA256.hash($0) }
            guard Data(digest) == chunk.sha256 else {
                throw WireError(.malformed, "model chunk at offset \(offset) failed its SHA-256 check")
            }
            try out.write(contentsOf: reply.frames[0])
            offset += length
            let percent = offset * 100 / total
            if percent >= lastPercent + 10 || offset == total {
                lastPercent = percent
                let rate = Double(offset) / max(1e-3, Date().timeIntervalSince(t0)) / 1e6
                log("fetching the model: \(percent)% (\(offset) of \(total) bytes, \(String(format: "%.1f", rate)) MB/s)")
            }
        }
        try out.synchronize()
        if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
        try FileManager.default.moveItem(atPath: partial, toPath: path)
    }
}
