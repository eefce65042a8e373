import Foundation
import Testing
import ClusterProtocol
import Wire
import TestSupport

/// The client of `generate`, `status` and the benches, against a real ROUTER standing in for the coordinator.
@Suite struct CoordinatorClientTests {
    /// A coordinator that takes the request and then goes away (killed, restarted): the client says at once that
    /// the connection was lost with its request in flight, instead of waiting out its timeout for an answer that
    /// the coordinator listening there next never heard of.
    @Test func aLostConnectionEndsTheRequestInFlight() async throws {
        try await onThread {
            let router = try ZMQSocket(.router, bind: true, endpoint: "tcp://127.0.0.1:*")
            let client = try CoordinatorClient(endpoint: router.endpoint, transports: ZeroMQTransports())
            let received = DispatchSemaphore(value: 0)
            router.receive { frames in
                if (try? WireMessage.decode(frames.parts))?.envelope.generate.prompt == "hello" { received.signal() }
            }
            let closer = Thread {
                // Close once the request arrived (the coordinator had it), as a kill -9 would.
                if received.wait(timeout: .now() + 300) == .success { router.close() }
            }
            closer.start()
            var g = Conclave_V1_Generate()
            g.prompt = "hello"
            g.maxTokens = 4
            let t0 = Date()
            do {
                _ = try client.generate(g, timeout: 600) { _ in }
                Issue.record("no answer was sent, yet generate returned")
            } catch let e as CoordinatorClient.Failure {
                #expect(e.interrupted, "\(e)")
                #expect(e.description.contains("connection to the coordinator") && e.description.contains("sent again"), "\(e)")
            }
            // Generous: a loaded machine; the point is that it is not the 600 s timeout.
            #expect(Date().timeIntervalSince(t0) < 120)
        }
    }

    /// An answer that comes is not an interruption.
    @Test func anAnsweredRequestIsNotInterrupted() async throws {
        try await onThread {
            let router = try ZMQSocket(.router, bind: true, endpoint: "tcp://127.0.0.1:*")
            defer { router.close() }
            let client = try CoordinatorClient(endpoint: router.endpoint, transports: ZeroMQTransports())
            router.receive { frames in
                guard let m = try? WireMessage.decode(frames.parts) else { return }
                var e = Envelope()
                e.requestID = m.envelope.requestID
                var t = Conclave_V1_TokenOut()
                t.text = Data("hi".utf8)
                t.done = true
                e.tokenOut = t
                router.send(Frames(peer: frames.peer, parts: (try? WireMessage.make(e).encode()) ?? []))
            }
            var g = Conclave_V1_Generate()
            g.prompt = "hello"
            var text: [UInt8] = []
            let out = try client.generate(g, timeout: 300) { text += $0 }
            #expect(out.done && text == Array("hi".utf8))
        }
    }
}
