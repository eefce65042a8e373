/// What a plan allows one decoding stream when a token is bound by the bytes it reads (decode on CPUs is):
/// each stage reads its layers' attention, norms and router and, last, the head, one stage after another; a
/// layer's experts are read by their holders at once, so the layer waits for the holder with the largest share
/// (a holder's share of a layer's reads is how often tokens choose its experts: `ModelFootprint.use`, uniform
/// without a routing trace). Wire time comes on top; `conclave bench cluster` measures it.
public struct DecodeEstimate: Sendable, Equatable {
    /// Bytes of weights a token reads, per worker of the plan.
    public let bytesPerWorker: [Double]
    /// Bytes of the layers' other weights and the head (read in turn by the stages).
    public let stageBytes: Double
    /// Bytes of the routed experts a token reads, all of them, and the sum over layers of the busiest holder's.
    public let expertBytes: Double
    public let busiestExpertBytes: Double
    /// Expected seconds per token per worker at its rate (`effectiveReadRate`): its reads, plus a round trip
    /// for each layer whose experts it computes for another worker's stage.
    public let secondsPerWorker: [Double]
    /// Expected seconds per token under the plan: the stages' reads in turn, and per layer the slowest of its
    /// expert holders (the stage's own at its rate, the others after their round trip).
    public let seconds: Double
    /// Seconds per token of one host that holds everything, at the rate of the first stage's worker.
    public let oneHostSeconds: Double

    /// The expected one-stream speedup over one host with rates and round trips (what `speedup` ignores).
    public var expectedSpeedup: Double { oneHostSeconds / max(1e-12, seconds) }

    /// One host's time over the plan's, at the same bandwidth: (stage + experts) ÷ (stage + busiest).
    public var speedup: Double { (stageBytes + expertBytes) / max(1, stageBytes + busiestExpertBytes) }

    /// `weights`: the footprint without KV (context 0), so that only weights count, with the routing trace's
    /// expert use if there is one.
    public init(plan: Plan, weights f: ModelFootprint) {
        let rate = plan.workers.map(\.effectiveReadRate)
        var perWorker = [Double](repeating: 0, count: plan.workers.count)
        var time = [Double](repeating: 0, count: plan.workers.count)
        var stage = 0.0, experts = 0.0, busiest = 0.0, total = 0.0
        var stageOf = [Int](repeating: -1, count: f.layerCount)
        for s in plan.stages {
            guard let w = plan.workers.firstIndex(where: { $0.name == s.worker }) else { continue }
            var b = s.layers.reduce(0.0) { $0 + Double(f.layerBytes[$1]) }
            if s.layers.upperBound == f.layerCount { b += Double(f.headBytes) }
            for l in s.layers where l < f.layerCount { stageOf[l] = w }
            perWorker[w] += b
            time[w] += b / rate[w]
            total += b / rate[w]
            stage += b
        }
        for l in 0..<min(f.layerCount, plan.experts.count) where f.expertCount > 0 {
            let size = Double(f.expertBytes[l])
            var share = [Double](repeating: 0, count: plan.workers.count)
            for (e, w) in plan.experts[l].enumerated() where w >= 0 { share[w] += f.use(layer: l, expert: e) * size }
            experts += share.reduce(0, +)
            var slowest = 0.0
            let holders = Set(plan.experts[l])
            for (w, bytes) in share.enumerated() where holders.contains(w) {
                perWorker[w] += bytes
                let t = bytes / rate[w] + (w == stageOf[l] ? 0 : plan.workers[w].roundTrip ?? 0)
                time[w] += t
                slowest = max(slowest, t)
            }
            total += slowest
            busiest += share.max() ?? 0
        }
        bytesPerWorker = perWorker
        stageBytes = stage
        expertBytes = experts
        busiestExpertBytes = busiest
        secondsPerWorker = time
        seconds = total
        let first = plan.stages.first.flatMap { s in plan.workers.firstIndex { $0.name == s.worker } } ?? 0
        oneHostSeconds = plan.workers.isEmpty ? 0 : (stage + experts) / rate[first]
    }
}
