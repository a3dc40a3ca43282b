import TCPAO
import Yams

// Write-back of runtime key changes (pure: text in, text out, no I/O): the configuration file's
// text with exactly one key operation made, everything else byte for byte as it was (comments,
// blank lines, order, the style of the other entries). Loading the result gives the chain
// `Configuration.applying` gives for the same operation at the same `now`:
//
//   load(ConfigFileEdit.apply(op, to: text, now: t)) == load(text).applying(op, now: t)
//
// (the chain's keys in order: ids, algorithm, options flag, lifetimes, secret). The checks of
// the operation are `Configuration.applying`'s; run it first. This editor refuses what the
// file itself contradicts (no such chain or key, a key-id already there, the last key) and
// every layout it cannot edit safely, and verifies each result by parsing it again: the other
// top-level settings, the other chains, the chain's other keys and the changed key's other
// fields compare equal as YAML; the changed key reads back as intended. On any doubt it
// refuses: nothing is lost, the change can still be made at runtime only (--runtime) and the
// file edited by hand.
//
// The rules (a key entry is one item `- ...` of the chain's block list `keys:`):
// - The entry's lines: its `- ` line, every following line indented deeper than its `-`
//   (comment lines included, blank lines between them included), and the comment lines
//   directly above its `- ` line, indented exactly as the `-`, with no blank line between
//   (its "attached" comments). A blank line detaches a comment: it then belongs to no entry.
// - add (not preferred) inserts the new entry FIRST in the chain, above the first entry and
//   its attached comments (a detached comment at the top of the list stays at the top); add
//   with prefer puts it LAST, after the last entry's lines. Its send lifetime starts now when
//   preferred, as `applying` does. The entry takes the layout of its neighbour (the first or
//   last entry): a block mapping at the same indentation, or one flow mapping line
//   `- { ... }` when the neighbour is one. Fields: key-id, send-id, recv-id,
//   crypto-algorithm, mac-length (only for a non-standard MAC length), include-tcp-options
//   (only when false), the secret (`key-file: PATH`, or `hexadecimal-string: "..."`),
//   send-lifetime and accept-lifetime as flow mappings (`{ start-date-time: ...,
//   no-end-time: true }`, times RFC 3339 UTC; left out when always).
// - remove deletes the entry's lines (with its attached comments); blank lines around it stay.
// - prefer moves the entry's lines (with its attached comments) after the last entry and
//   sets its send lifetime's start to now with the smallest edit: the start-date-time's value
//   replaced (quotes kept); `always: true` becomes `start-date-time: NOW`; a `duration` becomes
//   the end-date-time it gave (it counts from the start); a lifetime without a start gets
//   `start-date-time: NOW` as its first field; `send-accept-lifetime: L` becomes
//   `accept-lifetime: L` with a `send-lifetime: { start-date-time: NOW, ... }` field inserted
//   before it; a key with no send lifetime gets one. A key that is already the preferred one
//   (`applying` answers "not changed") leaves the text as it is.
// - Refused (`unsupported`): YAML anchors or aliases anywhere in the file (an edit at one place
//   would change another), CR line ends, `key-chains` or the chain's `keys` in flow style
//   (`[ ... ]`), a chain written as a flow mapping, an entry whose `-` is not the first thing on
//   its line, a value to change that is tagged or spans lines; and any result that does not
//   verify.

/// Where an added key's secret is written from.
public enum SecretSource: Sendable, Equatable {
    /// `key-file: PATH` (preferred: the secret stays in its file). The path must be absolute
    /// (the loader reads a relative one from the configuration file's directory); the caller
    /// makes sure the file holds the key's secret (the daemon read the key from it).
    case keyFile(String)
    /// `hexadecimal-string: "..."`: the key's secret, inline. The file then holds a secret: the
    /// loader refuses it when every user may read it (see `ConfigFileWriter`).
    case hexadecimalString
}

/// Why the file cannot be edited: what, where (a line of the file, 0: none) and how to proceed.
public struct ConfigFileEditError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable {
        /// The file has no such chain / key (it differs from the running configuration?).
        case unknownChain, unknownKey
        /// The operation contradicts the file (a key-id already there, the last key, a
        /// lifetime that does not contain now, no secret source, ...).
        case invalid
        /// The file's layout is one this editor does not rewrite.
        case unsupported
        /// The edited text did not read back as intended (nothing should be written).
        case unverified
    }
    public var kind: Kind
    public var line: Int
    public var message: String
    public var fix: String

    public init(_ kind: Kind, line: Int = 0, _ message: String, fix: String) {
        self.kind = kind
        self.line = line
        self.message = message
        self.fix = fix
    }

    /// "line N: MESSAGE (fix: ...)".
    public var description: String {
        "\(line > 0 ? "line \(line): " : "")\(message)\(fix.isEmpty ? "" : " (fix: \(fix))")"
    }
}

public enum ConfigFileEdit {
    static let byHand = "make the change at runtime only (--runtime) and edit the configuration file by hand"

    /// The text with `op` made at `now` (the same `now` as `Configuration.applying`), or why
    /// not. `secretSource` is needed for `add` only. The text comes back unchanged when the
    /// operation changes nothing (prefer of the key already preferred).
    public static func apply(_ op: KeyOperation, to text: String, now: Int64, secretSource: SecretSource? = nil)
        -> Result<String, ConfigFileEditError> {
        do { return .success(try edit(op, text, now: now, source: secretSource)) } catch { return .failure(error) }
    }

    /// The differences between the key chains of two configurations, one line each (empty: the
    /// same chains, keys in the same order with the same ids, algorithm, options flag,
    /// lifetimes and secret). For checking a written file against `applying`'s result; never
    /// shows a secret.
    public static func keyChainDifferences(_ a: Configuration, _ b: Configuration) -> [String] {
        var out: [String] = []
        if a.keyChains.map(\.name) != b.keyChains.map(\.name) {
            out.append("chains \(a.keyChains.map(\.name)) vs \(b.keyChains.map(\.name))")
        }
        for ca in a.keyChains {
            guard let cb = b.keyChains.first(where: { $0.name == ca.name }) else { continue }
            if ca.keys.map(\.chainKeyID) != cb.keys.map(\.chainKeyID) {
                out.append("chain \(ca.name): keys \(ca.keys.map(\.chainKeyID)) vs \(cb.keys.map(\.chainKeyID))")
                continue
            }
            for (x, y) in zip(ca.keys, cb.keys) {
                let p = "chain \(ca.name) key \(x.chainKeyID)"
                if x.sendID != y.sendID || x.recvID != y.recvID { out.append("\(p): ids \(x.sendID)/\(x.recvID) vs \(y.sendID)/\(y.recvID)") }
                if x.algorithm != y.algorithm { out.append("\(p): algorithm \(x.algorithm) vs \(y.algorithm)") }
                if x.includeOptions != y.includeOptions { out.append("\(p): include-tcp-options \(x.includeOptions) vs \(y.includeOptions)") }
                if x.sendLifetime != y.sendLifetime { out.append("\(p): send-lifetime \(x.sendLifetime) vs \(y.sendLifetime)") }
                if x.acceptLifetime != y.acceptLifetime { out.append("\(p): accept-lifetime \(x.acceptLifetime) vs \(y.acceptLifetime)") }
                if !(x.secret == y.secret) { out.append("\(p): the secrets differ") }
            }
        }
        return out
    }

    // MARK: the operations

    static func edit(_ op: KeyOperation, _ original: String, now: Int64, source: SecretSource?) throws(ConfigFileEditError) -> String {
        if original.unicodeScalars.contains("\r") {
            throw ConfigFileEditError(.unsupported, "the file has CR (Windows) line ends", fix: "convert it to LF line ends (dos2unix), or \(byHand)")
        }
        // Work on text that ends with a newline; the one added is taken off at the end.
        let addedNewline = !original.isEmpty && !original.hasSuffix("\n")
        let doc = try Doc(addedNewline ? original + "\n" : original, chain: op.chain)
        let t = doc.text
        let entries = try doc.entries()
        let ids = entries.map(\.keyID)
        var out: [Unicode.Scalar]

        switch op {
        case .add(_, let nk, let prefer):
            guard let source else {
                throw ConfigFileEditError(.invalid, "no source for the new key's secret", fix: "give its key file (or write it as a hexadecimal-string)")
            }
            if let e = entries.first(where: { $0.keyID == nk.keyID }) {
                throw ConfigFileEditError(.invalid, line: e.dashLine + 1, "chain `\(op.chain)` already has a key \(nk.keyID) in the file",
                                          fix: "choose another key-id, or check the file against the running configuration (tcpaod keys)")
            }
            var send = nk.sendLifetime
            if prefer {
                guard send.contains(now) else {
                    throw ConfigFileEditError(.invalid, "the key cannot be preferred: its send-lifetime \(send) does not contain now",
                                              fix: "leave out prefer, or give a send-lifetime that contains now")
                }
                send.start = now
            }
            guard send.end > send.start, nk.acceptLifetime.end > nk.acceptLifetime.start else {
                throw ConfigFileEditError(.invalid, "a lifetime ends before it starts", fix: "put the end after the start")
            }
            let neighbour = prefer ? entries[entries.count - 1] : entries[0]
            let lines = try render(nk, send: send, source: source, like: neighbour, text: t)
            let at = prefer ? t.lineStart(neighbour.end + 1) : t.lineStart(neighbour.lead)
            out = t.s
            out.insert(contentsOf: lines.unicodeScalars, at: at)

        case .remove(_, let id):
            guard let i = ids.firstIndex(of: id) else { throw unknownKey(op, ids.compactMap { $0 }) }
            guard entries.count > 1 else {
                throw ConfigFileEditError(.invalid, line: entries[i].dashLine + 1, "key \(id) is the last key of chain `\(op.chain)` in the file: a chain needs a key",
                                          fix: "add the key that replaces it first (tcpaod key add --prefer)")
            }
            out = t.s
            out.removeSubrange(t.lineStart(entries[i].lead)..<t.lineStart(entries[i].end + 1))

        case .prefer(_, let id):
            guard let i = ids.firstIndex(of: id) else { throw unknownKey(op, ids.compactMap { $0 }) }
            let lifetimes = try entries.map { e throws(ConfigFileEditError) in try e.lifetimes(now: now) }
            let send = lifetimes[i].send
            guard send.contains(now) else {
                throw ConfigFileEditError(.invalid, line: entries[i].dashLine + 1, "key \(id) may not send now (send-lifetime \(send))",
                                          fix: "prefer a key whose send-lifetime contains now")
            }
            // `KeyChain.preferredSendKey`: the send-valid key that started last, ties to the last.
            var best: Int? = nil
            for j in lifetimes.indices where lifetimes[j].send.contains(now) {
                if let b = best, lifetimes[b].send.start > lifetimes[j].send.start { continue }
                best = j
            }
            if best == i { return original }
            let e = entries[i]
            let edits = try preferEdits(e, send: send, now: now, text: t)
            let a = t.lineStart(e.lead), b = t.lineStart(e.end + 1)
            if i == entries.count - 1 {
                out = Text.applying(edits, to: t.s)
            } else {
                let moved = Text.applying(edits.map { Edit(range: ($0.range.lowerBound - a)..<($0.range.upperBound - a), text: $0.text) }, to: Array(t.s[a..<b]))
                let c = t.lineStart(entries[entries.count - 1].end + 1)
                out = Array(t.s[..<a]) + Array(t.s[b..<c]) + moved + Array(t.s[c...])
            }
        }
        var result = String(String.UnicodeScalarView(out))
        try verify(op, old: doc, entries: entries, newText: result, now: now, source: source)
        if addedNewline && result.hasSuffix("\n") { result.removeLast() }
        return result
    }

    static func unknownKey(_ op: KeyOperation, _ ids: [UInt64]) -> ConfigFileEditError {
        ConfigFileEditError(.unknownKey, "chain `\(op.chain)` has no key \(op.keyID) in the file",
                            fix: "name one of its keys: \(ids.map { "\($0)" }.joined(separator: ", ")) (or reload: the file may differ from the running configuration)")
    }

    // MARK: add

    /// The new entry's lines (each ending in a newline), laid out like `like`.
    static func render(_ k: NewKey, send: Lifetime, source: SecretSource, like: Entry, text t: Text) throws(ConfigFileEditError) -> String {
        guard k.keyID <= UInt64(Int32.max) else {
            throw ConfigFileEditError(.invalid, "\(k.keyID) is out of range for a key-id", fix: "use a number from 0 to \(Int32.max)")
        }
        var f: [(String, String)] = [("key-id", "\(k.keyID)"), ("send-id", "\(k.sendID)"), ("recv-id", "\(k.recvID)")]
        if let name = AOAlgorithm.byName.first(where: { $0.1 == k.algorithm })?.0 {
            f.append(("crypto-algorithm", name))
        } else if let base = AOAlgorithm.byName.last(where: { $0.1.kind == k.algorithm.kind }) {
            f.append(("crypto-algorithm", base.0))
            f.append(("mac-length", "\(k.algorithm.macLength)"))
        } else {
            throw ConfigFileEditError(.invalid, "the algorithm \(k.algorithm) has no configuration name", fix: "use one of: \(AOAlgorithm.byName.map(\.0).joined(separator: ", "))")
        }
        if !k.includeOptions { f.append(("include-tcp-options", "false")) }
        switch source {
        case .keyFile(let p):
            guard p.hasPrefix("/") else {
                throw ConfigFileEditError(.invalid, "the key file path `\(p)` is relative (the loader would read it from the configuration file's directory)",
                                          fix: "give the key file's absolute path")
            }
            f.append(("key-file", try scalar(p)))
        case .hexadecimalString:
            f.append(("hexadecimal-string", "\"\(hex(k.secret))\""))
        }
        let lifetimes = [("send-lifetime", try flow(send)), ("accept-lifetime", try flow(k.acceptLifetime))]
            .compactMap { n, v in v.map { (n, $0) } }
        let d = String(repeating: " ", count: like.dashCol)
        if like.flow {
            return d + "- { " + (f + lifetimes).map { "\($0): \($1)" }.joined(separator: ", ") + " }\n"
        }
        // The examples align the two lifetimes' values.
        var lines = f.map { "\($0): \($1)" }
        let width = lifetimes.count == 2 ? "accept-lifetime: ".count : 0
        for (n, v) in lifetimes { lines.append("\(n):".padding(toLength: max(width, n.count + 2), withPad: " ", startingAt: 0) + v) }
        let col = like.fieldCol > like.dashCol ? like.fieldCol : like.dashCol + 2
        var out = ""
        for (i, l) in lines.enumerated() {
            out += (i == 0 ? d + "-" + String(repeating: " ", count: col - like.dashCol - 1) : String(repeating: " ", count: col)) + l + "\n"
        }
        return out
    }

    /// A lifetime as a flow mapping; nil for always (the field is left out).
    static func flow(_ l: Lifetime) throws(ConfigFileEditError) -> String? {
        var parts: [String] = []
        if l.start != .min { parts.append("start-date-time: \(try date(l.start))") }
        if l.end != .max { parts.append("end-date-time: \(try date(l.end))") } else if l.start != .min { parts.append("no-end-time: true") }
        return parts.isEmpty ? nil : "{ \(parts.joined(separator: ", ")) }"
    }

    /// RFC 3339 UTC, refused when it would not read back as the same second.
    static func date(_ t: Int64) throws(ConfigFileEditError) -> String {
        let s = RFC3339.format(t)
        guard t >= 0, t < 253_402_300_800, RFC3339.parse(s) == t else {
            throw ConfigFileEditError(.invalid, "the time \(t) cannot be written as an RFC 3339 date-time", fix: "give a time from 1970 to 9999")
        }
        return s
    }

    /// A scalar, plain when that reads back as itself, else double-quoted.
    static func scalar(_ s: String) throws(ConfigFileEditError) -> String {
        guard !s.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
            throw ConfigFileEditError(.invalid, "the path has control characters", fix: "rename the file")
        }
        let plain = s.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || "/._-+@=".unicodeScalars.contains($0) }
        if plain, let f = s.unicodeScalars.first, f != "-", f != "@" { return s }
        return "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    /// The secret as lowercase hexadecimal (the working buffer is wiped).
    static func hex(_ secret: Secret) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var buf = [UInt8](repeating: 0, count: secret.count * 2)
        defer { for i in buf.indices { buf[i] = 0 } }
        secret.withBytes { b in
            for (i, x) in b.enumerated() { buf[2 * i] = digits[Int(x >> 4)]; buf[2 * i + 1] = digits[Int(x & 15)] }
        }
        return String(decoding: buf, as: UTF8.self)
    }

    // MARK: prefer

    /// The edits (inside the entry's lines) that start its send lifetime now, end unchanged.
    static func preferEdits(_ e: Entry, send: Lifetime, now: Int64, text t: Text) throws(ConfigFileEditError) -> [Edit] {
        let nowText = try date(now)
        var edits: [Edit] = []
        if case let (_, v)? = e.pair("send-lifetime") {
            guard case .mapping(let l) = v else {
                throw ConfigFileEditError(.unsupported, line: v.mark?.line ?? 0, "the send-lifetime is not a mapping", fix: byHand)
            }
            let lp = Array(l)
            if case let (k, v)? = lp.first(where: { $0.0.string == "always" }) {
                edits.append(try t.replace(k, with: "start-date-time", keepQuotes: false))
                edits.append(try t.replace(v, with: nowText, keepQuotes: false))
            } else if case let (_, v)? = lp.first(where: { $0.0.string == "start-date-time" }) {
                edits.append(try t.replace(v, with: nowText))
                if case let (dk, dv)? = lp.first(where: { $0.0.string == "duration" }) {
                    // A duration counts from the start: keep the end it gave.
                    edits.append(try t.replace(dk, with: "end-date-time", keepQuotes: false))
                    edits.append(try t.replace(dv, with: try date(send.end), keepQuotes: false))
                }
            } else if let first = lp.first?.0 {
                edits.append(try t.insertBefore(first, "start-date-time: \(nowText)", flow: t.isFlow(v)))
            } else {
                // `{}`: always.
                guard let m = v.mark, t.isFlow(v) else { throw ConfigFileEditError(.unsupported, "an empty send-lifetime", fix: byHand) }
                let o = t.offset(m) + 1
                edits.append(Edit(range: o..<o, text: " start-date-time: \(nowText) "))
            }
        } else {
            let field = "send-lifetime: " + (try flow(Lifetime(start: now, end: send.end)) ?? "{}")
            if case let (k, _)? = e.pair("send-accept-lifetime") {
                // One lifetime for both: the accept part stays, the send part is written apart.
                edits.append(try t.replace(k, with: "accept-lifetime", keepQuotes: false))
                edits.append(try e.insertField(field, before: k, text: t))
            } else {
                edits.append(try e.insertField(field, before: e.pair("accept-lifetime")?.0, text: t))
            }
        }
        return edits
    }

    // MARK: verification

    /// Reads the edited text back: everything but the change compares equal as YAML, and the
    /// changed key reads as intended.
    static func verify(_ op: KeyOperation, old: Doc, entries: [Entry], newText: String, now: Int64, source: SecretSource?) throws(ConfigFileEditError) {
        func fail(_ what: String) -> ConfigFileEditError {
            ConfigFileEditError(.unverified, "the edited file did not read back as intended (\(what)); nothing should be written",
                                fix: "\(byHand), and report the file's layout as a bug")
        }
        let new: Doc
        do throws(ConfigFileEditError) { new = try Doc(newText, chain: op.chain) } catch { throw fail(error.message) }
        func others(_ m: Node.Mapping, except: String) -> [(Node, Node)] { m.filter { $0.0.string != except }.map { ($0.key, $0.value) } }
        func same(_ a: [(Node, Node)], _ b: [(Node, Node)]) -> Bool { a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 } }
        guard same(others(old.rootMap, except: "key-chains"), others(new.rootMap, except: "key-chains")) else { throw fail("another setting changed") }
        guard old.chains.count == new.chains.count, old.chainIndex == new.chainIndex,
              zip(old.chains, new.chains).enumerated().allSatisfy({ $0.offset == old.chainIndex || $0.element.0 == $0.element.1 }) else {
            throw fail("another key chain changed")
        }
        guard same(others(old.chainMap, except: "keys"), others(new.chainMap, except: "keys")) else { throw fail("the chain's name or description changed") }
        let o = old.items, n = new.items
        switch op {
        case .remove(_, let id):
            guard let i = entries.firstIndex(where: { $0.keyID == id }) else { throw fail("key") }
            var expected = o
            expected.remove(at: i)
            guard expected == n else { throw fail("the other keys changed") }
        case .add(_, let nk, let prefer):
            guard n.count == o.count + 1 else { throw fail("not one key more") }
            guard (prefer ? Array(n.dropLast()) : Array(n.dropFirst())) == o else { throw fail("the other keys changed") }
            var send = nk.sendLifetime
            if prefer { send.start = now }
            try checkNew(prefer ? n[n.count - 1] : n[0], nk, send: send, source: source, now: now, fail: fail)
        case .prefer(_, let id):
            guard let i = entries.firstIndex(where: { $0.keyID == id }), n.count == o.count else { throw fail("the number of keys changed") }
            var expected = o
            let was = expected.remove(at: i)
            guard Array(n.dropLast()) == expected else { throw fail("the other keys changed") }
            guard case .mapping(let a) = was, case .mapping(let b) = n[n.count - 1] else { throw fail("the key is not a mapping") }
            let lifetimeKeys: Set<String?> = ["send-lifetime", "accept-lifetime", "send-accept-lifetime"]
            guard same(a.filter { !lifetimeKeys.contains($0.0.string) }.map { ($0.key, $0.value) }, b.filter { !lifetimeKeys.contains($0.0.string) }.map { ($0.key, $0.value) }) else {
                throw fail("the key's other fields changed")
            }
            let before = try entries[i].lifetimes(now: now)
            let after: (send: Lifetime, accept: Lifetime)
            do throws(ConfigFileEditError) { after = try Entry.lifetimes(of: b, now: now) } catch { throw fail(error.message) }
            guard after.send == Lifetime(start: now, end: before.send.end), after.accept == before.accept else {
                throw fail("the key's lifetimes read \(after.send) \(after.accept)")
            }
        }
    }

    static func checkNew(_ node: Node, _ k: NewKey, send: Lifetime, source: SecretSource?, now: Int64,
                         fail: (String) -> ConfigFileEditError) throws(ConfigFileEditError) {
        guard case .mapping(let m) = node else { throw fail("the new key is not a mapping") }
        func int(_ name: String) -> Int? { m[name]?.scalar.flatMap { Int($0.string) } }
        guard int("key-id").map(UInt64.init) == k.keyID, int("send-id") == Int(k.sendID), int("recv-id") == Int(k.recvID) else {
            throw fail("the new key's ids")
        }
        guard var alg = m["crypto-algorithm"]?.string.flatMap(AOAlgorithm.init(name:)) else { throw fail("the new key's algorithm") }
        if let l = int("mac-length") { alg = AOAlgorithm(kind: alg.kind, macLength: l) }
        guard alg == k.algorithm else { throw fail("the new key's algorithm") }
        guard (m["include-tcp-options"]?.string.map { $0.lowercased() == "true" } ?? true) == k.includeOptions else { throw fail("the new key's options flag") }
        guard ["key-string", "hexadecimal-string", "key-file"].filter({ m[$0] != nil }).count == 1 else { throw fail("the new key's secret") }
        switch source {
        case .keyFile(let p)?:
            guard m["key-file"]?.string == p else { throw fail("the new key's key file") }
        case .hexadecimalString?:
            guard var bytes = m["hexadecimal-string"]?.string.flatMap({ [UInt8](hex: $0) }) else { throw fail("the new key's secret") }
            let same = Secret(bytes) == k.secret
            for i in bytes.indices { bytes[i] = 0 }
            guard same else { throw fail("the new key's secret") }
        case nil: throw fail("no secret source")
        }
        let l: (send: Lifetime, accept: Lifetime)
        do throws(ConfigFileEditError) { l = try Entry.lifetimes(of: m, now: now) } catch { throw fail(error.message) }
        guard l.send == send, l.accept == k.acceptLifetime else { throw fail("the new key's lifetimes") }
    }
}

// MARK: the text and the document

/// A replacement of `range` (offsets in unicode scalars) by `text`; an empty range inserts.
struct Edit {
    var range: Range<Int>
    var text: String
}

/// The text as unicode scalars (libyaml's marks count them), with its lines' offsets.
struct Text {
    let s: [Unicode.Scalar]
    /// Offset of each line's first scalar; one more entry: the end.
    let starts: [Int]

    init(_ string: String) {
        s = Array(string.unicodeScalars)
        var st = [0]
        for (i, c) in s.enumerated() where c == "\n" { st.append(i + 1) }
        if st.last != s.count { st.append(s.count) }
        starts = st
    }

    var lineCount: Int { starts.count - 1 }
    func lineStart(_ l: Int) -> Int { l < starts.count ? starts[l] : s.count }
    func offset(_ m: Mark) -> Int { lineStart(m.line - 1) + m.column - 1 }
    func line(_ l: Int) -> ArraySlice<Unicode.Scalar> {
        let a = starts[l], b = starts[l + 1]
        return s[a..<(b > a && s[b - 1] == "\n" ? b - 1 : b)]
    }
    func indent(_ l: Int) -> Int { line(l).prefix { $0 == " " }.count }
    func isBlank(_ l: Int) -> Bool { line(l).allSatisfy { $0 == " " || $0 == "\t" } }
    func isComment(_ l: Int) -> Bool { line(l).first { $0 != " " && $0 != "\t" } == "#" }
    /// A flow collection: its mark is at `{` or `[`.
    func isFlow(_ n: Node) -> Bool {
        guard let m = n.mark else { return false }
        let o = offset(m)
        return o < s.count && (s[o] == "{" || s[o] == "[")
    }

    /// The scalar's characters in the text: plain (one line, as read) or quoted (one line, no
    /// escapes). Refused otherwise: tagged, multi-line, escaped.
    func token(_ n: Node) throws(ConfigFileEditError) -> (range: Range<Int>, quote: Unicode.Scalar?) {
        func no() -> ConfigFileEditError {
            ConfigFileEditError(.unsupported, line: n.mark?.line ?? 0, "the value `\(n.string ?? "?")` is written in a way this editor does not rewrite (tagged, quoted with escapes, or over several lines)",
                                fix: "write it on one line without a tag, or \(ConfigFileEdit.byHand)")
        }
        guard let m = n.mark, let v = n.scalar?.string else { throw no() }
        let o = offset(m)
        let want = Array(v.unicodeScalars)
        guard o < s.count else { throw no() }
        if s[o] == "\"" || s[o] == "'" {
            let q = s[o]
            var i = o + 1
            while i < s.count && s[i] != q && s[i] != "\n" && s[i] != "\\" { i += 1 }
            guard i < s.count, s[i] == q, Array(s[(o + 1)..<i]) == want, !(q == "'" && i + 1 < s.count && s[i + 1] == "'") else { throw no() }
            return (o..<(i + 1), q)
        }
        guard !want.isEmpty, o + want.count <= s.count, Array(s[o..<(o + want.count)]) == want else { throw no() }
        let after = o + want.count < s.count ? s[o + want.count] : "\n"
        guard " \t\n,}]:#".unicodeScalars.contains(after) else { throw no() }
        return (o..<(o + want.count), nil)
    }

    /// Replaces a scalar (keeping its quotes unless `keepQuotes` is false).
    func replace(_ n: Node, with v: String, keepQuotes: Bool = true) throws(ConfigFileEditError) -> Edit {
        let (r, q) = try token(n)
        let text = keepQuotes ? q.map { "\($0)\(v)\($0)" } ?? v : v
        return Edit(range: r, text: text)
    }

    /// Inserts `field` before the key `k` of a mapping: inline with a comma in a flow mapping,
    /// as a line of its own in a block one (the key must start its line).
    func insertBefore(_ k: Node, _ field: String, flow: Bool) throws(ConfigFileEditError) -> Edit {
        guard let m = k.mark else { throw ConfigFileEditError(.unsupported, "a field without a location", fix: ConfigFileEdit.byHand) }
        let o = offset(m)
        if flow { return Edit(range: o..<o, text: "\(field), ") }
        let ls = lineStart(m.line - 1)
        guard s[ls..<o].allSatisfy({ $0 == " " }) else {
            throw ConfigFileEditError(.unsupported, line: m.line, "the field `\(k.string ?? "?")` does not start its line", fix: ConfigFileEdit.byHand)
        }
        return Edit(range: ls..<ls, text: String(repeating: " ", count: o - ls) + field + "\n")
    }

    /// The offset of the `}` or `]` closing the flow collection opened at `o` (quotes and
    /// comments skipped).
    func closing(_ o: Int) -> Int? {
        var depth = 0, i = o
        func opensQuote(_ i: Int) -> Bool {
            var j = i - 1
            while j >= 0 && (s[j] == " " || s[j] == "\t" || s[j] == "\n") { j -= 1 }
            return j < 0 || "{[,:".unicodeScalars.contains(s[j])
        }
        while i < s.count {
            let c = s[i]
            switch c {
            case "{", "[": depth += 1
            case "}", "]":
                depth -= 1
                if depth == 0 { return i }
            case "\"" where opensQuote(i):
                i += 1
                while i < s.count && s[i] != "\"" { if s[i] == "\\" { i += 1 }; i += 1 }
            case "'" where opensQuote(i):
                i += 1
                while i < s.count { if s[i] == "'" { if i + 1 < s.count && s[i + 1] == "'" { i += 2; continue }; break }; i += 1 }
            case "#" where i > 0 && (s[i - 1] == " " || s[i - 1] == "\t"):
                while i < s.count && s[i] != "\n" { i += 1 }
            default: break
            }
            i += 1
        }
        return nil
    }

    /// `s` with `edits` made (none overlapping; at one offset an insertion goes before a
    /// replacement).
    static func applying(_ edits: [Edit], to s: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var out = s
        for e in edits.sorted(by: { ($0.range.lowerBound, $0.range.upperBound) > ($1.range.lowerBound, $1.range.upperBound) }) {
            out.replaceSubrange(e.range, with: e.text.unicodeScalars)
        }
        return out
    }
}

/// One key entry of the chain: its node and its lines (0-based).
struct Entry {
    var node: Node
    var map: Node.Mapping
    var keyID: UInt64?
    /// The `- ` line and the column of its `-`.
    var dashLine: Int
    var dashCol: Int
    /// The first line (its attached comments) and the last line of the entry.
    var lead: Int
    var end: Int
    /// The column of its first field (block) / true for a flow mapping `- { ... }`.
    var fieldCol: Int
    var flow: Bool

    func pair(_ name: String) -> (Node, Node)? { map.first { $0.0.string == name }.map { ($0.key, $0.value) } }

    /// The send and accept lifetimes as the loader reads them.
    func lifetimes(now: Int64) throws(ConfigFileEditError) -> (send: Lifetime, accept: Lifetime) {
        try Entry.lifetimes(of: map, now: now)
    }

    static func lifetimes(of map: Node.Mapping, now: Int64) throws(ConfigFileEditError) -> (send: Lifetime, accept: Lifetime) {
        var l = ConfigLoader(file: "", purpose: .keyChainsOnly, now: now)
        var send = Lifetime.always, accept = Lifetime.always
        func read(_ name: String) throws(ConfigFileEditError) -> Lifetime? {
            guard let n = map[name] else { return nil }
            let doc = YAMLDocument.document(n)
            guard let v = withExtendedLifetime(doc, { l.lifetime(doc.root, name) }) else {
                throw ConfigFileEditError(.invalid, line: n.mark?.line ?? 0, "the key's \(name) is not valid",
                                          fix: "run tcpaod check on the file and correct it first")
            }
            return v
        }
        if let v = try read("send-accept-lifetime") { send = v; accept = v }
        if let v = try read("send-lifetime") { send = v }
        if let v = try read("accept-lifetime") { accept = v }
        return (send, accept)
    }

    /// Inserts `field` into the entry: before the key `k` when given (and it starts its line in
    /// a block entry), else at the end (before the `}` of a flow entry, after the last line that
    /// is not a comment in a block entry).
    func insertField(_ field: String, before k: Node?, text t: Text) throws(ConfigFileEditError) -> Edit {
        if let k, let m = k.mark {
            let o = t.offset(m), ls = t.lineStart(m.line - 1)
            if flow || t.s[ls..<o].allSatisfy({ $0 == " " }) { return try t.insertBefore(k, field, flow: flow) }
        }
        if flow {
            guard let m = node.mark, let close = t.closing(t.offset(m)) else {
                throw ConfigFileEditError(.unsupported, line: dashLine + 1, "the end of the key's flow mapping was not found", fix: ConfigFileEdit.byHand)
            }
            var j = close - 1
            while j > 0 && (t.s[j] == " " || t.s[j] == "\t" || t.s[j] == "\n") { j -= 1 }
            return Edit(range: (j + 1)..<(j + 1), text: t.s[j] == "," || t.s[j] == "{" ? " \(field)" : ", \(field)")
        }
        var last = dashLine
        for l in dashLine...end where !t.isBlank(l) && !t.isComment(l) { last = l }
        let at = t.lineStart(last + 1)
        return Edit(range: at..<at, text: String(repeating: " ", count: fieldCol) + field + "\n")
    }
}

/// The parsed document and the chain to edit.
struct Doc {
    let text: Text
    let rootMap: Node.Mapping
    let chains: [Node]
    let chainIndex: Int
    let chainMap: Node.Mapping
    /// The `keys` key of the chain and its items.
    let keysKey: Node
    let items: [Node]

    init(_ string: String, chain: String) throws(ConfigFileEditError) {
        let byHand = ConfigFileEdit.byHand
        text = Text(string)
        let root: Node?
        var anchored: Node? = nil
        do {
            let parser = try Parser(yaml: string)
            root = try parser.singleRoot()
            // Anchors are held by the parser: look while it lives.
            withExtendedLifetime(parser) {
                func walk(_ n: Node) {
                    guard anchored == nil else { return }
                    if n.anchor != nil { anchored = n; return }
                    switch n {
                    case .mapping(let m): for (k, v) in m { walk(k); walk(v) }
                    case .sequence(let q): for x in q { walk(x) }
                    default: break
                    }
                }
                if let root { walk(root) }
            }
        } catch {
            throw ConfigFileEditError(.invalid, "the file is not valid YAML", fix: "run tcpaod check on it and correct it first")
        }
        if let a = anchored {
            throw ConfigFileEditError(.unsupported, line: a.mark?.line ?? 0, "the file uses YAML anchors and aliases (`&name`, `*name`): an edit at one place could change another",
                                      fix: "write the values out where they are used, or \(byHand)")
        }
        guard case .mapping(let rm)? = root else {
            throw ConfigFileEditError(.invalid, "the file is not a mapping of settings", fix: "run tcpaod check on it and correct it first")
        }
        rootMap = rm
        guard let kc = rm["key-chains"], case .sequence(let cs) = kc else {
            throw ConfigFileEditError(.invalid, "the file has no `key-chains` list", fix: "run tcpaod check on it and correct it first")
        }
        guard !text.isFlow(kc) else {
            throw ConfigFileEditError(.unsupported, line: kc.mark?.line ?? 0, "`key-chains` is written in flow style (`[ ... ]`), which this editor does not rewrite",
                                      fix: "write it as a block list (one `- name: ...` item per chain, its keys one `- key-id: ...` item each), or \(byHand)")
        }
        chains = Array(cs)
        guard let ci = chains.firstIndex(where: { $0["name"]?.string == chain }) else {
            throw ConfigFileEditError(.unknownChain, "the file has no key chain `\(chain)`",
                                      fix: "name one of: \(chains.compactMap { $0["name"]?.string }.joined(separator: ", ")) (or reload: the file may differ from the running configuration)")
        }
        chainIndex = ci
        guard case .mapping(let cm) = chains[ci], !text.isFlow(chains[ci]) else {
            throw ConfigFileEditError(.unsupported, line: chains[ci].mark?.line ?? 0, "chain `\(chain)` is written as a flow mapping (`{ ... }`), which this editor does not rewrite",
                                      fix: "write it as a block mapping (name:, keys: on lines of their own), or \(byHand)")
        }
        chainMap = cm
        guard case let (k, v)? = cm.first(where: { $0.0.string == "keys" }), case .sequence(let ks) = v, !ks.isEmpty else {
            throw ConfigFileEditError(.invalid, line: chains[ci].mark?.line ?? 0, "chain `\(chain)` has no `keys` list", fix: "run tcpaod check on it and correct it first")
        }
        guard !text.isFlow(v) else {
            throw ConfigFileEditError(.unsupported, line: v.mark?.line ?? 0, "chain `\(chain)`'s keys are written in flow style (`keys: [ ... ]`), which this editor does not rewrite",
                                      fix: "write them as a block list (one `- key-id: ...` item per key), or \(byHand)")
        }
        keysKey = k
        items = Array(ks)
    }

    /// The chain's entries with their lines.
    func entries() throws(ConfigFileEditError) -> [Entry] {
        let t = text
        var out: [Entry] = []
        var boundary = (keysKey.mark?.line ?? 1) - 1 // the last line before the first entry's lines
        for item in items {
            guard case .mapping(let m) = item, let mark = item.mark else {
                throw ConfigFileEditError(.invalid, line: item.mark?.line ?? 0, "a key is not a mapping", fix: "run tcpaod check on the file and correct it first")
            }
            let line = mark.line - 1
            let ls = t.lineStart(line)
            var d = t.offset(mark) - 1
            while d >= ls && t.s[d] == " " { d -= 1 }
            guard d >= ls, t.s[d] == "-", t.s[ls..<d].allSatisfy({ $0 == " " }) else {
                throw ConfigFileEditError(.unsupported, line: mark.line, "the key's `-` is not the first thing on the line of its first field",
                                          fix: "write each key as `- key-id: ...` (or `- { key-id: ... }`), or \(ConfigFileEdit.byHand)")
            }
            let dashCol = d - ls
            // Following lines deeper than the `-` (blank lines between them included).
            var end = line, l = line + 1
            while l < t.lineCount {
                if t.isBlank(l) { l += 1; continue }
                guard t.indent(l) > dashCol else { break }
                end = l
                l += 1
            }
            // Comment lines right above, at the `-`'s column.
            var lead = line
            while lead - 1 > boundary && t.isComment(lead - 1) && t.indent(lead - 1) == dashCol { lead -= 1 }
            let flow = t.isFlow(item)
            let id = m["key-id"]?.string.flatMap { UInt64($0) }
            out.append(Entry(node: item, map: m, keyID: id, dashLine: line, dashCol: dashCol, lead: lead, end: end,
                             fieldCol: mark.column - 1, flow: flow))
            boundary = end
        }
        return out
    }
}

extension YAMLDocument {
    /// A Yams node (the editor's tree) as a document of the loader's, for the loader's readers
    /// (lifetimes).
    static func document(_ n: Node) -> YAMLDocument {
        var doc = YAMLDocument.Builder()
        func add(_ n: Node) -> Int32 {
            let line = Int32(clamping: n.mark?.line ?? 0), column = Int32(clamping: n.mark?.column ?? 0)
            switch n {
            case .mapping(let m):
                let c = m.flatMap { [add($0.key), add($0.value)] }
                return doc.addCollection(.mapping, line: line, column: column, children: c)
            case .sequence(let q):
                let c = q.map { add($0) }
                return doc.addCollection(.sequence, line: line, column: column, children: c)
            case .scalar(let s):
                return doc.addScalar(s.string, line: line, column: column)
            case .alias:
                return doc.addScalar("", line: line, column: column)
            }
        }
        let root = add(n)
        return YAMLDocument(doc, root: root)
    }
}
