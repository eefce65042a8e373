import Foundation
import GGUF
import Kernels
import Model
import Wire

/// What a worker holds after its Assign: optionally a pipeline stage (layers a..<b, with a KV cache per sequence
/// and, on the last stage, each sequence's sampler) and the experts it computes — for its own layers and for
/// other workers' layers. Runs on the worker's stage queue (steps) and expert queue (calls), never both at once
/// on the same state: steps own `sequences`, expert calls only read weights.
final class WorkerShard: @unchecked Sendable {
    let file: GGUFFile
    let config: ModelConfig
    let pool: ThreadPool
    let stage: Stage?
    let experts: ExpertServer?
    let contextLength: Int
    let residentBytes: Int
    let layers: Range<Int>
    let expertCount: Int
    /// Where this stage's output goes (empty on the last stage).
    let nextEndpoint: String?

    struct SequenceState {
        var cache: KVCache
        var history: [Int32] = []
        var sampler: Sampler?
    }
    private var sequences: [UInt64: SequenceState] = [:]

    init(file: GGUFFile, assign: Conclave_V1_Assign, threads: Int, connect: (String) throws -> Transport) throws {
        let config = try ModelConfig(file: file)
        let pool = ThreadPool(threads: threads)
        var heldLists: [Int: [Int]] = [:]
        for set in assign.experts { heldLists[Int(set.layer), default: []] += set.experts.map(Int.init) }
        let held = ExpertSet(heldLists)
        var resident = 0
        let local: ResidentExperts?
        if held.listedLayers?.isEmpty ?? true {
            local = nil
        } else {
            let (r, bytes) = try ResidentExperts.load(file: file, config: config, held: held, pool: pool)
            local = r
            resident += bytes
        }
        experts = local.map { ExpertServer(experts: $0, embedding: config.embeddingLength) }
        expertCount = held.count(layers: 0..<config.layerCount, expertCount: config.expertCount)
        layers = Int(assign.firstLayer)..<Int(assign.endLayer)
        if !layers.isEmpty {
            // Experts of our layers held elsewhere: one client per worker endpoint.
            var clients: [String: RemoteClient] = [:]
            var owner: [Int: [Int: RemoteClient]] = [:]
            for remote in assign.remote {
                let client: RemoteClient
                if let c = clients[remote.endpoint] {
                    client = c
                } else {
                    client = RemoteClient(transport: try connect(remote.endpoint))
                    clients[remote.endpoint] = client
                }
                for set in remote.experts {
                    for e in set.experts { owner[Int(set.layer), default: [:]][Int(e)] = client }
                }
            }
            let provider = RemoteExperts(local: local ?? ResidentExperts(weights: [:], pool: pool, held: .none), owner: owner,
                                         embedding: config.embeddingLength)
            self.clients = Array(clients.values)
            let stage = try Stage(file: file, config: config, layers: layers, pool: pool, experts: provider, heldExperts: .none)
            resident += stage.residentBytes
            self.stage = stage
        } else {
            stage = nil
        }
        self.nextEndpoint = assign.nextStageEndpoint.isEmpty ? nil : assign.nextStageEndpoint
        self.file = file
        self.config = config
        self.pool = pool
        self.residentBytes = resident
        self.contextLength = assign.contextLength > 0 ? Int(assign.contextLength) : config.contextLength
    }

    var sequenceCount: Int { sequences.count }
    private var clients: [RemoteClient] = []
    /// Bytes of the expert calls this stage sent to other workers.
    var expertCallBytes: UInt64 { clients.reduce(0) { $0 + $1.bytesSent } }

    enum StepOutput {
        case forward(WireMessage)  // to the next stage
        case tokens(WireMessage)  // TokenOut, to the coordinator
    }

    /// Runs one StageInput through this stage's layers.
    func step(_ msg: WireMessage) throws -> StepOutput {
        guard let stage else { throw WireError(.malformed, "this worker holds no layers; it serves expert calls only") }
        guard case .stageInput(let input) = msg.envelope.kind else { throw WireError(.malformed, "expected a StageInput") }
        let e = config.embeddingLength
        let n = input.rows.count
        guard input.tokens.count == n else { throw WireError(.malformed, "StageInput has \(n) rows but \(input.tokens.count) tokens") }
        guard input.sampling.isEmpty || input.sampling.count == input.sampleRows.count else {
            throw WireError(.malformed, "StageInput has \(input.sampleRows.count) sample rows but \(input.sampling.count) sampling entries")
        }
        var out = Envelope()
        out.requestID = msg.envelope.requestID
        var next = input
        var tokenOut = Conclave_V1_TokenOut()
        var hiddenData = Data()
        if n > 0 {
            let rows = input.rows.map { BatchRow(sequence: Int($0.sequence), position: Int($0.position)) }
            for r in rows where r.position >= contextLength {
                throw WireError(.contextExceeded, "sequence \(r.sequence) position \(r.position) is past the context length \(contextLength)")
            }
            let hidden = UnsafeMutablePointer<Float>.allocate(capacity: n * e)
            defer { hidden.deallocate() }
            if stage.isFirst {
                do { try stage.embed(input.tokens, into: hidden) } catch { throw WireError(.malformed, "\(error)") }
            } else {
                guard msg.frames.count == 1, msg.envelope.tensors[0].dtype == .f32, msg.envelope.tensors[0].shape == [UInt64(n), UInt64(e)] else {
                    throw WireError(.malformed, "a StageInput to layer \(layers.lowerBound) carries one F32 frame of [\(n), \(e)]")
                }
                msg.frames[0].withUnsafeBytes { hidden.update(from: $0.bindMemory(to: Float.self).baseAddress!, count: n * e) }
            }
            var caches: [Int: KVCache] = [:]
            for r in input.rows {
                if r.position == 0 || sequences[r.sequence] == nil {
                    // Position 0 starts the sequence afresh (a reused id, or a replay).
                    sequences[r.sequence] = SequenceState(cache: KVCache(layers: layers, capacity: contextLength, kvDim: config.kvDim))
                }
                caches[Int(r.sequence)] = sequences[r.sequence]!.cache
            }
            try stage.forward(hidden, rows: rows, caches: caches)
            for (r, t) in zip(input.rows, input.tokens) { sequences[r.sequence]!.history.append(t) }

            if stage.isLast {
                let v = config.vocabSize
                let sampleRows = input.sampleRows.map(Int.init)
                guard sampleRows.allSatisfy({ $0 < n }) else { throw WireError(.malformed, "a sample row is outside the \(n) rows") }
                var logits = [Float](repeating: 0, count: sampleRows.count * v)
                try logits.withUnsafeMutableBufferPointer { try stage.logits(hidden, rows: sampleRows, into: $0.baseAddress!) }
                for (i, row) in sampleRows.enumerated() {
                    let seq = input.rows[row].sequence
                    var state = sequences[seq]!
                    if state.sampler == nil {
                        state.sampler = Sampler(input.sampling.isEmpty ? .greedy : SamplingParams(input.sampling[i]))
                    }
                    var sampler = state.sampler!
                    let token = logits.withUnsafeBufferPointer { sampler.sample($0.baseAddress! + i * v, count: v, history: state.history) }
                    state.sampler = sampler
                    sequences[seq] = state
                    tokenOut.sequences.append(seq)
                    tokenOut.tokens.append(token)
                }
            } else {
                hiddenData = Data(bytes: hidden, count: n * e * 4)
            }
        }
        for id in input.release { sequences[id] = nil }
        if stage.isLast {
            out.tokenOut = tokenOut
            return .tokens(WireMessage.make(out))
        }
        next.sampleRows = input.sampleRows
        out.stageInput = next
        return .forward(WireMessage.make(out, tensors: n > 0 ? [(.f32, [n, e], hiddenData)] : []))
    }
}

extension SamplingParams {
    public init(_ s: Conclave_V1_Sampling) {
        self.init()
        temperature = s.temperature
        topK = Int(s.topK)
        topP = s.topP
        minP = s.minP
        repeatPenalty = s.repeatPenalty
        seed = s.seed
    }

    public var wire: Conclave_V1_Sampling {
        var s = Conclave_V1_Sampling()
        s.temperature = temperature
        s.topK = UInt32(max(0, topK))
        s.topP = topP
        s.minP = minP
        s.repeatPenalty = repeatPenalty
        s.seed = seed
        return s
    }
}
