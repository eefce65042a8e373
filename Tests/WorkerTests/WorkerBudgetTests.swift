import Foundation
import GGUF
import Model
import Testing
import TestSupport
import Wire
import ClusterProtocol
@testable import Worker

/// A worker's `--memory` bounds what it loads and how many sequences it admits.
struct WorkerBudgetTests {
    static let file = try! GGUFFile(path: Fixtures.shippedModel)
    static let config = try! ModelConfig(file: file)

    /// The whole model on one worker, every expert resident, 256 positions of context.
    static func assign() -> Conclave_V1_Assign {
        var a = Conclave_V1_Assign()
        a.firstLayer = 0
        a.endLayer = UInt32(config.layerCount)
        a.contextLength = 256
        a.experts = (0..<config.layerCount).map { l in
            var s = Conclave_V1_ExpertSet()
            s.layer = UInt32(l)
            s.experts = (0..<UInt32(config.expertCount)).map { $0 }
            return s
        }
        return a
    }

    static func budget(ubatch: Int = 512) -> ShardBudget {
        ShardBudget(file: file, config: config, shard: .init(layers: 0..<config.layerCount, resident: ExpertSet(wire: assign().experts)),
                    context: 256, ubatch: ubatch)
    }

    static func step(_ shard: WorkerShard, sequence: UInt64, positions: Range<Int>, release: [UInt64] = []) throws -> WorkerShard.StepOutput {
        var input = Conclave_V1_StageInput()
        input.rows = positions.map { p in
            var r = Conclave_V1_BatchRow()
            r.sequence = sequence
            r.position = UInt32(p)
            return r
        }
        input.tokens = positions.map { Int32(100 + $0) }
        input.sampleRows = [UInt32(positions.count - 1)]
        input.release = release
        var e = Envelope()
        e.stageInput = input
        return try shard.step(WireMessage.make(e))
    }

    /// Found by the wire fuzzer: an Assign whose first layer is past its end trapped building the range.
    @Test func anAssignWithOutOfRangeFieldsIsRefused() throws {
        var edits: [(String, (inout Conclave_V1_Assign) -> Void)] = [
            ("first > end", { $0.firstLayer = 3; $0.endLayer = 1 }),
            ("end past the model", { $0.endLayer = 99 }),
            ("a huge slot count", { $0.slots = UInt32.max }),
            ("an unknown cache type", { $0.cacheTypeK = "q5_1" }),
            ("more experts per token than the model routes", { $0.expertsUsed = 9 }),
            ("an expert weight share of 1 or more", { $0.expertMinWeight = 1.5 }),
            ("a NaN expert weight share", { $0.expertMinWeight = .nan }),
        ]
        edits.append(("an expert past the layer's", { a in a.experts[0].experts.append(999) }))
        edits.append(("a layer past the model", { a in a.paged = [a.experts[0]]; a.paged[0].layer = 77 }))
        for (what, edit) in edits {
            var a = Self.assign()
            edit(&a)
            do {
                _ = try WorkerShard(file: Self.file, assign: a, threads: 1, memory: 1 << 30, connect: { _ in throw WireError(.internalError, "no peers") })
                Issue.record("loaded an Assign with \(what)")
            } catch let e as WireError {
                #expect(e.code == .malformed, "\(what): \(e.message)")
            }
        }
    }

    @Test func anAssignBeyondTheBudgetIsRefusedWithTheFigures() throws {
        let base = Self.budget().baseBytes
        do {
            _ = try WorkerShard(file: Self.file, assign: Self.assign(), threads: 1, memory: base, connect: { _ in throw WireError(.internalError, "no peers") })
            Issue.record("loaded an assignment beyond --memory")
        } catch let e as WireError {
            #expect(e.code == .overBudget)
            #expect(e.message.contains("KV for one sequence") && e.message.contains("--memory"), "\(e.message)")
        }
    }

    /// An Assign's quantized cache types: the worker holds its caches in them and admits more sequences.
    @Test func quantizedCacheTypesAdmitMoreSequences() throws {
        let b = Self.budget()
        let memory = b.baseBytes + 2 * b.kvBytesPerSequence
        var a = Self.assign()
        a.cacheTypeK = "q4_0"
        a.cacheTypeV = "q4_0"
        let f16 = try WorkerShard(file: Self.file, assign: Self.assign(), threads: 1, memory: memory, connect: { _ in throw WireError(.internalError, "no peers") })
        let q4 = try WorkerShard(file: Self.file, assign: a, threads: 1, memory: memory, connect: { _ in throw WireError(.internalError, "no peers") })
        // 18 bytes per 32 values instead of 64: the rows of 7 sequences in the room of 2, less each cache's page
        // rounding (`KVRoom`'s overhead: large beside a 256-position context).
        let types = try CacheTypes(key: "q4_0", value: "q4_0")
        let q4Budget = ShardBudget(file: Self.file, config: Self.config, shard: b.shard, context: 256, ubatch: 512, cacheTypes: types)
        #expect(f16.maxSequences == 2 && q4.maxSequences == q4Budget.sequences(within: memory) && q4.maxSequences > 2, "\(q4.maxSequences)")
        #expect(q4.room.positions * KVRoom.bytesPerPosition(layers: Self.config.layerCount, config: Self.config, types: types) > 6 * 256 * KVRoom.bytesPerPosition(layers: Self.config.layerCount, config: Self.config, types: .f16) * 18 / 64)
        #expect(q4.cacheTypes == (try CacheTypes(key: "q4_0", value: "q4_0")))
        guard case .tokens = try Self.step(q4, sequence: 1, positions: 0..<4) else { Issue.record("no tokens"); return }
    }

    @Test func sequencesBeyondTheKVBudgetAreRefusedUntilOneIsReleased() throws {
        let b = Self.budget()
        let memory = b.baseBytes + b.kvBytesPerSequence + b.kvBytesPerSequence / 2
        #expect(b.sequences(within: memory) == 1)
        let shard = try WorkerShard(file: Self.file, assign: Self.assign(), threads: 1, memory: memory, connect: { _ in throw WireError(.internalError, "no peers") })
        #expect(shard.maxSequences == 1)
        guard case .tokens = try Self.step(shard, sequence: 1, positions: 0..<4) else { Issue.record("no tokens"); return }
        do {
            _ = try Self.step(shard, sequence: 2, positions: 0..<4)
            Issue.record("admitted a second sequence beyond the KV budget")
        } catch let e as WireError {
            #expect(e.code == .overBudget && e.message.contains("1 sequence of"), "\(e.message)")
        }
        // The first sequence goes on; once released, the second fits.
        _ = try Self.step(shard, sequence: 1, positions: 4..<5, release: [1])
        #expect(shard.sequenceCount == 0)
        guard case .tokens = try Self.step(shard, sequence: 2, positions: 0..<4) else { Issue.record("no tokens"); return }
    }
}

extension WorkerBudgetTests {
    /// The Assign's micro-batch sizes the scratch the worker budgets for, and no StageInput may be larger: a
    /// coordinator that sends 2048-row steps says so, and pays for it in the worker's budget.
    @Test func theAssignsMicroBatchIsBudgetedAndEnforced() throws {
        let small = Self.budget(ubatch: 32), large = Self.budget(ubatch: 256)
        #expect(large.scratchBytes > small.scratchBytes)
        var a = Self.assign()
        a.ubatch = 256
        do {
            _ = try WorkerShard(file: Self.file, assign: a, threads: 1, memory: small.bytes(sequences: 1), connect: { _ in throw WireError(.internalError, "no peers") })
            Issue.record("loaded 256-row micro-batches within a budget for 32")
        } catch let e as WireError {
            #expect(e.code == .overBudget && e.message.contains("256-row"), "\(e.message)")
        }
        a.ubatch = 8
        let shard = try WorkerShard(file: Self.file, assign: a, threads: 1, memory: 1 << 30, connect: { _ in throw WireError(.internalError, "no peers") })
        do {
            _ = try Self.step(shard, sequence: 1, positions: 0..<9)
            Issue.record("took 9 rows in a stage assigned 8")
        } catch let e as WireError {
            #expect(e.code == .malformed && e.message.contains("at most 8"), "\(e.message)")
        }
        guard case .tokens = try Self.step(shard, sequence: 1, positions: 0..<8) else { Issue.record("no tokens"); return }
    }
}
