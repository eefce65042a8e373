import Foundation
import Model
import Wire

/// Serves expert calls for the experts this worker holds: an ExpertCall carries the rows (one frame of
/// [rows, embedding], F32 or quantized as the experts' kernels take them) and their routes restricted to our
/// experts; the reply carries each (row, slot)'s weighted output as one F32 frame, in the order of its
/// `rows`/`slots` lists. Bad calls get an Error reply and the server keeps serving.
public final class ExpertServer: @unchecked Sendable {
    let experts: ExpertProvider
    let embedding: Int
    public private(set) var callsServed = 0
    /// Largest summation slot a call may name (no model routes a row to more experts than this).
    static let maxSlots: UInt32 = 64

    /// Most rows one call may carry: the plan's micro-batch (a stage never routes more rows at once), so the
    /// work and memory a call costs are bounded by what the worker was assigned, not by what a sender claims.
    let maxRows: Int

    /// Serves any provider: resident experts, or experts this worker pages from its disk.
    public init(experts: ExpertProvider, embedding: Int, maxRows: Int = 512) {
        self.experts = experts
        self.embedding = embedding
        self.maxRows = maxRows
    }

    /// Answers calls arriving on `transport` until it closes (a worker daemon dispatches them itself instead).
    public func serve(on transport: Transport) async {
        for await frames in transport.messages {
            let reply: WireMessage
            do {
                let msg = try WireMessage.decode(frames.parts)
                reply = try handle(msg)
            } catch let e as WireError {
                reply = WireMessage.errorReply(to: (try? Envelope(serializedBytes: frames.parts.first ?? Data()))?.requestID ?? 0, e)
            } catch {
                reply = WireMessage.errorReply(to: (try? Envelope(serializedBytes: frames.parts.first ?? Data()))?.requestID ?? 0,
                                               WireError(.internalError, "\(error)"))
            }
            if let parts = try? reply.encode() { transport.send(Frames(peer: frames.peer, parts: parts)) }
        }
    }

    func handle(_ msg: WireMessage) throws -> WireMessage {
        guard case .expertCall(let call) = msg.envelope.kind else {
            throw WireError(.malformed, "expected an ExpertCall")
        }
        let e = embedding
        guard msg.frames.count == 1, msg.envelope.tensors[0].shape.count == 2, Int(msg.envelope.tensors[0].shape[1]) == e else {
            throw WireError(.malformed, "an ExpertCall carries one frame of [rows, \(e)]")
        }
        let dtype = msg.envelope.tensors[0].dtype
        guard dtype == .f32 || dtype.activationFormat != nil else {
            throw WireError(.malformed, "an ExpertCall's rows are F32, Q8_0 or Q8_K, not \(dtype)")
        }
        let rows = Int(msg.envelope.tensors[0].shape[0])
        guard rows > 0 else { throw WireError(.malformed, "an ExpertCall without rows") }
        guard rows <= maxRows else {
            throw WireError(.malformed, "an ExpertCall of \(rows) rows; this worker serves calls of at most \(maxRows) (the plan's micro-batch)")
        }
        // Results are computed in dense slots (0..<route length) and answered under the slots the caller named,
        // so the buffer is sized by the experts actually routed, never by a slot number a sender picks.
        var routes = [Route](repeating: Route(experts: [], weights: []), count: rows)
        var named = [[UInt32]](repeating: [], count: rows)
        var k = 0
        for r in call.routes {
            guard Int(r.row) < rows, r.experts.count == r.weights.count, r.experts.count == r.slots.count else {
                throw WireError(.malformed, "route for row \(r.row) is inconsistent")
            }
            // A peer may not name more slots than a route can have, nor one twice.
            guard r.experts.count <= Int(Self.maxSlots), r.slots.allSatisfy({ $0 < Self.maxSlots }), Set(r.slots).count == r.slots.count else {
                throw WireError(.malformed, "route for row \(r.row) names slots \(r.slots); each must be distinct and below \(Self.maxSlots)")
            }
            routes[Int(r.row)] = Route(experts: r.experts.map(Int.init), weights: r.weights, slots: Array(0..<r.experts.count))
            named[Int(r.row)] = r.slots
            k = max(k, r.experts.count)
        }
        var results = [Float](repeating: 0, count: max(1, rows * k * e))
        // The frame's length was checked against its dtype and shape when the message was decoded.
        let x = msg.frames[0]
        try x.withUnsafeBytes { xp in
            let input: ExpertInput = dtype.activationFormat.map { .quantized(xp.baseAddress!, format: $0, rowBytes: xp.count / max(1, rows)) }
                ?? .floats(xp.bindMemory(to: Float.self).baseAddress!)
            try results.withUnsafeMutableBufferPointer { rp in
                try experts.weightedOutputs(layer: Int(call.layer), input: input, routes: routes, slotsPerRow: k, into: rp.baseAddress!)
            }
        }
        var out = Conclave_V1_ExpertResult()
        out.layer = call.layer
        var data = Data()
        for (row, route) in routes.enumerated() {
            for i in 0..<route.experts.count {
                let s = route.slot(i)
                out.rows.append(UInt32(row))
                out.slots.append(named[row][i])
                results.withUnsafeBytes { data.append(contentsOf: $0[((row * k + s) * e * 4)..<((row * k + s + 1) * e * 4)]) }
            }
        }
        var env = Envelope()
        env.requestID = msg.envelope.requestID
        env.expertResult = out
        callsServed += 1
        return WireMessage.make(env, tensors: [(.f32, [out.rows.count, e], data)])
    }
}
