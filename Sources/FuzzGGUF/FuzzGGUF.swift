#if canImport(Glibc)
import Glibc
#endif
import Foundation
import GGUF
import Model
import Tokenizer

/// Fuzzes what every command does first with a model file: the input is a file (on tmpfs, /dev/shm) that
/// the GGUF reader maps and checks, then ModelConfig and the Tokenizer read. Every malformed file must be a
/// typed error, never a crash or an allocation sized by a field of the file.
///
/// Built with `-sanitize=fuzzer -DFUZZING` by `scripts/fuzz gguf SECONDS`; a plain build replays files.
enum GGUFHarness {
    static let path = (FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()) + "/conclave-fuzz-\(getpid()).gguf"
    static let fd: Int32 = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)

    static func run(_ data: Data) {
        ftruncate(fd, 0)
        _ = data.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        guard let file = try? GGUFFile(path: path) else { return }
        _ = try? ModelConfig(file: file)
        _ = try? Tokenizer(file: file)
    }
}

extension GGUFHarness {
    /// Small valid files: an SPM-style vocabulary with a few tensors, and a BPE one with merges.
    static func writeSeeds(into dir: String) throws {
        let spm = GGUFWriter(path: dir + "/spm-qwen3moe.gguf")
        try spm.set("general.architecture", .string("qwen3moe"))
        for (k, v) in [("block_count", 1), ("embedding_length", 32), ("feed_forward_length", 16), ("attention.head_count", 2),
                       ("attention.head_count_kv", 1), ("expert_count", 2), ("expert_used_count", 1), ("context_length", 64)] {
            try spm.set("qwen3moe." + k, .uint32(UInt32(v)))
        }
        try spm.set("tokenizer.ggml.model", .string("llama"))
        try spm.set("tokenizer.ggml.tokens", .array(.strings(["<unk>", "<s>", "</s>", "▁a", "b"])))
        try spm.set("tokenizer.ggml.scores", .array(.float32s([0, 0, 0, -1, -2])))
        try spm.set("tokenizer.ggml.token_type", .array(.int32s([2, 3, 3, 1, 1])))
        try spm.addTensor(name: "token_embd.weight", type: .q8_0, shape: [32, 5])
        try spm.addTensor(name: "blk.0.ffn_gate_exps.weight", type: .q4_0, shape: [32, 16, 2])
        try spm.addTensor(name: "output_norm.weight", type: .f32, shape: [32])
        try spm.write { info, sink in try sink.write(contentsOf: [UInt8](repeating: 0x3C, count: info.byteCount)) }
        let bpe = GGUFWriter(path: dir + "/bpe-vocab.gguf")
        try bpe.set("general.architecture", .string("llama"))
        try bpe.set("tokenizer.ggml.model", .string("gpt2"))
        try bpe.set("tokenizer.ggml.pre", .string("qwen2"))
        try bpe.set("tokenizer.ggml.tokens", .array(.strings(["a", "b", "ab", "Ġ", "Ġab", "<|endoftext|>"])))
        try bpe.set("tokenizer.ggml.merges", .array(.strings(["a b", "Ġ ab"])))
        try bpe.set("tokenizer.ggml.token_type", .array(.int32s([1, 1, 1, 1, 1, 3])))
        try bpe.write { _, _ in }
    }
}

#if FUZZING
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzGGUF(_ bytes: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    GGUFHarness.run(Data(bytes: bytes, count: count))
    return 0
}

/// libFuzzer's driver, called from our entry point (SwiftPM names an executable's entry point itself).
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt) -> CInt

@main struct FuzzGGUF {
    static func main() {
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, fuzzGGUF))
    }
}
#else
/// Replays files (or every file of directories) through the harness: `FuzzGGUF CORPUS_DIR…`;
/// `FuzzGGUF --write-seeds DIR` writes the seed corpus.
@main struct ReplayGGUF {
    static func main() {
        if CommandLine.arguments.count == 3, CommandLine.arguments[1] == "--write-seeds" {
            try! GGUFHarness.writeSeeds(into: CommandLine.arguments[2])
            return
        }
        var n = 0
        for path in CommandLine.arguments.dropFirst() {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { continue }
            let files = isDir.boolValue ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { path + "/" + $0 } : [path]
            for f in files {
                GGUFHarness.run((try? Data(contentsOf: URL(fileURLWithPath: f))) ?? Data())
                n += 1
            }
        }
        print("replayed \(n) inputs, no crash")
    }
}
#endif
