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
    public static func temporaryDirectory() -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("conclave-test-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }
}
