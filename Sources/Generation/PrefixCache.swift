import Model

/// The prefix cache's index, owned by the scheduler's loop (the one place that decides): which ended sequences
/// every stage keeps, the token ids each was computed from, and when each was last used. A request starts from
/// the longest prefix of its token ids that a kept sequence — or a running one, up to the positions already sent
/// — computed, counted from position 0: reuse is by exact tokens, never by text, so nothing computed from other
/// tokens can ever be read. The stages hold the caches; this decides which to keep, which a sequence starts
/// from, and which to evict (least recently used first) so that running sequences always have their room.
final class PrefixCache {
    struct Entry {
        let id: UInt64
        let tokens: [Int32]
        var lastUse: UInt64
    }
    private(set) var entries: [UInt64: Entry] = [:]
    private var tick: UInt64 = 0

    /// A kept prefix whose tail beyond a match is at least this long, or longer than the match, is copied from (it
    /// stays for its own conversation's next turn); a shorter tail is not worth keeping, and the prefix is taken
    /// over as it is.
    static let keepTail = 64

    /// Positions the kept prefixes hold.
    var positions: Int { entries.values.reduce(0) { $0 + $1.tokens.count } }
    /// What they cost in `room`.
    func cost(in room: KVRoom) -> Int { entries.values.reduce(0) { $0 + room.cost(length: $1.tokens.count) } }

    /// Where a prompt starts from.
    struct Match: Equatable {
        var source: UInt64
        var length: Int
        var keepSource: Bool
        /// The source is a kept prefix (not a running sequence).
        var kept: Bool
    }

    /// The longest prefix of `prompt` that a kept entry or a running sequence (`running`: its id and the tokens
    /// already sent) holds, leaving at least the prompt's last token to compute (its logits give the first
    /// token). Nil when nothing matches.
    func match(_ prompt: [Int32], running: [(id: UInt64, tokens: ArraySlice<Int32>)]) -> Match? {
        let limit = prompt.count - 1
        guard limit >= 1 else { return nil }
        var best: Match?
        for e in entries.values {
            let n = Self.common(prompt, e.tokens, limit: limit)
            if n > 0, n > best?.length ?? 0 || (n == best?.length && e.lastUse > (entries[best!.source]?.lastUse ?? 0)) {
                let tail = e.tokens.count - n
                best = Match(source: e.id, length: n, keepSource: tail >= Self.keepTail || tail > n, kept: true)
            }
        }
        for r in running {
            let n = Self.common(prompt, r.tokens, limit: limit)
            if n > best?.length ?? 0 { best = Match(source: r.id, length: n, keepSource: true, kept: false) }
        }
        return best
    }

    /// A sequence starts from `m`: a kept source copied from is used now, one taken over leaves the index (the
    /// sequence holds it).
    func use(_ m: Match) {
        guard m.kept else { return }
        tick += 1
        if m.keepSource { entries[m.source]?.lastUse = tick } else { entries[m.source] = nil }
    }

    /// Keeps an ended sequence's `tokens`. Says which entries to free: kept ones this one extends (they hold
    /// nothing it does not), or this one itself when a kept entry extends it.
    func insert(id: UInt64, tokens: [Int32]) -> (kept: Bool, redundant: [UInt64]) {
        tick += 1
        if let longer = entries.values.first(where: { $0.tokens.count >= tokens.count && Self.common($0.tokens, tokens, limit: tokens.count) == tokens.count }) {
            entries[longer.id]?.lastUse = tick
            return (false, [])
        }
        let covered = entries.values.filter { Self.common($0.tokens, tokens, limit: $0.tokens.count) == $0.tokens.count }.map(\.id)
        for id in covered { entries[id] = nil }
        entries[id] = Entry(id: id, tokens: tokens, lastUse: tick)
        return (true, covered)
    }

    /// Entries to evict, least recently used first, until `needed` positions are free in `room` beside `used`
    /// (what running sequences and the kept entries hold now), sparing `spare`. Nil when evicting every other
    /// entry would not be enough.
    func evict(toFree needed: Int, used: Int, room: KVRoom, sparing spare: UInt64? = nil) -> [UInt64]? {
        var free = room.positions - used
        guard free < needed else { return [] }
        var out: [UInt64] = []
        for e in entries.values.sorted(by: { $0.lastUse < $1.lastUse }) where e.id != spare {
            out.append(e.id)
            free += room.cost(length: e.tokens.count)
            if free >= needed { break }
        }
        guard free >= needed else { return nil }
        for id in out { entries[id] = nil }
        return out
    }

    /// Forgets every entry (the stages' caches are gone: a recovery).
    func removeAll() -> Int {
        defer { entries.removeAll() }
        return entries.count
    }

    /// How many leading tokens `a` and `b` share, at most `limit`.
    static func common<A: RandomAccessCollection<Int32>, B: RandomAccessCollection<Int32>>(_ a: A, _ b: B, limit: Int) -> Int {
        var n = 0
        var i = a.startIndex, j = b.startIndex
        let end = min(limit, a.count, b.count)
        while n < end && a[i] == b[j] {
            n += 1
            i = a.index(after: i)
            j = b.index(after: j)
        }
        return n
    }
}
