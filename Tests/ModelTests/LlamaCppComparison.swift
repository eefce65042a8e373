import Foundation
import TestSupport

/// llama.cpp's logits for a run, as `llama-ref logits` and ../shared/models/golden print them (one JSON object per
/// position: `pos`, `token`, `top`), and the agreement rule of ../shared/models/README.md.
struct LlamaCppLogits {
    let tokens: [Int32]
    let tops: [[(id: Int, logit: Float)]]

    init(fixture: String) throws {
        let lines = try String(contentsOfFile: Fixtures.path(fixture), encoding: .utf8).split(separator: "\n")
        var tokens: [Int32] = [], tops: [[(id: Int, logit: Float)]] = []
        for line in lines {
            let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            tokens.append(Int32(o["token"] as! Int))
            tops.append((o["top"] as! [[Double]]).map { (Int($0[0]), Float($0[1])) })
        }
        self.tokens = tokens
        self.tops = tops
    }

    /// Top-1 agreement counted where llama.cpp's top-2 gap exceeds 0.01, and the largest difference on its top-10.
    func compare(_ logits: [Float], vocab v: Int) -> (agreed: Int, counted: Int, maxDiff: Float) {
        var counted = 0, agreed = 0
        var maxDiff: Float = 0
        for (i, top) in tops.enumerated() {
            let row = logits[(i * v)..<((i + 1) * v)]
            if top[0].logit - top[1].logit > 0.01 {
                counted += 1
                if row.indices.max(by: { row[$0] < row[$1] })! - i * v == top[0].id { agreed += 1 }
            }
            for t in top { maxDiff = max(maxDiff, abs(row[i * v + t.id] - t.logit)) }
        }
        return (agreed, counted, maxDiff)
    }
}
