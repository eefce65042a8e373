import ChatTemplate
import Foundation
import TestSupport
import XCTest

/// Every case of every real chat template in Tests/Fixtures/chat-templates, rendered by Python's jinja2 as
/// transformers sets it up: our renderer must give the same bytes, and refuse where the template refuses.
final class ChatTemplateFixtureTests: XCTestCase {
    /// The fixtures' fixed clock: 2026-01-15 12:00:00.
    static let clock = ChatTemplate.Clock(seconds: { 1_768_478_400 }, utc: true)

    struct Case {
        let line: Int
        let object: JSONValue
    }

    static func cases(_ name: String) throws -> [Case] {
        let text = try String(contentsOfFile: Fixtures.path("chat-templates/\(name).cases.jsonl"), encoding: .utf8)
        return try text.split(separator: "\n").enumerated().map { Case(line: $0.offset + 1, object: try JSONValue.parse(String($0.element))) }
    }

    static var templateNames: [String] {
        let dir = Fixtures.path("chat-templates")
        return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".jinja") }.map { String($0.dropLast(6)) }.sorted()
    }

    func testEveryFixtureCaseRendersByteForByte() throws {
        let names = Self.templateNames
        XCTAssertEqual(names.count, 8, "the eight shipped templates")
        var checked = 0, refused = 0
        for name in names {
            let source = try String(contentsOfFile: Fixtures.path("chat-templates/\(name).jinja"), encoding: .utf8)
            let template: ChatTemplate
            do { template = try ChatTemplate(source) } catch { XCTFail("\(name): \(error)"); continue }
            for c in try Self.cases(name) {
                let o = c.object
                let messages = o["messages"]?.arrayValue ?? []
                let tools = o["tools"]?.arrayValue
                let result: Result<String, TemplateError>
                do {
                    result = .success(try template.render(messages: messages, tools: tools, addGenerationPrompt: o["add_generation_prompt"]?.boolValue ?? false,
                                                          bosToken: o["bos_token"]?.stringValue ?? "", eosToken: o["eos_token"]?.stringValue ?? "",
                                                          clock: Self.clock))
                } catch {
                    result = .failure(error)
                }
                if o["error"]?.boolValue == true {
                    guard case .failure(.refused(let m)) = result else { XCTFail("\(name) case \(c.line): expected a refusal, got \(result)"); continue }
                    XCTAssertEqual(m, o["error_message"]?.stringValue, "\(name) case \(c.line)")
                    refused += 1
                } else {
                    switch result {
                    case .success(let text):
                        if text != o["expected"]?.stringValue {
                            XCTFail("\(name) case \(c.line):\n got: \(text.debugDescription)\nwant: \((o["expected"]?.stringValue ?? "").debugDescription)")
                        }
                    case .failure(let e):
                        XCTFail("\(name) case \(c.line): \(e)")
                    }
                }
                checked += 1
            }
        }
        XCTAssertEqual(checked, 56)
        XCTAssertEqual(refused, 2)
    }
}
