#if canImport(Glibc)
import Glibc
#endif
import Foundation
import CurveKeys
import Testing
import TestSupport
@testable import Wire

/// CurveZMQ on real loopback sockets: key files, the ZAP handler's admission by key and role, refusals counted.
/// Waits are for a condition with a generous bound (a loaded machine is slow, never wrong).
struct CurveTests {
    func next(_ s: Transport) async throws -> Frames { try await ZeroMQTests().next(s, within: 60) }

    /// Polls `condition` until it holds (true) or `seconds` pass (false).
    func eventually(within seconds: Double = 60, _ condition: () -> Bool) async throws -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            try await Task.sleep(for: .milliseconds(20))
        }
        return condition()
    }

    @Test func keyFilesRoundTripAndRefuseBadKeys() throws {
        let dir = Fixtures.temporaryDirectory().appendingPathComponent("keys").path
        let pair = try CurveKeyPair.generate()
        try CurveCertificate.write(pair, name: "host-1", into: dir)
        let read = try CurveCertificate.pair(dir, "host-1")
        #expect(read == pair)
        #expect(try CurveCertificate.read(CurveCertificate.publicPath(dir, "host-1")).publicKey == pair.publicKey)
        #expect(try CurveCertificate.read(CurveCertificate.publicPath(dir, "host-1")).pair == nil)  // the public file holds no secret
        // The secret file is readable by its owner alone, and is not replaced by accident.
        var st = stat()
        #expect(stat(CurveCertificate.secretPath(dir, "host-1"), &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(throws: KeyError.self) { try CurveCertificate.write(try CurveKeyPair.generate(), name: "host-1", into: dir) }
        // A key is 40 characters of Z85, given as itself or as a file.
        #expect(try CurveKey(keyOrFile: "host-1.key", relativeTo: dir) == pair.publicKey)
        #expect(try CurveKey(keyOrFile: pair.publicKey.z85) == pair.publicKey)
        #expect(throws: KeyError.self) { _ = try CurveKey(z85: "short") }
        #expect(throws: KeyError.self) { _ = try CurveKey(z85: String(repeating: "~", count: 40)) }  // '~' is not Z85
        #expect(throws: KeyError.self) { _ = try CurveKey(keyOrFile: "no-such.key", relativeTo: dir) }
        // The public key is derived from the secret one, so an edited pair is caught.
        let other = try CurveKeyPair.generate()
        let forged = "curve\n    public-key = \"\(other.publicKey.z85)\"\n    secret-key = \"\(pair.secretZ85)\"\n"
        let forgedPath = dir + "/forged.key_secret"
        try forged.write(toFile: forgedPath, atomically: true, encoding: .utf8)
        #expect(throws: KeyError.self) { _ = try CurveCertificate.read(forgedPath) }
        #expect(throws: KeyError.self) { _ = try CurveCertificate.pair(dir, "missing") }
    }

    @Test func onlyListedKeysGetInAndEachMessageSaysItsRole() async throws {
        let server = try CurveKeyPair.generate(), coordinator = try CurveKeyPair.generate()
        let worker = try CurveKeyPair.generate(), stranger = try CurveKeyPair.generate()
        let factory = ZeroMQTransports(curve: .init(keys: server, admitted: [coordinator.publicKey: .coordinator]))
        let router = try factory.listen("tcp://127.0.0.1:*", maxMessageSize: 1 << 20)
        defer { router.close() }

        // The coordinator's key is admitted for good: its messages say so.
        let c = try ZMQSocket(.dealer, bind: false, endpoint: router.endpoint, identity: "c", security: .curveClient(coordinator, server: server.publicKey))
        defer { c.close() }
        c.send(Frames(parts: [Data("from the coordinator".utf8)]))
        let first = try await next(router)
        #expect(first.parts == [Data("from the coordinator".utf8)] && first.role == .coordinator)

        // A stranger's key is refused: its message never arrives, it learns why, and the refusal is counted.
        let s = try ZMQSocket(.dealer, bind: false, endpoint: router.endpoint, identity: "s", security: .curveClient(stranger, server: server.publicKey))
        defer { s.close() }
        s.send(Frames(parts: [Data("from a stranger".utf8)]))
        #expect(try await eventually { s.handshakeProblem != nil })
        #expect(s.handshakeProblem?.contains("refused this process's CurveZMQ key") == true)
        #expect(factory.refusedPeers == 1)

        // A plain peer is refused before the ZAP handler is asked, and counted too.
        let plain = try ZMQSocket(.dealer, bind: false, endpoint: router.endpoint, identity: "p")
        defer { plain.close() }
        plain.send(Frames(parts: [Data("in the clear".utf8)]))
        #expect(try await eventually { plain.handshakeProblem != nil && factory.refusedPeers >= 2 })
        #expect(plain.handshakeProblem?.contains("requires CurveZMQ") == true)

        // A worker's key gets in once a plan names it, as that worker.
        factory.trust(workers: [TrustedPeer(name: "host-2", endpoint: "tcp://127.0.0.1:1", key: worker.publicKey)])
        let w = try ZMQSocket(.dealer, bind: false, endpoint: router.endpoint, identity: "w", security: .curveClient(worker, server: server.publicKey))
        defer { w.close() }
        w.send(Frames(parts: [Data("from a worker".utf8)]))
        c.send(Frames(parts: [Data("again".utf8)]))
        var got: [Data: Frames] = [:]
        while got.count < 2 {
            let f = try await next(router)
            got[f.parts[0]] = f
        }
        #expect(got[Data("from a worker".utf8)]?.role == .worker("host-2"))
        #expect(got[Data("again".utf8)]?.role == .coordinator)
        #expect(got[Data("from a stranger".utf8)] == nil && got[Data("in the clear".utf8)] == nil)

        // The next plan without it: a new connection with its key is refused.
        factory.trust(workers: [])
        let late = try ZMQSocket(.dealer, bind: false, endpoint: router.endpoint, identity: "w2", security: .curveClient(worker, server: server.publicKey))
        defer { late.close() }
        late.send(Frames(parts: [Data("too late".utf8)]))
        #expect(try await eventually { late.handshakeProblem != nil })
        #expect(factory.refusedPeers >= 3)
    }

    @Test func aClientConnectsOnlyToTheKeyItWasGiven() async throws {
        let real = try CurveKeyPair.generate(), impostor = try CurveKeyPair.generate(), me = try CurveKeyPair.generate()
        // The impostor listens where the client expects `real`: the handshake fails on the impostor's side
        // (it cannot read a HELLO sealed for another key), it counts it, and nothing reaches it.
        let impostorSide = ZeroMQTransports(curve: .init(keys: impostor, admitted: [me.publicKey: .client]))
        let router = try impostorSide.listen("tcp://127.0.0.1:*", maxMessageSize: 1 << 20)
        defer { router.close() }
        let client = ZeroMQTransports(curve: .init(keys: me, admitted: [:], servers: [router.endpoint: real.publicKey]))
        let dealer = try client.connect(router.endpoint)
        defer { dealer.close() }
        dealer.send(Frames(parts: [Data("secret".utf8)]))
        #expect(try await eventually { impostorSide.refusedPeers >= 1 })
        // An endpoint whose key is unknown is not connected to at all.
        #expect(throws: ZMQError.self) { _ = try client.connect("tcp://127.0.0.1:9") }
        // The same client with the right key gets through.
        let rightSide = ZeroMQTransports(curve: .init(keys: real, admitted: [me.publicKey: .client]))
        let good = try rightSide.listen("tcp://127.0.0.1:*", maxMessageSize: 1 << 20)
        defer { good.close() }
        let d2 = try ZMQSocket(.dealer, bind: false, endpoint: good.endpoint, security: .curveClient(me, server: real.publicKey))
        defer { d2.close() }
        d2.send(Frames(parts: [Data("hello".utf8)]))
        let f = try await next(good)
        #expect(f.parts == [Data("hello".utf8)] && f.role == .client)
    }

    /// A joining worker's key is learned for its endpoint (`trust(server:key:)`) only where no other key is known:
    /// a joiner cannot make us expect its key at a listed worker's endpoint, and a plan's workers replacing the
    /// last plan's keep what was learned. A joiner's key is its role on the listener that admits it.
    @Test func aJoinersKeyIsLearnedOnlyForAFreshEndpoint() throws {
        let me = try CurveKeyPair.generate(), listed = try CurveKeyPair.generate().publicKey, joiner = try CurveKeyPair.generate().publicKey
        let t = ZeroMQTransports(curve: .init(keys: me, admitted: [:], servers: ["tcp://127.0.0.1:7001": listed]))
        #expect(!t.trust(server: "tcp://127.0.0.1:7001", key: joiner))
        #expect(t.trust(server: "tcp://127.0.0.1:7001", key: listed))
        #expect(t.trust(server: "tcp://127.0.0.1:7009", key: joiner))
        #expect(t.trust(server: "tcp://127.0.0.1:7009", key: joiner))
        t.trust(workers: [TrustedPeer(name: "a", endpoint: "tcp://127.0.0.1:7002", key: listed)])
        #expect(!t.trust(server: "tcp://127.0.0.1:7009", key: listed))
        #expect(PeerRole(userID: PeerRole.joiner(joiner.z85).userID) == .joiner(joiner.z85))
    }
}
