import Foundation
import Testing
@testable import Wire

/// Real sockets on loopback (an ephemeral port, so tests never collide).
struct ZeroMQTests {
    func next(_ s: Transport, within seconds: Double = 5) async throws -> Frames {
        try await withThrowingTaskGroup(of: Frames?.self) { group in
            group.addTask { for await f in s.messages { return f }; return nil }
            group.addTask { try await Task.sleep(for: .seconds(seconds)); return nil }
            let first = try await group.next()!
            group.cancelAll()
            guard let f = first else { throw ZMQError(message: "no message within \(seconds) s") }
            return f
        }
    }

    @Test func routerDealerRoundTripWithEnvelopes() async throws {
        let router = try ZMQSocket(.router, bind: true, endpoint: "tcp://127.0.0.1:*")
        defer { router.close() }
        #expect(router.endpoint.hasPrefix("tcp://127.0.0.1:") && !router.endpoint.hasSuffix("*"))
        let dealer = try ZMQSocket(.dealer, bind: false, endpoint: router.endpoint, identity: "worker-1")
        defer { dealer.close() }

        var e = Envelope()
        e.requestID = 1
        var h = Conclave_V1_Hello()
        h.workerName = "worker-1"
        e.hello = h
        let tensor = Data((0..<4096).map { UInt8(truncatingIfNeeded: $0 * 7) })
        dealer.send(Frames(parts: try WireMessage.make(e, tensors: [(.f32, [1024], tensor)]).encode()))

        let got = try await next(router)
        #expect(got.peer == Data("worker-1".utf8))
        let msg = try WireMessage.decode(got.parts)
        #expect(msg.envelope.hello.workerName == "worker-1")
        #expect(msg.frames == [tensor])

        // A reply reaches the dealer that asked; garbage gets an Error reply and the exchange goes on.
        router.send(Frames(peer: got.peer, parts: try WireMessage.errorReply(to: 1, WireError(.malformed, "test")).encode()))
        let reply = try WireMessage.decode(try await next(dealer).parts)
        #expect(reply.envelope.requestID == 1 && reply.envelope.error.code == .malformed)
    }

    @Test func oversizedMessagesNeverArrive() async throws {
        let router = try ZMQSocket(.router, bind: true, endpoint: "tcp://127.0.0.1:*", maxMessageSize: 1024)
        defer { router.close() }
        let dealer = try ZMQSocket(.dealer, bind: false, endpoint: router.endpoint)
        defer { dealer.close() }
        dealer.send(Frames(parts: [Data(count: 4096)]))  // over the router's ZMQ_MAXMSGSIZE: libzmq drops the peer
        let ok = try ZMQSocket(.dealer, bind: false, endpoint: router.endpoint)
        defer { ok.close() }
        ok.send(Frames(parts: [Data([1, 2, 3])]))
        let got = try await next(router)
        #expect(got.parts == [Data([1, 2, 3])])  // the router kept serving the well-behaved peer
    }

    @Test func bindErrorsAreReported() throws {
        #expect(throws: ZMQError.self) { _ = try ZMQSocket(.router, bind: true, endpoint: "tcp://256.1.1.1:1") }
    }
}
