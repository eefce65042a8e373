import Foundation
import GGUF
import Model
import Testing
import TestSupport
import Wire
@testable import Worker

/// A worker's peers are untrusted: a stray process cannot take the worker from its coordinator, feed its first
/// stage, or crash it with out-of-range fields; after each bad message the worker serves the next good one.
@Suite struct UntrustedPeerTests {
    /// A peer of the worker: a DEALER and the replies it receives.
    final class Peer {
        let socket: ZMQSocket
        var replies: AsyncStream<Frames>.Iterator
        init(_ endpoint: String) throws {
            socket = try ZMQSocket(.dealer, bind: false, endpoint: endpoint)
            replies = socket.messages.makeAsyncIterator()
        }
        /// Sends and returns the next reply that is not a heartbeat.
        func exchange(_ m: WireMessage) async throws -> WireMessage {
            socket.send(Frames(parts: try m.encode()))
            while true {
                let f = try #require(await replies.next())
                let r = try WireMessage.decode(f.parts)
                if case .heartbeat = r.envelope.kind { continue }
                return r
            }
        }
        func nextHeartbeat() async throws -> Conclave_V1_Heartbeat {
            while true {
                let f = try #require(await replies.next())
                if case .heartbeat(let h) = try WireMessage.decode(f.parts).envelope.kind { return h }
            }
        }
    }

    static func message(_ id: UInt64, _ fill: (inout Envelope) -> Void, tensors: [(Conclave_V1_DType, [Int], Data)] = []) -> WireMessage {
        var e = Envelope()
        e.requestID = id
        fill(&e)
        return WireMessage.make(e, tensors: tensors)
    }

    static func step(_ id: UInt64, sequence: UInt64) -> WireMessage {
        message(id) { e in
            var input = Conclave_V1_StageInput()
            var row = Conclave_V1_BatchRow()
            row.sequence = sequence
            input.rows = [row]
            input.tokens = [100]
            input.sampleRows = [0]
            e.stageInput = input
        }
    }

    func expectError(_ m: WireMessage, _ code: Conclave_V1_Error.Code, _ label: String) {
        guard case .error(let e) = m.envelope.kind else { Issue.record("\(label): no Error reply but \(m.envelope)"); return }
        #expect(e.code == code, "\(label): \(e.message)")
    }

    @Test func strangersCannotAssignFeedOrCrashTheWorker() async throws {
        let router = try ZMQSocket(.router, bind: true, endpoint: "tcp://127.0.0.1:*")
        let options = WorkerService.Options(name: "w", endpoint: router.endpoint, modelPath: Fixtures.shippedModel, memory: 1 << 30,
                                            threads: 1, cacheDirectory: Fixtures.temporaryDirectory().path)
        let service = try WorkerService(options: options, router: router, transports: ZeroMQTransports())
        let serving = Task.detached { await service.serve() }
        defer { router.close(); serving.cancel() }
        let file = try GGUFFile(path: Fixtures.shippedModel)
        var assign = WorkerBudgetTests.assign()
        assign.modelMetadataSha256 = Data(file.metadataSHA256)
        let assignMessage = Self.message(1) { $0.assign = assign }

        let coordinator = try Peer(router.endpoint)
        guard case .ready = try await coordinator.exchange(assignMessage).envelope.kind else { Issue.record("no Ready"); return }
        guard case .tokenOut(let t) = try await coordinator.exchange(Self.step(2, sequence: 5)).envelope.kind, t.tokens.count == 1 else {
            Issue.record("the coordinator's step got no token"); return
        }

        // A stranger may ask who the worker is, but not assign it nor feed its first stage.
        let stranger = try Peer(router.endpoint)
        guard case .hello(let h) = try await stranger.exchange(Self.message(3) { $0.hello = Conclave_V1_Hello() }).envelope.kind else {
            Issue.record("no Hello reply"); return
        }
        #expect(h.workerName == "w")
        expectError(try await stranger.exchange(assignMessage), .held, "a second coordinator's Assign")
        expectError(try await stranger.exchange(Self.step(4, sequence: 5)), .malformed, "a stranger's StageInput")
        // Heartbeats still go to the coordinator.
        _ = try await coordinator.nextHeartbeat()

        // Out-of-range fields from the coordinator itself: an Error reply, and the worker goes on.
        expectError(try await coordinator.exchange(Self.step(5, sequence: 1 << 63)), .malformed, "sequence id 2^63")
        expectError(try await coordinator.exchange(Self.step(6, sequence: UInt64.max)), .malformed, "sequence id 2^64-1")
        let e = WorkerBudgetTests.config.embeddingLength
        var call = Conclave_V1_ExpertCall()
        var route = Conclave_V1_Route()
        route.row = 0
        route.experts = [0]
        route.weights = [1]
        route.slots = [UInt32.max]
        call.routes = [route]
        expectError(try await stranger.exchange(Self.message(7, { $0.expertCall = call }, tensors: [(.f32, [1, e], Data(count: e * 4))])),
                    .malformed, "slot 2^32-1")
        route.slots = [0]
        route.row = 7
        call.routes = [route]
        expectError(try await stranger.exchange(Self.message(8, { $0.expertCall = call }, tensors: [(.f32, [1, e], Data(count: e * 4))])),
                    .malformed, "a row outside the call")
        guard case .tokenOut = try await coordinator.exchange(Self.step(9, sequence: 5)).envelope.kind else { Issue.record("no token after the bad messages"); return }

        // Once the coordinator has gone (its connection closed), a new one may take over.
        coordinator.socket.close()
        var taken = false
        for _ in 0..<100 where !taken {
            let r = try await stranger.exchange(assignMessage)
            if case .ready = r.envelope.kind { taken = true } else { usleep(100_000) }
        }
        #expect(taken, "a new coordinator could not take over after the old one closed")
    }

    /// An in-memory peer with a role, as a ZAP handler would have named it.
    final class RolePeer {
        let socket: InMemoryEndpoint
        var replies: AsyncStream<Frames>.Iterator
        init(_ network: InMemoryNetwork, _ name: String, _ role: PeerRole) throws {
            socket = try network.dealer(connectingTo: "inproc://w", identity: name, role: role)
            replies = socket.messages.makeAsyncIterator()
        }
        func send(_ m: WireMessage) throws { socket.send(Frames(parts: try m.encode())) }
        func next() async throws -> WireMessage {
            while true {
                let r = try WireMessage.decode(try #require(await replies.next()).parts)
                if case .heartbeat = r.envelope.kind { continue }
                return r
            }
        }
        func exchange(_ m: WireMessage) async throws -> WireMessage {
            try send(m)
            return try await next()
        }
    }

    /// With authenticated peers (CurveZMQ), the role decides: only the coordinator assigns, only the stage
    /// before ours feeds our stage, workers of the plan call experts, and clients may do nothing at all.
    @Test func authenticatedRolesDecideWhoMayDoWhat() async throws {
        let network = InMemoryNetwork()
        let router = try network.router(at: "inproc://w")
        let options = WorkerService.Options(name: "w", endpoint: "inproc://w", modelPath: Fixtures.shippedModel, memory: 1 << 30,
                                            threads: 1, cacheDirectory: Fixtures.temporaryDirectory().path)
        let service = try WorkerService(options: options, router: router, transports: InMemoryTransports(network: network, identity: "w", role: .worker("w")))
        let serving = Task.detached { await service.serve() }
        defer { router.close(); serving.cancel() }
        let file = try GGUFFile(path: Fixtures.shippedModel)
        var assign = WorkerBudgetTests.assign()
        assign.modelMetadataSha256 = Data(file.metadataSHA256)
        assign.firstLayer = 1  // a later stage: its input is hidden rows from the stage before
        assign.previousStage = "stage-a"
        let assignMessage = Self.message(1) { $0.assign = assign }

        let coordinator = try RolePeer(network, "coordinator", .coordinator)
        let previous = try RolePeer(network, "stage-a", .worker("stage-a"))
        let other = try RolePeer(network, "other", .worker("other"))
        let client = try RolePeer(network, "client", .client)

        expectError(try await previous.exchange(assignMessage), .malformed, "a worker's Assign")
        expectError(try await client.exchange(assignMessage), .malformed, "a client's Assign")
        expectError(try await client.exchange(Self.message(2) { $0.hello = Conclave_V1_Hello() }), .malformed, "a client's Hello")
        guard case .ready = try await coordinator.exchange(assignMessage).envelope.kind else { Issue.record("the coordinator's Assign got no Ready"); return }

        let e = WorkerBudgetTests.config.embeddingLength
        func hidden(_ id: UInt64) -> WireMessage {
            Self.message(id, { env in
                var input = Conclave_V1_StageInput()
                var row = Conclave_V1_BatchRow()
                row.sequence = 5
                input.rows = [row]
                input.tokens = [100]
                input.sampleRows = [0]
                env.stageInput = input
            }, tensors: [(.f32, [1, e], Data(count: e * 4))])
        }
        // Another worker of the plan may not feed this stage; the stage before may, and the token goes to the
        // coordinator, which owns the request.
        expectError(try await other.exchange(hidden(3)), .malformed, "a StageInput from a worker that does not feed this stage")
        expectError(try await client.exchange(hidden(4)), .malformed, "a client's StageInput")
        try previous.send(hidden(5))
        let answer = try await coordinator.next()
        guard case .tokenOut(let t) = answer.envelope.kind, t.tokens.count == 1 else {
            Issue.record("the previous stage's input gave the coordinator no token: \(answer.envelope.error.message)"); return
        }

        // Expert calls: any worker of the plan, never a client.
        var call = Conclave_V1_ExpertCall()
        call.layer = 1
        var route = Conclave_V1_Route()
        route.experts = [0]
        route.weights = [1]
        route.slots = [0]
        call.routes = [route]
        let expertCall = Self.message(6, { $0.expertCall = call }, tensors: [(.f32, [1, e], Data(count: e * 4))])
        expectError(try await client.exchange(expertCall), .malformed, "a client's expert call")
        guard case .expertResult = try await other.exchange(expertCall).envelope.kind else { Issue.record("a plan worker's expert call got no result"); return }
    }
}
