import ClusterProtocol
import CurveKeys
@testable import Coordinator
import Foundation
import Generation
import GGUF
import Model
import Placement
import Runtime
import Telemetry
import Testing
import TestSupport
import Wire

/// The coordinator's jobs over in-memory workers and a manual clock: join, assign, generate, silence → suspect →
/// down → recovery and replay, the epoch and roles enforced. Deterministic: time moves only in `tick`.
@Suite(.serialized) struct InProcessClusterTests {
    static let engine = try! Engine(path: Fixtures.shippedModel, threads: 1)

    /// What `conclave run` gives for the same prompt and sampling.
    func alone(_ prompt: String, _ n: Int, _ params: SamplingParams) throws -> [Int32] { try aloneWithText(prompt, n, params).tokens }

    func aloneWithText(_ prompt: String, _ n: Int, _ params: SamplingParams) throws -> (tokens: [Int32], text: String) {
        var tokens: [Int32] = [], text = ""
        try Self.engine.generate(prompt: Self.engine.tokenizer.encode(prompt), maxTokens: n, params: params,
                                 in: Self.engine.newSequence(capacity: 256)) { t, s in
            if let t { tokens.append(t) }
            text += s
            return true
        }
        return (tokens, text)
    }

    static func seeded() -> SamplingParams {
        var p = SamplingParams()
        p.seed = 5
        p.repeatPenalty = 1.2
        return p
    }

    /// Two stages and an experts worker: the tokens (greedy and seeded) are the one process's, the plan gives
    /// every worker its part, and status counts what ran.
    @Test func joinAssignGenerateMatchesOneProcess() async throws {
        let c = try InProcessCluster(workers: [("s1", .stage), ("s2", .stage), ("e1", .experts)])
        defer { c.stop() }
        try await c.start()
        #expect(c.coordinator.plan.stages.map(\.worker) == ["s1", "s2"])
        #expect(c.coordinator.links.allSatisfy { $0.state == .ready })
        #expect(c.link("e1").info.withLock { $0.experts } > 0)
        for (prompt, params) in [("Once upon a time", SamplingParams.greedy), ("The build system", Self.seeded())] {
            let (_, events) = c.coordinator.scheduler.submit(GenerationRequest(prompt: Self.engine.tokenizer.encode(prompt), maxTokens: 24, sampling: params))
            var tokens: [Int32] = []
            for try await e in events { if case .token(let t?, _, _) = e { tokens.append(t) } }
            #expect(tokens == (try alone(prompt, 24, params)), "\(prompt)")
        }
        let status = c.coordinator.status()
        #expect(status.value(\.generatedTokens) == 48)
        #expect(status.value(\.lengthLimited) == 2 && status.value(\.failed) == 0)
        #expect(status.epoch == 1)
        #expect(status.workers.map(\.state) == ["ready", "ready", "ready"])
    }

    /// The prefix cache over a pipeline: each stage keeps its own layers' KV of an ended turn, the coordinator's
    /// scheduler starts the next turn from it (a StageInput of cache changes travels the pipeline before the
    /// turn's rows), and every turn's tokens are the one process's for the whole context.
    @Test func aConversationReusesItsPrefixOverThePipeline() async throws {
        let c = try InProcessCluster(workers: [("s1", .stage), ("s2", .stage), ("e1", .experts)])
        defer { c.stop() }
        try await c.start()
        let room = try #require(c.coordinator.executor.kvRoom, "every stage reports its KV room in Ready")
        #expect(room.positions >= room.perSequence)
        let tk = Self.engine.tokenizer
        var context = tk.encode("Once upon a time")
        var previous: (prompt: Int, fed: Int)?
        for turn in [" there was a cache.", " It kept what it computed.", " And then?"] {
            context += tk.encode(turn, addSpecial: false)
            let (_, events) = c.coordinator.scheduler.submit(GenerationRequest(prompt: context, maxTokens: 10, sampling: Self.seeded()))
            var tokens: [Int32] = []
            var usage: GenerationUsage?
            for try await e in events {
                if case .token(let t?, _, _) = e { tokens.append(t) }
                if case .finished(_, let u) = e { usage = u }
            }
            var want: [Int32] = []
            try Self.engine.generate(prompt: context, maxTokens: 10, params: Self.seeded(), in: Self.engine.newSequence(capacity: 256)) { t, _ in
                if let t { want.append(t) }
                return true
            }
            #expect(tokens == want)
            // The turn before computed its prompt and all but its last token (it ended on the length).
            #expect(usage?.cachedTokens == previous.map { $0.fed } ?? 0)
            previous = (context.count, context.count + tokens.count - 1)
            context += tokens
        }
        #expect(c.coordinator.scheduler.stats().prefixHits == 2)
    }

    /// The ZeroMQ client API is a front door of its own over the same scheduler: Generate streams TokenOuts
    /// whose text is the one process's, StatusQuery answers, anything else is an Error with its code.
    @Test func clientAPIOverTheTwin() async throws {
        let c = try InProcessCluster(workers: [("a", .any)])
        defer { c.stop() }
        try await c.start()
        let serving = Task.detached { await c.coordinator.clientAPI.serve() }
        defer { serving.cancel() }
        let client = try CoordinatorClient(endpoint: c.cluster.coordinator, transports: InMemoryTransports(network: c.network, identity: "client", role: .client))
        var g = Conclave_V1_Generate()
        g.prompt = "Once upon a time"
        g.maxTokens = 16
        g.sampling = SamplingParams.greedy.wire
        var bytes: [UInt8] = []
        let last = try client.generate(g, timeout: 120) { bytes += $0 }
        #expect(last.done && last.finishReason == "length" && last.generatedTokens == 16)
        #expect(String(decoding: bytes, as: UTF8.self) == (try aloneWithText("Once upon a time", 16, .greedy)).text)
        let status = try #require(try client.status(timeout: 60))
        #expect(status.workers.map(\.name) == ["a"])
        var odd = Envelope()
        odd.requestID = 77
        odd.hello = Conclave_V1_Hello()
        try client.send(odd)
        let reply = try #require(try client.next(timeout: 60))
        guard case .error(let e) = reply.envelope.kind else { Issue.record("no Error for a Hello from a client"); return }
        #expect(reply.envelope.requestID == 77 && e.code == .malformed)
    }

    /// A stage goes silent mid-generation. Heartbeats come every second: at 2 s of silence it is suspect, at
    /// exactly 3 s still suspect (down is *more* than 3 s), past it down; the scheduler then recovers — the spare
    /// takes the lost shard, the others keep theirs — and replays the request, whose tokens are the one process's.
    /// A StageInput of the old plan is then refused by a worker (stale epoch).
    @Test func silentStageIsSuspectThenDownThenReplacedAndTheTextIsUnchanged() async throws {
        let c = try InProcessCluster(workers: [("s1", .stage), ("s2", .stage), ("e1", .experts), ("spare", .spare)])
        defer { c.stop() }
        try await c.start()
        #expect(c.link("spare").state == .spare)
        let prompt = "Once upon a time", n = 120
        let want = try alone(prompt, n, Self.seeded())
        let (_, events) = c.coordinator.scheduler.submit(GenerationRequest(prompt: Self.engine.tokenizer.encode(prompt), maxTokens: n, sampling: Self.seeded()))
        let collected = Task.detached { () throws -> [Int32] in
            var tokens: [Int32] = []
            for try await e in events {
                if case .token(let t?, _, _) = e {
                    tokens.append(t)
                    if tokens.count == 3 { c.silence("s2") }
                }
            }
            return tokens
        }
        try InProcessCluster.eventually("s2 silenced") { c.isSilenced("s2") }
        try c.tick()  // 1 s
        #expect(c.link("s2").state == .ready)
        try c.tick()  // 2 s
        #expect(c.link("s2").state == .suspect)
        #expect(c.coordinator.healthProblem()?.contains("suspect") == true)
        try c.tick()  // 3 s: exactly the threshold
        #expect(c.link("s2").heartbeatAge == WorkerLink.downAfter)
        #expect(c.link("s2").state == .suspect)
        #expect(c.coordinator.recovery.history.isEmpty)
        try c.tick()  // 4 s: down
        // The scheduler recovers: it asks the silent worker and the spare who they are and waits a second for
        // answers (the spare's comes at once). Time moves only once that wait is on the clock.
        let now = c.clock.now()
        try InProcessCluster.eventually("the recovery's Hello waiting on the clock") {
            c.log.all.contains { $0.hasPrefix("re-planning") } && c.clock.waitDeadlines.contains { $0 > now && $0 <= now + 1 }
        }
        try c.tick()  // 5 s: the Hello's deadline; the spare loads, the others keep their shards, in the machine's time
        try InProcessCluster.eventually("the recovery's end") { !c.coordinator.recovery.history.isEmpty }
        let record = try #require(c.coordinator.recovery.history.first, "\(c.log.all.joined(separator: "\n"))")
        #expect(record.recovered, "\(record.cause)")
        #expect(record.cause.contains("'s2'"))
        #expect(record.reloaded == ["spare"], "only the spare loads; the others keep their shards")
        #expect(record.sequencesReplayed == 1)
        #expect(c.coordinator.plan.stages.map(\.worker) == ["s1", "spare"])
        let got = try await collected.value
        #expect(got == want)

        // A message of the plan before is refused where it arrives, with UNAVAILABLE.
        let waiter = c.coordinator.membership.replies.waiter()
        var stale = Envelope()
        stale.requestID = waiter.id
        stale.epoch = 1
        stale.stageInput = Conclave_V1_StageInput()
        c.link("s1").send(WireMessage.make(stale))
        var refusal: WireError?
        do { _ = try InProcessCluster.pollReply(waiter, clock: c) } catch let e as WireError { refusal = e }
        #expect(refusal?.code == .unavailable, "\(String(describing: refusal))")
        #expect(c.coordinator.status().epoch == 2)
    }

    /// No spare: a worker that dies leaves nobody to hold its experts, so requests get a clear UNAVAILABLE —
    /// and the refusal is not final: the idle coordinator keeps trying (backing off), and once the worker is
    /// restarted it is taken back and the next request's text is the one process's.
    @Test func aRestartedWorkerIsTakenBackWithoutASpare() async throws {
        let c = try InProcessCluster(workers: [("s1", .stage), ("s2", .stage), ("e1", .experts)])
        defer { c.stop() }
        try await c.start()
        let prompt = "Once upon a time", n = 40
        let want = try aloneWithText(prompt, n, Self.seeded())
        let request = GenerationRequest(prompt: Self.engine.tokenizer.encode(prompt), maxTokens: n, sampling: Self.seeded())
        c.silence("e1")
        for _ in 0..<4 { try c.tick() }  // 4 s of silence: down
        #expect(c.link("e1").state == .down)
        let during = c.coordinator.scheduler.refusal(for: request)
        #expect(during?.code == .unavailable && during?.message.contains("'e1'") == true, "\(String(describing: during))")
        // The idle scheduler tries: it asks e1 who it is (a second on the clock), then finds no worker that may
        // hold experts. The cluster stays refused, with that reason, and tries again after a second.
        var now = c.clock.now()
        try InProcessCluster.eventually("the first try's Hello waiting on the clock") {
            c.log.all.contains { $0.hasPrefix("re-planning") } && c.clock.waitDeadlines.contains { $0 > now && $0 <= now + 1 }
        }
        try c.tick()
        // (The record is kept as the recovery returns, just after it says why it failed.)
        try InProcessCluster.eventually("the first try failing") { c.coordinator.recovery.broken != nil && !c.coordinator.recovery.history.isEmpty }
        #expect(c.coordinator.recovery.history.last?.recovered == false)
        #expect(c.coordinator.healthProblem() != nil)

        try c.restart("e1")
        // The next try (after the backoff) finds it: the same placement, e1 loads again, the others keep theirs.
        now = c.clock.now()
        try c.tick()
        try c.tick()
        try InProcessCluster.eventually("a recovery that took e1 back") { c.coordinator.recovery.history.last?.recovered == true }
        let record = try #require(c.coordinator.recovery.history.last)
        #expect(record.reloaded == ["e1"], "\(record)")
        #expect(c.coordinator.recovery.broken == nil)
        #expect(c.coordinator.scheduler.refusal(for: request) == nil)
        try InProcessCluster.eventually("healthy") { c.coordinator.healthProblem() == nil }

        let (_, events) = c.coordinator.scheduler.submit(request)
        var text = ""
        for try await e in events { if case .token(_, let piece, _) = e { text += piece } }
        #expect(text == want.text)
    }

    /// Roles are enforced by the worker: a client may not assign it, a worker not outside the plan's pipeline
    /// may not feed its stage; each gets an Error, and the worker goes on serving its coordinator.
    /// Two coordinators of the same workers: the second is refused while the first is connected, with an error
    /// that says so; a standby waits, and takes the workers over (their weights kept) once the first is gone,
    /// then serves the one process's tokens. The first, cut off, cannot take them back while the standby lives.
    @Test func aStandbyCoordinatorTakesOverWhenTheFirstIsGone() async throws {
        let c = try InProcessCluster(workers: [("s1", .stage), ("s2", .stage), ("e1", .experts)])
        defer { c.stop() }
        try await c.start()
        let second = try c.anotherCoordinator("coordinator-2", standby: false)
        defer { second.membership.close() }
        do {
            try await second.startUp()
            Issue.record("a second coordinator took workers that another coordinator holds")
        } catch let e as CoordinatorError {
            #expect(e.description.contains("assigned by another coordinator, which is still connected") && e.description.contains("--standby"), "\(e)")
        }
        #expect(c.coordinator.links.allSatisfy { $0.state == .ready })
        let standby = try c.anotherCoordinator("coordinator-3", standby: true)
        defer { standby.scheduler.stop(); standby.membership.close() }
        let starting = Task.detached { try await standby.startUp() }
        do {
            try InProcessCluster.eventually("the standby waits") { c.log.all.contains { $0.hasPrefix("[coordinator-3] standby: worker '") } }
        } catch {
            Issue.record("\(error); log: \(c.log.all.suffix(30))")
            throw error
        }
        #expect(!standby.started)
        // The first coordinator's connections end (its host is gone: ZMTP heartbeats close them).
        c.coordinator.membership.close()
        try await starting.value
        #expect(standby.started)
        #expect(c.log.all.contains("[coordinator-3] standby: the other coordinator is gone; this one holds the workers now"))
        #expect(c.log.all.filter { $0.contains("] kept layers") || $0.contains("] kept no layers") }.count >= 3, "\(c.log.all.suffix(20))")
        let (_, events) = standby.scheduler.submit(GenerationRequest(prompt: Self.engine.tokenizer.encode("Once upon a time"), maxTokens: 16, sampling: .greedy))
        var tokens: [Int32] = []
        for try await e in events { if case .token(let t?, _, _) = e { tokens.append(t) } }
        #expect(tokens == (try alone("Once upon a time", 16, .greedy)))
    }

    /// Weights, not only metadata: a worker whose own copy of the model differs in one byte of output.weight
    /// (the metadata hash is the same) is refused at join, by name.
    @Test func aWorkerWithOtherWeightsIsRefusedByName() async throws {
        let altered = Fixtures.temporaryDirectory().appendingPathComponent("altered.gguf").path
        try FileManager.default.copyItem(atPath: Fixtures.shippedModel, toPath: altered)
        let f = try GGUFFile(path: Fixtures.shippedModel)
        let output = try #require(f.tensorInfos.first { $0.name == "output.weight" })
        try Fixtures.flipByte(altered, at: f.dataOffset + output.offset + 100)
        #expect(try GGUFFile(path: altered).metadataSHA256 == f.metadataSHA256)
        let c = try InProcessCluster(workers: [("s1", .stage), ("s2", .stage), ("e1", .experts)], files: ["s2": altered])
        defer { c.stop() }
        do {
            try await c.start()
            Issue.record("a worker with other weights joined")
        } catch {
            #expect("\(error)".contains("worker 's2'") && "\(error)".contains("other weights"), "\(error)")
        }
    }

    /// A worker without a model reuses a whole copy an older build fetched, unless its weights differ from the
    /// coordinator's (one flipped byte): then the copy is refused and removed, the worker fetches its shard, and
    /// A spare that asks to leave holds nothing and is released at once; then the experts worker, whose experts
    /// nobody else may hold, is refused and stays in the plan.
    @Test func aDrainTheOthersCannotAbsorbIsRefused() async throws {
        let c = try InProcessCluster(workers: [("s1", .stage), ("s2", .stage), ("e1", .experts), ("spare", .spare)])
        defer { c.stop() }
        try await c.start()
        c.coordinator.recovery.drain(c.link("spare"), request: 8)
        #expect(c.link("spare").state == .left)
        #expect(c.log.all.contains { $0.contains("worker 'spare' released") }, "\(c.log.all.suffix(5))")
        c.coordinator.recovery.drain(c.link("e1"), request: 7)
        #expect(c.link("e1").state == .ready)
        #expect(c.log.all.contains { $0.contains("worker 'e1' asked to leave; refused") }, "\(c.log.all.suffix(5))")
        #expect(c.coordinator.executor.replanWanted() == nil)
        #expect(c.coordinator.healthProblem() == nil)
    }

    /// A worker the cluster file does not list joins while the cluster serves (`worker --join`, proving a key of
    /// `join_keys`): the coordinator connects back, the scheduler's next turn plans anew with it, and it holds a
    /// share; the text is the one process's. A Join proving no join key, and one under a name in use, are refused.
    @Test func aWorkerJoinsAServingClusterAndTakesAShare() async throws {
        let c = try InProcessCluster(workers: [("s1", .stage), ("e1", .experts)])
        defer { c.stop() }
        try await c.start()
        #expect(c.coordinator.plan.stages.map(\.worker) == ["s1"])
        let api = Task.detached { await c.coordinator.clientAPI.serve() }
        defer { api.cancel() }
        // Refused: a key that is a worker's of the plan, not a join key; a join key under a name in use.
        try c.join("intruder", proving: .worker("s1"))
        try await c.settle("the first refusal") { c.log.all.contains { $0.hasPrefix("[intruder] the coordinator at") && $0.contains("refused") } }
        #expect(c.log.all.contains { $0.contains("only a worker whose key the cluster file's join_keys lists may join") }, "\(c.log.all.suffix(5))")
        let key = try CurveKeyPair.generate().publicKey
        #expect(c.coordinator.links.map(\.worker.name) == ["s1", "e1"])
        try c.join("s3", proving: .joiner(key.z85))
        try await c.settle("s3's join answered") { c.log.all.contains { $0.hasPrefix("[s3] joined the cluster") } }
        #expect(c.link("s3").worker.key == key)
        #expect(c.coordinator.executor.replanWanted()?.message.contains("worker 's3' joined") == true)
        // The scheduler's next turn (it wakes on the clock while idle) re-plans with s3.
        try c.tick()
        try await c.settle("a plan with s3") { c.coordinator.plan.uses("s3") && c.link("s3").state == .ready }
        #expect(c.coordinator.plan.stages.map(\.worker) == ["s1", "s3"], "\(c.coordinator.plan.stages)")
        #expect(c.link("s3").info.withLock { $0.layers.count } > 0)
        #expect(c.coordinator.executor.replanWanted() == nil)
        #expect(c.log.all.contains { $0.contains("new plan with s3, which joined") }, "\(c.log.all.suffix(10))")
        // s1 keeps layers it held (0..<2 of its 0..<4): it loads nothing; so the log says.
        #expect(c.log.all.contains { $0.contains("the workers already serving load 0 bytes they do not hold") }, "\(c.log.all.suffix(10))")
        let (_, events) = c.coordinator.scheduler.submit(GenerationRequest(prompt: Self.engine.tokenizer.encode("Once upon a time"), maxTokens: 16, sampling: .greedy))
        var tokens: [Int32] = []
        for try await e in events { if case .token(let t?, _, _) = e { tokens.append(t) } }
        #expect(tokens == (try alone("Once upon a time", 16, .greedy)))
        // The same name again from elsewhere is refused; s3 keeps serving.
        let other = try CurveKeyPair.generate().publicKey
        let answer = c.coordinator.recovery.join({ var j = Conclave_V1_Join(); j.workerName = "s3"; j.listenEndpoint = "tcp://127.0.0.1:9"; j.memoryBudget = 1 << 30; return j }(),
                                                 from: .joiner(other.z85), started: true)
        guard case .failure(let refusal) = answer else { Issue.record("a second 's3' was taken"); return }
        #expect(refusal.message.contains("the name 's3' is used twice"), "\(refusal.message)")
        // Another name at a worker's endpoint is refused before its key is learned for that endpoint.
        let hijack = c.coordinator.recovery.join({ var j = Conclave_V1_Join(); j.workerName = "s4"; j.listenEndpoint = "inproc://s1"; j.memoryBudget = 1 << 30; return j }(),
                                                 from: .joiner(other.z85), started: true)
        guard case .failure(let refused) = hijack else { Issue.record("a join at s1's endpoint was taken"); return }
        #expect(refused.message.contains("belongs to worker 's1'"), "\(refused.message)")
        #expect(c.coordinator.healthProblem() == nil)
    }

    /// A worker that joined is taken in again by a coordinator that restarted, whose cluster file does not list
    /// it: its Join, sent again every 10 s, reaches the new coordinator, which re-plans with it.
    @Test func aJoinedWorkerJoinsARestartedCoordinatorAgain() async throws {
        let c = try InProcessCluster(workers: [("s1", .stage), ("e1", .experts)])
        defer { c.stop() }
        try await c.start()
        let api = Task.detached { await c.coordinator.clientAPI.serve() }
        try c.join("s3", proving: .joiner(try CurveKeyPair.generate().publicKey.z85))
        try await c.settle("s3's join answered") { c.log.all.contains { $0.hasPrefix("[s3] joined the cluster") } }
        try c.tick()
        try await c.settle("a plan with s3") { c.coordinator.plan.uses("s3") && c.link("s3").state == .ready }
        // The coordinator's process ends: its connections and its client endpoint go; another starts there.
        c.coordinator.scheduler.stop()
        c.coordinator.membership.close()
        c.coordinator.clientAPI.clients.close()
        api.cancel()
        let restarted = try c.anotherCoordinator("restarted", standby: false, clients: c.cluster.coordinator)
        defer { restarted.scheduler.stop(); restarted.membership.close() }
        try await restarted.startUp()
        #expect(!restarted.plan.uses("s3") && !restarted.links.contains { $0.worker.name == "s3" })
        let api2 = Task.detached { await restarted.clientAPI.serve() }
        defer { api2.cancel() }
        let s3 = { restarted.links.first { $0.worker.name == "s3" } }
        for _ in 0..<10 where s3() == nil {
            c.clock.advance(by: 1)
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        try await c.settle("the restarted coordinator takes s3 in") { s3() != nil }
        for _ in 0..<30 where !(restarted.plan.uses("s3") && s3()?.state == .ready) {
            c.clock.advance(by: 1)
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        try await c.settle("a plan with s3") { restarted.plan.uses("s3") && s3()?.state == .ready }
        let (_, events) = restarted.scheduler.submit(GenerationRequest(prompt: Self.engine.tokenizer.encode("Once upon a time"), maxTokens: 16, sampling: .greedy))
        var tokens: [Int32] = []
        for try await e in events { if case .token(let t?, _, _) = e { tokens.append(t) } }
        #expect(tokens == (try alone("Once upon a time", 16, .greedy)))
    }

    /// `serve --rebalance`: after text has been generated, the stages' counts of their routers' choices give a plan
    /// whose split layers leave their busiest holder a smaller share of the rows; the next turn puts it in force
    /// under a new epoch, and the text is still the one process's. Without counts nothing is proposed.
    @Test func aRebalanceMovesExpertsForTheRoutingOfLate() async throws {
        let c = try InProcessCluster(workers: [("a", .any), ("x", .experts)])
        defer { c.stop() }
        try await c.start()
        #expect(c.coordinator.recovery.proposeRebalance(gain: 0) == nil)
        let uniform = c.coordinator.plan
        for prompt in ["Once upon a time", "The little dog", "She said"] {
            let (_, events) = c.coordinator.scheduler.submit(GenerationRequest(prompt: Self.engine.tokenizer.encode(prompt), maxTokens: 48, sampling: .greedy))
            var tokens: [Int32] = []
            for try await e in events { if case .token(let t?, _, _) = e { tokens.append(t) } }
            #expect(tokens == (try alone(prompt, 48, .greedy)))
        }
        // The counts come with the stages' heartbeats.
        try c.tick()
        try c.tick()
        let proposal = try #require(c.coordinator.recovery.proposeRebalance(gain: 0), "\(c.log.all.suffix(10))")
        #expect(proposal.after < proposal.before && proposal.before <= 1 && proposal.after >= 0.5)
        #expect(c.coordinator.executor.replanWanted()?.message.contains("rebalance") == true)
        try c.tick()
        try await c.settle("the rebalanced plan in force") { c.coordinator.recovery.history.last?.recovered == true }
        #expect(c.coordinator.plan.experts != uniform.experts)
        #expect(c.coordinator.executor.replanWanted() == nil)
        #expect(c.log.all.contains { $0.contains("new plan for the routing of late") }, "\(c.log.all.suffix(10))")
        let (_, events) = c.coordinator.scheduler.submit(GenerationRequest(prompt: Self.engine.tokenizer.encode("Once upon a time"), maxTokens: 16, sampling: .greedy))
        var tokens: [Int32] = []
        for try await e in events { if case .token(let t?, _, _) = e { tokens.append(t) } }
        #expect(tokens == (try alone("Once upon a time", 16, .greedy)))
    }

    /// What a worker must load for a plan: the bytes of its new ranges that its old ones do not cover.
    @Test func uncoveredBytesAreTheNewRangesLessTheHeldOnes() {
        #expect(Recovery.uncovered([0..<100], by: []) == 100)
        #expect(Recovery.uncovered([0..<100], by: [0..<100]) == 0)
        #expect(Recovery.uncovered([0..<100], by: [10..<20, 50..<60]) == 80)
        #expect(Recovery.uncovered([0..<100, 200..<300], by: [250..<400, 90..<210]) == 90 + 40)
        #expect(Recovery.uncovered([50..<60], by: [0..<55, 55..<58]) == 2)
    }

    /// Workers without the model fetch only their shards; when a stage dies and the survivor takes its layers, the
    /// survivor fetches only the pieces it did not have (the dead stage's layers), into the cache it maps, and the
    /// text is the one process's.
    @Test func aSurvivorTakingMoreLayersFetchesOnlyThem() async throws {
        let c = try InProcessCluster(workers: [("s1", .stage), ("s2", .stage), ("e1", .experts)], files: ["s1": nil, "s2": nil, "e1": nil])
        defer { c.stop() }
        try await c.start()
        #expect(c.coordinator.plan.stages.map(\.worker) == ["s1", "s2"])
        let fetches = { c.log.all.filter { $0.hasPrefix("[s1] fetching") && $0.contains("of the model's") && $0.contains("pieces") } }
        #expect(fetches().count == 1, "\(fetches())")
        c.silence("s2")
        for _ in 0..<4 { try c.tick() }  // down
        let now = c.clock.now()
        try InProcessCluster.eventually("the recovery's Hello waiting on the clock") {
            c.log.all.contains { $0.hasPrefix("re-planning") } && c.clock.waitDeadlines.contains { $0 > now && $0 <= now + 1 }
        }
        try c.tick()
        try InProcessCluster.eventually("the recovery's end") { !c.coordinator.recovery.history.isEmpty }
        let record = try #require(c.coordinator.recovery.history.first)
        #expect(record.recovered, "\(record.cause)")
        #expect(c.coordinator.plan.stages.map(\.worker) == ["s1"])
        // The second fetch is exactly the pages of layers 2 and 3 that s1 did not hold (and the head, which s2 held).
        let file = try GGUFFile(path: Fixtures.shippedModel)
        let layout = WeightLayout(file: file, config: try ModelConfig(file: file))
        let before = Set(layout.fileRanges(of: file, layers: 0..<2, experts: .none))
        let added = layout.fileRanges(of: file, layers: 0..<4, experts: .none).filter { !before.contains($0) }
        let pages = added.map { ($0.lowerBound / 4096 * 4096)..<(($0.upperBound + 4095) / 4096 * 4096) }.sorted { $0.lowerBound < $1.lowerBound }
        var joined: [Range<Int>] = []
        for r in pages { if let l = joined.last, r.lowerBound <= l.upperBound { joined[joined.count - 1] = l.lowerBound..<max(l.upperBound, r.upperBound) } else { joined.append(r) } }
        let bytes = joined.reduce(0) { $0 + $1.count }
        let all = fetches()
        // (A small piece may have come whole with a neighbour's pages already: it verifies on disk and is not asked for.)
        #expect(all.count == 2 && all[1].contains(": \(bytes) bytes"), "\(all), want \(bytes) bytes")
        let (_, events) = c.coordinator.scheduler.submit(GenerationRequest(prompt: Self.engine.tokenizer.encode("Once upon a time"), maxTokens: 16, sampling: .greedy))
        var tokens: [Int32] = []
        for try await e in events { if case .token(let t?, _, _) = e { tokens.append(t) } }
        #expect(tokens == (try alone("Once upon a time", 16, .greedy)))
    }

    /// the tokens are the one process's.
    @Test func aCachedCopyWithOtherWeightsIsFetchedAgain() async throws {
        let cache = Fixtures.temporaryDirectory().path
        let f = try GGUFFile(path: Fixtures.shippedModel)
        let cached = cache + "/" + f.metadataSHA256.map { String(format: "%02x", $0) }.joined() + ".gguf"
        try FileManager.default.copyItem(atPath: Fixtures.shippedModel, toPath: cached)
        try Fixtures.flipByte(cached, at: f.dataOffset + (f.mapping.count - f.dataOffset) / 2)
        let c = try InProcessCluster(workers: [("s1", .stage), ("s2", .stage), ("e1", .experts)], files: ["e1": nil], cache: cache)
        defer { c.stop() }
        try await c.start()
        #expect(c.log.all.contains { $0.hasPrefix("[e1] the cached model") && $0.contains("other weights") && $0.contains("fetching the shard") }, "\(c.log.all.suffix(20))")
        #expect(!FileManager.default.fileExists(atPath: cached))
        #expect(FileManager.default.fileExists(atPath: String(cached.dropLast(".gguf".count)) + ".shard.gguf"))
        let (_, events) = c.coordinator.scheduler.submit(GenerationRequest(prompt: Self.engine.tokenizer.encode("Once upon a time"), maxTokens: 16, sampling: .greedy))
        var tokens: [Int32] = []
        for try await e in events { if case .token(let t?, _, _) = e { tokens.append(t) } }
        #expect(tokens == (try alone("Once upon a time", 16, .greedy)))
    }

    @Test func peersWithTheWrongRoleAreRefused() async throws {
        let c = try InProcessCluster(workers: [("s1", .stage), ("s2", .stage), ("e1", .experts)])
        defer { c.stop() }
        try await c.start()
        func ask(_ role: PeerRole, _ build: (inout Envelope) -> Void) async throws -> Conclave_V1_Error? {
            let d = try c.network.dealer(connectingTo: InProcessCluster.endpoint("s2"), identity: "intruder-\(role)", role: role)
            defer { d.close() }
            var e = Envelope()
            e.requestID = 5
            build(&e)
            d.send(Frames(parts: try WireMessage.make(e).encode()))
            var it = d.messages.makeAsyncIterator()
            guard let f = await it.next() else { return nil }
            if case .error(let err) = try WireMessage.decode(f.parts).envelope.kind { return err }
            return nil
        }
        let byClient = try await ask(.client) { $0.assign = Conclave_V1_Assign() }
        #expect(byClient?.code == .malformed && byClient?.message.contains("may not send") == true, "\(String(describing: byClient))")
        let byExperts = try await ask(.worker("e1")) { $0.stageInput = Conclave_V1_StageInput() }
        #expect(byExperts?.code == .malformed && byExperts?.message.contains("does not feed this stage") == true, "\(String(describing: byExperts))")
        // Still the coordinator's: a request generates.
        let (_, events) = c.coordinator.scheduler.submit(GenerationRequest(prompt: Self.engine.tokenizer.encode("The"), maxTokens: 4, sampling: .greedy))
        var count = 0
        for try await e in events { if case .token(_?, _, _) = e { count += 1 } }
        #expect(count == 4)
    }
}

extension InProcessCluster {
    /// A reply, waiting on the manual clock without moving it (the reply comes in the machine's time).
    static func pollReply(_ waiter: PendingReplies.Waiter, clock c: InProcessCluster) throws -> WireMessage {
        let deadline = MonotonicClock.seconds() + 60
        while MonotonicClock.seconds() < deadline {
            if let m = try waiter.poll(timeout: 0) { return m }
            usleep(1_000)
        }
        throw Failure(description: "no reply within 60 s")
    }
}
