import Foundation
import Runtime
import GGUF
import Kernels
import Model
import Wire
import ClusterProtocol

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
    /// What the stage's KV caches store keys and values in (from the Assign).
    let cacheTypes: CacheTypes
    let residentBytes: Int
    let layers: Range<Int>
    let expertCount: Int
    /// Where this stage's output goes (empty on the last stage).
    let nextEndpoint: String?

    /// The stage's sequences (KV caches, histories, samplers); nil on an experts-only worker.
    private let sequences: StageSequences?
    /// Tokens the stage sampled under a grammar and the time it took (for the heartbeat's metrics).
    var grammarFigures: (seconds: Double, tokens: Int)? { sequences?.grammars.figures }

    /// The byte ranges of `file` that the shard `assign` names reads (its layers' tensors, and the experts it
    /// keeps resident or pages): what a worker without its own copy fetches (`ModelFetch`). Only the header is
    /// read; names outside the model are left to the Assign's own checks.
    static func fileRanges(of file: GGUFFile, assign: Conclave_V1_Assign) throws -> [Range<Int>] {
        let config = try ModelConfig(file: file)
        let first = min(Int(assign.firstLayer), config.layerCount), end = min(max(first, Int(assign.endLayer)), config.layerCount)
        return WeightLayout(file: file, config: config).fileRanges(of: file, layers: first..<end, experts: ExpertSet(wire: assign.experts + assign.paged))
    }


    /// Loads what `assign` names within `memory` bytes: the stage's weights, its resident experts, the offload
    /// cache's slots for its paged experts, scratch, and at least one sequence's KV cache; an Assign that does not
    /// fit is refused with the figures (the coordinator plans with the budget we report, so this is a safeguard).
    /// With `previous` holding the same weights (file, layers, resident and paged experts, slots) — a re-plan
    /// that changed only who holds the other experts, the next stage or the epoch — those are kept as they are
    /// (the offload cache warm), and only the routing to other workers and the sequences are made anew.
    init(file: GGUFFile, assign: Conclave_V1_Assign, threads: Int, memory: Int, previous: WorkerShard? = nil,
         clock: any Clock = MonotonicClock(), connect: @escaping @Sendable (String) throws -> Transport) throws {
        let fileConfig = try ModelConfig(file: file)
        // The coordinator's expert selection (checked: a count past the file's or a weight outside 0..<1 is refused).
        let selection = ExpertSelection(used: assign.expertsUsed > 0 ? Int(assign.expertsUsed) : nil, minWeight: assign.expertMinWeight)
        if let problem = selection.problem(fileUsed: fileConfig.expertsUsed, expertCount: fileConfig.expertCount) {
            throw WireError(.malformed, "Assign's expert selection: \(problem)")
        }
        let config = try fileConfig.selecting(selection)
        // Every field checked before it sizes or indexes anything (found by the wire fuzzer: first > end trapped).
        guard assign.firstLayer <= assign.endLayer, Int(assign.endLayer) <= config.layerCount, assign.slots <= 1 << 20 else {
            throw WireError(.malformed, "Assign names layers \(assign.firstLayer)..<\(assign.endLayer) of a \(config.layerCount)-layer model and \(assign.slots) slots")
        }
        for set in assign.experts + assign.paged + assign.remote.flatMap(\.experts) {
            guard Int(set.layer) < config.layerCount, set.experts.allSatisfy({ Int($0) < config.expertCount }) else {
                throw WireError(.malformed, "Assign names experts of layer \(set.layer) outside the model's \(config.layerCount) layers of \(config.expertCount) experts")
            }
        }
        let held = ExpertSet(wire: assign.experts), paged = ExpertSet(wire: assign.paged)
        layers = Int(assign.firstLayer)..<Int(assign.endLayer)
        contextLength = assign.contextLength > 0 ? Int(assign.contextLength) : config.contextLength
        do {
            cacheTypes = try CacheTypes(key: assign.cacheTypeK, value: assign.cacheTypeV)
            try cacheTypes.check(config)
        } catch {
            throw WireError(.malformed, "Assign's cache types: \(error)")
        }
        // Micro-batches of the Assign's size (512 from a coordinator that does not say), no StageInput larger.
        let microBatch = assign.ubatch > 0 ? Int(min(assign.ubatch, 1 << 20)) : 512
        ubatch = microBatch
        let budget = ShardBudget(file: file, config: config, shard: .init(layers: layers, resident: held, paged: paged, slots: Int(assign.slots)),
                                 context: contextLength, ubatch: ubatch, cacheTypes: cacheTypes)
        do {
            try budget.check(memory: memory)
        } catch {
            throw WireError(.overBudget, "\(error.description) (this worker's --memory)")
        }
        room = budget.room(within: memory)
        let holding = Holding(path: file.path, layers: layers, held: held, paged: paged, slots: Int(assign.slots), threads: threads, selection: selection)
        self.holding = holding
        self.assign = assign
        let kept = previous.flatMap { $0.holding == holding ? $0 : nil }
        keptWeights = kept != nil
        let pool = kept?.pool ?? ThreadPool(threads: threads)
        var resident = 0
        let local: ExpertProvider?
        if let kept {
            local = kept.local
            offload = kept.offload
            resident = kept.residentBytes - (kept.stage?.residentBytes ?? 0)
        } else if !paged.isEmpty {
            let cache = try BudgetedExperts(file: file, config: config, resident: held, paged: paged, slots: Int(assign.slots), pool: pool, clock: clock)
            local = cache
            offload = cache
            resident += cache.heldBytes
        } else if !held.isEmpty {
            let (r, bytes) = try ResidentExperts.load(file: file, config: config, held: held, pool: pool)
            local = r
            resident += bytes
        } else {
            local = nil
        }
        self.local = local
        experts = kept?.experts ?? local.map { ExpertServer(experts: $0, embedding: config.embeddingLength, maxRows: microBatch) }
        expertCount = held.count(layers: 0..<config.layerCount, expertCount: config.expertCount)
            + paged.count(layers: 0..<config.layerCount, expertCount: config.expertCount)
        if !layers.isEmpty {
            // Experts of our layers held elsewhere: one client per worker endpoint.
            var clients: [String: RemoteClient] = [:]
            var owner: [Int: [Int: RemoteClient]] = [:]
            for remote in assign.remote {
                let client: RemoteClient
                if let c = clients[remote.endpoint] {
                    client = c
                } else {
                    let endpoint = remote.endpoint
                    client = RemoteClient(endpoint: endpoint, clock: clock, connect: { try connect(endpoint) })
                    clients[remote.endpoint] = client
                }
                for set in remote.experts {
                    for e in set.experts { owner[Int(set.layer), default: [:]][Int(e)] = client }
                }
            }
            let layout = WeightLayout(file: file, config: config)
            let formats = Dictionary(uniqueKeysWithValues: owner.keys.compactMap { l in layout.expertInputFormat(layer: l).map { (l, $0) } })
            let provider = RemoteExperts(local: local ?? ResidentExperts(weights: [:], pool: pool, held: .none), owner: owner,
                                         embedding: config.embeddingLength, inputFormats: formats)
            self.clients = Array(clients.values)
            remote = provider
            let stage = try kept?.stage?.with(experts: provider)
                ?? Stage(file: file, config: config, layers: layers, pool: pool, experts: provider, heldExperts: .none)
            resident += stage.residentBytes
            self.stage = stage
            sequences = StageSequences(stage: stage, room: room, cacheTypes: cacheTypes, vocabulary: StageSequences.vocabulary(of: file))
        } else {
            stage = nil
            sequences = nil
        }
        self.nextEndpoint = assign.nextStageEndpoint.isEmpty ? nil : assign.nextStageEndpoint
        self.file = file
        self.config = config
        self.pool = pool
        self.residentBytes = resident
    }

    /// The offload cache, when this worker pages experts.
    private(set) var offload: BudgetedExperts?
    /// The experts this worker computes itself (resident or paged), nil when none.
    private let local: ExpertProvider?

    /// What decides the weights a shard loads: equal for two Assigns means the second loads nothing.
    struct Holding: Equatable {
        let path: String
        let layers: Range<Int>
        let held, paged: ExpertSet
        let slots, threads: Int
        /// The stage routes by it: another selection makes a new stage.
        let selection: ExpertSelection
    }
    let holding: Holding
    /// The Assign this shard was made from (what of the file it reads: `fileRanges(of:assign:)`).
    let assign: Conclave_V1_Assign
    /// Made from a previous shard's weights (nothing loaded).
    let keptWeights: Bool
    /// The KV the budget holds beside everything else: running sequences, and kept prefixes in what they leave.
    let room: KVRoom
    /// Sequences whose KV fits the budget beside everything else.
    var maxSequences: Int { room.sequences }
    /// Kept prefixes and the positions they hold (for the heartbeat's metrics).
    var keptFigures: (entries: Int, positions: Int) { sequences?.keptFigures ?? (0, 0) }
    /// Most rows in one StageInput: the micro-batch the budget holds scratch for.
    let ubatch: Int

    var sequenceCount: Int { sequences?.count ?? 0 }
    private var clients: [RemoteClient] = []
    /// Given up for a new assignment: calls to other workers end at once (one may be waiting on a worker that died).
    func abandon() { for c in clients { c.close() } }

    /// Bytes of the expert calls this stage sent to other workers.
    var expertCallBytes: UInt64 { clients.reduce(0) { $0 + $1.bytesSent } }
    /// Where this stage's expert-parallel layers spent their time (nil on an experts-only worker).
    var remoteTiming: RemoteExperts.Timing.Totals? { remote?.timing.snapshot }
    private var remote: RemoteExperts?

    enum StepOutput {
        case forward(WireMessage)  // to the next stage
        case tokens(WireMessage)  // TokenOut, to the coordinator
    }

    /// Runs one StageInput through this stage's layers, or applies the cache changes it carries (a change this
    /// stage refuses is told to `log`, and the input still goes on, so every stage applies the rest).
    func step(_ msg: WireMessage, log: (String) -> Void = { _ in }) throws -> StepOutput {
        guard let stage else { throw WireError(.malformed, "this worker holds no layers; it serves expert calls only") }
        guard case .stageInput(let input) = msg.envelope.kind else { throw WireError(.malformed, "expected a StageInput") }
        let e = config.embeddingLength
        let n = input.rows.count
        guard input.tokens.count == n else { throw WireError(.malformed, "StageInput has \(n) rows but \(input.tokens.count) tokens") }
        guard n <= ubatch else { throw WireError(.malformed, "StageInput has \(n) rows; this stage was assigned micro-batches of at most \(ubatch)") }
        guard input.sampling.isEmpty || input.sampling.count == input.sampleRows.count else {
            throw WireError(.malformed, "StageInput has \(input.sampleRows.count) sample rows but \(input.sampling.count) sampling entries")
        }
        var out = Envelope()
        out.requestID = msg.envelope.requestID
        out.epoch = msg.envelope.epoch
        var next = input
        var tokenOut = Conclave_V1_TokenOut()
        var hiddenData = Data()
        if n > 0, let sequences {
            let hidden = UnsafeMutablePointer<Float>.allocate(capacity: n * e)
            defer { hidden.deallocate() }
            if !stage.isFirst {
                guard msg.frames.count == 1, msg.envelope.tensors[0].dtype == .f32, msg.envelope.tensors[0].shape == [UInt64(n), UInt64(e)] else {
                    throw WireError(.malformed, "a StageInput to layer \(layers.lowerBound) carries one F32 frame of [\(n), \(e)]")
                }
                msg.frames[0].withUnsafeBytes { hidden.update(from: $0.bindMemory(to: Float.self).baseAddress!, count: n * e) }
            }
            let sampled: [(sequence: UInt64, token: SampledToken)]
            do {
                sampled = try sequences.step(rows: input.rows.map { ($0.sequence, Int($0.position)) }, tokens: input.tokens, hidden: hidden,
                                             sampleRows: input.sampleRows.map(Int.init), sampling: input.sampling.map(SamplingParams.init),
                                             logprobs: input.logprobs.map(Int.init))
            } catch let e as StageSequences.StepError {
                throw WireError(step: e)
            }
            if stage.isLast {
                tokenOut = Conclave_V1_TokenOut(sampled: sampled)
            } else {
                hiddenData = Data(bytes: hidden, count: n * e * 4)
            }
        }
        let ops = try input.cacheOps()
        if !ops.isEmpty, let sequences {
            do { try sequences.apply(ops) } catch { log("\(error)") }
        }
        if stage.isLast {
            out.tokenOut = tokenOut
            return .tokens(WireMessage.make(out))
        }
        next.sampleRows = input.sampleRows
        out.stageInput = next
        return .forward(WireMessage.make(out, tensors: n > 0 ? [(.f32, [n, e], hiddenData)] : []))
    }
}
