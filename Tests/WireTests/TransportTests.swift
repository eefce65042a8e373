import Foundation
import Testing
@testable import Wire

/// The same exchange over the in-memory twin and over real sockets: both are `Transport`s.
struct TransportTests {
    func next(_ t: Transport) async -> Frames? {
        for await f in t.messages { return f }
        return nil
    }

    func exchange(router: Transport, dealer: Transport) async throws {
        var e = Envelope()
        e.requestID = 5
        e.statusQuery = Conclave_V1_StatusQuery()
        dealer.send(Frames(parts: try WireMessage.make(e).encode()))
        let got = try #require(await next(router))
        let q = try WireMessage.decode(got.parts)
        #expect(q.envelope.requestID == 5)
        var r = Envelope()
        r.requestID = 5
        var status = Conclave_V1_StatusReply()
        status.model = "tiny"
        r.statusReply = status
        router.send(Frames(peer: got.peer, parts: try WireMessage.make(r).encode()))
        let reply = try WireMessage.decode(try #require(await next(dealer)).parts)
        #expect(reply.envelope.statusReply.model == "tiny")
    }

    @Test func inMemory() async throws {
        let net = InMemoryNetwork()
        let router = try net.router(at: "mem://coordinator")
        let dealer = try net.dealer(connectingTo: "mem://coordinator", identity: "w1")
        try await exchange(router: router, dealer: dealer)
        #expect(throws: ZMQError.self) { _ = try net.router(at: "mem://coordinator") }
        #expect(throws: ZMQError.self) { _ = try net.dealer(connectingTo: "mem://nobody", identity: "w2") }
        router.close()
        dealer.close()
    }

    @Test func zeroMQ() async throws {
        let router = try ZMQSocket(.router, bind: true, endpoint: "tcp://127.0.0.1:*")
        let dealer = try ZMQSocket(.dealer, bind: false, endpoint: router.endpoint, identity: "w1")
        try await exchange(router: router, dealer: dealer)
        dealer.close()
        router.close()
    }

    @Test func inMemoryDropsOversizedAndUnroutable() async throws {
        let net = InMemoryNetwork()
        let router = try net.router(at: "mem://c", maxMessageSize: 8)
        let dealer = try net.dealer(connectingTo: "mem://c", identity: "w1")
        dealer.send(Frames(parts: [Data(count: 64)]))  // too big: dropped
        router.send(Frames(peer: Data("ghost".utf8), parts: [Data([1])]))  // nobody: dropped
        dealer.send(Frames(parts: [Data([7])]))
        let got = try #require(await next(router))
        #expect(got.parts == [Data([7])] && got.peer == Data("w1".utf8))
        router.close()
        dealer.close()
    }
}
