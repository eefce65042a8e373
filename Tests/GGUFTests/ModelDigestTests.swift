import Foundation
import Testing
import TestSupport
@testable import GGUF

/// The digest of a model's weights: one flipped byte of tensor data changes it (and exactly the range that
/// holds the byte) while the metadata hash stays; it is kept beside the file and reused for that very version
/// of the file only.
@Suite final class ModelDigestTests {
    let dir = Fixtures.temporaryDirectory()
    deinit { try? FileManager.default.removeItem(at: dir) }

    func copy() throws -> String {
        let path = dir.appendingPathComponent("m-\(UUID().uuidString).gguf").path
        try FileManager.default.copyItem(atPath: Fixtures.shippedModel, toPath: path)
        return path
    }

    @Test func aFlippedWeightChangesTheDigestAndOneRange() throws {
        let path = try copy()
        let original = try GGUFFile(path: path)
        let size = original.mapping.count, offset = original.dataOffset
        let before = try ModelDigest.compute(path: path, dataOffset: offset, rangeBytes: 1 << 20, threads: 2)
        #expect(before.ranges.count == (size - offset + (1 << 20) - 1) >> 20)
        #expect(before == (try ModelDigest.compute(path: path, dataOffset: offset, rangeBytes: 1 << 20, threads: 1)), "lanes must not change the digest")
        let at = offset + (size - offset) / 2
        try Fixtures.flipByte(path, at: at)
        let after = try ModelDigest.compute(path: path, dataOffset: offset, rangeBytes: 1 << 20, threads: 2)
        #expect(after.sha256 != before.sha256)
        let differing = zip(before.ranges, after.ranges).enumerated().filter { $0.element.0 != $0.element.1 }.map(\.offset)
        #expect(differing == [(at - offset) >> 20])
        #expect(try GGUFFile(path: path).metadataSHA256 == original.metadataSHA256, "the metadata hash cannot see the weights")
    }

    @Test func theDigestIsKeptForThisVersionOfTheFileOnly() throws {
        let path = try copy()
        let file = try GGUFFile(path: path)
        let digest = try ModelDigest.of(file)
        let cache = path + ".conclave-digest"
        #expect(FileManager.default.fileExists(atPath: cache))
        // What is cached is what is returned: a planted digest with the file's stamp comes back as is…
        let planted = ModelDigest(dataOffset: digest.dataOffset, rangeBytes: digest.rangeBytes, ranges: digest.ranges,
                                  sha256: String(repeating: "ab", count: 32))
        ModelDigest.remember(planted, for: path)
        #expect(try ModelDigest.of(file).sha256 == planted.sha256)
        // …until the file changes: then it is computed again from the bytes.
        try Fixtures.flipByte(path, at: file.dataOffset + 10)
        let changed = try ModelDigest.of(try GGUFFile(path: path))
        #expect(changed.sha256 != planted.sha256 && changed.sha256 != digest.sha256)
        #expect(changed == (try ModelDigest.compute(path: path, dataOffset: file.dataOffset)))
    }
}
