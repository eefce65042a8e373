#if canImport(Glibc)
import Glibc
#endif

/// Reads experts' bytes from the model file with `pread`, never through the mapping, so that what the offload
/// cache holds is exactly its slots (RSS is the truth) and the page cache does not silently hold the rest:
/// ranges that are whole aligned blocks go through O_DIRECT; others are read normally and then dropped from
/// the page cache with `posix_fadvise(POSIX_FADV_DONTNEED)`.
final class ExpertReader: @unchecked Sendable {
    let path: String
    let fd: Int32
    /// -1 when the file system refuses O_DIRECT (tmpfs): every range then goes through `fd`.
    let directFD: Int32
    static let alignment = 4096
    /// Linux's O_DIRECT (not exported to Swift without _GNU_SOURCE).
    static let oDirect: Int32 = 0o40000

    init(path: String) throws(ModelError) {
        self.path = path
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ModelError("\(path): cannot open for expert reads: \(String(cString: strerror(errno)))") }
        directFD = open(path, O_RDONLY | O_CLOEXEC | Self.oDirect)
    }

    deinit {
        close(fd)
        if directFD >= 0 { close(directFD) }
    }

    /// Reads `count` bytes at file `offset` into `dst`.
    func read(offset: Int, count: Int, into dst: UnsafeMutableRawPointer) throws(ModelError) {
        let a = Self.alignment
        let direct = directFD >= 0 && offset % a == 0 && count % a == 0 && Int(bitPattern: dst) % a == 0
        try readFully(direct ? directFD : fd, offset: offset, count: count, into: dst)
        if !direct { _ = posix_fadvise(fd, off_t(offset), off_t(count), Int32(POSIX_FADV_DONTNEED)) }
    }

    private func readFully(_ f: Int32, offset: Int, count: Int, into dst: UnsafeMutableRawPointer) throws(ModelError) {
        var done = 0
        while done < count {
            let n = pread(f, dst + done, count - done, off_t(offset + done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                let why = n == 0 ? "the file ends early" : String(cString: strerror(errno))
                throw ModelError("\(path): reading \(count) bytes of expert weights at offset \(offset) failed: \(why)")
            }
            done += n
        }
    }
}
