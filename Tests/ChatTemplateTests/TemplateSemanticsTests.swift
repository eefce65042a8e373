import ChatTemplate
import Foundation
import TestSupport
import XCTest

/// Small templates probing one construct each (whitespace control, scoping, operators, filters, tests, errors),
/// with what Python's jinja2 renders for them (scripts/dev/jinja-semantics.py wrote the fixture). Ours must give
/// the same text, and fail where jinja2 fails — at parse time or render time, never with a wrong text.
final class TemplateSemanticsTests: XCTestCase {
    func testEveryProbeMatchesJinja2() throws {
        let text = try String(contentsOfFile: Fixtures.path("chat-templates/semantics.jsonl"), encoding: .utf8)
        var count = 0, errors = 0
        for (i, line) in text.split(separator: "\n").enumerated() {
            let o = try JSONValue.parse(String(line))
            guard let source = o["template"]?.stringValue, case .object(let vars)? = o["vars"] else { return XCTFail("line \(i + 1) is malformed") }
            let result: Result<String, TemplateError>
            do { result = .success(try ChatTemplate(source).render(vars)) } catch { result = .failure(error) }
            count += 1
            if o["error"]?.boolValue == true {
                errors += 1
                if case .success(let got) = result { XCTFail("line \(i + 1) \(source.debugDescription): jinja2 fails (\(o["error_message"]?.stringValue ?? "")) but we rendered \(got.debugDescription)") }
                if o["error_type"]?.stringValue == "TemplateError", case .failure(let e) = result {
                    XCTAssertEqual(e, .refused(o["error_message"]?.stringValue ?? ""), "line \(i + 1): raise_exception is a refusal with its message")
                }
            } else {
                switch result {
                case .success(let got):
                    XCTAssertEqual(got, o["expected"]?.stringValue, "line \(i + 1) \(source.debugDescription)")
                case .failure(let e):
                    XCTFail("line \(i + 1) \(source.debugDescription): \(e)")
                }
            }
        }
        XCTAssertEqual(count, 66)
        XCTAssertEqual(errors, 14)
    }

    /// An unsupported construct or a syntax error names the template line, so the user knows what to fix.
    func testErrorsNameTheLine() {
        XCTAssertThrowsError(try ChatTemplate("line one\n{% if x %}\n{% include 'y' %}\n{% endif %}")) { e in
            XCTAssertEqual(e as? TemplateError, .syntax("the template uses '{% include %}', which this renderer does not support", line: 3))
        }
        XCTAssertThrowsError(try ChatTemplate("a\nb\n{{ x | nosuch }}").render([("x", .int(1))])) { e in
            XCTAssertEqual((e as? TemplateError)?.description, "chat template line 3: the template uses the filter 'nosuch', which this renderer does not support")
        }
        XCTAssertThrowsError(try ChatTemplate("{% for m in messages %}\n{{ m.a.b }}\n{% endfor %}").render([("messages", .array([.object([])]))])) { e in
            guard case .render(_, let line)? = e as? TemplateError else { return XCTFail("\(e)") }
            XCTAssertEqual(line, 2)
        }
        // A template that recurses without end stops with an error instead of exhausting the stack.
        XCTAssertThrowsError(try ChatTemplate("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}").render([])) { e in
            XCTAssertEqual((e as? TemplateError)?.description, "chat template line 1: macro 'f' recursed deeper than 64 calls")
        }
    }

    /// A render has a budget: loops of loops, or output without end, stop with `.exceeded`; a real template
    /// over a conversation of 3 000 messages stays far inside it (every shipped template, with the step count
    /// it took at most shown by what a budget of a tenth would refuse).
    func testRendersHaveABudget() throws {
        let looping = try ChatTemplate("{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}")
        XCTAssertThrowsError(try looping.render([])) { e in
            guard case .exceeded(let m)? = e as? TemplateError else { return XCTFail("\(e)") }
            XCTAssertTrue(m.contains("4000000 steps"), m)
        }
        // Few steps, much text: the output budget.
        let wide = try ChatTemplate("{% for i in range(1000) %}{{ 'x' * 1000000 }}{% endfor %}")
        XCTAssertThrowsError(try wide.render([], budget: .init(steps: 4_000_000, outputBytes: 8 << 20))) { e in
            guard case .exceeded(let m)? = e as? TemplateError else { return XCTFail("\(e)") }
            XCTAssertTrue(m.contains("8 MiB"), m)
        }
        // Few steps, few bytes written, but every step copies a growing string (18 TB over these loops), or
        // one operation would make more than the budget: each stops at the bytes or items made.
        let hostile: [(String, String)] = [
            ("{% set ns = namespace(x='') %}{% for i in range(1000) %}{% for j in range(1000) %}{% set ns.x = ns.x ~ 'abcdefghijklmnopqrstuvwxyz0123456789' %}{% endfor %}{% endfor %}", "MiB of strings"),
            ("{{ ((range(3000)|list) * 3000)|length }}", "a list of 9000000 items"),
            ("{{ range(100000)|join('x' * 1000000)|length }}", "MiB of strings"),
            ("{{ ('x' * 1000000)|replace('x', 'y' * 1000000)|length }}", "MiB of strings"),
            ("{{ 'a'|indent(100000000000) }}", "MiB"),
        ]
        for (source, message) in hostile {
            let t0 = Date()
            XCTAssertThrowsError(try ChatTemplate(source).render([]), source) { e in
                guard case .exceeded(let m)? = e as? TemplateError else { return XCTFail("\(source): \(e)") }
                XCTAssertTrue(m.contains(message), "\(source): \(m)")
            }
            // Generous on a loaded machine: the point is that it is not hours (or an allocation of terabytes).
            XCTAssertLessThan(Date().timeIntervalSince(t0), 60, source)
        }
        let messages: [JSONValue] = (0..<3000).map { i in
            .object([("role", .string(i % 2 == 0 ? "user" : "assistant")), ("content", .string("message \(i) of a long conversation"))])
        }
        let dir = Fixtures.path("chat-templates")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".jinja") }
        XCTAssertGreaterThanOrEqual(files.count, 8)
        for f in files {
            let t = try ChatTemplate(String(contentsOfFile: dir + "/" + f, encoding: .utf8))
            let full = Result { try t.render(messages: messages, addGenerationPrompt: true, bosToken: "<s>", eosToken: "</s>") }
            if case .failure(let e) = full, let te = e as? TemplateError, case .refused = te { continue }  // refuses these roles, as its model does
            XCTAssertTrue(((try? full.get()) ?? "").contains("message 2999 of a long conversation"), "\(f): \(full)")
            // Within a tenth of the budget: a conversation ten times longer still renders.
            XCTAssertNoThrow(try t.render(messages: messages, addGenerationPrompt: true, bosToken: "<s>", eosToken: "</s>", budget: .init(steps: 400_000)), f)
        }
    }

    /// The chatml fallback renders as llama-server's does for a model without a template.
    func testChatMLFallback() throws {
        let t = try ChatTemplate(ChatTemplate.chatml)
        let text = try t.render(messages: [.object([("role", .string("system")), ("content", .string("S"))]),
                                           .object([("role", .string("user")), ("content", .string("Hi"))])],
                                addGenerationPrompt: true, bosToken: "<s>", eosToken: "</s>")
        XCTAssertEqual(text, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    }

    func testJSONKeepsOrderAndRoundTrips() throws {
        let v = try JSONValue.parse(#"{"z": 1, "a": [1.5, -0, 2e3, true, null, "\u00e9\ud83d\ude42\n"], "m": {}}"#)
        XCTAssertEqual(v.render(), #"{"z":1,"a":[1.5,0,2000,true,null,"é🙂\n"],"m":{}}"#)
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "01", "\"\\x\"", "[1] 2", String(repeating: "[", count: 200) + String(repeating: "]", count: 200)] {
            XCTAssertThrowsError(try JSONValue.parse(bad), bad)
        }
    }
}
