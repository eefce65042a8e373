#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization

/// The identity of a model's weights, not only its metadata: SHA-256 of each piece of the tensor data, and
/// SHA-256 over those. Two copies with equal metadata but one flipped byte of weights differ here.
///
/// A piece is what one holder needs whole (`pieces(of:)`): a tensor, or one expert's slice of a stacked expert
/// tensor. A worker that fetches only its shard checks each piece it fetched against its hash, and the table of
/// hashes against the root the coordinator assigned (`root(of:)`), so a shard is verified without the rest of the
/// file. Hashing a 400 GB model takes minutes, so the digest is computed once per file and kept beside it
/// (`PATH.conclave-digest`, or under the user's cache when the model's directory is read-only) with what
/// identifies that version of the file (size, mtime, ctime, inode); any change to the file invalidates it.
public struct ModelDigest: Sendable, Equatable, Codable {
    public struct Piece: Sendable, Equatable, Codable {
        public let offset: Int
        public let count: Int
        /// SHA-256 of the piece's bytes, as hex.
        public let sha256: String
        public init(offset: Int, count: Int, sha256: String) {
            self.offset = offset
            self.count = count
            self.sha256 = sha256
        }
        public var range: Range<Int> { offset..<(offset + count) }
    }

    /// Where the tensor data starts (everything before it is covered by the metadata hash).
    public let dataOffset: Int
    /// Every piece, in file order.
    public let pieces: [Piece]
    /// SHA-256 over the pieces' hashes (the 32-byte values, concatenated), as hex.
    public let sha256: String

    public var bytes: [UInt8] { Self.bytes(hex: sha256) }

    public init(dataOffset: Int, pieces: [Piece], sha256: String) {
        self.dataOffset = dataOffset
        self.pieces = pieces
        self.sha256 = sha256
    }

    /// The pieces of `file`'s tensor data, in file order: each tensor whole, except a tensor of three or more
    /// dimensions (the stacked experts of a MoE layer), which is one piece per index of its outermost dimension.
    /// Computed from the tensor table alone, so both ends of a fetch derive the same pieces from the header.
    public static func pieces(of file: GGUFFile) -> [Range<Int>] {
        var out: [Range<Int>] = []
        for t in file.tensorInfos.sorted(by: { $0.offset < $1.offset }) where t.byteCount > 0 {
            let start = file.dataOffset + t.offset
            let slices = t.shape.count >= 3 ? max(1, t.shape.last!) : 1
            if slices > 1, t.byteCount % slices == 0 {
                let each = t.byteCount / slices
                for i in 0..<slices { out.append((start + i * each)..<(start + (i + 1) * each)) }
            } else {
                out.append(start..<(start + t.byteCount))
            }
        }
        return out
    }

    /// The root over pieces' 32-byte hashes, in order.
    public static func root(of hashes: some Swift.Sequence<[UInt8]>) -> [UInt8] {
        var all = SHA256()
        for h in hashes { h.withUnsafeBytes { all.update($0) } }
        return all.finalize()
    }

    /// Hashes `pieces` of the file at `path` with `threads` threads (reading with pread: the mapping may hold
    /// repacked pages, and hashing must not make a shard's worker resident in all of it).
    public static func compute(path: String, dataOffset: Int, pieces ranges: [Range<Int>],
                               threads: Int = ProcessInfo.processInfo.activeProcessorCount) throws(GGUFError) -> ModelDigest {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw GGUFError(.io, path: path, field: "digest", "cannot open file: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw GGUFError(.io, path: path, field: "digest", String(cString: strerror(errno))) }
        let size = Int(st.st_size)
        guard ranges.allSatisfy({ $0.lowerBound >= dataOffset && $0.upperBound <= size }) else {
            throw GGUFError(.io, path: path, field: "digest", "a piece lies outside the tensor data of the \(size)-byte file")
        }
        let hashes = try hash(fd: fd, ranges: ranges, threads: threads, path: path)
        let pieces = zip(ranges, hashes).map { Piece(offset: $0.0.lowerBound, count: $0.0.count, sha256: hex($0.1)) }
        return ModelDigest(dataOffset: dataOffset, pieces: pieces, sha256: hex(root(of: hashes)))
    }

    /// SHA-256 of each of `ranges` of the open file `fd`, read with pread on `threads` lanes (big pieces and
    /// small ones interleave, so the lanes take pieces in turn rather than in blocks).
    public static func hash(fd: Int32, ranges: [Range<Int>], threads: Int = ProcessInfo.processInfo.activeProcessorCount,
                            path: String) throws(GGUFError) -> [[UInt8]] {
        let hashes = Mutex([[UInt8]](repeating: [], count: ranges.count))
        let failed = Atomic<Int32>(0)
        let next = Atomic<Int>(0)
        let chunk = 4 << 20
        let lanes = max(1, min(threads, ranges.count))
        DispatchQueue.concurrentPerform(iterations: lanes) { _ in
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 64)
            defer { buffer.deallocate() }
            while true {
                let r = next.wrappingAdd(1, ordering: .relaxed).oldValue
                guard r < ranges.count, failed.load(ordering: .relaxed) == 0 else { return }
                var h = SHA256()
                var at = ranges[r].lowerBound
                while at < ranges[r].upperBound {
                    let n = pread(fd, buffer, min(chunk, ranges[r].upperBound - at), off_t(at))
                    if n < 0 && errno == EINTR { continue }
                    if n <= 0 { failed.store(n == 0 ? EIO : errno, ordering: .relaxed); return }
                    h.update(UnsafeRawBufferPointer(start: buffer, count: n))
                    at += n
                }
                let digest = h.finalize()
                hashes.withLock { $0[r] = digest }
            }
        }
        let code = failed.load(ordering: .relaxed)
        if code != 0 { throw GGUFError(.io, path: path, field: "digest", "read failed: \(String(cString: strerror(code)))") }
        return hashes.withLock { $0 }
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
        var version = Cached.current
        /// 2: hashes per piece (1 hashed 64 MiB ranges; such a digest is computed again).
        static let current = 2
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
        let digest = try compute(path: path, dataOffset: file.dataOffset, pieces: pieces(of: file))
        remember(digest, for: path)
        return digest
    }

    static func cached(path: String, dataOffset: Int) -> ModelDigest? {
        let stamp = Stamp(path: path)
        for cache in cachePaths(for: path) {
            if let data = FileManager.default.contents(atPath: cache), let c = try? JSONDecoder().decode(Cached.self, from: data),
               c.version == Cached.current, c.stamp == stamp, c.digest.dataOffset == dataOffset {
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
    public static func bytes(hex: String) -> [UInt8] {
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
