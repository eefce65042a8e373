import ArgumentParser
import GGUF
import Runtime
import Kernels

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure Conclave's speed on this machine.",
        subcommands: [BenchKernels.self, BenchDecode.self, BenchCluster.self, BenchOffload.self, BenchServe.self, BenchSoak.self]
    )
}

struct BenchKernels: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels",
        abstract: "Memory read bandwidth, and each weight type's matvec and batched matmul against it.",
        discussion: """
        Decoding streams every active weight once per token, so a matvec kernel is judged by how close it
        comes to the machine's read bandwidth, measured in the same run (1 thread and all threads). Shapes are
        a 14336×4096 up-projection and a 4096×14336 down-projection; batched matmul uses 32 activation rows.
        Q4_0 and Q8_0 are measured in the file's row layout and in the eight-row packed layout ("x8") that a
        loaded model computes from.
        Build with -c release: `swift run -c release conclave bench kernels`.
        """
    )

    @Flag(help: "Print a JSON array instead of a table.")
    var json = false

    @Option(help: "Threads for the all-threads rows (default: every core).")
    var threads: Int = ThreadPool.availableCores

    @Option(help: "Comma-separated types to measure (default: all with a dequantizer).")
    var types: String?

    @Option(help: "Seconds to spend on each measurement.")
    var seconds: Double = 0.4

    func run() throws {
        let list: [GGMLType]
        if let types {
            list = try types.split(separator: ",").map { name in
                guard let t = GGMLType(name: String(name)) else { throw ValidationError("unknown type '\(name)'") }
                return t
            }
        } else {
            list = [.q4_0, .q8_0, .q4_K, .q6_K, .f16, .bf16, .q4_1, .q5_0, .q5_1, .q2_K, .q3_K, .q5_K, .iq4_NL, .iq4_XS, .mxfp4]
        }
        let counts = threads > 1 ? [1, threads] : [1]
        var results: [KernelBench.Result] = []
        var bandwidth: [Int: Double] = [:]
        for t in counts {
            let pool = ThreadPool(threads: t)
            let bw = KernelBench.bandwidth(pool: pool, minSeconds: max(0.5, seconds))
            bandwidth[t] = bw.gbps
            results.append(bw)
            if !json { printError("bandwidth \(t) thread(s): \(fixed(bw.gbps, 1)) GB/s") }
        }
        for type in list {
            for t in counts {
                let pool = ThreadPool(threads: t)
                // Each shape in the row layout, then in the packed layout where the type has one (what a model runs).
                for packed in [false, true] {
                    for (rows, cols) in [(14336, 4096), (4096, 14336)] {
                        guard let r = try KernelBench.matmul(type: type, rows: rows, cols: cols, batch: 1, pool: pool, packed: packed, minSeconds: seconds) else { continue }
                        results.append(r)
                        if !json { printError(line(r, bandwidth)) }
                    }
                    if t == counts.last, let r = try KernelBench.matmul(type: type, rows: 14336, cols: 4096, batch: 32, pool: pool, packed: packed, minSeconds: seconds) {
                        results.append(r)
                        if !json { printError(line(r, bandwidth)) }
                    }
                }
            }
        }
        if json {
            print(JSON.array(results.map { r in
                var fields: [(String, JSON)] = [
                    ("type", .string(r.type)), ("op", .string(r.op)), ("rows", .int(r.rows)), ("cols", .int(r.cols)),
                    ("batch", .int(r.batch)), ("threads", .int(r.threads)), ("gbps", .double(round3(r.gbps))),
                    ("pct_of_bandwidth", .double(round3(r.gbps / bandwidth[r.threads]!))), ("kernel", .string(r.kernel)),
                ]
                if let g = r.gflops { fields.append(("gflops", .double(round3(g)))) }
                return .object(fields)
            }).render(indent: 2))
        } else {
            print(table(headers: ["type", "op", "rows×cols", "batch", "thr", "GB/s", "% bw", "GFLOP/s", "kernel"], rows: results.map { r in
                [r.type, r.op, r.op == "bandwidth" ? "-" : "\(r.rows)×\(r.cols)", String(r.batch), String(r.threads),
                 fixed(r.gbps, 1), fixed(100 * r.gbps / bandwidth[r.threads]!, 0) + "%", r.gflops.map { fixed($0, 1) } ?? "-", r.kernel]
            }).joined(separator: "\n"))
        }
    }

    func line(_ r: KernelBench.Result, _ bw: [Int: Double]) -> String {
        "\(r.type) \(r.op) \(r.rows)×\(r.cols) b\(r.batch) t\(r.threads): \(fixed(r.gbps, 1)) GB/s (\(fixed(100 * r.gbps / bw[r.threads]!, 0))%)"
            + (r.gflops.map { ", \(fixed($0, 1)) GFLOP/s" } ?? "")
    }

    func round3(_ x: Double) -> Double { (x * 1000).rounded() / 1000 }
}
