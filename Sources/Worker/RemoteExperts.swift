import Foundation
import Model
import Runtime
import Synchronization
import Wire
import Kernels
import GGUF

/// An ExpertProvider that computes the experts it holds locally (resident or paged) and asks other workers for
/// the rest — one call per remote worker per layer, all sent before the local work starts. It writes every
/// (row, slot)'s weighted output like any provider, so `apply` sums them in route order exactly as one process.
public final class RemoteExperts: ExpertProvider, @unchecked Sendable {
    /// How long a layer waits for its replies by polling before it sleeps (see `PendingReplies.Waiter.poll`):
    /// longer than a layer's remote compute and round trip, so a reply is normally seen without a wake-up.
    static let spin = 0.002

    /// Where an expert-parallel layer's time goes, summed over the layers that called other workers: the local
    /// experts computed while the calls were out, then the wait for the replies. With the servers' own compute
    /// time (`expert_serve_seconds`), the rest of the wait is the wire and its hops.
    public final class Timing: Sendable {
        public struct Totals: Sendable {
            public var layers: UInt64 = 0
            /// Calls sent (one per remote worker per layer).
            public var calls: UInt64 = 0
            public var localSeconds = 0.0
            public var waitSeconds = 0.0
        }
        private let totals = Mutex(Totals())
        func add(calls: Int, local: Double, wait: Double) {
            totals.withLock { t in
                t.layers += 1
                t.calls += UInt64(calls)
                t.localSeconds += local
                t.waitSeconds += wait
            }
        }
        public var snapshot: Totals { totals.withLock { $0 } }
    }
    public let timing = Timing()
    let local: ExpertProvider
    /// owner[layer][expert]: nil for a local expert, else the client of the worker holding it.
    let owner: [Int: [Int: RemoteClient]]
    let embedding: Int
    /// Per layer, the format its rows travel in (see `WeightLayout.expertInputFormat`); a layer not listed
    /// sends floats.
    let inputFormats: [Int: GGMLType]

    public init(local: ExpertProvider, owner: [Int: [Int: RemoteClient]], embedding: Int, inputFormats: [Int: GGMLType] = [:]) {
        self.local = local
        self.owner = owner
        self.embedding = embedding
        self.inputFormats = inputFormats
    }

    public var pagesExperts: Bool { local.pagesExperts }

    public func prefetch(layer: Int, experts: Set<Int>) {
        let remote = owner[layer] ?? [:]
        local.prefetch(layer: layer, experts: experts.filter { remote[$0] == nil })
    }

    public func weightedOutputs(layer: Int, input x: ExpertInput, routes: [Route], slotsPerRow k: Int,
                                into results: UnsafeMutablePointer<Float>) throws {
        let e = embedding
        let rows = routes.count
        let remote = owner[layer] ?? [:]
        // Split each row's route between local experts and each remote worker, keeping slots.
        var localRoutes = [Route](repeating: .emptyPart, count: rows)
        var byClient: [ObjectIdentifier: (RemoteClient, [Int: Route])] = [:]
        for (r, route) in routes.enumerated() {
            for i in 0..<route.experts.count {
                let ex = route.experts[i], w = route.weights[i], s = route.slot(i)
                if let c = remote[ex] {
                    var entry = byClient[ObjectIdentifier(c)] ?? (c, [:])
                    entry.1[r, default: .emptyPart].append(ex, weight: w, slot: s)
                    byClient[ObjectIdentifier(c)] = entry
                } else {
                    localRoutes[r].append(ex, weight: w, slot: s)
                }
            }
        }
        // Remote calls go out first, from this thread (a hop to another thread costs more than the send), and
        // local experts are computed while they travel; then each reply is waited for, spinning briefly.
        var calls: [(RemoteClient, [Int], [Int: Route], RemoteClient.Call)] = []
        var failure: String?
        let rowsOut = try byClient.isEmpty ? nil : WireRows(x, rows: rows, embedding: e, format: inputFormats[layer])
        for (_, (client, rs)) in byClient {
            let rowList = rs.keys.sorted()
            var call = Conclave_V1_ExpertCall()
            call.layer = UInt32(layer)
            for (i, r) in rowList.enumerated() {
                var route = Conclave_V1_Route()
                route.row = UInt32(i)
                route.experts = rs[r]!.experts.map(UInt32.init)
                route.weights = rs[r]!.weights
                route.slots = rs[r]!.slots!.map(UInt32.init)
                call.routes.append(route)
            }
            var envelope = Envelope()
            envelope.expertCall = call
            do {
                calls.append((client, rowList, rs, try client.start(envelope, tensors: [rowsOut!.tensor(rowList)])))
            } catch {
                failure = failure ?? "\(error)"
            }
        }
        let tSent = MonotonicClock.seconds()
        // Calls not finished below (local experts failed) are forgotten, so their late replies find no waiter.
        var unfinished = Set(calls.map { $0.3.waiter.id })
        defer { for id in unfinished { calls.first { $0.3.waiter.id == id }?.0.forget(id) } }
        if localRoutes.contains(where: { !$0.experts.isEmpty }) {
            try local.weightedOutputs(layer: layer, input: x, routes: localRoutes, slotsPerRow: k, into: results)
        }
        let tLocal = MonotonicClock.seconds()
        for (client, rowList, rs, pending) in calls {
            do {
                unfinished.remove(pending.waiter.id)
                let reply = try client.finish(pending, spin: Self.spin)
                guard case .expertResult(let res) = reply.envelope.kind, reply.frames.count == 1, res.rows.count == res.slots.count,
                      reply.frames[0].count == res.rows.count * e * 4 else {
                    throw WireError(.malformed, "bad ExpertResult from \(client.endpoint)")
                }
                // Every (row, slot) a peer names must be one we asked it for: nothing it sends writes elsewhere.
                for (row, slot) in zip(res.rows, res.slots) {
                    guard Int(row) < rowList.count, rs[rowList[Int(row)]]!.slots!.contains(Int(slot)) else {
                        throw WireError(.malformed, "ExpertResult from \(client.endpoint) names row \(row) slot \(slot), which was not asked for")
                    }
                }
                reply.frames[0].withUnsafeBytes { buf in
                    let f = buf.bindMemory(to: Float.self)
                    for (j, (row, slot)) in zip(res.rows, res.slots).enumerated() {
                        let r = rowList[Int(row)]
                        (results + (r * k + Int(slot)) * e).update(from: f.baseAddress! + j * e, count: e)
                    }
                }
            } catch {
                failure = failure ?? "\(error)"
            }
        }
        if !calls.isEmpty { timing.add(calls: calls.count, local: tLocal - tSent, wait: MonotonicClock.seconds() - tLocal) }
        // A peer that failed is the cluster's state, not this request's fault: the coordinator recovers from it.
        if let f = failure { throw WireError(.unavailable, "expert call for layer \(layer) failed: \(f)") }
    }
}

/// A layer's rows as an expert call carries them: quantized once to the format the callee's kernels take (the
/// bytes it would make from the floats itself), or the floats when the layer's experts take no such format.
struct WireRows {
    let dtype: Conclave_V1_DType
    let embedding: Int
    /// Where the rows are: quantized here (kept alive while calls are built; each row padded to a cache line),
    /// or the caller's, `stride` bytes apart.
    enum Source { case owned(QuantizedActivations), caller(UnsafeRawPointer, stride: Int) }
    let source: Source

    init(_ input: ExpertInput, rows: Int, embedding e: Int, format: GGMLType?) throws {
        embedding = e
        switch input {
        case .floats(let x):
            if let format, let dtype = Conclave_V1_DType(activations: format) {
                self.dtype = dtype
                source = .owned(try QuantizedActivations(x, cols: e, batch: rows, format: format))
            } else {
                dtype = .f32
                source = .caller(UnsafeRawPointer(x), stride: 4 * e)
            }
        case .quantized(let q, let format, let stride):
            guard let dtype = Conclave_V1_DType(activations: format) else {
                throw WireError(.internalError, "rows in \(format.name) cannot travel in an expert call")
            }
            self.dtype = dtype
            source = .caller(q, stride: stride)
        }
    }

    /// Bytes of one row as it travels.
    var wireRowBytes: Int { dtype == .f32 ? 4 * embedding : WireMessage.frameBytes(dtype, shape: [1, UInt64(embedding)])! }

    /// The frame of rows `rowList`, in that order.
    func tensor(_ rowList: [Int]) -> (Conclave_V1_DType, [Int], Data) {
        let n = wireRowBytes
        var data = Data(capacity: rowList.count * n)
        for r in rowList {
            // Only a row's blocks travel, not its padding.
            let start: UnsafeRawPointer
            switch source {
            case .owned(let q): start = UnsafeRawPointer(q.row(r).baseAddress!)
            case .caller(let p, let stride): start = p + r * stride
            }
            data.append(start.assumingMemoryBound(to: UInt8.self), count: n)
        }
        return (dtype, [rowList.count, embedding], data)
    }
}

extension Conclave_V1_DType {
    /// The wire dtype of rows quantized to `format`; nil for a format that does not travel.
    init?(activations format: GGMLType) {
        switch format {
        case .q8_0: self = .q80
        case .q8_K: self = .q8K
        default: return nil
        }
    }

    /// The activation format of a quantized dtype; nil for plain ones.
    var activationFormat: GGMLType? {
        switch self {
        case .q80: return .q8_0
        case .q8K: return .q8_K
        default: return nil
        }
    }
}
