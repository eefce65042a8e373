import Foundation
import JSON
import Kernels
import Synchronization
import Tokenizer

/// `bench serve --turns N`: a multi-turn chat workload, as agents and chat clients make it. Each of
/// `--conversations` clients sends the whole conversation again every turn — a shared system prompt of
/// `--system` tokens, then per turn `--user` tokens of its own text and the model's reply (`--gen` tokens) — one
/// turn after another, all conversations at once. The same workload runs on a server with the prefix cache, one
/// without (`--no-prefix-cache`) and, with `--vs-llama-server`, llama.cpp's llama-server (its prompt cache on);
/// each turn's time to first token, the prompt tokens the server reused and the text are recorded.
struct MultiTurnWorkload {
    let conversations: Int
    let turns: Int
    let system: [Int32]
    /// Each conversation's user text per turn.
    let user: [[[Int32]]]
    let gen: Int
    let tokenizer: Tokenizer

    init(tokenizer: Tokenizer, conversations: Int, turns: Int, system: Int, user: Int, gen: Int) {
        self.tokenizer = tokenizer
        self.conversations = conversations
        self.turns = turns
        self.gen = gen
        self.system = BenchServe.promptIDs(tokenizer, count: system, variant: 0)
        let words = ["cache", "memory", "network", "disk", "expert", "layer", "token", "stage", "worker", "budget", "plan", "clock"]
        self.user = (0..<conversations).map { c in
            (0..<turns).map { t in
                var text = " User \(c) asks, turn \(t):"
                var i = c * 31 + t * 7
                while tokenizer.encode(text, addSpecial: false).count < user {
                    text += " \(words[i % words.count]) \(i % 97)"
                    i += 5
                }
                return Array(tokenizer.encode(text, addSpecial: false).prefix(user))
            }
        }
    }

    /// Context the longest conversation needs.
    var context: Int { system.count + turns * ((user.first?.first?.count ?? 0) + gen + 16) + 64 }

    struct Turn {
        var conversation = 0, turn = 0
        var prompt = 0, cached: Int?
        var ttft = 0.0
        var tokens = 0
        var text = ""
    }

    struct Run {
        var server: String
        var turns: [Turn] = []
        var wall = 0.0
        var tokens: Int { turns.reduce(0) { $0 + $1.tokens } }
        var throughput: Double { wall > 0 ? Double(tokens) / wall : 0 }
        /// Median time to first token of turn `t` over the conversations.
        func ttft(turn t: Int) -> Double {
            BenchServe.quantile(turns.filter { $0.turn == t }.map(\.ttft).sorted(), 0.5)
        }
        /// Prompt tokens reused ÷ prompt tokens, at turn `t` (nil: the server does not say).
        func hitRate(turn t: Int) -> Double? {
            let at = turns.filter { $0.turn == t }
            guard at.allSatisfy({ $0.cached != nil }) else { return nil }
            return Double(at.reduce(0) { $0 + $1.cached! }) / Double(max(1, at.reduce(0) { $0 + $1.prompt }))
        }
        func reused(turn t: Int) -> Int? {
            let at = turns.filter { $0.turn == t }
            return at.allSatisfy({ $0.cached != nil }) ? at.reduce(0) { $0 + $1.cached! } : nil
        }
    }

    /// Runs every conversation on its own thread against the server at `port`.
    func run(server: String, port: Int) -> Run {
        let results = Mutex<[Turn]>([])
        let t0 = KernelBench.now()
        let group = DispatchGroup()
        for c in 0..<conversations {
            group.enter()
            Thread.detachNewThread { [self] in
                var context = system
                for t in 0..<turns {
                    context += user[c][t]
                    let body = JSON.object([("prompt", .array(context.map { .int(Int($0)) })), ("max_tokens", .int(gen)), ("temperature", .int(0)),
                                            ("stream", .bool(true)), ("stream_options", .object([("include_usage", .bool(true))])),
                                            ("ignore_eos", .bool(true)), ("cache_prompt", .bool(true))]).render()
                    let r = (try? HTTPClient.stream(port: port, body: body, text: true)) ?? HTTPClient.StreamResult()
                    var turn = Turn(conversation: c, turn: t, prompt: context.count, cached: r.cached)
                    turn.ttft = r.events.first.map { $0 - r.sent } ?? 0
                    turn.tokens = r.tokens
                    turn.text = r.text
                    results.withLock { $0.append(turn) }
                    // The reply as a client sends it back: its text, tokenized again.
                    context += tokenizer.encode(r.text, addSpecial: false)
                }
                group.leave()
            }
        }
        group.wait()
        return Run(server: server, turns: results.withLock { $0 }, wall: KernelBench.now() - t0)
    }

    /// The report: per turn, each server's median time to first token and reuse; then the ratios the issue asks.
    static func report(_ runs: [Run], turns: Int, json: Bool) {
        if json {
            print(JSON.array(runs.map { r in
                .object([("server", .string(r.server)), ("wall_s", .double(r3(r.wall))), ("tokens", .int(r.tokens)), ("aggregate_tok_s", .double(r3(r.throughput))),
                         ("turns", .array((0..<turns).map { t in
                             .object([("turn", .int(t + 1)), ("ttft_p50_ms", .double(r3(r.ttft(turn: t) * 1000))),
                                      ("reused_tokens", r.reused(turn: t).map { .int($0) } ?? .null),
                                      ("hit_rate", r.hitRate(turn: t).map { .double(r3($0)) } ?? .null)])
                         }))])
            }).render())
            return
        }
        var headers = ["turn"]
        for r in runs { headers += ["\(r.server) TTFT ms", "reused"] }
        let rows = (0..<turns).map { t -> [String] in
            var row = [String(t + 1)]
            for r in runs {
                row += [fixed(r.ttft(turn: t) * 1000, 1), r.hitRate(turn: t).map { "\(r.reused(turn: t)!) (\(fixed($0 * 100, 1))%)" } ?? "-"]
            }
            return row
        }
        for line in table(headers: headers, rows: rows) { print(line) }
        for r in runs { print("\(r.server): \(r.tokens) tokens in \(fixed(r.wall, 2)) s, \(fixed(r.throughput, 1)) tok/s aggregate") }
        guard let cached = runs.first(where: { $0.server == "conclave" }) else { return }
        let last = turns - 1
        for other in runs where other.server != "conclave" {
            let ttft = cached.ttft(turn: last) > 0 ? other.ttft(turn: last) / cached.ttft(turn: last) : 0
            print("last turn's time to first token: \(other.server) / conclave = \(fixed(ttft, 2))×; aggregate throughput conclave / \(other.server) = \(fixed(cached.throughput / max(1e-9, other.throughput), 2))×")
        }
        if let cold = runs.first(where: { $0.server == "conclave (no cache)" }) {
            let key = { (t: Turn) in "\(t.conversation)/\(t.turn)" }
            let want = Dictionary(uniqueKeysWithValues: cold.turns.map { (key($0), $0.text) })
            let same = cached.turns.filter { want[key($0)] == $0.text }.count
            print("text with the cache identical to without: \(same) of \(cached.turns.count) turns")
        }
    }

    static func r3(_ x: Double) -> Double { (x * 1000).rounded() / 1000 }
}
