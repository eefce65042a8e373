#if canImport(Glibc)
import Glibc
#endif
import GGUF
import Kernels

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

    /// Drops a range from the page cache (so the next read comes from the disk).
    func drop(offset: Int, count: Int) { _ = posix_fadvise(fd, off_t(offset), off_t(count), Int32(POSIX_FADV_DONTNEED)) }

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

/// The disk as the offload cache sees it.
public enum ExpertDisk {
    /// Read bandwidth, bytes per second, for the cache's access pattern: every expert of the model once, in a
    /// shuffled order, through the same reader (the page cache dropped for those ranges first and after each read).
    public static func readBandwidth(file: GGUFFile, config: ModelConfig) throws(ModelError) -> Double {
        let layout = WeightLayout(file: file, config: config)
        let reader = try ExpertReader(path: file.path)
        var keys: [ExpertKey] = []
        for l in 0..<config.layerCount where !layout.expertSlices[l].isEmpty {
            for e in 0..<config.expertCount { keys.append(ExpertKey(layer: l, expert: e)) }
        }
        // A fixed shuffle: the same pattern every run.
        var g: UInt64 = 0x9E37_79B9_7F4A_7C15
        for i in stride(from: keys.count - 1, to: 0, by: -1) {
            g = g &* 6364136223846793005 &+ 1442695040888963407
            keys.swapAt(i, Int((g >> 33) % UInt64(i + 1)))
        }
        let largest = keys.map { layout.bytesPerExpert(layer: $0.layer) }.max() ?? 0
        guard largest > 0 else { throw ModelError("\(file.path) has no routed experts") }
        for k in keys { for r in layout.expertRanges(layer: k.layer, expert: k.expert) { reader.drop(offset: r.offset, count: r.count) } }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: largest + ExpertReader.alignment, alignment: ExpertReader.alignment)
        defer { buffer.deallocate() }
        let t0 = KernelBench.now()
        var bytes = 0
        for k in keys {
            for r in layout.expertRanges(layer: k.layer, expert: k.expert) {
                try reader.read(offset: r.offset, count: r.count, into: buffer)
                bytes += r.count
            }
        }
        return Double(bytes) / max(1e-9, KernelBench.now() - t0)
    }
}
