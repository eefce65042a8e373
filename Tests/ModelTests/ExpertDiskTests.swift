#if canImport(Glibc)
import Glibc
#endif
import Foundation
import GGUF
import Testing
@testable import Model
import TestSupport

/// `ExpertDisk.dropExperts`, which `bench offload` runs before a cold run: after it, none of the experts' pages
/// is in the page cache (mincore on a fresh mapping of the file), though the process had read them all through
/// its own mapping; the other tensors' pages are left alone.
struct ExpertDiskTests {
    @Test func droppedExpertsAreOutOfThePageCache() throws {
        // A copy of its own (other tests map the shipped model at the same time), beside the build on the disk the
        // repository is on: a tmpfs /tmp would hold its pages as the file itself.
        let path = Fixtures.root.appendingPathComponent(".build/expert-disk-test-\(getpid()).gguf").path
        try? FileManager.default.removeItem(atPath: path)
        try FileManager.default.copyItem(atPath: Fixtures.shippedModel, toPath: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        // Written pages are dirty until they reach the disk, and the kernel drops only clean ones (a model file is).
        let w = open(path, O_RDONLY)
        #expect(fsync(w) == 0)
        close(w)
        let file = try GGUFFile(path: path)
        let config = try ModelConfig(file: file)
        let layout = WeightLayout(file: file, config: config)
        // Read every byte through the mapping, as a resident run does.
        var sum: UInt64 = 0
        for i in stride(from: 0, to: file.fileSize, by: 4096) { sum &+= UInt64(file.mapping.base!.load(fromByteOffset: i, as: UInt8.self)) }
        #expect(sum >= 0)
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        func resident(_ ranges: [(offset: Int, count: Int)]) -> (pages: Int, of: Int) {
            let fd = open(path, O_RDONLY)
            defer { close(fd) }
            let p = mmap(nil, file.fileSize, PROT_READ, MAP_SHARED, fd, 0)!
            defer { munmap(p, file.fileSize) }
            var vec = [UInt8](repeating: 0, count: (file.fileSize + page - 1) / page)
            _ = mincore(p, file.fileSize, &vec)
            var inCache = 0, total = 0
            for r in ranges {
                // Pages wholly inside the range (a boundary page may hold another tensor's bytes).
                let first = (r.offset + page - 1) / page, end = (r.offset + r.count) / page
                for i in first..<max(first, end) { total += 1; if vec[i] & 1 != 0 { inCache += 1 } }
            }
            return (inCache, total)
        }
        let experts = (0..<config.layerCount).flatMap { l in (0..<config.expertCount).flatMap { e in layout.expertRanges(layer: l, expert: e).map { ($0.offset, $0.count) } } }
        let before = resident(experts)
        #expect(before.pages == before.of && before.of > 0, "\(before)")
        try ExpertDisk.dropExperts(file: file, config: config)
        let after = resident(experts)
        #expect(after.pages == 0, "\(after.pages) of \(after.of) expert pages still cached")
        // The head was not dropped.
        let head = try #require(file.tensorInfos.first { $0.name == "output.weight" })
        let kept = resident([(file.dataOffset + head.offset, head.byteCount)])
        #expect(kept.pages == kept.of, "\(kept)")
    }
}
