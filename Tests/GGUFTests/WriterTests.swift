import Foundation
import Testing
import TestSupport
@testable import GGUF

@Suite final class WriterTests {
    let dir = Fixtures.temporaryDirectory()
    deinit { try? FileManager.default.removeItem(at: dir) }

    /// Every value type, nested arrays, odd tensor sizes that need padding: write, read back, compare.
    @Test func roundTripEveryValueType() throws {
        let path = dir.appendingPathComponent("rt.gguf").path
        let w = GGUFWriter(path: path)
        let values: [(String, GGUFValue)] = [
            ("u8", .uint8(200)), ("i8", .int8(-100)), ("u16", .uint16(60000)), ("i16", .int16(-30000)),
            ("u32", .uint32(4_000_000_000)), ("i32", .int32(-2_000_000_000)), ("f32", .float32(1e-6)),
            ("bool", .bool(true)), ("str", .string("héllo ▁world")), ("u64", .uint64(UInt64.max)),
            ("i64", .int64(Int64.min)), ("f64", .float64(-3.25e300)),
            ("strings", .array(.strings(["a", "", "ccc", "<0x0A>"]))),
            ("floats", .array(.float32s([1, -2.5, .infinity]))),
            ("nested", .array(GGUFArray(.array, [.array(.int32s([1, 2])), .array(.int32s([])), .array(.int32s([3]))]))),
            ("empty", .array(.strings([]))),
        ]
        for (k, v) in values { try w.set(k, v) }
        let shapes: [(String, GGMLType, [Int])] = [
            ("a", .f32, [3]), ("b", .q4_0, [64, 3]), ("c", .f16, [5, 1, 2]), ("d", .q6_K, [256, 2, 1, 1]),
        ]
        var payloads: [String: [UInt8]] = [:]
        for (name, type, shape) in shapes {
            let info = try w.addTensor(name: name, type: type, shape: shape)
            let salt = Int(name.utf8.first!)
            payloads[name] = (0..<info.byteCount).map { (i: Int) -> UInt8 in UInt8(truncatingIfNeeded: i &* 31 &+ salt) }
        }
        try w.write { info, sink in
            let bytes = payloads[info.name]!
            // Two writes, to check the sink accepts data in pieces.
            try bytes.withUnsafeBytes { buf in
                try sink.write(UnsafeRawBufferPointer(rebasing: buf[0..<(buf.count / 2)]))
                try sink.write(UnsafeRawBufferPointer(rebasing: buf[(buf.count / 2)...]))
            }
        }
        #expect(!FileManager.default.fileExists(atPath: path + ".partial"))

        let f = try GGUFFile(path: path)
        #expect(f.version == 3)
        #expect(f.metadata.map(\.key) == values.map(\.0))
        for (k, v) in values { #expect(f[k] == v, "\(k)") }
        #expect(f.array("nested")?[2].arrayValue?[0].intValue == 3)
        #expect(f.tensorInfos.map(\.name) == shapes.map(\.0))
        for (name, type, shape) in shapes {
            let t = try #require(f.tensor(named: name))
            #expect(t.type == type && t.shape == shape)
            #expect(Array(t.bytes) == payloads[name])
            #expect(t.fileOffset % 32 == 0)
        }
    }

    /// Rewriting a real model tensor by tensor gives back the same metadata and bytes.
    @Test func rewriteShippedModel() throws {
        let src = try GGUFFile(path: Fixtures.shippedModel)
        let path = dir.appendingPathComponent("copy.gguf").path
        let w = GGUFWriter(path: path)
        for (k, v) in src.metadata { try w.set(k, v) }
        for t in src.tensorInfos { try w.addTensor(name: t.name, type: t.type, shape: t.shape) }
        try w.write { info, sink in try sink.write(src.tensor(named: info.name)!.bytes) }
        let copy = try GGUFFile(path: path)
        #expect(copy.metadata.count == src.metadata.count)
        for (k, v) in src.metadata { #expect(copy[k] == v, "\(k)") }
        #expect(copy.tensorInfos == src.tensorInfos)
        for t in src.tensors { #expect(copy.tensor(named: t.name)!.bytes.elementsEqual(t.bytes), "\(t.name)") }
        // llama.cpp's writer lays files out the same way, so even the whole file is identical.
        #expect(copy.fileSize == src.fileSize)
        #expect(copy.mapping.bytes.elementsEqual(src.mapping.bytes))
    }

    @Test func customAlignment() throws {
        let path = dir.appendingPathComponent("a64.gguf").path
        let w = GGUFWriter(path: path, alignment: 64)
        try w.addTensor(name: "x", type: .f32, shape: [3])
        try w.addTensor(name: "y", type: .f32, shape: [5])
        try w.write { info, sink in try sink.write(contentsOf: [Float](repeating: 1.5, count: info.shape[0])) }
        let f = try GGUFFile(path: path)
        #expect(f.alignment == 64)
        #expect(f.tensorInfo(named: "y")?.offset == 64)
        #expect(f.tensor(named: "y")!.bytes.loadUnaligned(fromByteOffset: 16, as: Float.self) == 1.5)
    }

    @Test func writerRejectsMistakes() throws {
        let path = dir.appendingPathComponent("bad.gguf").path
        let w = GGUFWriter(path: path)
        try w.set("k", .uint32(1))
        #expect(throws: GGUFError.self) { try w.set("k", .uint32(2)) }
        try w.addTensor(name: "t", type: .q8_0, shape: [32])
        #expect(throws: GGUFError.self) { try w.addTensor(name: "t", type: .f32, shape: [1]) }
        #expect(throws: GGUFError.self) { try w.addTensor(name: "u", type: .q8_0, shape: [31]) }
        // Too few bytes for a tensor: the write fails and leaves no file behind.
        #expect(throws: GGUFError.self) { try w.write { _, sink in try sink.write(contentsOf: [UInt8](repeating: 0, count: 10)) } }
        #expect(!FileManager.default.fileExists(atPath: path))
        #expect(!FileManager.default.fileExists(atPath: path + ".partial"))
    }
}
