#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization

/// The identity of a model's weights, not only its metadata: SHA-256 of each `rangeBytes` range of the tensor
/// data, and SHA-256 over those. Two copies with equal metadata but one flipped byte of weights differ here.
/// Hashing a 400 GB model takes minutes, so the digest is computed once per file and kept beside it
/// (`PATH.conclave-digest`, or under the user's cache when the model's directory is read-only) with what
/// identifies that version of the file (size, mtime, ctime, inode); any change to the file invalidates it.
/// The per-range hashes are what a shard-only fetch checks its ranges against.
public struct ModelDigest: Sendable, Equatable, Codable {
    public static let defaultRangeBytes = 64 << 20
    /// Where the tensor data starts (everything before it is covered by the metadata hash).
    public let dataOffset: Int
    public let rangeBytes: Int
    /// SHA-256 of each range of the tensor data, in order, as hex.
    public let ranges: [String]
    /// SHA-256 over the ranges' hashes (the 32-byte values, concatenated), as hex.
    public let sha256: String

    public var bytes: [UInt8] { Self.bytes(hex: sha256) }

    /// Hashes `path`'s bytes from `dataOffset` to the end with `threads` threads (reading with pread: the
    /// mapping may hold repacked pages, and hashing must not make a shard's worker resident in all of it).
    public static func compute(path: String, dataOffset: Int, rangeBytes: Int = defaultRangeBytes,
                               threads: Int = ProcessInfo.processInfo.activeProcessorCount) throws(GGUFError) -> ModelDigest {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw GGUFError(.io, path: path, field: "digest", "cannot open file: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw GGUFError(.io, path: path, field: "digest", String(cString: strerror(errno))) }
        let size = Int(st.st_size)
        guard dataOffset >= 0, dataOffset <= size else { throw GGUFError(.io, path: path, field: "digest", "tensor data offset \(dataOffset) is past the \(size)-byte file") }
        let count = (size - dataOffset + rangeBytes - 1) / rangeBytes
        let hashes = Mutex([[UInt8]](repeating: [], count: count))
        let failed = Atomic<Int32>(0)
        let chunk = 4 << 20
        let lanes = max(1, min(threads, count))
        DispatchQueue.concurrentPerform(iterations: lanes) { lane in
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 64)
            defer { buffer.deallocate() }
            var r = lane
            while r < count {
                let start = dataOffset + r * rangeBytes, end = min(size, start + rangeBytes)
                var h = SHA256()
                var at = start
                while at < end {
                    let n = pread(fd, buffer, min(chunk, end - at), off_t(at))
                    if n <= 0 { failed.store(errno == 0 ? EIO : errno, ordering: .relaxed); return }
                    h.update(UnsafeRawBufferPointer(start: buffer, count: n))
                    at += n
                }
                let digest = h.finalize()
                hashes.withLock { $0[r] = digest }
                r += lanes
            }
        }
        let code = failed.load(ordering: .relaxed)
        if code != 0 { throw GGUFError(.io, path: path, field: "digest", "read failed: \(String(cString: strerror(code)))") }
        let ranges = hashes.withLock { $0 }
        var all = SHA256()
        for h in ranges { h.withUnsafeBytes { all.update($0) } }
        return ModelDigest(dataOffset: dataOffset, rangeBytes: rangeBytes, ranges: ranges.map { hex($0) }, sha256: hex(all.finalize()))
    }

    /// What the cached digest is valid for: this exact version of the file.
    struct Stamp: Codable, Equatable {
        var size: Int
        var mtimeNs: Int
        var ctimeNs: Int
        var inode: UInt64
        init?(path: String) {
            var st = stat()
            guard stat(path, &st) == 0 else { return nil }
            size = Int(st.st_size)
            mtimeNs = Int(st.st_mtim.tv_sec) * 1_000_000_000 + Int(st.st_mtim.tv_nsec)
            ctimeNs = Int(st.st_ctim.tv_sec) * 1_000_000_000 + Int(st.st_ctim.tv_nsec)
            inode = UInt64(st.st_ino)
        }
    }
    struct Cached: Codable {
        var version = 1
        var stamp: Stamp
        var digest: ModelDigest
    }

    /// Where the digest of `path` is kept: beside it, else (read-only directory) under the user's cache.
    public static func cachePaths(for path: String) -> [String] {
        let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
        let env = ProcessInfo.processInfo.environment
        let base = env["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? (env["HOME"].map { $0 + "/.cache" } ?? "/tmp")
        return [absolute + ".conclave-digest", base + "/conclave/digests/" + hex(SHA256.hash(Array(absolute.utf8))).prefix(32) + ".json"]
    }

    /// The digest of `file`: the cached one when it is for this very version of the file, else computed (with
    /// a line to `log` first: it may take minutes) and cached.
    public static func of(_ file: GGUFFile, log: (String) -> Void = { _ in }) throws(GGUFError) -> ModelDigest {
        let path = file.mapping.path
        if let d = cached(path: path, dataOffset: file.dataOffset) { return d }
        let bytes = file.mapping.count - file.dataOffset
        if bytes > 1 << 30 { log("hashing the tensor data of \(path) (\(bytes >> 30) GiB), once: the digest is kept beside it") }
        let digest = try compute(path: path, dataOffset: file.dataOffset)
        remember(digest, for: path)
        return digest
    }

    static func cached(path: String, dataOffset: Int) -> ModelDigest? {
        let stamp = Stamp(path: path)
        for cache in cachePaths(for: path) {
            if let data = FileManager.default.contents(atPath: cache), let c = try? JSONDecoder().decode(Cached.self, from: data),
               c.version == 1, c.stamp == stamp, c.digest.dataOffset == dataOffset {
                return c.digest
            }
        }
        return nil
    }

    /// Keeps `digest` as the one of the file now at `path` (a fetched model once renamed into place).
    public static func remember(_ digest: ModelDigest, for path: String) {
        guard let stamp = Stamp(path: path), let data = try? JSONEncoder().encode(Cached(stamp: stamp, digest: digest)) else { return }
        for cache in cachePaths(for: path) {
            try? FileManager.default.createDirectory(atPath: (cache as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            if FileManager.default.createFile(atPath: cache, contents: data) { return }
        }
    }

    /// Forgets what is cached for `path` (the file is being removed).
    public static func forget(path: String) {
        for cache in cachePaths(for: path) { try? FileManager.default.removeItem(atPath: cache) }
    }

    static func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }
    static func bytes(hex: String) -> [UInt8] {
        var out: [UInt8] = []
        let chars = Array(hex.utf8)
        var i = 0
        while i + 1 < chars.count {
            out.append(UInt8(String(decoding: chars[i...i + 1], as: UTF8.self), radix: 16) ?? 0)
            i += 2
        }
        return out
    }
}
