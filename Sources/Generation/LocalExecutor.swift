import Foundation
import Model
import Synchronization

/// Steps computed by an engine's stages in this process (`conclave serve -m MODEL`): one step at a time on a
/// thread of its own, each stage keeping its sequences' caches in a `StageSequences`, exactly as a worker does.
public final class LocalExecutor: StepExecutor, @unchecked Sendable {  // the stages are touched only by the step thread
    public let engine: Engine
    private let stages: [StageSequences]
    public let pipelineDepth = 1
    public let stepTimeout: Double? = nil
    /// Where refused cache changes are told (the scheduler's log).
    public var log: (@Sendable (String) -> Void)?

    enum Work {
        case step(UInt64, Step, @Sendable (Result<[UInt64: [SampledToken]], GenerationError>) -> Void)
        case cache(CacheOps)
        case count(@Sendable (Int) -> Void)
    }
    private let queue = Mutex<(work: [Work], cancelled: Set<UInt64>, open: Bool)>(([], [], true))
    private let ready = DispatchSemaphore(value: 0)

    /// `capacity` positions per sequence, at most `maxSequences` sequences with caches at once, and
    /// `prefixCacheBytes` more of KV (the whole model's) for ended sequences kept for reuse.
    public init(engine: Engine, capacity: Int, maxSequences: Int, prefixCacheBytes: Int = 0) {
        self.engine = engine
        let perPosition = KVRoom.bytesPerPosition(layers: engine.config.layerCount, config: engine.config, types: engine.cacheTypes)
        let kept = perPosition > 0 ? max(0, prefixCacheBytes) / perPosition : 0
        stages = engine.stages.map { stage in
            var room = KVRoom(bytes: 0, layers: stage.layers.count, context: capacity, config: engine.config, types: engine.cacheTypes)
            room.positions = room.perSequence * maxSequences + kept
            return StageSequences(stage: stage, room: room, cacheTypes: engine.cacheTypes, vocabulary: StageSequences.vocabulary(of: engine.tokenizer))
        }
        kvRoom = KVRoom.pipeline(stages.map(\.room))
        let t = Thread { [self] in run() }
        t.name = "conclave.local-executor"
        t.start()
    }

    /// Tokens sampled under a grammar and the time sampling them took (the last stage's), for /metrics.
    public var grammarFigures: (seconds: Double, tokens: Int) { stages.last?.grammars.figures ?? (0, 0) }

    /// Ends the step thread once the queued work is done.
    public func close() {
        queue.withLock { $0.open = false }
        ready.signal()
    }

    public func start(_ step: Step, id: UInt64, done: @escaping @Sendable (Result<[UInt64: [SampledToken]], GenerationError>) -> Void) {
        queue.withLock { $0.work.append(.step(id, step, done)) }
        ready.signal()
    }

    public func cancel(_ id: UInt64) { queue.withLock { _ = $0.cancelled.insert(id) } }

    public let kvRoom: KVRoom?

    public func apply(_ ops: CacheOps) {
        queue.withLock { $0.work.append(.cache(ops)) }
        ready.signal()
    }

    /// Kept prefixes and their positions (the first stage's: every stage keeps the same), for tests.
    public func keptPrefixes() -> (entries: Int, positions: Int) {
        let done = DispatchSemaphore(value: 0)
        let result = Mutex((0, 0))
        queue.withLock { $0.work.append(.count({ _ in result.withLock { $0 = self.stages.first?.keptFigures ?? (0, 0) }; done.signal() })) }
        ready.signal()
        done.wait()
        return result.withLock { $0 }
    }

    public func unavailable() -> GenerationError? { nil }

    /// Sequences holding caches now, counted on the step thread after the work queued before (for status and tests).
    public func liveSequences() -> Int {
        let done = DispatchSemaphore(value: 0)
        let result = Mutex(0)
        queue.withLock { $0.work.append(.count({ n in result.withLock { $0 = n }; done.signal() })) }
        ready.signal()
        done.wait()
        return result.withLock { $0 }
    }

    private func run() {
        while true {
            ready.wait()
            let (next, open) = queue.withLock { q -> (Work?, Bool) in
                (q.work.isEmpty ? nil : q.work.removeFirst(), q.open)
            }
            guard let next else {
                if !open { return }
                continue
            }
            switch next {
            case .cache(let ops):
                // A change a stage refuses fails the step that needs it; the others stand.
                for s in stages {
                    do { try s.apply(ops) } catch { log?("\(error)") }
                }
            case .count(let answer):
                answer(stages.map(\.count).max() ?? 0)
            case .step(let id, let step, let done):
                if queue.withLock({ $0.cancelled.remove(id) != nil }) { continue }
                done(compute(step))
            }
        }
    }

    private func compute(_ step: Step) -> Result<[UInt64: [SampledToken]], GenerationError> {
        let n = step.rows.count, e = engine.config.embeddingLength
        let hidden = UnsafeMutablePointer<Float>.allocate(capacity: max(1, n) * e)
        defer { hidden.deallocate() }
        let rows = step.rows.map { (sequence: $0.sequence, position: $0.position) }
        let tokens = step.rows.map(\.token)
        do {
            var out: [UInt64: [SampledToken]] = [:]
            for s in stages {
                let last = s.stage.isLast
                for (seq, t) in try s.step(rows: rows, tokens: tokens, hidden: hidden, sampleRows: last ? step.sampleRows : [],
                                           sampling: last ? step.sampling : [], logprobs: last ? step.logprobs : []) {
                    out[seq, default: []].append(t)
                }
            }
            return .success(out)
        } catch let e as StageSequences.StepError {
            switch e.kind {
            case .full: return .failure(GenerationError(.unavailable, e.description))
            case .contextExceeded: return .failure(GenerationError(.contextExceeded, e.description))
            case .malformed: return .failure(GenerationError(.internal, e.description))
            }
        } catch {
            return .failure(GenerationError(.internal, "the step failed: \(error)"))
        }
    }
}
