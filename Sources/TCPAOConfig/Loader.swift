import Foundation
import Dispatch
import TCPAO
#if canImport(Glibc)
import Glibc
#endif

/// Reads and checks a tcpaod configuration file (YAML; names from RFC 8177 key chains and
/// RFC 9648's TCP-AO model). Every problem is reported, each with its location and a fix.
///
/// One job per file: this one walks the document (top-level settings, typed access to nodes,
/// reporting); `Loader+KeyChains` reads chains and their keys, `Loader+Secrets` the master
/// keys, `Loader+Lifetimes` lifetimes and the "is a key valid now / later" checks,
/// `Loader+Peers` the peers, `Loader+Serials` keeps key serials across reloads.
public struct ConfigLoader {
    public enum Purpose: Sendable {
        /// `run`, `check`, `rules`, `stats`: everything, including "is a key valid now".
        case daemon
        /// `verify-pcap`: only `key-chains` matters; captures are from the past, so lifetimes are
        /// not judged against the clock.
        case keyChainsOnly
    }

    let file: String
    let purpose: Purpose
    let now: Int64
    var diagnostics: [Diagnostic] = []
    var inlineSecrets = false
    /// Lists at least this long are read on all cores (`readEach`).
    var threadsFrom = 2_000

    /// Loads `path`. Returns the configuration when there are no errors, and every diagnostic
    /// (errors and warnings) either way. `previous` lets unchanged keys keep their serials
    /// across a reload.
    public static func load(path: String, purpose: Purpose = .daemon, now: Int64, previous: Configuration? = nil)
        -> (Configuration?, [Diagnostic]) {
        let (c, d, _) = loadKeepingText(path: path, purpose: purpose, now: now, previous: previous)
        return (c, d)
    }

    /// `load`, also giving the text the configuration was read from (nil when it could not be
    /// read): what the daemon edits when it writes runtime key changes back (`ConfigFileEdit`).
    public static func loadKeepingText(path: String, purpose: Purpose = .daemon, now: Int64, previous: Configuration? = nil)
        -> (Configuration?, [Diagnostic], String?) {
        var l = ConfigLoader(file: path, purpose: purpose, now: now)
        guard let data = FileManager.default.contents(atPath: path) else {
            let why = FileManager.default.fileExists(atPath: path) ? "cannot be read (permissions?)" : "does not exist"
            l.report(.error, nil, "", "the configuration file \(why)", fix: "pass the path of a readable file with --config")
            return (nil, l.diagnostics, nil)
        }
        guard let text = String(data: data, encoding: .utf8) else {
            l.report(.error, nil, "", "the file is not UTF-8 text", fix: "save it as UTF-8")
            return (nil, l.diagnostics, nil)
        }
        let cfg = l.parse(text, previous: previous)
        if l.inlineSecrets, let mode = ConfigLoader.fileMode(path), mode & 0o004 != 0 {
            l.report(.error, nil, "", "the file holds secrets (key-string/hexadecimal-string) and is readable by every user",
                     fix: "chmod 600 \(path), or move the secrets to key files")
        }
        return (l.diagnostics.hasErrors ? nil : cfg, l.diagnostics, text)
    }

    /// Parses YAML text (tests use this directly).
    public static func parse(_ text: String, file: String = "<config>", purpose: Purpose = .daemon, now: Int64,
                             previous: Configuration? = nil) -> (Configuration?, [Diagnostic]) {
        parse(text, file: file, purpose: purpose, now: now, previous: previous, threadsFrom: 2_000)
    }

    static func parse(_ text: String, file: String = "<config>", purpose: Purpose = .daemon, now: Int64,
                      previous: Configuration? = nil, threadsFrom: Int) -> (Configuration?, [Diagnostic]) {
        var l = ConfigLoader(file: file, purpose: purpose, now: now)
        l.threadsFrom = threadsFrom
        let cfg = l.parse(text, previous: previous)
        return (l.diagnostics.hasErrors ? nil : cfg, l.diagnostics)
    }

    // MARK: reporting

    mutating func report(_ s: Diagnostic.Severity, _ node: ConfigNode?, _ path: String, _ msg: String, fix: String) {
        let m = node?.mark
        diagnostics.append(Diagnostic(s, file: file, line: m?.line ?? 0, column: m?.column ?? 0, path: path, msg, fix: fix))
    }

    // MARK: typed access to nodes

    /// The keys of a mapping node, checked against `allowed` (unknown keys are errors with a
    /// suggestion) and `required`. `f["name"]` is (key node, value node).
    mutating func fields(_ node: ConfigNode, _ path: @autoclosure () -> String, allowed: [String], required: [String] = []) -> Fields? {
        guard let map = node.mapping else {
            report(.error, node, path(), "expected a mapping (key: value lines)", fix: "write it as `key: value` entries")
            return nil
        }
        var out = Fields()
        out.entries.reserveCapacity(map.count)
        for (k, v) in map {
            func sub(_ name: String) -> String { let p = path(); return p.isEmpty ? name : "\(p).\(name)" }
            guard let name = k.text else {
                report(.error, k, path(), "a key must be a plain word", fix: "use one of: \(allowed.joined(separator: ", "))")
                continue
            }
            if out[name] != nil {
                report(.error, k, sub(name), "appears twice", fix: "keep one `\(name)`")
                continue
            }
            guard allowed.contains(name) else {
                let hint = ConfigLoader.closest(name, allowed).map { "did you mean `\($0)`?" } ?? "allowed here: \(allowed.joined(separator: ", "))"
                report(.error, k, sub(name), "unknown key `\(name)`", fix: hint)
                continue
            }
            out.entries.append((name, k, v))
        }
        for r in required where out[r] == nil {
            report(.error, node, path(), "`\(r)` is missing", fix: "add `\(r): ...`")
        }
        return out
    }

    /// A mapping's fields by name: a few entries, found by a scan (no dictionary per mapping:
    /// a 50,000-peer file has 175,000 of them).
    struct Fields {
        var entries: [(name: String, key: ConfigNode, value: ConfigNode)] = []
        var count: Int { entries.count }
        subscript(name: String) -> (key: ConfigNode, value: ConfigNode)? {
            for e in entries where e.name == name { return (e.key, e.value) }
            return nil
        }
    }

    mutating func string(_ n: ConfigNode, _ path: @autoclosure () -> String) -> String? {
        guard let s = n.text, !s.isEmpty else {
            report(.error, n, path(), "expected a text value", fix: "write a value after the colon")
            return nil
        }
        return s
    }

    mutating func int(_ n: ConfigNode, _ path: @autoclosure () -> String, _ range: ClosedRange<Int>, what: String = "value") -> Int? {
        guard let s = n.text, let v = Int(s) else {
            report(.error, n, path(), "expected a whole number, found `\(n.text ?? "a list or mapping")`",
                   fix: "write a number from \(range.lowerBound) to \(range.upperBound)")
            return nil
        }
        guard range.contains(v) else {
            report(.error, n, path(), "\(v) is out of range for a \(what)", fix: "use a number from \(range.lowerBound) to \(range.upperBound)")
            return nil
        }
        return v
    }

    mutating func bool(_ n: ConfigNode, _ path: @autoclosure () -> String) -> Bool? {
        switch n.text?.lowercased() {
        case "true": return true
        case "false": return false
        default:
            report(.error, n, path(), "expected true or false, found `\(n.text ?? "a list or mapping")`", fix: "write true or false")
            return nil
        }
    }

    mutating func choice<T: RawRepresentable & CaseIterable>(_ n: ConfigNode, _ path: @autoclosure () -> String, _ t: T.Type) -> T? where T.RawValue == String {
        guard let s = n.text, let v = T(rawValue: s) else {
            let names = T.allCases.map(\.rawValue)
            report(.error, n, path(), "`\(n.text ?? "?")` is not one of \(names.joined(separator: ", "))",
                   fix: "write one of: \(names.joined(separator: ", "))")
            return nil
        }
        return v
    }

    mutating func list(_ n: ConfigNode, _ path: @autoclosure () -> String) -> [ConfigNode]? {
        guard let seq = n.sequence else {
            report(.error, n, path(), "expected a list", fix: "write a list: `[a, b]` or lines starting with `- `")
            return nil
        }
        return seq
    }

    // MARK: long lists on every core

    /// Reads each item of a list with `read`, each by its own copy of the loader: on all cores
    /// for a long list (a fleet's 50,000 chains and peers), else in order. Each item's
    /// diagnostics come back with it, for the caller to append in the file's order: the
    /// result is the same as reading the items one after the other.
    mutating func readEach<T: Sendable>(_ items: [ConfigNode], _ read: @Sendable (inout ConfigLoader, ConfigNode, Int) -> T?) -> [(value: T?, diagnostics: ArraySlice<Diagnostic>)] {
        let cores = ProcessInfo.processInfo.activeProcessorCount
        let pieces = items.count < threadsFrom || cores < 2 ? 1 : min(cores, 16) * 4
        typealias Piece = (values: [T?], diagnostics: [Diagnostic], ends: [Int], inlineSecrets: Bool)
        let slots = PieceSlots<Piece>(p: .allocate(capacity: pieces))
        let out = slots.p
        defer { out.deinitialize().deallocate() }
        let (file, purpose, now) = (self.file, self.purpose, self.now)
        @Sendable func run(_ p: Int) {
            var l = ConfigLoader(file: file, purpose: purpose, now: now)
            let range = (items.count * p / pieces)..<(items.count * (p + 1) / pieces)
            var values: [T?] = []
            var ends: [Int] = []
            values.reserveCapacity(range.count)
            ends.reserveCapacity(range.count)
            for i in range {
                values.append(read(&l, items[i], i))
                ends.append(l.diagnostics.count)
            }
            (slots.p.baseAddress! + p).initialize(to: (values, l.diagnostics, ends, l.inlineSecrets))
        }
        if pieces == 1 { run(0) } else { DispatchQueue.concurrentPerform(iterations: pieces, execute: run) }
        var result: [(value: T?, diagnostics: ArraySlice<Diagnostic>)] = []
        result.reserveCapacity(items.count)
        for piece in out {
            var from = 0
            for (v, end) in zip(piece.values, piece.ends) {
                result.append((v, piece.diagnostics[from..<end]))
                from = end
            }
            if piece.inlineSecrets { inlineSecrets = true }
        }
        return result
    }

    /// `readEach`'s results, one slot per piece: each piece writes only its own.
    struct PieceSlots<P>: @unchecked Sendable { let p: UnsafeMutableBufferPointer<P> }

    // MARK: the document

    static let topKeys = ["mode", "queue", "threads", "queue-spread", "queue-bypass", "on-exit", "flow-state", "conntrack-label-offset", "passthrough", "max-flows", "idle-timeout",
                          "handshake-timeout", "linger", "log-level", "stats-interval", "stats-file", "firewall", "protected-prefixes",
                          "protect-loopback", "instance", "metrics", "key-chains", "peers"]

    mutating func parse(_ text: String, previous: Configuration?) -> Configuration {
        var cfg = Configuration(file: file)
        let doc: YAMLDocument
        do {
            // Every scalar is text: `string`, `int`, `bool` above do the typing, with their own
            // messages (YAMLDocument: libyaml's events, no node objects).
            guard let d = try YAMLDocument.parse(text) else {
                report(.error, nil, "", "the file is empty", fix: "see config/tcpaod.yaml for a commented example")
                return cfg
            }
            doc = d
        } catch {
            diagnostics.append(Diagnostic(.error, file: file, line: error.line, column: error.column, path: "",
                                          "not valid YAML: \(error.problem)", fix: "check the indentation and quoting around this line"))
            return cfg
        }
        // The nodes below are valid while the document lives: until this function returns.
        defer { withExtendedLifetime(doc) {} }
        let root = doc.root
        let required = purpose == .daemon ? ["key-chains", "peers"] : ["key-chains"]
        guard let f = fields(root, "", allowed: ConfigLoader.topKeys, required: required) else { return cfg }
        if let n = f["mode"]?.value, let v = choice(n, "mode", Mode.self) { cfg.mode = v }
        if let n = f["queue"]?.value, let v = int(n, "queue", 0...65535, what: "queue number") { cfg.queue = UInt16(v) }
        if let n = f["threads"]?.value, let v = int(n, "threads", 1...64, what: "thread count") { cfg.threads = v }
        if Int(cfg.queue) + cfg.threads - 1 > 65535 {
            report(.error, f["threads"]?.value ?? f["queue"]?.value, "threads", "queues \(cfg.queue)... run past 65535",
                   fix: "lower `queue` or `threads`")
        }
        if let n = f["queue-bypass"]?.value, let v = bool(n, "queue-bypass") {
            cfg.queueBypass = v
            if v {
                report(.warning, n, "queue-bypass", "protected traffic will flow without TCP-AO whenever tcpaod is not running",
                       fix: "leave it false unless you accept failing open")
            }
        }
        if let n = f["on-exit"]?.value, let v = choice(n, "on-exit", ExitPolicy.self) { cfg.onExit = v }
        if let n = f["flow-state"]?.value, let v = choice(n, "flow-state", FlowStateMode.self) { cfg.flowState = v }
        if let n = f["queue-spread"]?.value, let v = choice(n, "queue-spread", QueueSpread.self) { cfg.queueSpread = v }
        if let n = f["conntrack-label-offset"]?.value,
           let v = int(n, "conntrack-label-offset", 0...(128 - Configuration.conntrackLabelBits), what: "label bit offset (tcpaod uses \(Configuration.conntrackLabelBits) of the 128 bits)") {
            cfg.conntrackLabelOffset = v
            if cfg.flowState == .memory {
                report(.warning, n, "conntrack-label-offset", "used with flow-state: conntrack only", fix: "remove it, or set flow-state: conntrack")
            }
        }
        if let n = f["passthrough"]?.value, let v = bool(n, "passthrough") {
            cfg.passthrough = v
            if v { report(.warning, n, "passthrough", "TCP-AO is OFF: packets are queued and accepted unchanged (benchmarks only)", fix: "remove it") }
        }
        if let n = f["max-flows"]?.value, let v = int(n, "max-flows", 1...16_777_216, what: "flow count") { cfg.limits.maxFlows = v }
        if let n = f["idle-timeout"]?.value, let v = int(n, "idle-timeout", 10...31_536_000, what: "timeout (seconds)") { cfg.limits.idleTimeout = UInt32(v) }
        if let n = f["handshake-timeout"]?.value, let v = int(n, "handshake-timeout", 1...3600, what: "timeout (seconds)") { cfg.limits.handshakeTimeout = UInt32(v) }
        if let n = f["linger"]?.value, let v = int(n, "linger", 1...3600, what: "time (seconds)") { cfg.limits.linger = UInt32(v) }
        if let n = f["log-level"]?.value, let s = string(n, "log-level") {
            let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
            if levels.contains(s) { cfg.logLevel = s } else {
                report(.error, n, "log-level", "`\(s)` is not a log level", fix: "write one of: \(levels.joined(separator: ", "))")
            }
        }
        if let n = f["stats-interval"]?.value, let v = int(n, "stats-interval", 0...86400, what: "interval (seconds)") { cfg.statsInterval = v }
        if let n = f["stats-file"]?.value, let s = string(n, "stats-file") { cfg.statsFile = s }
        if let n = f["instance"]?.value, let s = string(n, "instance") {
            if let why = RuntimePaths.problem(s) {
                report(.error, n, "instance", why, fix: "name it like `site-a` or `ns1` (its control socket is /run/tcpaod/NAME/control.sock)")
            } else {
                cfg.instance = RuntimePaths.normalized(s)
            }
        }
        if let n = f["firewall"]?.value, let v = choice(n, "firewall", FirewallBackend.self) { cfg.firewall = v }
        if let n = f["metrics"]?.value { cfg.metrics = metrics(n) }
        if let n = f["protect-loopback"]?.value, let v = bool(n, "protect-loopback") {
            cfg.protectLoopback = v
            if v && cfg.mode == .gateway {
                report(.warning, n, "protect-loopback", "used in host mode only (forwarded traffic never crosses the loopback interface)",
                       fix: "remove it, or set mode: host")
            }
        }

        if let n = f["protected-prefixes"]?.value, let items = list(n, "protected-prefixes") {
            for (i, it) in items.enumerated() {
                guard let txt = string(it, "protected-prefixes[\(i)]") else { continue }
                if let pr = IPPrefix(txt), pr.isCanonical { cfg.protectedPrefixes.append(pr) } else {
                    report(.error, it, "protected-prefixes[\(i)]", "`\(txt)` is not a prefix (or has bits set beyond its length)",
                           fix: "write it like 198.51.100.0/24 or 2001:db8:2::/64")
                }
            }
            if cfg.mode != .gateway {
                report(.warning, n, "protected-prefixes", "used in gateway mode only", fix: "remove it, or set mode: gateway")
            }
        } else if cfg.mode == .gateway && purpose == .daemon {
            report(.warning, root, "protected-prefixes", "gateway mode without protected-prefixes signs segments toward a peer from any host it forwards for, spoofed ones included",
                   fix: "list the prefixes of the hosts this gateway protects")
        }
        var chainNodes: [String: ConfigNode] = [:]
        if let n = f["key-chains"]?.value { chainNodes = keyChains(n, into: &cfg) }
        assignSerials(&cfg, previous: previous)
        if purpose == .daemon, let n = f["peers"]?.value { peers(n, into: &cfg, chainNodes: chainNodes) }
        if purpose == .daemon {
            for c in cfg.keyChains { checkCoverage(c, node: chainNodes[c.name]) }
        }
        return cfg
    }

    /// `metrics: { listen: ADDRESS:PORT }`.
    mutating func metrics(_ n: ConfigNode) -> MetricsSettings? {
        guard let f = fields(n, "metrics", allowed: ["listen"], required: ["listen"]), let ln = f["listen"]?.value else { return nil }
        if ln.isSequence {
            // `listen: [::1]:9477` unquoted: YAML reads the brackets as a list.
            report(.error, ln, "metrics.listen", "expected ADDRESS:PORT, found a list (YAML reads unquoted brackets as one)",
                   fix: "quote it: listen: \"[::1]:9477\"")
            return nil
        }
        guard let s = string(ln, "metrics.listen") else { return nil }
        switch ListenAddress.parse(s) {
        case .success(let a): return MetricsSettings(listen: a)
        case .failure(let p):
            report(.error, ln, "metrics.listen", p.message, fix: p.fix)
            return nil
        }
    }

    // MARK: helpers

    static func fileMode(_ path: String) -> UInt32? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return UInt32(st.st_mode)
    }

    /// The allowed key closest to a misspelt one (edit distance <= 3).
    static func closest(_ s: String, _ options: [String]) -> String? {
        func distance(_ a: [Character], _ b: [Character]) -> Int {
            var prev = Array(0...b.count)
            for i in 1...max(a.count, 1) where !a.isEmpty {
                var cur = [i] + [Int](repeating: 0, count: b.count)
                for j in 1...max(b.count, 1) where !b.isEmpty {
                    cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
                }
                prev = cur
            }
            return prev[b.count]
        }
        let scored = options.map { ($0, distance(Array(s), Array($0))) }.sorted { $0.1 < $1.1 }
        guard let best = scored.first, best.1 <= 3 else { return nil }
        return best.0
    }
}
