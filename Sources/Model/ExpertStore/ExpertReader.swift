#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import GGUF
import Runtime
import Kernels

/// Reads experts' bytes from the model file with `pread`, never through the mapping, so that what the offload
/// cache holds is exactly its slots (RSS is the truth) and the page cache does not silently hold the rest.
/// A range of whole aligned blocks is read with O_DIRECT straight into the slot (no copy, no page cache); any
/// other is read normally and dropped from the page cache with `posix_fadvise(POSIX_FADV_DONTNEED)`. (Reading
/// the aligned blocks that cover an unaligned range with O_DIRECT works too, but measured slower on a virtio
/// disk: 22.5 against 27.1 tok/s at half the benchmark model's experts resident — the kernel's read-ahead of
/// buffered reads helps more than the saved copy.) Regions are laid out so either way fits.
final class ExpertReader: @unchecked Sendable {
    let path: String
    let fd: Int32
    /// -1 when the file system refuses O_DIRECT (tmpfs): every range then goes through `fd`.
    let directFD: Int32
    static let alignment = 4096
    /// Linux's O_DIRECT (not exported to Swift without _GNU_SOURCE).
    static let oDirect: Int32 = 0o40000

    /// Read times are measured on it.
    let clock: any Clock

    init(path: String, clock: any Clock = MonotonicClock()) throws(ModelError) {
        self.path = path
        self.clock = clock
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ModelError("\(path): cannot open for expert reads: \(String(cString: strerror(errno)))") }
        directFD = open(path, O_RDONLY | O_CLOEXEC | Self.oDirect)
    }

    deinit {
        close(fd)
        if directFD >= 0 { close(directFD) }
    }

    /// Bytes a region needs to take `count` bytes read this way (whole blocks, one more for the misalignment).
    static func regionBytes(_ count: Int) -> Int { (count + alignment - 1) / alignment * alignment + alignment }

    /// Reads `count` bytes at file `offset` into `region` (aligned, `regionBytes(count)` long); returns where in
    /// the region they start.
    func read(offset: Int, count: Int, into region: UnsafeMutableRawPointer) throws(ModelError) -> Int {
        let a = Self.alignment, delta = offset % a
        precondition(Int(bitPattern: region) % a == 0, "expert reads go into aligned regions")
        if directFD >= 0, delta == 0, count % a == 0, try readDirect(from: offset, need: count, into: region) { return 0 }
        try readFully(fd, offset: offset, count: count, into: region + delta)
        _ = posix_fadvise(fd, off_t(offset), off_t(count), Int32(POSIX_FADV_DONTNEED))
        return delta
    }

    /// Whole aligned blocks from `start` until `need` bytes are in (or the file ends); false when the file
    /// system refuses O_DIRECT reads.
    private func readDirect(from start: Int, need: Int, into region: UnsafeMutableRawPointer) throws(ModelError) -> Bool {
        let length = (need + Self.alignment - 1) / Self.alignment * Self.alignment
        var done = 0
        while done < need {
            let n = pread(directFD, region + done, length - done, off_t(start + done))
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EINVAL && done == 0 { return false }
            guard n > 0 else {
                let why = n == 0 ? "the file ends early" : String(cString: strerror(errno))
                throw ModelError("\(path): reading expert weights at offset \(start + done) failed: \(why)")
            }
            done += n
        }
        return true
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
    /// Drops every routed expert's bytes from this process's mapping of `file` and then from the page cache, so
    /// the next reads of them come from the disk (pages a process maps are not evicted: the mapping goes first).
    /// What `bench offload` does before a cold run; the file's other tensors stay where they are.
    public static func dropExperts(file: GGUFFile, config: ModelConfig) throws(ModelError) {
        let layout = WeightLayout(file: file, config: config)
        let reader = try ExpertReader(path: file.path)
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        for l in 0..<config.layerCount where !layout.expertSlices[l].isEmpty {
            for e in 0..<config.expertCount {
                for r in layout.expertRanges(layer: l, expert: e) {
                    if let base = file.mapping.base {
                        let start = r.offset / page * page, end = min(file.fileSize, (r.offset + r.count + page - 1) / page * page)
                        _ = madvise(UnsafeMutableRawPointer(mutating: base + start), end - start, MADV_DONTNEED)
                    }
                    reader.drop(offset: r.offset, count: r.count)
                }
            }
        }
    }

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
        // As the cache reads a layer's misses: one token's experts at a time, concurrently.
        let group = max(1, config.expertsUsed)
        let buffers = (0..<group).map { _ in UInt(bitPattern: UnsafeMutableRawPointer.allocate(byteCount: ExpertReader.regionBytes(largest), alignment: ExpertReader.alignment)) }
        defer { for b in buffers { UnsafeMutableRawPointer(bitPattern: b)!.deallocate() } }
        let failure = Monitor.Box<ModelError?>(nil), lock = Monitor()
        let t0 = MonotonicClock.seconds()
        for start in stride(from: 0, to: keys.count, by: group) {
            let batch = Array(keys[start..<min(keys.count, start + group)])
            DispatchQueue.concurrentPerform(iterations: batch.count) { i in
                for r in layout.expertRanges(layer: batch[i].layer, expert: batch[i].expert) {
                    do throws(ModelError) { _ = try reader.read(offset: r.offset, count: r.count, into: UnsafeMutableRawPointer(bitPattern: buffers[i])!) } catch { lock.locked { failure.value = error } }
                }
            }
        }
        let seconds = MonotonicClock.seconds() - t0
        if let e = failure.value { throw e }
        return Double(keys.reduce(0) { $0 + layout.bytesPerExpert(layer: $1.layer) }) / max(1e-9, seconds)
    }
}
