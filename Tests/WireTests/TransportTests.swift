import Foundation
import Testing
import Synchronization
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

    /// The stack depth at which a receiver runs, for each of `count` messages.
    func receiverDepths(router: Transport, dealer: Transport, count: Int) -> [Int] {
        let depths = Mutex<[Int]>([])
        let all = DispatchSemaphore(value: 0)
        router.receive { _ in
            let n = depths.withLock { d in d.append(Thread.callStackReturnAddresses.count); return d.count }
            if n == count { all.signal() }
        }
        for i in 0..<count { dealer.send(Frames(parts: [Data([UInt8(i & 0xFF)])])) }
        _ = all.wait(timeout: .now() + 300)
        return depths.withLock { $0 }
    }

    /// A receiver is called through the same frames for the 1st message and the 300th: no wrapper added per
    /// message (a function value read from a Mutex grew a thunk per read, and every message walked them all).
    @Test(arguments: ["memory", "zeromq"]) func aReceiverIsNotReWrappedPerMessage(kind: String) async throws {
        let router: Transport, dealer: Transport
        if kind == "memory" {
            let net = InMemoryNetwork()
            router = try net.router(at: "mem://c")
            dealer = try net.dealer(connectingTo: "mem://c", identity: "w1")
        } else {
            router = try ZMQSocket(.router, bind: true, endpoint: "tcp://127.0.0.1:*")
            dealer = try ZMQSocket(.dealer, bind: false, endpoint: router.endpoint, identity: "w1")
        }
        defer { dealer.close(); router.close() }
        let depths = receiverDepths(router: router, dealer: dealer, count: 300)
        #expect(depths.count == 300)
        #expect(Set(depths).count == 1, "the receiver's stack grew from \(depths.first ?? 0) to \(depths.max() ?? 0) frames")
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
