import Foundation
import Testing
import TestSupport

/// The module graph three ways — what each module imports, what `Package.swift` declares, what
/// `docs/ARCHITECTURE.md` draws — must be one graph: an import added without its declaration, a dependency
/// declared and never used, or a drawing that lags the code fails here.
@Suite struct ModuleGraphTests {
    static let sources = Fixtures.root.appendingPathComponent("Sources")

    /// This repository's modules: the folders under Sources.
    static var modules: Set<String> {
        Set((try? FileManager.default.contentsOfDirectory(atPath: sources.path)) ?? []).filter { !$0.hasPrefix(".") }
    }

    /// Each module's imports of this repository's modules, from its Swift files.
    static func imports() throws -> [String: Set<String>] {
        var out: [String: Set<String>] = [:]
        for m in modules {
            out[m] = []
            let dir = sources.appendingPathComponent(m)
            guard let files = FileManager.default.enumerator(atPath: dir.path) else { continue }
            for case let f as String in files where f.hasSuffix(".swift") {
                let text = try String(contentsOf: dir.appendingPathComponent(f), encoding: .utf8)
                for line in text.split(separator: "\n") {
                    let words = line.split(separator: " ")
                    guard let i = words.firstIndex(of: "import"), i + 1 < words.count,
                          words[..<i].allSatisfy({ $0.hasPrefix("@") }) else { continue }
                    let name = String(words[i + 1])
                    if modules.contains(name), name != m { out[m]!.insert(name) }
                }
            }
        }
        return out
    }

    /// The dependencies `Package.swift` declares for each target of Sources (this repository's modules only).
    static func declared() throws -> [String: Set<String>] {
        let text = try String(contentsOf: Fixtures.root.appendingPathComponent("Package.swift"), encoding: .utf8)
        // Each target from its `…Target(name: "X"` to the next one; its dependency list is the bracket after
        // `dependencies:` (products' names are not modules of Sources and drop out).
        let re = try NSRegularExpression(pattern: #"(?:target|Target|systemLibrary)\(\s*name:\s*"([^"]+)""#)
        let ns = text as NSString
        let matches = re.matches(in: text, range: NSRange(location: 0, length: ns.length))
        var out: [String: Set<String>] = [:]
        for (k, m) in matches.enumerated() {
            let name = ns.substring(with: m.range(at: 1))
            guard modules.contains(name) else { continue }
            let from = m.range.location + m.range.length
            let to = k + 1 < matches.count ? matches[k + 1].range.location : ns.length
            let body = Substring(ns.substring(with: NSRange(location: from, length: to - from)))
            var deps: Set<String> = []
            if let d = body.range(of: "dependencies: [") {
                var depth = 1, i = d.upperBound
                while i < body.endIndex, depth > 0 {
                    if body[i] == "[" { depth += 1 } else if body[i] == "]" { depth -= 1 }
                    i = body.index(after: i)
                }
                for part in body[d.upperBound..<i].split(separator: "\"", omittingEmptySubsequences: false).enumerated() where part.offset % 2 == 1 {
                    let n = String(part.element)
                    if modules.contains(n) { deps.insert(n) }
                }
            }
            out[name] = deps
        }
        return out
    }

    /// The table between the module-graph markers of docs/ARCHITECTURE.md.
    static func drawn() throws -> [String: Set<String>] {
        let text = try String(contentsOf: Fixtures.root.appendingPathComponent("docs/ARCHITECTURE.md"), encoding: .utf8)
        guard let a = text.range(of: "<!-- module-graph -->"), let b = text.range(of: "<!-- /module-graph -->") else { return [:] }
        var out: [String: Set<String>] = [:]
        for line in text[a.upperBound..<b.lowerBound].split(separator: "\n") where line.hasPrefix("| `") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            func names(_ cell: String) -> [String] { cell.split(separator: "`", omittingEmptySubsequences: false).enumerated().filter { $0.offset % 2 == 1 }.map { String($0.element) } }
            let deps = Set(names(cells[1]))
            for m in names(cells[0]) { out[m] = deps }
        }
        return out
    }

    @Test func importsEqualTheManifestAndTheDrawing() throws {
        let imports = try Self.imports(), declared = try Self.declared(), drawn = try Self.drawn()
        #expect(!imports.isEmpty && !declared.isEmpty && !drawn.isEmpty)
        for m in Self.modules.sorted() {
            #expect(declared[m] != nil, "\(m): not a target of Package.swift")
            #expect(imports[m] == declared[m], "\(m): imports \(imports[m]?.sorted() ?? []) but Package.swift declares \(declared[m]?.sorted() ?? [])")
            #expect(drawn[m] == imports[m], "\(m): docs/ARCHITECTURE.md draws \(drawn[m]?.sorted() ?? []) but the code imports \(imports[m]?.sorted() ?? [])")
        }
    }

    /// Who may not know whom (DESIGN.md § Layout): the coordinator and the worker share only ClusterProtocol and
    /// the layers below it; placement is a pure function of the footprint and the cluster file.
    @Test func layersKeepTheirDistance() throws {
        let imports = try Self.imports()
        #expect(imports["Coordinator"]?.contains("Worker") == false)
        #expect(imports["Worker"]?.contains("Coordinator") == false)
        #expect(imports["Placement"]?.contains("Wire") == false)
        #expect(imports["Model"]?.isDisjoint(with: ["Wire", "Generation", "Worker", "Coordinator"]) == true)
        #expect(imports["Generation"]?.isDisjoint(with: ["Wire", "Serving"]) == true)
    }
}
