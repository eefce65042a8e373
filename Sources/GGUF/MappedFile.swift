#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// A whole file mapped read-only into memory.
///
/// Nothing is read until it is touched, so opening a many-gigabyte model costs only the pages of its header.
/// The mapping lives as long as any view of it, which is why tensor views and lazy arrays hold this object.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let count: Int
    /// Base address; read-only (PROT_READ) except inside `rewrite`.
    public let base: UnsafeRawPointer?
    /// Keys (offsets) of what callers rewrote in place, so a region is never rewritten twice; held while rewriting.
    private let rewrites = Mutex<Set<Int>>([])

    public init(path: String) throws(GGUFError) {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw GGUFError(.io, path: path, field: "open", "cannot open file: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw GGUFError(.io, path: path, field: "stat", String(cString: strerror(errno)))
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw GGUFError(.io, path: path, field: "open", "not a regular file")
        }
        count = Int(st.st_size)
        if count == 0 {
            base = nil
            return
        }
        let p = mmap(nil, count, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else {
            throw GGUFError(.io, path: path, field: "mmap", String(cString: strerror(errno)))
        }
        base = UnsafeRawPointer(p)
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), count) }
    }

    /// Rewrites `count` bytes at `offset` in this process's copy: the pages are made writable for `body` and
    /// become private copies (MAP_PRIVATE: the file on disk never changes), then read-only again. `body` gets
    /// the set of keys already rewritten and adds its own, so that work done once (repacking weights for the
    /// kernels) is never done twice, even by two stages over one mapping. Calls are serialised.
    public func rewrite(offset: Int, count: Int, _ body: (UnsafeMutableRawPointer, inout Set<Int>) -> Void) throws(GGUFError) {
        guard let base, count > 0, offset >= 0, offset + count <= self.count else {
            throw GGUFError(.io, path: path, field: "rewrite", "bytes \(offset)..<\(offset + count) are outside the \(self.count)-byte file")
        }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = offset / page * page
        let length = (offset + count - start + page - 1) / page * page
        let region = UnsafeMutableRawPointer(mutating: base + start)
        let failure: String? = rewrites.withLock { done in
            guard mprotect(region, length, PROT_READ | PROT_WRITE) == 0 else { return String(cString: strerror(errno)) }
            body(UnsafeMutableRawPointer(mutating: base + offset), &done)
            _ = mprotect(region, length, PROT_READ)
            return nil
        }
        if let failure { throw GGUFError(.io, path: path, field: "rewrite", "cannot make the mapped pages writable: \(failure)") }
    }

    /// The whole file as bytes (empty for an empty file).
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    /// Brings a range into memory now — read-ahead, then one touch per page so the page-table entries exist —
    /// so that the first inference does not pay a page fault per 4 KiB of weights (llama.cpp maps with
    /// MAP_POPULATE for the same reason). Returns a checksum of the touched bytes so the reads stay.
    @discardableResult
    public func prefault(offset: Int, count: Int) -> UInt8 {
        guard let base, count > 0, offset >= 0, offset + count <= self.count else { return 0 }
        advise(offset: offset, count: count, MADV_WILLNEED)
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        var sum: UInt8 = 0
        var i = offset
        while i < offset + count {
            sum &+= base.load(fromByteOffset: i, as: UInt8.self)
            i += page
        }
        return sum
    }

    /// Tells the kernel how a range will be read, to make mapped streaming of weights cheaper.
    public func advise(offset: Int, count: Int, _ advice: Int32) {
        guard let base, count > 0 else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (offset / page) * page
        _ = madvise(UnsafeMutableRawPointer(mutating: base + start), count + (offset - start), advice)
    }
}
