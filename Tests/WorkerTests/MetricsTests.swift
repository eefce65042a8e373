import ClusterProtocol
import Foundation
import JSON
import Testing
import TestSupport
import Telemetry
import Wire
@testable import Worker

/// Metrics as data: what a worker counts goes through its registry into the heartbeat, is checked by the
/// coordinator, and comes out in status (`--json` keys from the catalog) and in the coordinator's /metrics.
@Suite struct MetricsTests {
    /// A worker's figures after some work, as its heartbeat would carry them.
    func report() -> [Conclave_V1_MetricSample] {
        let m = WorkerMetrics()
        m.recordStep(tokens: 5, ms: 2)
        m.recordStep(tokens: 3, ms: 4)
        m.recordForward(bytes: 4096, rows: 8)
        m.recordExpertCall(ms: 1, countLatency: false)
        return m.samples(resident: 123_456, expertCallBytes: 777, offload: nil).map(Conclave_V1_MetricSample.init)
    }

    @Test func heartbeatSamplesBecomeStatusAndPrometheus() throws {
        let checked = try MetricSample.checked(report(), catalog: WorkerMetric.bySeries)
        var w = Conclave_V1_WorkerStatus()
        w.name = "w1"
        w.state = "ready"
        w.metrics = checked.map(Conclave_V1_MetricSample.init)
        var reply = Conclave_V1_StatusReply()
        reply.workers = [w]

        let json = reply.json["workers"]?.arrayValue?.first
        #expect(json?["tokens"]?.intValue == 8)
        #expect(json?["expert_calls"]?.intValue == 1)
        #expect(json?["forwarded_bytes"]?.intValue == 4096 && json?["forwarded_rows"]?.intValue == 8)
        #expect(json?["expert_call_bytes"]?.intValue == 777)
        #expect((json?["rss_bytes"]?.intValue ?? 0) > 1 << 20)
        #expect(json?["p99_ms"]?.numberValue == 4)
        #expect(json?["offload"]?["slots"]?.intValue == 0 && json?["offload"]?["hit_rate"]?.numberValue == 0)

        let registry = MetricsRegistry()
        reply.mirror(into: registry)
        let text = registry.exposition()
        #expect(text.contains("conclave_worker_tokens_total{worker=\"w1\"} 8"), "\(text)")
        #expect(text.contains("conclave_worker_forwarded_bytes_total{worker=\"w1\"} 4096"))
        #expect(text.contains("conclave_worker_step_latency_seconds{quantile=\"0.99\",worker=\"w1\"} 0.004") ||
                text.contains("conclave_worker_step_latency_seconds{worker=\"w1\",quantile=\"0.99\"} 0.004"), "\(text)")
        #expect(text.contains("# HELP conclave_worker_tokens_total \(WorkerMetric.tokens.help)"))
        #expect(text.contains("conclave_worker_state{worker=\"w1\",state=\"ready\"} 1") || text.contains("conclave_worker_state{state=\"ready\",worker=\"w1\"} 1"), "\(text)")

        // A later heartbeat moves the counter by the difference; a worker that restarted (lower total) adds its new total.
        for (tokens, want) in [(20.0, 20), (3.0, 23)] {
            var again = reply
            again.workers[0].metrics = [Conclave_V1_MetricSample(MetricSample(name: WorkerMetric.tokens.name, labels: [], value: tokens))]
            again.mirror(into: registry)
            #expect(registry.exposition().contains("conclave_worker_tokens_total{worker=\"w1\"} \(want)"), "after a total of \(tokens)")
        }
    }

    @Test func badFiguresAreRefusedAndUnknownOnesLeftOut() throws {
        func sample(_ name: String, _ value: Double, labels: [(String, String)] = []) -> Conclave_V1_MetricSample {
            Conclave_V1_MetricSample(MetricSample(name: name, labels: labels.map { MetricLabel($0.0, $0.1) }, value: value))
        }
        let catalog = WorkerMetric.bySeries
        for (bad, why) in [(sample("conclave worker", 1), "a space in the name"), (sample("1abc", 1), "a leading digit"),
                           (sample(WorkerMetric.tokens.name, .nan), "NaN"), (sample(WorkerMetric.tokens.name, -1), "a negative counter"),
                           (sample("x", 1, labels: [("bad-label", "v")]), "a bad label name"),
                           (sample("x", 1, labels: [("l", String(repeating: "v", count: 200))]), "a long label value")] {
            #expect(throws: WireError.self, "\(why)") { try MetricSample.checked([bad], catalog: catalog) }
        }
        #expect(throws: WireError.self) { try MetricSample.checked(Array(repeating: sample("x", 1), count: 513), catalog: catalog) }
        // A figure this build does not know (a newer worker's) and a known name with a label set the catalog lacks.
        let kept = try MetricSample.checked([sample("conclave_worker_future_total", 9), sample(WorkerMetric.stepP50.name, 1, labels: [("quantile", "0.7")]),
                                             sample(WorkerMetric.expertCalls.name, 2)], catalog: catalog)
        #expect(kept == [MetricSample(name: WorkerMetric.expertCalls.name, labels: [], value: 2)])
    }

    /// The README lists every figure a worker reports, so a new one cannot go undocumented.
    @Test func readmeNamesEveryWorkerMetric() throws {
        let readme = try String(contentsOfFile: Fixtures.root.appendingPathComponent("README.md").path, encoding: .utf8)
        for spec in WorkerMetric.all { #expect(readme.contains("`\(spec.name)"), "README does not name \(spec.name)") }
    }

    /// The same for the serving process's figures, with the key status shows each under.
    @Test func readmeNamesEveryServingMetric() throws {
        let readme = try String(contentsOfFile: Fixtures.root.appendingPathComponent("README.md").path, encoding: .utf8)
        for spec in ServingMetrics.catalog.all {
            let row = readme.split(separator: "\n").first { $0.hasPrefix("| `\(spec.name)") }
            #expect(row != nil, "README's table does not name \(spec.name)")
            if let key = spec.statusKey, let row { #expect(row.contains("`\(key)`"), "README does not give \(spec.name)'s status key \(key)") }
        }
    }
}
