import Foundation
import Runtime
import Synchronization
import Testing
import TestSupport
import GGUF
import Kernels
import Model
import Wire
@testable import Worker

/// Expert parallelism computes exactly what one process computes: the odd experts of every layer are served
/// by another "worker" (an ExpertServer behind a transport) and the logits come out bit-identical.
struct RemoteExpertsTests {
    /// Engine work blocks while remote calls travel; like a worker's compute thread, it runs on its own thread,
    /// never on Swift's cooperative pool (which the transports' readers and servers need).
    func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, Error>) in
            Thread { c.resume(with: Result { try body() }) }.start()
        }
    }

    func run(_ stage: Stage, _ config: ModelConfig, tokens: [Int32]) throws -> [Float] {
        let cache = KVCache(layers: 0..<config.layerCount, capacity: 64, config: config)
        let e = config.embeddingLength, v = config.vocabSize
        var out: [Float] = []
        // A prefill of all but the last two tokens, then two single-token steps.
        var start = 0
        for chunk in [tokens.count - 2, 1, 1] {
            let part = Array(tokens[start..<(start + chunk)])
            let rows = part.indices.map { BatchRow(sequence: 0, position: start + $0) }
            var hidden = [Float](repeating: 0, count: chunk * e)
            var logits = [Float](repeating: 0, count: chunk * v)
            try hidden.withUnsafeMutableBufferPointer { h in
                try stage.embed(part, into: h.baseAddress!)
                try stage.forward(h.baseAddress!, rows: rows, caches: [0: cache])
                try logits.withUnsafeMutableBufferPointer { try stage.logits(h.baseAddress!, rows: Array(0..<chunk), into: $0.baseAddress!) }
            }
            out += logits
            start += chunk
        }
        return out
    }

    /// `pagedSlots`: the serving worker pages its experts through that many cache slots instead of holding them.
    /// `quantized`: rows travel in the format the experts' kernels take (as a worker sends them), else as floats.
    /// Returns the bytes the calls carried.
    @discardableResult
    func check(server serverTransport: Transport, client clientTransport: Transport, pagedSlots: Int? = nil,
               model: String = Fixtures.shippedModel, quantized: Bool = true) async throws -> UInt64 {
        let file = try GGUFFile(path: model)
        let config = try ModelConfig(file: file)
        let pool = ThreadPool(threads: 2)
        let tokens: [Int32] = [1, 450, 4744, 1873, 338, 263, 1243, 310, 278, 2167, 304, 8352, 29889, 13, 3492, 526]

        let refStage = try Stage(file: file, config: config, layers: 0..<config.layerCount, pool: pool)
        let reference = try await onThread { try self.run(refStage, config, tokens: tokens) }

        let serverStage = try Stage(file: file, config: config, layers: 0..<config.layerCount, pool: ThreadPool(threads: 1))
        let served: ExpertProvider = try pagedSlots.map {
            try BudgetedExperts(file: file, config: config, paged: .every(layers: 0..<config.layerCount, expertCount: config.expertCount),
                                slots: $0, pool: ThreadPool(threads: 1))
        } ?? ResidentExperts(weights: serverStage.weights.compactMapValues(\.ffn.experts), pool: ThreadPool(threads: 1))
        let server = ExpertServer(experts: served, embedding: config.embeddingLength)
        let serving = Task.detached { await server.serve(on: serverTransport) }
        defer { serving.cancel() }

        let client = RemoteClient(transport: clientTransport)
        var owner: [Int: [Int: RemoteClient]] = [:]
        for l in 0..<config.layerCount { for e in stride(from: 1, to: config.expertCount, by: 2) { owner[l, default: [:]][e] = client } }
        let layout = WeightLayout(file: file, config: config)
        let formats = quantized ? Dictionary(uniqueKeysWithValues: (0..<config.layerCount).compactMap { l in layout.expertInputFormat(layer: l).map { (l, $0) } }) : [:]
        let localWeights = serverStage.weights.compactMapValues(\.ffn.experts)
        let provider = RemoteExperts(local: ResidentExperts(weights: localWeights, pool: pool), owner: owner, embedding: config.embeddingLength,
                                     inputFormats: formats)
        let split = try Stage(file: file, config: config, layers: 0..<config.layerCount, pool: pool, experts: provider)
        let distributed = try await onThread { try self.run(split, config, tokens: tokens) }

        #expect(server.callsServed > 0)
        #expect(distributed == reference, "logits differ once experts are split across workers")
        return client.bytesSent
    }

    /// The remote worker pages its experts from disk through three slots: still the same bits.
    @Test func pagedExpertsServedRemotely() async throws {
        let net = InMemoryNetwork()
        let router = try net.router(at: "mem://worker-2")
        let dealer = try net.dealer(connectingTo: "mem://worker-2", identity: "worker-1")
        try await check(server: router, client: dealer, pagedSlots: 3)
        router.close()
        dealer.close()
    }

    /// Rows travel as Q8_0 blocks (the Q4_0 experts' input format), the same bits come out, and the calls carry
    /// under a third of the bytes the floats took (34 bytes per 32 values instead of 128, plus the routes).
    @Test func quantizedRowsAreBitIdenticalAndSmaller() async throws {
        let file = try GGUFFile(path: Fixtures.shippedModel)
        let layout = WeightLayout(file: file, config: try ModelConfig(file: file))
        #expect(layout.expertInputFormat(layer: 0) == .q8_0)
        var bytes: [Bool: UInt64] = [:]
        for quantized in [false, true] {
            let net = InMemoryNetwork()
            let router = try net.router(at: "mem://worker-2")
            let dealer = try net.dealer(connectingTo: "mem://worker-2", identity: "worker-1")
            bytes[quantized] = try await check(server: router, client: dealer, quantized: quantized)
            router.close()
            dealer.close()
        }
        let q = try #require(bytes[true]), f = try #require(bytes[false])
        #expect(Double(q) < 0.4 * Double(f), "quantized calls carried \(q) bytes, float calls \(f)")
    }

    /// K-quant experts take Q8_K rows (256 values in 292 bytes with their sums): a Q4_K_M model written here
    /// splits bit-identically too.
    @Test func kQuantExpertsTakeQ8KRows() async throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        var shape = ModelSynthesizer.Shape()
        shape.layers = 2
        let path = dir.appendingPathComponent("q4k.gguf").path
        _ = try ModelSynthesizer(shape: shape, fileType: .q4_K_M, seed: 3, vocabulary: try GGUFFile(path: Fixtures.shippedModel))
            .write(to: path, pool: ThreadPool(threads: 2))
        let file = try GGUFFile(path: path)
        #expect(WeightLayout(file: file, config: try ModelConfig(file: file)).expertInputFormat(layer: 1) == .q8_K)
        let net = InMemoryNetwork()
        let router = try net.router(at: "mem://worker-2")
        let dealer = try net.dealer(connectingTo: "mem://worker-2", identity: "worker-1")
        try await check(server: router, client: dealer, model: path)
        router.close()
        dealer.close()
    }

    /// gpt-oss (MXFP4 experts with biases, the clamped SwiGLU, top-k-then-softmax routing, sliding windows, sinks): its odd
    /// experts served by another worker, resident or paged from disk, give the same bits as one process.
    @Test(arguments: [nil, 3] as [Int?]) func gptOssExpertsSplitBitIdentically(pagedSlots: Int?) async throws {
        var shape = ModelSynthesizer.Shape()
        shape.architecture = "gpt-oss"
        shape.layers = 2
        shape.slidingWindow = 4
        shape.expertType = .mxfp4  // as gpt-oss ships its experts; their rows travel as Q8_0
        try await splitBitIdentically(shape, seed: 5, pagedSlots: pagedSlots)
    }

    /// deepseek2 (latent attention, a dense first layer that has no experts to split, ungated shared experts on
    /// the stage, sigmoid routing with a selection bias over groups): the same.
    @Test(arguments: [nil, 3] as [Int?]) func deepseekExpertsSplitBitIdentically(pagedSlots: Int?) async throws {
        var shape = ModelSynthesizer.Shape()
        shape.architecture = "deepseek2"
        shape.layers = 3
        shape.gating = .sigmoid
        shape.normalizeWeights = true
        shape.groups = (4, 2)
        try await splitBitIdentically(shape, seed: 5, pagedSlots: pagedSlots)
    }

    private func splitBitIdentically(_ shape: ModelSynthesizer.Shape, seed: UInt64, pagedSlots: Int?) async throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("\(shape.architecture).gguf").path
        _ = try ModelSynthesizer(shape: shape, fileType: .q8_0, seed: seed, vocabulary: try GGUFFile(path: Fixtures.shippedModel))
            .write(to: path, pool: ThreadPool(threads: 2))
        let net = InMemoryNetwork()
        let router = try net.router(at: "mem://worker-2")
        let dealer = try net.dealer(connectingTo: "mem://worker-2", identity: "worker-1")
        try await check(server: router, client: dealer, pagedSlots: pagedSlots, model: path)
        router.close()
        dealer.close()
    }

    @Test func inMemoryTransport() async throws {
        let net = InMemoryNetwork()
        let router = try net.router(at: "mem://worker-2")
        let dealer = try net.dealer(connectingTo: "mem://worker-2", identity: "worker-1")
        try await check(server: router, client: dealer)
        router.close()
        dealer.close()
    }

    @Test func zeroMQLoopback() async throws {
        let router = try ZMQSocket(.router, bind: true, endpoint: "tcp://127.0.0.1:*")
        let dealer = try ZMQSocket(.dealer, bind: false, endpoint: router.endpoint, identity: "worker-1")
        try await check(server: router, client: dealer)
        dealer.close()
        router.close()
    }

    /// A call the server cannot use gets an Error reply, and the server answers the next good call.
    @Test func malformedCallGetsAnErrorAndServingGoesOn() async throws {
        let file = try GGUFFile(path: Fixtures.shippedModel)
        let config = try ModelConfig(file: file)
        let stage = try Stage(file: file, config: config, layers: 0..<1, pool: ThreadPool(threads: 1))
        let net = InMemoryNetwork()
        let router = try net.router(at: "mem://w")
        let dealer = try net.dealer(connectingTo: "mem://w", identity: "c")
        let server = ExpertServer(experts: ResidentExperts(weights: stage.weights.compactMapValues(\.ffn.experts), pool: ThreadPool(threads: 1)),
                                  embedding: config.embeddingLength)
        let serving = Task.detached { await server.serve(on: router) }
        defer { serving.cancel() }
        let client = RemoteClient(transport: dealer)
        var bad = Envelope()
        bad.expertCall = Conclave_V1_ExpertCall()
        let badCall = bad
        let badResult = try await onThread { Result { try client.call(badCall, tensors: [], timeout: 120) } }
        #expect((try? badResult.get()) == nil)  // no rows frame: an Error reply, not a hang
        dealer.send(Frames(parts: [Data([0xFF, 0x00])]))  // not even an envelope
        var good = Envelope()
        var call = Conclave_V1_ExpertCall()
        call.layer = 0
        var route = Conclave_V1_Route()
        route.row = 0
        route.experts = [3]
        route.weights = [1]
        route.slots = [0]
        call.routes = [route]
        good.expertCall = call
        let x = Data(repeating: 0, count: config.embeddingLength * 4)
        let goodCall = good
        let reply = try await onThread { try client.call(goodCall, tensors: [(.f32, [1, config.embeddingLength], x)], timeout: 120) }
        guard case .expertResult(let res) = reply.envelope.kind else { Issue.record("no ExpertResult"); return }
        #expect(res.rows == [0] && res.slots == [0])

        // Work per call is bounded by the plan's micro-batch, not by the sender: 4 096 rows naming slot 63 (which
        // once sized a 4096 × 64 × embedding buffer) are refused before anything is allocated.
        var flood = call
        flood.routes = (0..<4096).map { i in
            var r = Conclave_V1_Route()
            r.row = UInt32(i); r.experts = [3]; r.weights = [1]; r.slots = [63]
            return r
        }
        var floodEnvelope = Envelope()
        floodEnvelope.expertCall = flood
        let rows = Data(repeating: 0, count: 4096 * config.embeddingLength * 4)
        let before = WorkerMetrics.rssBytes()
        let floodCall = floodEnvelope
        let refused = try await onThread { Result { try client.call(floodCall, tensors: [(.f32, [4096, config.embeddingLength], rows)], timeout: 120) } }
        let grown = Int64(WorkerMetrics.rssBytes()) - Int64(before)
        guard case .failure(let e as WireError) = refused else { Issue.record("a 4096-row call was answered"); return }
        #expect(e.message.contains("at most 512"), "\(e.message)")
        #expect(grown < 16 << 20, "RSS grew \(grown) bytes for a refused call")
        // One row at slot 63: answered under slot 63, with the slot-0 call's values (the buffer is by routes).
        var high = route
        high.slots = [63]
        var one = call
        one.routes = [high]
        var oneEnvelope = Envelope()
        oneEnvelope.expertCall = one
        let oneCall = oneEnvelope
        let highReply = try await onThread { try client.call(oneCall, tensors: [(.f32, [1, config.embeddingLength], x)], timeout: 120) }
        guard case .expertResult(let hr) = highReply.envelope.kind else { Issue.record("no ExpertResult for slot 63"); return }
        #expect(hr.rows == [0] && hr.slots == [63])
        #expect(highReply.frames == reply.frames)
        router.close()
        dealer.close()
    }

    /// The local provider of the overlap test: says when its computation starts and ends.
    final class Watched: ExpertProvider, @unchecked Sendable {
        let inner: ExpertProvider
        let started = DispatchSemaphore(value: 0)
        let events = Mutex<[String]>([])
        init(_ inner: ExpertProvider) { self.inner = inner }
        func weightedOutputs(layer: Int, input x: ExpertInput, routes: [Route], slotsPerRow k: Int,
                             into results: UnsafeMutablePointer<Float>) throws {
            events.withLock { $0.append("local started") }
            started.signal()
            try inner.weightedOutputs(layer: layer, input: x, routes: routes, slotsPerRow: k, into: results)
            events.withLock { $0.append("local done") }
        }
    }

    /// Local experts compute while the remote call travels: the remote worker has the call before the local
    /// experts are done, and it answers only once they have started (a slow remote) — a layer that sent its
    /// calls after its local work, or waited for them before it, fails one of the two.
    @Test func localExpertsComputeWhileTheRemoteCallIsOut() async throws {
        let file = try GGUFFile(path: Fixtures.shippedModel)
        let config = try ModelConfig(file: file)
        let stage = try Stage(file: file, config: config, layers: 0..<1, pool: ThreadPool(threads: 1))
        let weights = stage.weights.compactMapValues(\.ffn.experts)
        let net = InMemoryNetwork()
        let router = try net.router(at: "mem://slow")
        let dealer = try net.dealer(connectingTo: "mem://slow", identity: "stage")
        let local = Watched(ResidentExperts(weights: weights, pool: ThreadPool(threads: 1)))
        let server = ExpertServer(experts: ResidentExperts(weights: weights, pool: ThreadPool(threads: 1)), embedding: config.embeddingLength)
        // The slow remote: on its own thread, it waits (at most a minute) for the local experts to start.
        let sawLocalStart = Mutex<Bool?>(nil)
        router.receive { frames in
            local.events.withLock { $0.append("remote has the call") }
            Thread {
                sawLocalStart.withLock { $0 = local.started.wait(timeout: .now() + 60) == .success }
                guard let msg = try? WireMessage.decode(frames.parts), let reply = try? server.handle(msg), let parts = try? reply.encode() else { return }
                router.send(Frames(peer: frames.peer, parts: parts))
            }.start()
        }
        let client = RemoteClient(transport: dealer)
        let e = config.embeddingLength
        let provider = RemoteExperts(local: local, owner: [0: [1: client]], embedding: e)
        // One row routed to expert 0 (here) and expert 1 (there).
        let routes = [Route(experts: [0, 1], weights: [0.5, 0.5], slots: [0, 1])]
        let x = (0..<e).map { Float($0 % 7) / 7 }
        let outputs = try await onThread { () throws -> [Float] in
            var out = [Float](repeating: 0, count: 2 * e)
            try x.withUnsafeBufferPointer { xp in
                try out.withUnsafeMutableBufferPointer { try provider.weightedOutputs(layer: 0, input: .floats(xp.baseAddress!), routes: routes, slotsPerRow: 2, into: $0.baseAddress!) }
            }
            return out
        }
        let order = local.events.withLock { $0 }
        #expect(sawLocalStart.withLock { $0 } == true, "the remote answered before the local experts started (they waited for it): \(order)")
        let got = try #require(order.firstIndex(of: "remote has the call")), done = try #require(order.firstIndex(of: "local done"))
        #expect(got < done, "the call left only after the local experts were done: \(order)")
        // And the remote slot holds what the remote computed (the same as computing it here).
        var alone = [Float](repeating: 0, count: 2 * e)
        try x.withUnsafeBufferPointer { xp in
            try alone.withUnsafeMutableBufferPointer {
                try ResidentExperts(weights: weights, pool: ThreadPool(threads: 1)).weightedOutputs(layer: 0, input: .floats(xp.baseAddress!), routes: routes, slotsPerRow: 2, into: $0.baseAddress!)
            }
        }
        #expect(outputs == alone)
        #expect(provider.timing.snapshot.layers == 1)
        router.close()
        dealer.close()
    }
}
