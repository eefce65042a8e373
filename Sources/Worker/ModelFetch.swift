#if canImport(Glibc)
import Glibc
#endif
import Foundation
import GGUF
import Wire

/// Fetches from the coordinator only the part of the model a worker's assignment reads (its shard), for a worker
/// that has no copy of the model.
///
/// The cache file `<dir>/<metadata sha>.shard.gguf` has the model's full size, but only the header and the pieces
/// the worker needed so far hold bytes: the rest are holes that take no disk (`ModelDigest.pieces`: a tensor, or
/// one expert's slice of a stacked expert tensor). Every piece is checked against the coordinator's table of piece
/// hashes, and the table against the Assign's digest of the weights, so a shard is verified without the rest of
/// the file. Whatever already verifies on disk is not fetched again: an interrupted fetch resumes, a re-plan that
/// gives the worker more fetches only the new pieces, a corrupted piece is fetched anew, and workers on one host
/// sharing a cache directory (an exclusive flock on `<name>.lock` while fetching) fetch what they share once.
///
/// Pieces are fetched in whole pages (4 KiB) so that a page the worker touches — and repacks in its private
/// copy — never holds a hole where a neighbouring piece's bytes belong.
///
/// A full copy fetched by an older build (`<sha>.gguf`) is used as it is when it still verifies.
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
    static let page = 4096

    /// What a fetch leaves: the model mapped, the digest of its weights, and for a shard the cache that later
    /// assignments extend.
    public struct Fetched {
        public let file: GGUFFile
        public let digest: [UInt8]
        public let shard: ShardCache?
    }

    /// The model whose metadata hash is `sha` and weights digest `data`, `total` bytes, with the file ranges
    /// `needs` names (given the header) present and verified.
    func fetch(sha: [UInt8], data: [UInt8], total: Int, into directory: String,
               needs: (GGUFFile) throws -> [Range<Int>]) throws -> Fetched {
        guard total > 0 else { throw WireError(.internalError, "the assignment does not say how large the model is") }
        try ensureDirectory(directory)
        let base = URL(fileURLWithPath: directory).appendingPathComponent(hex(sha)).path
        if let f = try whole(base + ".gguf", sha: sha, data: data, total: total) {
            log("using the cached model \(f.file.path)")
            return f
        }
        guard data.count == 32 else {
            throw WireError(.malformed, "the assignment carries no digest of the model's weights, which a shard-only fetch verifies against")
        }
        let table = try pieceTable(root: data)
        let cache: ShardCache
        do {
            let lock = try Lock(base + ".lock", log: log)
            defer { lock.release() }
            cache = try ShardCache.open(path: base + ".shard.gguf", sha: sha, table: table, total: total, fetch: self)
        }
        try cache.ensure(try needs(cache.file), fetch: self)
        return Fetched(file: cache.file, digest: data, shard: cache)
    }

    /// A whole cached copy at `path` when it is the model: `total` bytes, the metadata hash `sha`, the weights
    /// digest `data` (unless empty). A file with the metadata but other weights is removed.
    func whole(_ path: String, sha: [UInt8], data: [UInt8], total: Int) throws -> Fetched? {
        guard let size = (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int, size == total,
              let f = try? GGUFFile(path: path), f.metadataSHA256 == sha else { return nil }
        let digest = try ModelDigest.of(f, log: log)
        guard data.isEmpty || digest.bytes == data else {
            log("the cached model \(path) has the coordinator's metadata but other weights (tensor data sha256 \(digest.sha256.prefix(16))…, assigned \(hex(data).prefix(16))…): removed, fetching the shard instead")
            try? FileManager.default.removeItem(atPath: path)
            ModelDigest.forget(path: path)
            return nil
        }
        return Fetched(file: f, digest: digest.bytes, shard: nil)
    }

    /// The coordinator's pieces and their hashes, checked: in order, disjoint, and hashing to `root`.
    func pieceTable(root: [UInt8]) throws -> ModelDigest {
        var e = Envelope()
        let id = replies.register()
        e.requestID = id
        e.fetchPieces = Conclave_V1_FetchPieces()
        do {
            try send(WireMessage.make(e))
        } catch {
            replies.cancel(id)
            throw error
        }
        let reply = try replies.wait(id, timeout: timeout, from: "the coordinator")
        guard case .pieceTable(let t) = reply.envelope.kind else {
            throw WireError(.malformed, "the coordinator answered a request for the model's pieces with something else")
        }
        let n = t.offsets.count
        guard t.counts.count == n, t.sha256.count == 32 * n, n > 0, t.dataOffset <= UInt64(Int.max / 2) else {
            throw WireError(.malformed, "the coordinator's piece table is inconsistent (\(n) offsets, \(t.counts.count) sizes, \(t.sha256.count) hash bytes)")
        }
        var pieces: [ModelDigest.Piece] = []
        pieces.reserveCapacity(n)
        var hashes: [[UInt8]] = []
        var end = Int(t.dataOffset)
        let bytes = [UInt8](t.sha256)
        for i in 0..<n {
            guard t.offsets[i] <= UInt64(Int.max / 2), t.counts[i] <= UInt64(Int.max / 2), Int(t.offsets[i]) >= end else {
                throw WireError(.malformed, "the coordinator's piece table is out of order at piece \(i)")
            }
            let h = Array(bytes[(32 * i)..<(32 * i + 32)])
            hashes.append(h)
            pieces.append(.init(offset: Int(t.offsets[i]), count: Int(t.counts[i]), sha256: hex(h)))
            end = Int(t.offsets[i]) + Int(t.counts[i])
        }
        guard ModelDigest.root(of: hashes) == root else {
            throw WireError(.modelMismatch, "the coordinator's piece hashes do not add up to the weights digest it assigned")
        }
        return ModelDigest(dataOffset: Int(t.dataOffset), pieces: pieces, sha256: hex(root))
    }

    /// Fetches `ranges` (sorted, disjoint) of the model into `fd` at their offsets, in chunks of at most
    /// `chunkBytes`, `window` of them in flight, with a progress line every 10%.
    func download(_ ranges: [Range<Int>], into fd: Int32, path: String) throws {
        var chunks: [Range<Int>] = []
        for r in ranges {
            var at = r.lowerBound
            while at < r.upperBound {
                chunks.append(at..<min(r.upperBound, at + chunkBytes))
                at += chunkBytes
            }
        }
        let total = chunks.reduce(0) { $0 + $1.count }
        var inFlight: [(id: UInt64, range: Range<Int>)] = []
        defer { for r in inFlight { replies.cancel(r.id) } }
        var next = 0, written = 0, lastPercent = -10
        let t0 = Date()
        while next < chunks.count || !inFlight.isEmpty {
            while inFlight.count < window, next < chunks.count {
                let c = chunks[next]
                var req = Conclave_V1_FetchModel()
                req.offset = UInt64(c.lowerBound)
                req.length = UInt32(c.count)
                var e = Envelope()
                let id = replies.register()
                e.requestID = id
                e.fetchModel = req
                inFlight.append((id, c))
                try send(WireMessage.make(e))
                next += 1
            }
            let r = inFlight.removeFirst()
            let reply = try replies.wait(r.id, timeout: timeout, from: "the coordinator")
            guard case .modelChunk(let chunk) = reply.envelope.kind, reply.frames.count == 1, chunk.offset == UInt64(r.range.lowerBound),
                  reply.frames[0].count == r.range.count else {
                throw WireError(.malformed, "the coordinator answered a model fetch at offset \(r.range.lowerBound) with something else")
            }
            let digest = reply.frames[0].withUnsafeBytes { SHA256.hash($0) }
            guard Data(digest) == chunk.sha256 else { throw WireError(.malformed, "model chunk at offset \(r.range.lowerBound) failed its SHA-256 check") }
            try reply.frames[0].withUnsafeBytes { b in
                var done = 0
                while done < b.count {
                    let n = pwrite(fd, b.baseAddress! + done, b.count - done, off_t(r.range.lowerBound + done))
                    if n < 0 && errno == EINTR { continue }
                    guard n > 0 else { throw WireError(.internalError, "writing \(path): \(String(cString: strerror(errno))) (check --cache-dir: it must be writable and have room for the shard)") }
                    done += n
                }
            }
            written += r.range.count
            let percent = written * 100 / max(1, total)
            if percent >= lastPercent + 10 || written == total {
                lastPercent = percent
                let rate = Double(written) / max(1e-3, Date().timeIntervalSince(t0)) / 1e6
                log("fetching the shard: \(percent)% (\(written) of \(total) bytes, \(String(format: "%.1f", rate)) MB/s)")
            }
        }
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

/// A sparse cache file holding the header and some pieces of one model (see `ModelFetch`): which pieces are
/// there and verified, and fetching the ones an assignment adds. One per model in a worker process, kept with the
/// mapping so that a re-plan extends what the running shard maps.
public final class ShardCache: @unchecked Sendable {
    public let path: String
    public let file: GGUFFile
    let table: ModelDigest
    let lockPath: String
    /// Pieces (indexes into `table.pieces`) verified on disk by this process.
    private var verified = Set<Int>()
    private let lock = NSLock()

    init(path: String, file: GGUFFile, table: ModelDigest) {
        self.path = path
        self.file = file
        self.table = table
        lockPath = String(path.dropLast(".shard.gguf".count)) + ".lock"
    }

    /// The same cache over a fresh mapping of its file (what was verified stays verified): the old mapping goes
    /// with the last shard that used it.
    func remapped() throws -> ShardCache {
        let fresh = ShardCache(path: path, file: try GGUFFile(path: path), table: table)
        fresh.verified = lock.withLock { verified }
        return fresh
    }

    /// Opens (or creates) the cache file with the model's header in place, checked against `sha` and `table`.
    static func open(path: String, sha: [UInt8], table: ModelDigest, total: Int, fetch: ModelFetch) throws -> ShardCache {
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw WireError(.internalError, "cannot write \(path): \(String(cString: strerror(errno))) (check --cache-dir: it must be writable and have room for the shard)")
        }
        defer { Glibc.close(fd) }
        var st = stat()
        fstat(fd, &st)
        // The file has the model's size from the start: what is not fetched is a hole.
        if Int(st.st_size) != total, ftruncate(fd, off_t(total)) != 0 {
            throw WireError(.internalError, "cannot size \(path) to \(total) bytes: \(String(cString: strerror(errno)))")
        }
        let header = 0..<min(total, table.dataOffset)
        if (try? ModelDigest.hash(fd: fd, ranges: [header], threads: 1, path: path))?.first != sha {
            fetch.log("fetching the model's header (\(header.count) bytes) into \(path)")
            try fetch.download([ShardCache.pages(header, total: total)], into: fd, path: path)
            guard (try? ModelDigest.hash(fd: fd, ranges: [header], threads: 1, path: path))?.first == sha else {
                throw WireError(.modelMismatch, "the header fetched from the coordinator does not match the metadata hash it assigned")
            }
        }
        let file: GGUFFile
        do {
            file = try GGUFFile(path: path)
        } catch {
            throw WireError(.modelMismatch, "the model header fetched into \(path) does not parse: \(error)")
        }
        guard file.dataOffset == table.dataOffset, ModelDigest.pieces(of: file) == table.pieces.map(\.range) else {
            throw WireError(.modelMismatch, "the coordinator's piece table does not describe the model header it served")
        }
        return ShardCache(path: path, file: file, table: table)
    }

    /// `r` widened to whole pages, within the file.
    static func pages(_ r: Range<Int>, total: Int) -> Range<Int> {
        let p = ModelFetch.page
        return (r.lowerBound / p * p)..<min(total, (r.upperBound + p - 1) / p * p)
    }

    /// Makes every piece overlapping `ranges` present and verified: those already on disk are checked by hash,
    /// the rest fetched; throws when a fetched piece does not match its hash.
    func ensure(_ ranges: [Range<Int>], fetch: ModelFetch) throws {
        lock.lock()
        defer { lock.unlock() }
        // Other workers on this host may be filling the same file: one fetch at a time.
        let shared = try ModelFetch.Lock(lockPath, log: fetch.log)
        defer { shared.release() }
        let wanted = pieces(overlapping: ranges).filter { !verified.contains($0) }
        guard !wanted.isEmpty else { return }
        let fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw WireError(.internalError, "cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { Glibc.close(fd) }
        // On disk already (an earlier fetch, another worker on this host): a piece with data is checked by hash;
        // one wholly in a hole is missing without reading it.
        let stored = wanted.filter { hasData(fd, table.pieces[$0].range) }
        let hashes = try ModelDigest.hash(fd: fd, ranges: stored.map { table.pieces[$0].range }, path: path)
        var missing = Set(wanted)
        for (i, h) in zip(stored, hashes) where hex(h) == table.pieces[i].sha256 { missing.remove(i) }
        let corrupt = stored.filter { missing.contains($0) }
        if !corrupt.isEmpty {
            // (Also a piece whose first page came with a neighbour's: partly fetched is not verified.)
            fetch.log("\(corrupt.count) piece(s) on disk in \(path) are partial or do not match their hashes (the first at byte \(table.pieces[corrupt[0]].offset)): fetching them again")
        }
        if !missing.isEmpty {
            let order = missing.sorted()
            let ranges = Self.merged(order.map { Self.pages(table.pieces[$0].range, total: file.fileSize) })
            let bytes = ranges.reduce(0) { $0 + $1.count }
            fetch.log("fetching \(order.count) of the model's \(table.pieces.count) pieces: \(bytes) bytes, \(String(format: "%.1f", 100 * Double(bytes) / Double(file.fileSize)))% of the model")
            try fetch.download(ranges, into: fd, path: path)
            let got = try ModelDigest.hash(fd: fd, ranges: order.map { table.pieces[$0].range }, path: path)
            for (i, h) in zip(order, got) where hex(h) != table.pieces[i].sha256 {
                throw WireError(.modelMismatch, "the model piece at byte \(table.pieces[i].offset) fetched from the coordinator does not match its hash")
            }
            guard fsync(fd) == 0 else { throw WireError(.internalError, "cannot flush \(path): \(String(cString: strerror(errno)))") }
        }
        verified.formUnion(wanted)
    }

    /// Indexes of the pieces that overlap any of `ranges`.
    func pieces(overlapping ranges: [Range<Int>]) -> [Int] {
        var out = Set<Int>()
        let starts = table.pieces.map(\.offset)
        for r in ranges where !r.isEmpty {
            // The first piece ending after r's start, then on while pieces start before r's end.
            var i = max(0, (starts.partitioningIndex { $0 > r.lowerBound }) - 1)
            while i < table.pieces.count, table.pieces[i].offset < r.upperBound {
                if table.pieces[i].range.overlaps(r) { out.insert(i) }
                i += 1
            }
        }
        return out.sorted()
    }

    /// Whether any byte of `r` is data rather than a hole.
    func hasData(_ fd: Int32, _ r: Range<Int>) -> Bool {
        // SEEK_DATA (3 on Linux; Glibc hides it behind _GNU_SOURCE).
        let at = lseek(fd, off_t(r.lowerBound), 3)
        // Without SEEK_DATA support the file reads as data everywhere: the hash decides.
        if at < 0 { return errno != ENXIO }
        return Int(at) < r.upperBound
    }

    /// Sorted ranges with overlapping or touching ones joined.
    static func merged(_ ranges: [Range<Int>]) -> [Range<Int>] {
        var out: [Range<Int>] = []
        for r in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = out.last, r.lowerBound <= last.upperBound {
                out[out.count - 1] = last.lowerBound..<max(last.upperBound, r.upperBound)
            } else {
                out.append(r)
            }
        }
        return out
    }

    /// Bytes of the cache file that hold data (its allocated blocks), for logs and tests.
    public var allocatedBytes: Int {
        var st = stat()
        guard stat(path, &st) == 0 else { return 0 }
        return Int(st.st_blocks) * 512
    }
}

extension Array {
    /// The first index whose element satisfies `p`, for an array partitioned by it (false… then true…).
    func partitioningIndex(where p: (Element) -> Bool) -> Int {
        var lo = 0, hi = count
        while lo < hi {
            let mid = (lo + hi) / 2
            if p(self[mid]) { hi = mid } else { lo = mid + 1 }
        }
        return lo
    }
}
