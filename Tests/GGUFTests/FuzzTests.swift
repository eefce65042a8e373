import Foundation
import Testing
import TestSupport
@testable import GGUF

/// Flips random bytes of a small valid file many times: every outcome must be a clean open or a typed error.
@Suite final class FuzzTests {
    let dir = Fixtures.temporaryDirectory()
    deinit { try? FileManager.default.removeItem(at: dir) }

    func seedFile() throws -> [UInt8] {
        let path = dir.appendingPathComponent("seed.gguf").path
        let w = GGUFWriter(path: path)
        try w.set("general.architecture", .string("qwen3moe"))
        try w.set("qwen3moe.block_count", .uint32(2))
        try w.set("tokenizer.ggml.tokens", .array(.strings(["<unk>", "<s>", "</s>", "▁a", "b"])))
        try w.set("tokenizer.ggml.scores", .array(.float32s([0, 0, 0, -1, -2])))
        try w.set("nested", .array(GGUFArray(.array, [.array(.int32s([1, 2])), .array(.strings(["x"]))])))
        try w.addTensor(name: "token_embd.weight", type: .q8_0, shape: [32, 5])
        try w.addTensor(name: "blk.0.ffn_gate_exps.weight", type: .q4_0, shape: [32, 4, 2])
        try w.addTensor(name: "output_norm.weight", type: .f32, shape: [32])
        try w.write { info, sink in try sink.write(contentsOf: [UInt8](repeating: 0x3C, count: info.byteCount)) }
        return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    @Test func randomByteFlips() throws {
        let seed = try seedFile()
        let path = dir.appendingPathComponent("fuzz.gguf").path
        var rng = SplitMix(state: 0xC0FFEE)
        // Most flips land in the header and table, where the parser does its work.
        let headerLength = try GGUFFile(path: dir.appendingPathComponent("seed.gguf").path).dataOffset
        var opened = 0, rejected = 0
        for round in 0..<10_000 {
            var bytes = seed
            let flips = Int.random(in: 1...4, using: &rng)
            for _ in 0..<flips {
                let at = Int.random(in: 0..<(round % 10 == 0 ? bytes.count : headerLength), using: &rng)
                bytes[at] = UInt8.random(in: 0...255, using: &rng)
            }
            if round % 50 == 0 { bytes.removeLast(Int.random(in: 0..<bytes.count, using: &rng)) }
            _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
            do {
                let f = try GGUFFile(path: path)
                // What opens must be fully usable: every value decodes, every tensor lies inside the file.
                for (_, v) in f.metadata { if case .array(let a) = v { _ = a.values } }
                for t in f.tensors { #expect(t.fileOffset + t.info.byteCount <= f.fileSize) }
                opened += 1
            } catch {
                #expect(error.path == path)
                rejected += 1
            }
        }
        #expect(opened + rejected == 10_000)
        #expect(rejected > 1000, "flips in the header should mostly be caught")
    }
}
