import Foundation
import GGUF
import Synchronization
import Testing
import TestSupport
import Wire
import ClusterProtocol
@testable import Worker

/// Fetching the model into a shared cache: several fetches at once on one host give every one of them the
/// same verified file and transfer it once; an interrupted fetch resumes where its verified chunks end.
@Suite struct ModelFetchTests {
    static let source = try! GGUFFile(path: Fixtures.shippedModel)

    /// What the fake coordinator served: bytes, and the offset of the first request.
    final class Tally: Sendable {
        let state = Mutex<(bytes: Int, first: UInt64?)>((0, nil))
        var bytes: Int { state.withLock { $0.bytes } }
        var first: UInt64? { state.withLock { $0.first } }
    }

    /// A fetch whose requests are answered as the coordinator answers them (the same function), counting the
    /// bytes served; `failAfter` chunk requests, sending fails (the connection to the coordinator broke).
    static func fetcher(served: Tally, failAfter: Int = .max) -> ModelFetch {
        let replies = PendingReplies()
        let requests = Mutex(0)
        var f = ModelFetch(replies: replies, send: { m in
            guard case .fetchModel(let req) = m.envelope.kind else { throw WireError(.internalError, "not a fetch") }
            let n = requests.withLock { r -> Int in r += 1; return r }
            guard n <= failAfter else { throw WireError(.unavailable, "the coordinator went away") }
            served.state.withLock { s in
                if s.first == nil { s.first = req.offset }
                s.bytes += Int(req.length)
            }
            let reply = ModelChunks.chunk(req, id: m.envelope.requestID, of: source)
            // Through the wire format, as a worker receives it.
            _ = replies.resolve(try WireMessage.decode(try reply.encode()))
        }, log: { _ in })
        f.chunkBytes = 1 << 20
        f.window = 4
        return f
    }

    @Test func severalFetchesAtOnceShareOneDownload() async throws {
        let dir = Fixtures.temporaryDirectory().path
        let served = Tally()
        let total = Self.source.fileSize, sha = Self.source.metadataSHA256
        let paths = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<3 {
                group.addTask { try Self.fetcher(served: served).fetch(sha: sha, data: [], total: total, into: dir).0.path }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(Set(paths).count == 1)
        #expect(FileManager.default.contents(atPath: paths[0]) == FileManager.default.contents(atPath: Fixtures.shippedModel))
        #expect(served.bytes == total, "the model was transferred \(Double(served.bytes) / Double(total)) times")
        // Nothing half-written is left beside it; the lock file stays (empty) for the next fetch, and the digest of
        // its weights is kept for the next reuse (ModelDigest).
        let left = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        let name = URL(fileURLWithPath: paths[0]).lastPathComponent
        #expect(left == [name, name + ".conclave-digest", name + ".lock"], "\(left)")
    }

    @Test func anInterruptedFetchResumesAfterItsVerifiedChunks() throws {
        let dir = Fixtures.temporaryDirectory().path
        let total = Self.source.fileSize, sha = Self.source.metadataSHA256
        let served = Tally()
        #expect(throws: WireError.self) { try Self.fetcher(served: served, failAfter: 7).fetch(sha: sha, data: [], total: total, into: dir).0 }
        let final = URL(fileURLWithPath: dir).appendingPathComponent(ModelFetchTests.hex(sha) + ".gguf").path
        #expect(!FileManager.default.fileExists(atPath: final), "a half-fetched model appeared under its final name")
        let partial = try #require(try FileManager.default.attributesOfItem(atPath: final + ".partial")[.size] as? Int)
        #expect(partial > 0 && partial % (1 << 20) == 0, "\(partial) bytes in the partial file")

        let again = Tally()
        let f = try Self.fetcher(served: again).fetch(sha: sha, data: [], total: total, into: dir).0
        #expect(again.first == UInt64(partial), "the second fetch started at \(String(describing: again.first))")
        #expect(again.bytes == total - partial)
        #expect(FileManager.default.contents(atPath: f.path) == FileManager.default.contents(atPath: Fixtures.shippedModel))
    }

    @Test func aCorruptChunkIsRefusedAndNeverWritten() throws {
        let dir = Fixtures.temporaryDirectory().path
        let replies = PendingReplies()
        let f = ModelFetch(replies: replies, send: { m in
            guard case .fetchModel(let req) = m.envelope.kind else { return }
            let good = ModelChunks.chunk(req, id: m.envelope.requestID, of: Self.source)
            var bytes = good.frames[0]
            bytes[bytes.startIndex] ^= 0xff
            _ = replies.resolve(WireMessage.make(good.envelope, tensors: [(.u8, [bytes.count], bytes)]))
        }, log: { _ in })
        #expect(throws: WireError.self) { try f.fetch(sha: Self.source.metadataSHA256, data: [], total: Self.source.fileSize, into: dir) }
        let partial = URL(fileURLWithPath: dir).appendingPathComponent(Self.hex(Self.source.metadataSHA256) + ".gguf.partial").path
        #expect((try FileManager.default.attributesOfItem(atPath: partial)[.size] as? Int) == 0)
        // Out-of-range requests get an Error, whatever their numbers.
        for (offset, length) in [(UInt64.max, 1), (UInt64(Self.source.fileSize), 1), (0, 64 << 20 + 1), (0, 0)] {
            var req = Conclave_V1_FetchModel()
            req.offset = offset
            req.length = UInt32(length)
            guard case .error = ModelChunks.chunk(req, id: 1, of: Self.source).envelope.kind else { Issue.record("served \(offset)+\(length)"); continue }
        }
    }

    static func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }
}
