import Telemetry
import Wire

// MARK: On the wire

public extension Conclave_V1_MetricSample {
    init(_ s: MetricSample) {
        self.init()
        name = s.name
        labels = s.labels.map { l in
            var p = Conclave_V1_MetricLabel()
            p.name = l.name
            p.value = l.value
            return p
        }
        value = s.value
    }
}

public extension MetricSample {
    /// Limits on what a peer may report: a heartbeat is a few dozen series of a few labels.
    static let maxPerMessage = 512
    static let maxLabels = 8
    static let maxText = 128

    /// A sample from the wire, every field checked: a Prometheus name and label names, bounded text, a finite
    /// value (never negative for a counter).
    init(checking p: Conclave_V1_MetricSample) throws(WireError) {
        func name(_ s: String, _ what: String) throws(WireError) {
            let ok = !s.isEmpty && s.utf8.count <= Self.maxText && s.utf8.allSatisfy { c in
                (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c == 95 || (c >= 48 && c <= 57)
            } && !(s.utf8.first! >= 48 && s.utf8.first! <= 57)
            guard ok else { throw WireError(.malformed, "metric \(what) '\(s.prefix(40))' is not a Prometheus name") }
        }
        try name(p.name, "name")
        guard p.labels.count <= Self.maxLabels else { throw WireError(.malformed, "metric \(p.name) has \(p.labels.count) labels (at most \(Self.maxLabels))") }
        for l in p.labels {
            try name(l.name, "label")
            guard l.value.utf8.count <= Self.maxText else { throw WireError(.malformed, "metric \(p.name) has a label value over \(Self.maxText) bytes") }
        }
        guard p.value.isFinite else { throw WireError(.malformed, "metric \(p.name) has a non-finite value") }
        self.init(name: p.name, labels: p.labels.map { MetricLabel($0.name, $0.value) }, value: p.value)
    }

    /// A report's samples, checked; those the catalog does not name (a newer worker's) are left out.
    static func checked(_ report: [Conclave_V1_MetricSample], catalog: [String: MetricSpec]) throws(WireError) -> [MetricSample] {
        guard report.count <= maxPerMessage else { throw WireError(.tooLarge, "\(report.count) metric samples in one report (at most \(maxPerMessage))") }
        var out: [MetricSample] = []
        for p in report {
            let s = try MetricSample(checking: p)
            guard let spec = catalog[MetricSample.seriesName(s.name, s.labels)] else { continue }
            if spec.kind == .counter, s.value < 0 { throw WireError(.malformed, "counter \(s.name) is negative") }
            out.append(s)
        }
        return out
    }
}
