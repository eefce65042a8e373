import Foundation
import GGUF
import Model
import Synchronization
import Testing
import TestSupport
import Wire
import ClusterProtocol
@testable import Worker

/// Fetching only a worker's shard of the model into a sparse cache: the file holds the header and the pieces the
/// shard reads (the rest are holes), every piece verified against the coordinator's table; several fetches at once
/// on one host fetch once; what verifies on disk is never fetched again (an interrupted fetch resumes, a re-plan
/// fetches only what it adds, a corrupted piece is fetched anew).
@Suite struct ModelFetchTests {
    static let source = try! GGUFFile(path: Fixtures.shippedModel)
    static let digest = try! ModelDigest.compute(path: Fixtures.shippedModel, dataOffset: source.dataOffset, pieces: ModelDigest.pieces(of: source))
    static let config = try! ModelConfig(file: source)
    static let sourceBytes = FileManager.default.contents(atPath: Fixtures.shippedModel)!

    /// What the fake coordinator served: chunk bytes, and the chunk requests in order.
    final class Tally: Sendable {
        let state = Mutex<(bytes: Int, requests: [Range<Int>])>((0, []))
        var bytes: Int { state.withLock { $0.bytes } }
        var requests: [Range<Int>] { state.withLock { $0.requests } }
    }

    /// A fetch whose requests are answered as the coordinator answers them (the same functions), counting the
    /// bytes served; after `failAfter` chunk requests, sending fails (the connection to the coordinator broke).
    static func fetcher(served: Tally, failAfter: Int = .max, table: ModelDigest = digest,
                        corrupt: Bool = false, log: @escaping @Sendable (String) -> Void = { _ in }) -> ModelFetch {
        let replies = PendingReplies()
        let requests = Mutex(0)
        var f = ModelFetch(replies: replies, send: { m in
            let reply: WireMessage
            switch m.envelope.kind {
            case .fetchPieces: reply = ModelChunks.pieceTable(table, id: m.envelope.requestID)
            case .fetchModel(let req):
                let n = requests.withLock { r -> Int in r += 1; return r }
                guard n <= failAfter else { throw WireError(.unavailable, "the coordinator went away") }
                served.state.withLock { s in
                    s.bytes += Int(req.length)
                    s.requests.append(Int(req.offset)..<(Int(req.offset) + Int(req.length)))
                }
                let good = ModelChunks.chunk(req, id: m.envelope.requestID, of: source)
                if corrupt {
                    var bytes = good.frames[0]
                    bytes[bytes.startIndex] ^= 0xff
                    reply = WireMessage.make(good.envelope, tensors: [(.u8, [bytes.count], bytes)])
                } else {
                    reply = good
                }
            default: throw WireError(.internalError, "not a fetch")
            }
            // Through the wire format, as a worker receives it.
            _ = replies.resolve(try WireMessage.decode(try reply.encode()))
        }, log: log)
        f.chunkBytes = 256 << 10
        f.window = 4
        return f
    }

    static var total: Int { source.fileSize }
    static var sha: [UInt8] { source.metadataSHA256 }

    /// The ranges a stage of `layers` holding `experts` reads.
    static func needs(_ layers: Range<Int>, _ experts: [Int: [Int]] = [:]) -> (GGUFFile) throws -> [Range<Int>] {
        { file in WeightLayout(file: file, config: try ModelConfig(file: file)).fileRanges(of: file, layers: layers, experts: ExpertSet(experts)) }
    }

    /// Bytes of `ranges` widened to whole pages and joined, as the fetch asks for them.
    static func pageBytes(_ ranges: [Range<Int>]) -> Int {
        ShardCache.merged(ranges.map { ShardCache.pages($0, total: total) }).reduce(0) { $0 + $1.count }
    }

    static func fileBytes(_ path: String, _ r: Range<Int>) -> Data {
        FileManager.default.contents(atPath: path)!.subdata(in: r)
    }

    @Test func aShardHoldsItsPiecesAndHolesElsewhere() throws {
        let dir = Fixtures.temporaryDirectory().path
        let served = Tally()
        // A middle stage (layers 1..<3) whose experts live elsewhere, plus two experts of layer 3 it serves.
        let needs = Self.needs(1..<3, [3: [2, 5]])
        let fetched = try Self.fetcher(served: served).fetch(sha: Self.sha, data: Self.digest.bytes, total: Self.total, into: dir, needs: needs)
        let cache = try #require(fetched.shard)
        let ranges = try needs(Self.source)
        let header = ShardCache.pages(0..<Self.source.dataOffset, total: Self.total).count
        #expect(served.bytes == header + Self.pageBytes(ranges), "served \(served.bytes)")
        #expect(cache.allocatedBytes <= header + Self.pageBytes(ranges) + 64 << 10, "\(cache.allocatedBytes) bytes allocated")
        #expect(served.bytes < Self.total / 4)
        // What it holds is the model's bytes; the rest (an expert of layer 3 it does not hold, layer 0) is a hole.
        for r in ranges { #expect(Self.fileBytes(cache.path, r) == Self.sourceBytes.subdata(in: r)) }
        let layout = WeightLayout(file: Self.source, config: Self.config)
        // (Its pages that also hold a neighbour's bytes — expert 5 is held — were fetched with the neighbour.)
        let other = layout.expertRanges(layer: 3, expert: 4)[0], p = ModelFetch.page
        let inner = ((other.offset + p - 1) / p * p)..<((other.offset + other.count) / p * p)
        #expect(inner.count > 0 && Self.fileBytes(cache.path, inner).allSatisfy { $0 == 0 })
        let layer0 = try #require(Self.source.tensor(named: "blk.0.attn_q.weight"))
        #expect(Self.fileBytes(cache.path, layer0.fileOffset..<(layer0.fileOffset + layer0.info.byteCount)).allSatisfy { $0 == 0 })
        #expect(fetched.file.metadataSHA256 == Self.sha)
    }

    @Test func severalFetchesAtOnceShareOneDownload() async throws {
        let dir = Fixtures.temporaryDirectory().path
        let served = Tally()
        let needs = Self.needs(0..<2)
        let paths = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<3 {
                group.addTask { try Self.fetcher(served: served).fetch(sha: Self.sha, data: Self.digest.bytes, total: Self.total, into: dir, needs: Self.needs(0..<2)).file.path }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(Set(paths).count == 1)
        let header = ShardCache.pages(0..<Self.source.dataOffset, total: Self.total).count
        #expect(served.bytes == header + Self.pageBytes(try needs(Self.source)), "served \(served.bytes)")
        let left = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        let name = URL(fileURLWithPath: paths[0]).lastPathComponent
        #expect(left == [String(name.dropLast(".shard.gguf".count)) + ".lock", name], "\(left)")
    }

    @Test func aReplanFetchesOnlyTheNewPieces() throws {
        let dir = Fixtures.temporaryDirectory().path
        let first = Tally()
        let fetched = try Self.fetcher(served: first).fetch(sha: Self.sha, data: Self.digest.bytes, total: Self.total, into: dir, needs: Self.needs(0..<2))
        let cache = try #require(fetched.shard)
        // The new plan gives it layer 2 as well: only layer 2's pieces move, and the mapping shows them.
        let second = Tally()
        try cache.ensure(try Self.needs(0..<3)(fetched.file), fetch: Self.fetcher(served: second))
        let added = try Self.needs(2..<3)(Self.source)
        #expect(second.bytes == Self.pageBytes(added) || second.bytes <= Self.pageBytes(added) + 2 * ModelFetch.page, "served \(second.bytes)")
        #expect(second.requests.allSatisfy { r in added.contains { ShardCache.pages($0, total: Self.total).overlaps(r) } })
        let q = try #require(fetched.file.tensor(named: "blk.2.attn_q.weight"))
        #expect(Data(bytes: q.data, count: q.info.byteCount) == Self.sourceBytes.subdata(in: q.fileOffset..<(q.fileOffset + q.info.byteCount)))
        // Asking again fetches nothing.
        let third = Tally()
        try cache.ensure(try Self.needs(0..<3)(fetched.file), fetch: Self.fetcher(served: third))
        #expect(third.bytes == 0)
    }

    @Test func aCorruptedPieceIsFetchedAgain() throws {
        let dir = Fixtures.temporaryDirectory().path
        let needs = Self.needs(1..<2)
        let path = try Self.fetcher(served: Tally()).fetch(sha: Self.sha, data: Self.digest.bytes, total: Self.total, into: dir, needs: needs).file.path
        let k = try #require(Self.source.tensor(named: "blk.1.attn_k.weight"))
        try Fixtures.flipByte(path, at: k.fileOffset + 100)
        // The next worker process to use the cache finds the bad piece by its hash and fetches only it.
        let again = Tally()
        let lines = Mutex<[String]>([])
        _ = try Self.fetcher(served: again, log: { l in lines.withLock { $0.append(l) } })
            .fetch(sha: Self.sha, data: Self.digest.bytes, total: Self.total, into: dir, needs: needs)
        #expect(again.bytes == ShardCache.pages(k.fileOffset..<(k.fileOffset + k.info.byteCount), total: Self.total).count)
        #expect(Self.fileBytes(path, k.fileOffset..<(k.fileOffset + k.info.byteCount)) == Self.sourceBytes.subdata(in: k.fileOffset..<(k.fileOffset + k.info.byteCount)))
        #expect(lines.withLock { $0 }.contains { $0.contains("do not match their hashes") })
    }

    @Test func anInterruptedFetchResumes() throws {
        let dir = Fixtures.temporaryDirectory().path
        let needs = Self.needs(0..<4)
        let broken = Tally()
        #expect(throws: WireError.self) {
            try Self.fetcher(served: broken, failAfter: 20).fetch(sha: Self.sha, data: Self.digest.bytes, total: Self.total, into: dir, needs: needs)
        }
        let again = Tally()
        let f = try Self.fetcher(served: again).fetch(sha: Self.sha, data: Self.digest.bytes, total: Self.total, into: dir, needs: needs)
        let all = ShardCache.pages(0..<Self.source.dataOffset, total: Self.total).count + Self.pageBytes(try needs(Self.source))
        #expect(broken.bytes > 0 && again.bytes < all, "resumed with \(again.bytes) of \(all) bytes")
        for r in try needs(Self.source) { #expect(Self.fileBytes(f.file.path, r) == Self.sourceBytes.subdata(in: r)) }
    }

    @Test func corruptChunksAndForeignTablesAreRefused() throws {
        let dir = Fixtures.temporaryDirectory().path
        #expect(throws: WireError.self) {
            try Self.fetcher(served: Tally(), corrupt: true).fetch(sha: Self.sha, data: Self.digest.bytes, total: Self.total, into: dir, needs: Self.needs(0..<1))
        }
        // A table whose hashes do not add up to the assigned digest is refused before anything is fetched.
        var pieces = Self.digest.pieces
        pieces[3] = .init(offset: pieces[3].offset, count: pieces[3].count, sha256: String(repeating: "00", count: 32))
        let forged = ModelDigest(dataOffset: Self.digest.dataOffset, pieces: pieces, sha256: Self.digest.sha256)
        let served = Tally()
        do {
            _ = try Self.fetcher(served: served, table: forged).fetch(sha: Self.sha, data: Self.digest.bytes, total: Self.total, into: Fixtures.temporaryDirectory().path, needs: Self.needs(0..<1))
            Issue.record("a forged piece table was accepted")
        } catch let e as WireError {
            #expect(e.code == .modelMismatch)
        }
        #expect(served.bytes == 0)
        // Out-of-range requests get an Error, whatever their numbers.
        for (offset, length) in [(UInt64.max, 1), (UInt64(Self.source.fileSize), 1), (0, 64 << 20 + 1), (0, 0)] {
            var req = Conclave_V1_FetchModel()
            req.offset = offset
            req.length = UInt32(length)
            guard case .error = ModelChunks.chunk(req, id: 1, of: Self.source).envelope.kind else { Issue.record("served \(offset)+\(length)"); continue }
        }
    }
}
