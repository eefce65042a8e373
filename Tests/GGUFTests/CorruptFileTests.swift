import Foundation
import Testing
import TestSupport
@testable import GGUF

/// Builds GGUF bytes by hand, independently of `GGUFWriter`, so each corruption is exactly the one intended.
struct RawGGUF {
    var bytes: [UInt8] = []

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func str(_ s: String) { u64(UInt64(s.utf8.count)); bytes.append(contentsOf: s.utf8) }
    mutating func header(version: UInt32 = 3, tensors: UInt64, kvs: UInt64) {
        u32(0x4655_4747); u32(version); u64(tensors); u64(kvs)
    }
    mutating func kvU32(_ key: String, _ v: UInt32) { str(key); u32(4); u32(v) }
    mutating func kvString(_ key: String, _ v: String) { str(key); u32(8); str(v) }
    mutating func tensorInfo(_ name: String, shape: [UInt64], type: UInt32, offset: UInt64) {
        str(name); u32(UInt32(shape.count)); for d in shape { u64(d) }; u32(type); u64(offset)
    }
    mutating func align(_ a: Int = 32) { while bytes.count % a != 0 { bytes.append(0) } }

    /// A valid file: two keys, one 2×32 F32 tensor of data.
    static func valid() -> RawGGUF {
        var r = validTable()
        r.align()
        r.bytes += [UInt8](repeating: 0, count: 256)
        return r
    }

    static func validTable() -> RawGGUF {
        var r = RawGGUF()
        r.header(tensors: 1, kvs: 2)
        r.kvString("general.architecture", "llama")
        r.kvU32("llama.block_count", 1)
        r.tensorInfo("w", shape: [32, 2], type: 0, offset: 0)
        return r
    }

    /// Where the tensor table of `valid()` ends (before alignment padding).
    static var validTableLength: Int { validTable().bytes.count }

    func write(in dir: URL, _ name: String = "f.gguf") -> String {
        let path = dir.appendingPathComponent(name).path
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }
}

@Suite final class CorruptFileTests {
    let dir = Fixtures.temporaryDirectory()
    deinit { try? FileManager.default.removeItem(at: dir) }

    func open(_ r: RawGGUF) throws -> GGUFFile { try GGUFFile(path: r.write(in: dir)) }

    /// Opens the file and returns the error it must raise.
    func expectError(_ r: RawGGUF, _ code: GGUFError.Code, mentions: [String] = [],
                     sourceLocation: SourceLocation = #_sourceLocation) {
        let path = r.write(in: dir)
        do {
            _ = try GGUFFile(path: path)
            Issue.record("opened a corrupt file without error", sourceLocation: sourceLocation)
        } catch {
            #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
            #expect(error.path == path, sourceLocation: sourceLocation)
            for word in mentions {
                #expect(error.description.contains(word), "'\(error)' should mention \(word)", sourceLocation: sourceLocation)
            }
        }
    }

    @Test func validBaselineOpens() throws {
        let f = try open(RawGGUF.valid())
        #expect(f.tensorInfo(named: "w")?.byteCount == 256)
        #expect(f.dataOffset % 32 == 0)
    }

    @Test func emptyAndTruncatedFiles() {
        expectError(RawGGUF(), .truncated, mentions: ["header.magic"])
        let full = RawGGUF.valid()
        // Every cut inside the header, metadata or table is reported as truncation, never a crash;
        // a cut in the padding or the data leaves the tensor's bytes outside the file.
        let tableEnd = RawGGUF.validTableLength
        for cut in 1..<(full.bytes.count - 1) {
            var r = full
            r.bytes.removeLast(r.bytes.count - cut)
            expectError(r, cut < tableEnd ? .truncated : .outOfBounds)
        }
        // A cut inside the data section leaves the tensor running past the end.
        var r = full
        r.bytes.removeLast(10)
        expectError(r, .outOfBounds, mentions: ["'w'", "past the end"])
    }

    @Test func badMagic() {
        var r = RawGGUF.valid()
        r.bytes[0] = UInt8(ascii: "X")
        expectError(r, .badMagic, mentions: ["header.magic", "not a GGUF file"])
    }

    @Test func unsupportedVersions() {
        for v: UInt32 in [0, 1, 4, 99] {
            var r = RawGGUF()
            r.header(version: v, tensors: 0, kvs: 0)
            expectError(r, .unsupportedVersion, mentions: ["header.version", "version \(v)"])
        }
    }

    @Test func bigEndianFile() {
        var r = RawGGUF()
        r.u32(0x4655_4747)
        r.u32(UInt32(3).byteSwapped)
        r.u64(UInt64(0).byteSwapped)
        r.u64(UInt64(0).byteSwapped)
        expectError(r, .bigEndian, mentions: ["big-endian"])
    }

    @Test func tensorOutsideTheFile() {
        var r = RawGGUF()
        r.header(tensors: 1, kvs: 0)
        r.tensorInfo("far", shape: [32], type: 0, offset: 1 << 40)
        r.align()
        expectError(r, .outOfBounds, mentions: ["'far'", "1099511627776"])
    }

    @Test func hugeCountsAreRejectedBeforeAllocating() {
        var r = RawGGUF()
        r.header(tensors: UInt64.max, kvs: 0)
        expectError(r, .truncated, mentions: ["header.tensor_count", "\(UInt64.max)"])
        var s = RawGGUF()
        s.header(tensors: 0, kvs: 1)
        s.str("k"); s.u32(9); s.u32(0); s.u64(1 << 60)
        expectError(s, .truncated, mentions: ["'k'", "array length"])
        var t = RawGGUF()
        t.header(tensors: 0, kvs: 1)
        t.u64(1 << 50)
        t.bytes += [UInt8](repeating: 0, count: 16)
        expectError(t, .truncated, mentions: ["metadata[0].key"])
    }

    @Test func unknownTypes() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 1)
        r.str("general.odd"); r.u32(13); r.u32(0)
        expectError(r, .unknownType, mentions: ["'general.odd'", "13"])

        var t = RawGGUF()
        t.header(tensors: 1, kvs: 0)
        t.tensorInfo("w", shape: [32], type: 4, offset: 0)  // Q4_2, removed from ggml
        t.align(); t.bytes += [UInt8](repeating: 0, count: 64)
        expectError(t, .unknownType, mentions: ["'w'", "type id 4"])

        var a = RawGGUF()
        a.header(tensors: 0, kvs: 1)
        a.str("arr"); a.u32(9); a.u32(77); a.u64(1)
        expectError(a, .unknownType, mentions: ["'arr'", "77"])
    }

    @Test func duplicates() {
        var r = RawGGUF()
        r.header(tensors: 0, kvs: 2)
        r.kvU32("a.b", 1)
        r.kvU32("a.b", 2)
        expectError(r, .duplicateKey, mentions: ["'a.b'"])

        var t = RawGGUF()
        t.header(tensors: 2, kvs: 0)
        t.tensorInfo("w", shape: [32], type: 0, offset: 0)
        t.tensorInfo("w", shape: [32], type: 0, offset: 128)
        t.align(); t.bytes += [UInt8](repeating: 0, count: 256)
        expectError(t, .duplicateTensor, mentions: ["'w'"])
    }

    @Test func badTensorTables() {
        var r = RawGGUF()
        r.header(tensors: 1, kvs: 0)
        r.tensorInfo("w", shape: [1, 1, 1, 1, 1], type: 0, offset: 0)
        expectError(r, .invalidValue, mentions: ["n_dims", "5 dimensions"])

        var m = RawGGUF()
        m.header(tensors: 1, kvs: 0)
        m.tensorInfo("w", shape: [32], type: 0, offset: 4)
        m.align(); m.bytes += [UInt8](repeating: 0, count: 256)
        expectError(m, .invalidValue, mentions: ["offset 4", "alignment 32"])

        var q = RawGGUF()
        q.header(tensors: 1, kvs: 0)
        q.tensorInfo("q", shape: [33], type: 2, offset: 0)  // Q4_0 rows are whole blocks of 32
        q.align(); q.bytes += [UInt8](repeating: 0, count: 64)
        expectError(q, .invalidValue, mentions: ["'q'", "33", "block size 32"])

        var o = RawGGUF()
        o.header(tensors: 1, kvs: 0)
        o.tensorInfo("big", shape: [1 << 62, 1 << 62], type: 0, offset: 0)
        expectError(o, .invalidValue, mentions: ["'big'", "overflow"])

        var v = RawGGUF()
        v.header(tensors: 2, kvs: 0)
        v.tensorInfo("a", shape: [64], type: 0, offset: 0)
        v.tensorInfo("b", shape: [64], type: 0, offset: 128)
        v.align(); v.bytes += [UInt8](repeating: 0, count: 512)
        expectError(v, .outOfBounds, mentions: ["overlaps", "'a'"])
    }

    @Test func badAlignment() {
        for bad: UInt32 in [0, 3, 48] {
            var r = RawGGUF()
            r.header(tensors: 0, kvs: 1)
            r.kvU32("general.alignment", bad)
            expectError(r, .invalidValue, mentions: ["general.alignment", "power of two"])
        }
        var ok = RawGGUF()
        ok.header(tensors: 1, kvs: 1)
        ok.kvU32("general.alignment", 64)
        ok.tensorInfo("w", shape: [32], type: 0, offset: 0)
        ok.align(64); ok.bytes += [UInt8](repeating: 0, count: 128)
        let f = try? open(ok)
        #expect(f?.alignment == 64 && f!.dataOffset % 64 == 0)
    }

    @Test func notAFileAtAll() {
        do {
            _ = try GGUFFile(path: dir.appendingPathComponent("missing.gguf").path)
            Issue.record("opened a missing file")
        } catch {
            #expect(error.code == .io)
            #expect(error.description.contains("missing.gguf"))
        }
        do {
            _ = try GGUFFile(path: dir.path)
            Issue.record("opened a directory")
        } catch {
            #expect(error.code == .io)
        }
    }
}
