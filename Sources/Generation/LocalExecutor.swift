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

    enum Work {
        case step(UInt64, Step, @Sendable (Result<[UInt64: [SampledToken]], GenerationError>) -> Void)
        case release([UInt64])
        case count(@Sendable (Int) -> Void)
    }
    private let queue = Mutex<(work: [Work], cancelled: Set<UInt64>, open: Bool)>(([], [], true))
    private let ready = DispatchSemaphore(value: 0)

    /// `capacity` positions per sequence, at most `maxSequences` sequences with caches at once.
    public init(engine: Engine, capacity: Int, maxSequences: Int) {
        self.engine = engine
        stages = engine.stages.map { StageSequences(stage: $0, capacity: capacity, maxSequences: maxSequences, cacheTypes: engine.cacheTypes,
                                                       vocabulary: StageSequences.vocabulary(of: engine.tokenizer)) }
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

    public func release(_ sequences: [UInt64]) {
        queue.withLock { $0.work.append(.release(sequences)) }
        ready.signal()
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
            case .release(let ids):
                for s in stages { s.release(ids) }
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
