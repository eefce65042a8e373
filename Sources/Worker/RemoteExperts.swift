import Foundation
import Model
import Synchronization
import Wire

/// Request/response over a DEALER-side transport, usable from synchronous code (a stage's layer loop): a task
/// reads replies and hands each to the waiter with the same request id.
public final class RemoteClient: @unchecked Sendable {
    let transport: Transport
    private let pending = Mutex<[UInt64: (DispatchSemaphore, Box)]>([:])
    private let nextID = Atomic<UInt64>(1)
    private var reader: Task<Void, Never>?

    final class Box: @unchecked Sendable { var reply: Result<WireMessage, WireError>? }

    public init(transport: Transport) {
        self.transport = transport
        reader = Task { [weak self] in
            guard let stream = self?.transport.messages else { return }
            for await frames in stream {
                guard let self else { return }
                let result: Result<WireMessage, WireError>
                var id: UInt64 = 0
                do throws(WireError) {
                    let m = try WireMessage.decode(frames.parts)
                    id = m.envelope.requestID
                    if case .error(let e) = m.envelope.kind { result = .failure(WireError(.internalError, "remote error: \(e.message)")) } else { result = .success(m) }
                } catch {
                    result = .failure(error)
                }
                if let (sem, box) = self.pending.withLock({ $0.removeValue(forKey: id) }) {
                    box.reply = result
                    sem.signal()
                }
            }
        }
    }

    deinit { reader?.cancel() }

    /// Sends and waits for the reply (or fails after `timeout` seconds: a request is never silently dropped).
    public func call(_ envelope: Envelope, tensors: [(Conclave_V1_DType, [Int], Data)], timeout: Double = 30) throws -> WireMessage {
        var e = envelope
        let id = nextID.add(1, ordering: .relaxed).newValue
        e.requestID = id
        let sem = DispatchSemaphore(value: 0), box = Box()
        pending.withLock { $0[id] = (sem, box) }
        transport.send(Frames(parts: try WireMessage.make(e, tensors: tensors).encode()))
        guard sem.wait(timeout: .now() + timeout) == .success, let reply = box.reply else {
            pending.withLock { _ = $0.removeValue(forKey: id) }
            throw WireError(.internalError, "no reply from \(transport.endpoint) within \(timeout) s")
        }
        return try reply.get()
    }
}

/// An ExpertProvider that computes the experts it holds locally and asks other workers for the rest — one call
/// per remote worker per layer, all sent before the local work starts — then sums every row's weighted outputs
/// in route order, exactly as a single process does.
public final class RemoteExperts: ExpertProvider, @unchecked Sendable {
    let local: ResidentExperts
    /// owner[layer][expert]: nil for a local expert, else the client of the worker holding it.
    let owner: [Int: [Int: RemoteClient]]
    let embedding: Int

    public init(local: ResidentExperts, owner: [Int: [Int: RemoteClient]], embedding: Int) {
        self.local = local
        self.owner = owner
        self.embedding = embedding
    }

    public func apply(layer: Int, input x: UnsafePointer<Float>, rows: Int, routes: [Route], output: UnsafeMutablePointer<Float>) throws {
        let e = embedding
        let k = routes.map { $0.experts.count }.max() ?? 0
        let remote = owner[layer] ?? [:]
        // Split each row's route between local experts and each remote worker, keeping slots.
        var localRoutes = [Route](repeating: Route(experts: [], weights: [], slots: []), count: rows)
        var byClient: [ObjectIdentifier: (RemoteClient, [Int: Route])] = [:]
        for (r, route) in routes.enumerated() {
            for i in 0..<route.experts.count {
                let ex = route.experts[i], w = route.weights[i], s = route.slot(i)
                if let c = remote[ex] {
                    var entry = byClient[ObjectIdentifier(c)] ?? (c, [:])
                    var rr = entry.1[r] ?? Route(experts: [], weights: [], slots: [])
                    rr.experts.append(ex); rr.weights.append(w); rr.slots!.append(s)
                    entry.1[r] = rr
                    byClient[ObjectIdentifier(c)] = entry
                } else {
                    localRoutes[r].experts.append(ex); localRoutes[r].weights.append(w); localRoutes[r].slots!.append(s)
                }
            }
        }
        let results = UnsafeMutablePointer<Float>.allocate(capacity: max(1, rows * k * e))
        defer { results.deallocate() }
        // Remote calls go out first (each on its own thread), local experts are computed while they travel.
        let group = DispatchGroup()
        let failures = Mutex<[String]>([])
        for (_, (client, rs)) in byClient {
            let rowList = rs.keys.sorted()
            var call = Conclave_V1_ExpertCall()
            call.layer = UInt32(layer)
            var data = Data(capacity: rowList.count * e * 4)
            for (i, r) in rowList.enumerated() {
                data.append(UnsafeBufferPointer(start: x + r * e, count: e))
                var route = Conclave_V1_Route()
                route.row = UInt32(i)
                route.experts = rs[r]!.experts.map(UInt32.init)
                route.weights = rs[r]!.weights
                route.slots = rs[r]!.slots!.map(UInt32.init)
                call.routes.append(route)
            }
            var envelope = Envelope()
            envelope.expertCall = call
            let env = envelope
            let tensors: [(Conclave_V1_DType, [Int], Data)] = [(.f32, [rowList.count, e], data)]
            let resultsAddress = UInt(bitPattern: results)
            DispatchQueue.global().async(group: group) {
                do {
                    let reply = try client.call(env, tensors: tensors)
                    guard case .expertResult(let res) = reply.envelope.kind, reply.frames.count == 1,
                          reply.frames[0].count == res.rows.count * e * 4 else {
                        throw WireError(.malformed, "bad ExpertResult from \(client.transport.endpoint)")
                    }
                    let dst = UnsafeMutablePointer<Float>(bitPattern: resultsAddress)!
                    reply.frames[0].withUnsafeBytes { buf in
                        let f = buf.bindMemory(to: Float.self)
                        for (j, (row, slot)) in zip(res.rows, res.slots).enumerated() {
                            let r = rowList[Int(row)]
                            (dst + (r * k + Int(slot)) * e).update(from: f.baseAddress! + j * e, count: e)
                        }
                    }
                } catch {
                    failures.withLock { $0.append("\(error)") }
                }
            }
        }
        if localRoutes.contains(where: { !$0.experts.isEmpty }) {
            try local.weightedOutputs(layer: layer, input: x, routes: localRoutes, slotsPerRow: k, into: results)
        }
        group.wait()
        if let f = failures.withLock({ $0.first }) { throw ModelError("expert call for layer \(layer) failed: \(f)") }
        Route.accumulate(routes, results: results, slotsPerRow: k, embedding: e, into: output)
    }
}
