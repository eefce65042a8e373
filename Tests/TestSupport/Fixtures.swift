import Foundation

/// Paths the tests read, resolved from this file's location so `swift test` works from any directory.
public enum Fixtures {
    /// The package root (the folder holding Package.swift).
    public static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    public static func path(_ relative: String) -> String {
        root.appendingPathComponent("Tests/Fixtures").appendingPathComponent(relative).path
    }

    /// The small trained model the repository ships (the embedded default).
    public static let shippedModel = root.appendingPathComponent("models/tiny-qwen3moe-4L-256d-8x2-Q4_0.gguf").path

    /// `../shared/models` beside the checkout, when present (it is on developer machines and in CI).
    public static var sharedModels: URL? {
        let url = root.deletingLastPathComponent().appendingPathComponent("shared/models")
        return FileManager.default.fileExists(atPath: url.path) ? url : nil
    }

    /// A fresh temporary directory, removed by the caller when done.
    /// Flips the low bit of the byte at `offset` of the file at `path` (a corrupted or altered copy).
    public static func flipByte(_ path: String, at offset: Int) throws {
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        defer { try? h.close() }
        try h.seek(toOffset: UInt64(offset))
        guard let b = try h.read(upToCount: 1)?.first else { throw CocoaError(.fileReadCorruptFile) }
        try h.seek(toOffset: UInt64(offset))
        try h.write(contentsOf: Data([b ^ 0x01]))
    }

    public static func temporaryDirectory() -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("conclave-test-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }
}

/// A small deterministic random generator, so a failing randomised test reproduces.
public struct SplitMix: RandomNumberGenerator {
    public var state: UInt64
    public init(state: UInt64) { self.state = state }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension Fixtures {
    /// The `conclave` executable built with the tests (the same build directory as the test bundle), for tests
    /// that run real processes.
    public static var conclaveBinary: String? {
        var candidates: [URL] = []
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        for _ in 0..<4 {
            candidates.append(dir.appendingPathComponent("conclave"))
            dir = dir.deletingLastPathComponent()
        }
        for config in ["release", "debug"] { candidates.append(root.appendingPathComponent(".build/\(config)/conclave")) }
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0.path) }?.path
    }
}
