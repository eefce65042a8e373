import Foundation
import GGUF
import Synchronization
import Testing
import TestSupport
import Wire
@testable import Worker

/// The worker daemon's message loop over a real ZeroMQ socket: every kind of bad message gets an Error reply
/// with the right code, and the worker answers the next good request.
@Suite struct WorkerServiceTests {
    func exchange(_ dealer: ZMQSocket, _ parts: [Data], iterator: inout AsyncStream<Frames>.Iterator) async throws -> WireMessage {
        dealer.send(Frames(parts: parts))
        let reply = try #require(await iterator.next())
        return try WireMessage.decode(reply.parts)
    }

    @Test func badMessagesGetErrorsAndTheWorkerKeepsServing() async throws {
        let router = try ZMQSocket(.router, bind: true, endpoint: "tcp://127.0.0.1:*")
        var options = WorkerService.Options(name: "w", endpoint: router.endpoint, modelPath: Fixtures.shippedModel, memory: 1 << 30,
                                            threads: 1, cacheDirectory: Fixtures.temporaryDirectory().path)
        options.maxMessageBytes = 64 << 10
        let service = try WorkerService(options: options, router: router, transports: ZeroMQTransports())
        let serving = Task.detached { await service.serve() }
        defer { router.close(); serving.cancel() }
        let dealer = try ZMQSocket(.dealer, bind: false, endpoint: router.endpoint)
        defer { dealer.close() }
        var replies = dealer.messages.makeAsyncIterator()

        func expectError(_ parts: [Data], _ code: Conclave_V1_Error.Code, _ label: String) async throws {
            let m = try await exchange(dealer, parts, iterator: &replies)
            guard case .error(let e) = m.envelope.kind else { Issue.record("\(label): no Error reply"); return }
            #expect(e.code == code, "\(label): \(e.message)")
            #expect(!e.message.isEmpty)
        }
        var hello = Envelope()
        hello.requestID = 9
        hello.hello = Conclave_V1_Hello()
        let good = try WireMessage.make(hello).encode()

        try await expectError([Data([0xff, 0xff, 0xff, 0x01])], .malformed, "garbage")
        try await expectError([good[0].prefix(good[0].count - 1)], .malformed, "truncated")
        var old = hello
        old.protocolVersion = 99
        try await expectError([try old.serializedData()], .versionMismatch, "wrong version")
        try await expectError(good + [Data(count: 16)], .malformed, "undeclared frame")
        var call = Envelope()
        call.expertCall = Conclave_V1_ExpertCall()
        try await expectError(try WireMessage.make(call, tensors: [(.f32, [100, 256], Data(count: 100 * 256 * 4))]).encode(), .tooLarge, "oversized")
        var gen = Envelope()
        gen.generate = Conclave_V1_Generate()
        try await expectError(try WireMessage.make(gen).encode(), .malformed, "a client message")
        var input = Envelope()
        input.stageInput = Conclave_V1_StageInput()
        try await expectError(try WireMessage.make(input).encode(), .unavailable, "stage input before assignment")

        // Still serving: Hello is answered with this worker's identity and its model's metadata hash.
        let reply = try await exchange(dealer, good, iterator: &replies)
        guard case .hello(let h) = reply.envelope.kind else { Issue.record("no Hello reply: \(reply.envelope)"); return }
        #expect(reply.envelope.requestID == 9)
        #expect(h.workerName == "w")
        #expect(h.hasModel_p)
        #expect([UInt8](h.modelMetadataSha256) == (try GGUFFile(path: Fixtures.shippedModel)).metadataSHA256)
    }

    @Test func sha256MatchesKnownDigests() {
        func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }
        #expect(hex(SHA256.hash([UInt8]())) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(hex(SHA256.hash(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(hex(SHA256.hash(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)))
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        var s = SHA256()
        let million = [UInt8](repeating: 0x61, count: 1_000_000)
        for i in stride(from: 0, to: million.count, by: 777) { million[i..<min(million.count, i + 777)].withUnsafeBytes { s.update($0) } }
        #expect(hex(s.finalize()) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }
}

extension WorkerServiceTests {
    /// A worker with no model of its own keeps the copy it fetched mapped: a second Assign of the same model (a
    /// re-plan giving it more experts) reuses those pages instead of opening the cached file anew, so what it had
    /// packed and faulted in stays, and only the experts that moved to it load. Hello then says it has the model.
    @Test func aFetchedModelStaysMappedAcrossAssigns() async throws {
        let file = try GGUFFile(path: Fixtures.shippedModel)
        let cache = Fixtures.temporaryDirectory().path
        // The model already fetched into the cache (as a previous fetch leaves it).
        let cached = URL(fileURLWithPath: cache).appendingPathComponent(hex(file.metadataSHA256) + ".gguf").path
        try FileManager.default.copyItem(atPath: Fixtures.shippedModel, toPath: cached)
        let router = try ZMQSocket(.router, bind: true, endpoint: "tcp://127.0.0.1:*")
        let options = WorkerService.Options(name: "w", endpoint: router.endpoint, modelPath: nil, memory: 1 << 30,
                                            threads: 1, cacheDirectory: cache)
        let lines = Mutex<[String]>([])
        let service = try WorkerService(options: options, router: router, transports: ZeroMQTransports(),
                                        log: { line in lines.withLock { $0.append(line) } })
        let serving = Task.detached { await service.serve() }
        defer { router.close(); serving.cancel() }
        let coordinator = try UntrustedPeerTests.Peer(router.endpoint)

        var assign = WorkerBudgetTests.assign()
        assign.modelMetadataSha256 = Data(file.metadataSHA256)
        assign.modelBytes = UInt64(file.fileSize)
        // First the experts of half the layers, then of all of them (a lost worker's experts spread to this one).
        let all = assign.experts
        assign.experts = Array(all.prefix(all.count / 2))
        guard case .ready(let first) = try await coordinator.exchange(UntrustedPeerTests.message(1) { $0.assign = assign }).envelope.kind else {
            Issue.record("no Ready for the first Assign"); return
        }
        assign.experts = all
        guard case .ready(let second) = try await coordinator.exchange(UntrustedPeerTests.message(2) { $0.assign = assign }).envelope.kind else {
            Issue.record("no Ready for the second Assign"); return
        }
        #expect(second.residentBytes > first.residentBytes)
        let opened = lines.withLock { $0.filter { $0.contains("using the cached model") } }
        #expect(opened.count == 1, "the cached model was opened \(opened.count) times: \(lines.withLock { $0 })")
        guard case .hello(let h) = try await coordinator.exchange(UntrustedPeerTests.message(3) { $0.hello = Conclave_V1_Hello() }).envelope.kind else {
            Issue.record("no Hello reply"); return
        }
        #expect(h.hasModel_p)
        #expect([UInt8](h.modelMetadataSha256) == file.metadataSHA256)
    }
}
