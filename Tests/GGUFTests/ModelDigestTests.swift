import Foundation
import Testing
import TestSupport
@testable import GGUF

/// The digest of a model's weights: one flipped byte of tensor data changes it (and exactly the piece that
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

    @Test func aFlippedWeightChangesTheDigestAndOnePiece() throws {
        let path = try copy()
        let original = try GGUFFile(path: path)
        let size = original.mapping.count, offset = original.dataOffset
        let pieces = ModelDigest.pieces(of: original)
        let before = try ModelDigest.compute(path: path, dataOffset: offset, pieces: pieces, threads: 2)
        #expect(before.pieces.map(\.range) == pieces)
        #expect(before == (try ModelDigest.compute(path: path, dataOffset: offset, pieces: pieces, threads: 1)), "lanes must not change the digest")
        #expect(before.bytes == ModelDigest.root(of: before.pieces.map { ModelDigest.bytes(hex: $0.sha256) }))
        let at = offset + (size - offset) / 2
        try Fixtures.flipByte(path, at: at)
        let after = try ModelDigest.compute(path: path, dataOffset: offset, pieces: pieces, threads: 2)
        #expect(after.sha256 != before.sha256)
        let differing = zip(before.pieces, after.pieces).filter { $0.0.sha256 != $0.1.sha256 }.map(\.0.range)
        #expect(differing.count == 1 && differing[0].contains(at), "\(differing)")
        #expect(try GGUFFile(path: path).metadataSHA256 == original.metadataSHA256, "the metadata hash cannot see the weights")
    }

    /// Pieces are disjoint, in file order, inside the tensor data, cover every tensor's bytes, and split a stacked
    /// expert tensor into one piece per expert (what a worker holding some experts fetches).
    @Test func piecesAreTensorsAndExpertSlices() throws {
        let file = try GGUFFile(path: Fixtures.shippedModel)
        let pieces = ModelDigest.pieces(of: file)
        for (a, b) in zip(pieces, pieces.dropFirst()) { #expect(a.upperBound <= b.lowerBound) }
        #expect(pieces.first!.lowerBound >= file.dataOffset && pieces.last!.upperBound <= file.fileSize)
        #expect(pieces.reduce(0) { $0 + $1.count } == file.tensorInfos.reduce(0) { $0 + $1.byteCount })
        let experts = try #require(file.tensorInfos.first { $0.name == "blk.0.ffn_up_exps.weight" })
        let start = file.dataOffset + experts.offset, each = experts.byteCount / experts.shape[2]
        let inside = pieces.filter { $0.lowerBound >= start && $0.upperBound <= start + experts.byteCount }
        #expect(inside == (0..<experts.shape[2]).map { (start + $0 * each)..<(start + ($0 + 1) * each) })
        let norm = try #require(file.tensorInfos.first { $0.name == "blk.0.attn_norm.weight" })
        #expect(pieces.contains((file.dataOffset + norm.offset)..<(file.dataOffset + norm.offset + norm.byteCount)))
    }

    @Test func theDigestIsKeptForThisVersionOfTheFileOnly() throws {
        let path = try copy()
        let file = try GGUFFile(path: path)
        let digest = try ModelDigest.of(file)
        let cache = path + ".conclave-digest"
        #expect(FileManager.default.fileExists(atPath: cache))
        // What is cached is what is returned: a planted digest with the file's stamp comes back as is…
        let planted = ModelDigest(dataOffset: digest.dataOffset, pieces: digest.pieces, sha256: String(repeating: "ab", count: 32))
        ModelDigest.remember(planted, for: path)
        #expect(try ModelDigest.of(file).sha256 == planted.sha256)
        // …until the file changes: then it is computed again from the bytes.
        try Fixtures.flipByte(path, at: file.dataOffset + 10)
        let changed = try ModelDigest.of(try GGUFFile(path: path))
        #expect(changed.sha256 != planted.sha256 && changed.sha256 != digest.sha256)
        #expect(changed == (try ModelDigest.compute(path: path, dataOffset: file.dataOffset, pieces: ModelDigest.pieces(of: file))))
    }
}
