#if canImport(Glibc)
import Glibc
#endif
import Foundation
import GGUF
import Wire

/// Fetches the model file from the coordinator into the worker's cache, for a worker that has no copy.
///
/// Safe when several workers on one host share the cache: the fetch of one model holds an exclusive lock
/// (`<name>.lock`, flock), so a second worker waits and then finds the first one's result; bytes go to
/// `<name>.partial`, which only the lock holder touches, and the finished file is verified (its size, every
/// chunk's SHA-256 as it arrives, the GGUF's metadata hash) before an atomic rename gives it its final name — a
/// half-written file is never read under that name. An interrupted fetch resumes: the partial file holds only
/// verified chunks, written in order, so the next fetch starts after its last whole chunk.
///
/// Fast: `window` chunk requests are in flight at once, so the transfer is not one round trip per chunk.
public struct ModelFetch {
    let replies: PendingReplies
    let send: (WireMessage) throws -> Void
    let log: @Sendable (String) -> Void
    var chunkBytes = 4 << 20
    var window = 8
    /// Seconds to wait for one chunk (generous: a loaded coordinator serves several workers at once).
    var timeout = 120.0

    /// The model whose metadata hash is `sha` and tensor-data digest `data` (empty: not checked), `total` bytes,
    /// at `<directory>/<sha hex>.gguf`: the cached copy when there is a good one, else fetched now. A cached copy
    /// whose weights differ (a flipped byte, a file swapped under the name) is refused, removed and fetched again.
    func fetch(sha: [UInt8], data: [UInt8], total: Int, into directory: String) throws -> (GGUFFile, ModelDigest) {
        guard total > 0 else { throw WireError(.internalError, "the assignment does not say how large the model is") }
        try ensureDirectory(directory)
        let path = URL(fileURLWithPath: directory).appendingPathComponent("\(hex(sha)).gguf").path
        if let f = try verified(path, sha: sha, data: data, total: total) {
            log("using the cached model \(path)")
            return f
        }
        let lock = try Lock(path + ".lock", log: log)
        defer { lock.release() }
        // Another worker may have fetched it while we waited for the lock.
        if let f = try verified(path, sha: sha, data: data, total: total) {
            log("using the model another worker fetched into \(path)")
            return f
        }
        let partial = path + ".partial"
        try download(total: total, to: partial)
        // Chunks were checked one by one as they came; the whole is checked once more, as a cached copy is.
        let fetched = try GGUFFile(path: partial)
        let digest = try ModelDigest.compute(path: partial, dataOffset: fetched.dataOffset)
        guard fetched.metadataSHA256 == sha, data.isEmpty || digest.bytes == data else {
            try? FileManager.default.removeItem(atPath: partial)
            throw WireError(.modelMismatch, "the model fetched from the coordinator does not match the metadata hash and weights digest it assigned")
        }
        guard rename(partial, path) == 0 else { throw WireError(.internalError, "cannot rename \(partial) to \(path): \(String(cString: strerror(errno)))") }
        ModelDigest.remember(digest, for: path)
        return (try GGUFFile(path: path), digest)
    }

    /// The file at `path` when it is the model: `total` bytes, a GGUF whose metadata hash is `sha`, and whose
    /// tensor data has the digest `data` (unless empty). A file with the metadata but other weights is removed.
    func verified(_ path: String, sha: [UInt8], data: [UInt8], total: Int) throws -> (GGUFFile, ModelDigest)? {
        guard let size = (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int, size == total,
              let f = try? GGUFFile(path: path), f.metadataSHA256 == sha else { return nil }
        let digest = try ModelDigest.of(f, log: log)
        guard data.isEmpty || digest.bytes == data else {
            log("the cached model \(path) has the coordinator's metadata but other weights (tensor data sha256 \(digest.sha256.prefix(16))…, assigned \(hex(data).prefix(16))…): removed, fetching it again")
            try? FileManager.default.removeItem(atPath: path)
            ModelDigest.forget(path: path)
            return nil
        }
        return (f, digest)
    }

    /// Fills `partial` up to `total` bytes, resuming after its last whole chunk.
    func download(total: Int, to partial: String) throws {
        let fd = open(partial, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw WireError(.internalError, "cannot write \(partial): \(String(cString: strerror(errno))) (check --cache-dir: it must be writable and have room for the model)")
        }
        defer { Glibc.close(fd) }
        var st = stat()
        fstat(fd, &st)
        // Whole chunks were verified before they were written; a torn last one is fetched again.
        let start = min(total, Int(st.st_size) / chunkBytes * chunkBytes)
        guard ftruncate(fd, off_t(start)) == 0 else { throw WireError(.internalError, "cannot truncate \(partial): \(String(cString: strerror(errno)))") }
        if start > 0 { log("resuming the model fetch at \(start) of \(total) bytes") } else { log("fetching the model from the coordinator: \(total) bytes → \(partial)") }

        var inFlight: [(id: UInt64, offset: Int, length: Int)] = []
        defer { for r in inFlight { replies.cancel(r.id) } }
        var next = start, written = start, lastPercent = start * 100 / total - 10
        let t0 = Date()
        while written < total {
            while inFlight.count < window, next < total {
                let length = min(chunkBytes, total - next)
                var req = Conclave_V1_FetchModel()
                req.offset = UInt64(next)
                req.length = UInt32(length)
                var e = Envelope()
                let id = replies.register()
                e.requestID = id
                e.fetchModel = req
                inFlight.append((id, next, length))
                try send(WireMessage.make(e))
                next += length
            }
            let r = inFlight.removeFirst()
            let reply = try replies.wait(r.id, timeout: timeout, from: "the coordinator")
            guard case .modelChunk(let chunk) = reply.envelope.kind, reply.frames.count == 1, chunk.offset == UInt64(r.offset),
                  reply.frames[0].count == r.length else {
                throw WireError(.malformed, "the coordinator answered a model fetch at offset \(r.offset) with something else")
            }
            let digest = reply.frames[0].withUnsafeBytes { SHA256.hash($0) }
            guard Data(digest) == chunk.sha256 else { throw WireError(.malformed, "model chunk at offset \(r.offset) failed its SHA-256 check") }
            try reply.frames[0].withUnsafeBytes { b in
                var done = 0
                while done < b.count {
                    let n = pwrite(fd, b.baseAddress! + done, b.count - done, off_t(r.offset + done))
                    guard n > 0 else { throw WireError(.internalError, "writing \(partial): \(String(cString: strerror(errno)))") }
                    done += n
                }
            }
            written += r.length
            let percent = written * 100 / total
            if percent >= lastPercent + 10 || written == total {
                lastPercent = percent
                let rate = Double(written - start) / max(1e-3, Date().timeIntervalSince(t0)) / 1e6
                log("fetching the model: \(percent)% (\(written) of \(total) bytes, \(String(format: "%.1f", rate)) MB/s)")
            }
        }
        guard fsync(fd) == 0 else { throw WireError(.internalError, "cannot flush \(partial): \(String(cString: strerror(errno)))") }
    }

    private func ensureDirectory(_ d: String) throws {
        do {
            try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        } catch {
            throw WireError(.internalError, "cannot create the cache directory \(d): \(error.localizedDescription) (check --cache-dir)")
        }
    }

    /// An exclusive flock on a lock file beside the model: between processes, and between fetches in one.
    final class Lock {
        let fd: Int32
        init(_ path: String, log: @Sendable (String) -> Void) throws {
            fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw WireError(.internalError, "cannot open the lock \(path): \(String(cString: strerror(errno)))") }
            if flock(fd, LOCK_EX | LOCK_NB) != 0 {
                log("another worker is fetching this model; waiting for it (\(path))")
                while flock(fd, LOCK_EX) != 0 {
                    guard errno == EINTR else {
                        Glibc.close(fd)
                        throw WireError(.internalError, "cannot lock \(path): \(String(cString: strerror(errno)))")
                    }
                }
            }
        }
        func release() {
            flock(fd, LOCK_UN)
            Glibc.close(fd)
        }
    }
}
