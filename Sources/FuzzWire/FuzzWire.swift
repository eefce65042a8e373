import Foundation
import GGUF
import Model
import CurveKeys
import Wire
import Worker

/// Fuzzes what a worker does with bytes from the network: the input is split into frames (each a 2-byte length
/// then its bytes), decoded as a multipart message and dispatched to a worker that holds the whole shipped model
/// (Hello, Assign, StageInput, ExpertCall, Heartbeat, FetchModel …, every field as it came). Nothing may crash,
/// hang or grow without bound; the worker answers each bad message with an Error.
///
/// Built with `-sanitize=fuzzer -DFUZZING` by `scripts/fuzz wire SECONDS`; a plain build makes a replay tool that
/// runs files (a corpus, a crash) through the same function.
/// Connections refused: an Assign from the fuzzer may name any endpoint (the worker's own among them).
struct NoPeers: TransportFactory {
    var authenticates: Bool { false }
    var refusedPeers: Int { 0 }
    func listen(_ endpoint: String, maxMessageSize: Int) throws -> Transport { throw WireError(.unavailable, "no listeners while fuzzing") }
    func connect(_ endpoint: String) throws -> Transport { throw WireError(.unavailable, "no peers while fuzzing (\(endpoint))") }
    func trust(workers: [TrustedPeer]) {}
    func trust(server endpoint: String, key: CurveKey) -> Bool { false }
}

enum WireHarness {
    static let model: String = ProcessInfo.processInfo.environment["CONCLAVE_FUZZ_MODEL"] ?? "models/tiny-qwen3moe-4L-256d-8x2-Q4_0.gguf"
    static let network = InMemoryNetwork()
    static let service: WorkerService = {
        let router = try! network.router(at: "inproc://worker")
        let options = WorkerService.Options(name: "fuzz", endpoint: "inproc://worker", modelPath: model, memory: 1 << 30, threads: 1,
                                            cacheDirectory: FileManager.default.temporaryDirectory.appendingPathComponent("conclave-fuzz-cache").path)
        let s = try! WorkerService(options: options, router: router, transports: NoPeers())
        // The fuzzer's peer: replies arrive here and are dropped, so nothing accumulates.
        let peer = try! network.dealer(connectingTo: "inproc://worker", identity: "peer")
        Task.detached { for await _ in peer.messages {} }
        // Assigned the whole model, every expert resident, a small context: StageInputs and ExpertCalls compute.
        let file = try! GGUFFile(path: model)
        var e = Envelope()
        e.requestID = 1
        e.assign = assign(file)
        s.dispatch(Frames(peer: Data("peer".utf8), parts: try! WireMessage.make(e).encode()))
        s.quiesce()
        return s
    }()

    static func assign(_ file: GGUFFile) -> Conclave_V1_Assign {
        var a = Conclave_V1_Assign()
        let config = try! ModelConfig(file: file)
        let layers = config.layerCount, experts = config.expertCount
        a.firstLayer = 0
        a.endLayer = UInt32(layers)
        a.contextLength = 64
        a.modelMetadataSha256 = Data(file.metadataSHA256)
        a.experts = (0..<layers).map { l in
            var s = Conclave_V1_ExpertSet()
            s.layer = UInt32(l)
            s.experts = (0..<UInt32(experts)).map { $0 }
            return s
        }
        return a
    }

    /// Frames from the input: [length: UInt16 LE][bytes] repeated; a short tail is a frame of its own.
    static func frames(_ data: Data) -> [Data] {
        var parts: [Data] = []
        var i = data.startIndex
        while i < data.endIndex, parts.count < 8 {
            guard data.endIndex - i >= 2 else { parts.append(data[i...]); break }
            let n = Int(data[i]) | Int(data[i + 1]) << 8
            let start = i + 2, end = min(data.endIndex, start + n)
            parts.append(data[start..<end])
            i = end
        }
        return parts.isEmpty ? [Data()] : parts
    }

    /// The input that carries `parts` (the inverse of `frames`).
    static func input(_ parts: [Data]) -> Data {
        var d = Data()
        for p in parts {
            d.append(UInt8(p.count & 0xff))
            d.append(UInt8(p.count >> 8))
            d.append(p)
        }
        return d
    }

    /// One valid message of each kind a worker takes, as fuzzer inputs: where mutation starts.
    static func seeds() throws -> [(String, Data)] {
        let file = try GGUFFile(path: model)
        let e = try ModelConfig(file: file).embeddingLength
        func message(_ name: String, tensors: [(Conclave_V1_DType, [Int], Data)] = [], _ fill: (inout Envelope) -> Void) throws -> (String, Data) {
            var env = Envelope()
            env.requestID = 7
            fill(&env)
            return (name, Self.input(try WireMessage.make(env, tensors: tensors).encode()))
        }
        var stage = Conclave_V1_StageInput()
        stage.rows = (0..<2).map { p in
            var r = Conclave_V1_BatchRow()
            r.sequence = 3
            r.position = UInt32(p)
            return r
        }
        stage.tokens = [100, 200]
        stage.sampleRows = [1]
        stage.sampling = [SamplingParams().wire]
        stage.release = [9]
        var call = Conclave_V1_ExpertCall()
        var route = Conclave_V1_Route()
        route.experts = [0, 1]
        route.weights = [0.5, 0.5]
        route.slots = [0, 1]
        call.routes = [route]
        var hb = Conclave_V1_Heartbeat()
        var sample = Conclave_V1_MetricSample()
        sample.name = "conclave_worker_tokens_total"
        sample.value = 3
        hb.metrics = [sample]
        var fetch = Conclave_V1_FetchModel()
        fetch.offset = 0
        fetch.length = 64
        var table = Conclave_V1_PieceTable()
        table.dataOffset = 64
        table.offsets = [64, 128]
        table.counts = [64, 64]
        table.sha256 = Data(count: 64)
        return [
            try message("hello") { $0.hello = Conclave_V1_Hello() },
            try message("assign") { $0.assign = assign(file) },
            try message("stage-input") { $0.stageInput = stage },
            try message("expert-call", tensors: [(.f32, [1, e], Data(count: e * 4))]) { $0.expertCall = call },
            try message("heartbeat") { $0.heartbeat = hb },
            try message("fetch-model") { $0.fetchModel = fetch },
            try message("fetch-pieces") { $0.fetchPieces = Conclave_V1_FetchPieces() },
            try message("piece-table") { $0.pieceTable = table },
            try message("generate") { $0.generate = Conclave_V1_Generate() },
        ]
    }

    static func run(_ data: Data) {
        service.dispatch(Frames(peer: Data("peer".utf8), parts: frames(data)))
        service.quiesce()
    }
}

#if FUZZING
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWire(_ bytes: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    WireHarness.run(Data(bytes: bytes, count: count))
    return 0
}

/// libFuzzer's driver, called from our entry point (SwiftPM names an executable's entry point itself).
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt) -> CInt

@main struct FuzzWire {
    static func main() {
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, fuzzWire))
    }
}
#else
/// Replays files (or every file of directories) through the harness: `FuzzWire CORPUS_DIR…`;
/// `FuzzWire --write-seeds DIR` writes the seed corpus.
@main struct ReplayWire {
    static func main() {
        if CommandLine.arguments.count == 3, CommandLine.arguments[1] == "--write-seeds" {
            for (name, data) in try! WireHarness.seeds() { try! data.write(to: URL(fileURLWithPath: CommandLine.arguments[2] + "/" + name)) }
            return
        }
        let files = CommandLine.arguments.dropFirst().flatMap(corpusFiles)
        for f in files { WireHarness.run((try? Data(contentsOf: URL(fileURLWithPath: f))) ?? Data()) }
        print("replayed \(files.count) inputs, no crash")
    }
}
#endif

func corpusFiles(_ path: String) -> [String] {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { return [] }
    guard isDir.boolValue else { return [path] }
    return ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { path + "/" + $0 }
}
