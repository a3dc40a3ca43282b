import Foundation
import TCPAO
import Yams
#if canImport(Glibc)
import Glibc
#endif

/// Reads and checks a tcpaod configuration file (YAML; names from RFC 8177 key chains and
/// RFC 9648's TCP-AO model). Every problem is reported, each with its location and a fix.
public struct ConfigLoader {
    public enum Purpose: Sendable {
        /// `run` and `check`: everything, including "is a key valid now".
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

    /// Loads `path`. Returns the configuration when there are no errors, and every diagnostic
    /// (errors and warnings) either way. `previous` lets unchanged keys keep their serials
    /// across a reload.
    public static func load(path: String, purpose: Purpose = .daemon, now: Int64, previous: Configuration? = nil)
        -> (Configuration?, [Diagnostic]) {
        var l = ConfigLoader(file: path, purpose: purpose, now: now)
        guard let data = FileManager.default.contents(atPath: path) else {
            let why = FileManager.default.fileExists(atPath: path) ? "cannot be read (permissions?)" : "does not exist"
            l.report(.error, nil, "", "the configuration file \(why)", fix: "pass the path of a readable file with --config")
            return (nil, l.diagnostics)
        }
        guard let text = String(data: data, encoding: .utf8) else {
            l.report(.error, nil, "", "the file is not UTF-8 text", fix: "save it as UTF-8")
            return (nil, l.diagnostics)
        }
        let cfg = l.parse(text, previous: previous)
        if l.inlineSecrets, let mode = ConfigLoader.fileMode(path), mode & 0o004 != 0 {
            l.report(.error, nil, "", "the file holds secrets (key-string/hexadecimal-string) and is readable by every user",
                     fix: "chmod 600 \(path), or move the secrets to key files")
        }
        return (l.diagnostics.hasErrors ? nil : cfg, l.diagnostics)
    }

    /// Parses YAML text (tests use this directly).
    public static func parse(_ text: String, file: String = "<config>", purpose: Purpose = .daemon, now: Int64,
                             previous: Configuration? = nil) -> (Configuration?, [Diagnostic]) {
        var l = ConfigLoader(file: file, purpose: purpose, now: now)
        let cfg = l.parse(text, previous: previous)
        return (l.diagnostics.hasErrors ? nil : cfg, l.diagnostics)
    }

    // MARK: reporting

    mutating func report(_ s: Diagnostic.Severity, _ node: Node?, _ path: String, _ msg: String, fix: String) {
        let m = node?.mark
        diagnostics.append(Diagnostic(s, file: file, line: m?.line ?? 0, column: m?.column ?? 0, path: path, msg, fix: fix))
    }

    // MARK: typed access to nodes

    /// The keys of a mapping node, checked against `allowed` (unknown keys are errors with a
    /// suggestion) and `required`. Returns key -> (key node, value node).
    mutating func fields(_ node: Node, _ path: String, allowed: [String], required: [String] = [])
        -> [String: (key: Node, value: Node)]? {
        guard case .mapping(let map) = node else {
            report(.error, node, path, "expected a mapping (key: value lines)", fix: "write it as `key: value` entries")
            return nil
        }
        var out: [String: (key: Node, value: Node)] = [:]
        for (k, v) in map {
            guard let name = k.scalar?.string else {
                report(.error, k, path, "a key must be a plain word", fix: "use one of: \(allowed.joined(separator: ", "))")
                continue
            }
            let sub = path.isEmpty ? name : "\(path).\(name)"
            if out[name] != nil {
                report(.error, k, sub, "appears twice", fix: "keep one `\(name)`")
                continue
            }
            guard allowed.contains(name) else {
                let hint = ConfigLoader.closest(name, allowed).map { "did you mean `\($0)`?" } ?? "allowed here: \(allowed.joined(separator: ", "))"
                report(.error, k, sub, "unknown key `\(name)`", fix: hint)
                continue
            }
            out[name] = (k, v)
        }
        for r in required where out[r] == nil {
            report(.error, node, path, "`\(r)` is missing", fix: "add `\(r): ...`")
        }
        return out
    }

    mutating func string(_ n: Node, _ path: String) -> String? {
        guard let s = n.scalar?.string, !s.isEmpty else {
            report(.error, n, path, "expected a text value", fix: "write a value after the colon")
            return nil
        }
        return s
    }

    mutating func int(_ n: Node, _ path: String, _ range: ClosedRange<Int>, what: String = "value") -> Int? {
        guard let s = n.scalar?.string, let v = Int(s) else {
            report(.error, n, path, "expected a whole number, found `\(n.scalar?.string ?? "a list or mapping")`",
                   fix: "write a number from \(range.lowerBound) to \(range.upperBound)")
            return nil
        }
        guard range.contains(v) else {
            report(.error, n, path, "\(v) is out of range for a \(what)", fix: "use a number from \(range.lowerBound) to \(range.upperBound)")
            return nil
        }
        return v
    }

    mutating func bool(_ n: Node, _ path: String) -> Bool? {
        switch n.scalar?.string.lowercased() {
        case "true": return true
        case "false": return false
        default:
            report(.error, n, path, "expected true or false, found `\(n.scalar?.string ?? "a list or mapping")`", fix: "write true or false")
            return nil
        }
    }

    mutating func choice<T: RawRepresentable & CaseIterable>(_ n: Node, _ path: String, _ t: T.Type) -> T? where T.RawValue == String {
        guard let s = n.scalar?.string, let v = T(rawValue: s) else {
            let names = T.allCases.map(\.rawValue)
            report(.error, n, path, "`\(n.scalar?.string ?? "?")` is not one of \(names.joined(separator: ", "))",
                   fix: "write one of: \(names.joined(separator: ", "))")
            return nil
        }
        return v
    }

    mutating func list(_ n: Node, _ path: String) -> [Node]? {
        guard case .sequence(let seq) = n else {
            report(.error, n, path, "expected a list", fix: "write a list: `[a, b]` or lines starting with `- `")
            return nil
        }
        return Array(seq)
    }

    // MARK: the document

    static let topKeys = ["mode", "queue", "threads", "queue-bypass", "on-exit", "passthrough", "max-flows", "idle-timeout",
                          "handshake-timeout", "linger", "log-level", "stats-interval", "stats-file", "firewall", "protected-prefixes",
                          "key-chains", "peers"]

    mutating func parse(_ text: String, previous: Configuration?) -> Configuration {
        var cfg = Configuration(file: file)
        let root: Node
        do {
            guard let r = try Yams.compose(yaml: text) else {
                report(.error, nil, "", "the file is empty", fix: "see config/tcpaod.yaml for a commented example")
                return cfg
            }
            root = r
        } catch let e as YamlError {
            reportYAML(e)
            return cfg
        } catch {
            report(.error, nil, "", "not valid YAML: \(error)", fix: "check the indentation and quoting")
            return cfg
        }
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
        if let n = f["firewall"]?.value, let v = choice(n, "firewall", FirewallBackend.self) { cfg.firewall = v }

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
        var chainNodes: [String: Node] = [:]
        if let n = f["key-chains"]?.value, let items = list(n, "key-chains") {
            if items.isEmpty { report(.error, n, "key-chains", "no key chain", fix: "add a chain with at least one key") }
            for (i, item) in items.enumerated() {
                if let c = keyChain(item, "key-chains[\(i)]") {
                    if chainNodes[c.name] != nil {
                        report(.error, item, "key-chains[\(i)].name", "a chain named `\(c.name)` is defined twice", fix: "rename one of them")
                    } else {
                        chainNodes[c.name] = item
                        cfg.keyChains.append(c)
                    }
                }
            }
        }
        assignSerials(&cfg, previous: previous)
        if purpose == .daemon, let n = f["peers"]?.value, let items = list(n, "peers") {
            if items.isEmpty { report(.error, n, "peers", "no peer", fix: "add a peer: name, prefix, key-chain") }
            var peerNodes: [(PeerPolicy, Node)] = []
            var used = Set<String>()
            for (i, item) in items.enumerated() {
                if let p = peer(item, "peers[\(i)]", chains: cfg.keyChains) {
                    if peerNodes.contains(where: { $0.0.name == p.name }) {
                        report(.error, item, "peers[\(i)].name", "a peer named `\(p.name)` is defined twice", fix: "rename one of them")
                    }
                    for (q, qn) in peerNodes where q.prefix.overlaps(p.prefix) {
                        let ql = qn.mark.map { "line \($0.line)" } ?? "another peer"
                        report(.error, item, "peers[\(i)].prefix", "\(p.prefix) overlaps \(q.prefix) of peer `\(q.name)` (\(ql))",
                               fix: "make the prefixes disjoint: each address must belong to one peer")
                    }
                    peerNodes.append((p, item))
                    used.insert(p.keyChain.name)
                }
            }
            cfg.peers = peerNodes.map(\.0)
            if cfg.mode == .gateway && !cfg.protectedPrefixes.isEmpty {
                for (p, pn) in peerNodes where !cfg.protectedPrefixes.contains(where: { $0.address.isV6 == p.prefix.address.isV6 }) {
                    report(.error, pn, "peers", "peer `\(p.name)` is \(p.prefix.address.isV6 ? "IPv6" : "IPv4") but no protected prefix is: its traffic would not be protected",
                           fix: "add a protected prefix of that family, or remove the peer")
                }
            }
            for c in cfg.keyChains where !used.contains(c.name) {
                report(.warning, chainNodes[c.name], "key-chains", "chain `\(c.name)` is not used by any peer", fix: "attach it to a peer or remove it")
            }
        }
        if purpose == .daemon {
            for c in cfg.keyChains { checkCoverage(c, node: chainNodes[c.name]) }
        }
        return cfg
    }

    mutating func reportYAML(_ e: YamlError) {
        switch e {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
            diagnostics.append(Diagnostic(.error, file: file, line: mark.line, column: mark.column, path: "",
                                          "not valid YAML: \(problem)", fix: "check the indentation and quoting around this line"))
        case .duplicatedKeysInMapping(let dups, let ctx):
            diagnostics.append(Diagnostic(.error, file: file, line: ctx.mark.line, column: ctx.mark.column, path: "",
                                          "duplicated keys: \(dups.joined(separator: ", "))", fix: "keep one of each"))
        default:
            report(.error, nil, "", "not valid YAML: \(e)", fix: "check the indentation and quoting")
        }
    }

    // MARK: key chains

    static let keyKeys = ["key-id", "send-id", "recv-id", "crypto-algorithm", "mac-length", "key-string", "hexadecimal-string",
                          "key-file", "include-tcp-options", "send-lifetime", "accept-lifetime", "send-accept-lifetime", "description"]

    mutating func keyChain(_ node: Node, _ path: String) -> KeyChain? {
        guard let f = fields(node, path, allowed: ["name", "keys", "description"], required: ["name", "keys"]),
              let nameNode = f["name"]?.value, let name = string(nameNode, "\(path).name"),
              let keysNode = f["keys"]?.value, let items = list(keysNode, "\(path).keys") else { return nil }
        if items.isEmpty { report(.error, keysNode, "\(path).keys", "the chain has no key", fix: "add a key"); return nil }
        var keys: [MKT] = []
        var nodes: [Node] = []
        var failed = false
        for (i, item) in items.enumerated() {
            let kp = "\(path).keys[\(i)]"
            guard let k = key(item, kp) else { failed = true; continue }
            if let j = keys.firstIndex(where: { $0.keyID == k.keyID }) {
                report(.error, item, "\(kp).key-id", "key-id \(k.keyID) is used twice in chain `\(name)` (also keys[\(j)])",
                       fix: "give each key of a chain its own key-id"); failed = true
            }
            for (j, o) in keys.enumerated() {
                // RFC 5925 3.1: "The IDs of MKTs MUST NOT overlap where their TCP connection
                // identifiers overlap" -- here: while both may be used.
                if o.sendID == k.sendID && overlap(o.sendLifetime, k.sendLifetime) {
                    report(.error, item, "\(kp).send-id", "SendID \(k.sendID) is also used by keys[\(j)] (key-id \(o.keyID)) while both may send",
                           fix: "give the keys different send-ids, or send lifetimes that do not overlap"); failed = true
                }
                if o.recvID == k.recvID && overlap(o.acceptLifetime, k.acceptLifetime) {
                    report(.error, item, "\(kp).recv-id", "RecvID \(k.recvID) is also used by keys[\(j)] (key-id \(o.keyID)) while both may be accepted",
                           fix: "give the keys different recv-ids, or accept lifetimes that do not overlap"); failed = true
                }
            }
            keys.append(k)
            nodes.append(item)
        }
        return failed ? nil : KeyChain(name: name, keys: keys)
    }

    func overlap(_ a: Lifetime, _ b: Lifetime) -> Bool { a.start < b.end && b.start < a.end }

    mutating func key(_ node: Node, _ path: String) -> MKT? {
        guard let f = fields(node, path, allowed: ConfigLoader.keyKeys, required: ["key-id", "send-id", "recv-id", "crypto-algorithm"]) else { return nil }
        var ok = true
        let keyID = f["key-id"].flatMap { int($0.value, "\(path).key-id", 0...Int(Int32.max), what: "key-id") }
        let sendID = f["send-id"].flatMap { int($0.value, "\(path).send-id", 0...255, what: "TCP-AO KeyID (RFC 5925 3.1: 0-255)") }
        let recvID = f["recv-id"].flatMap { int($0.value, "\(path).recv-id", 0...255, what: "TCP-AO KeyID (RFC 5925 3.1: 0-255)") }
        var alg: AOAlgorithm? = nil
        if let n = f["crypto-algorithm"]?.value {
            let names = AOAlgorithm.byName.map(\.0)
            if let s = n.scalar?.string, let a = AOAlgorithm(name: s) { alg = a } else {
                report(.error, n, "\(path).crypto-algorithm", "`\(n.scalar?.string ?? "?")` is not a supported algorithm",
                       fix: "write one of: \(names.joined(separator: ", "))")
            }
        }
        if let n = f["mac-length"]?.value, let a = alg {
            // Linux's tcp_ao_add.maclen and router vendors let the MAC be truncated to other
            // lengths (at most the PRF's output); both ends must agree.
            if let v = int(n, "\(path).mac-length", 4...a.kind.outputLength, what: "MAC length in bytes for \(a)") {
                if v != a.macLength && a.kind != .hmacSHA256 {
                    report(.warning, n, "\(path).mac-length", "\(a) with a \(v)-byte MAC is not the RFC 5926 algorithm; the peer must use the same length",
                           fix: "remove mac-length to use \(a.macLength) bytes")
                }
                alg = AOAlgorithm(kind: a.kind, macLength: v)
            } else { ok = false }
        }
        let sources = ["key-string", "hexadecimal-string", "key-file"].filter { f[$0] != nil }
        var secret: Secret? = nil
        if sources.count != 1 {
            report(.error, node, path, sources.isEmpty ? "the key has no secret" : "the key has more than one secret (\(sources.joined(separator: ", ")))",
                   fix: "give exactly one of key-string, hexadecimal-string, key-file")
            ok = false
        } else if let src = sources.first, let n = f[src]?.value {
            secret = readSecret(src, n, "\(path).\(src)")
        }
        var include = true
        if let n = f["include-tcp-options"]?.value { if let b = bool(n, "\(path).include-tcp-options") { include = b } else { ok = false } }
        var send = Lifetime.always, accept = Lifetime.always
        if let n = f["send-accept-lifetime"]?.value {
            if f["send-lifetime"] != nil || f["accept-lifetime"] != nil {
                report(.error, n, "\(path).send-accept-lifetime", "given together with send-lifetime/accept-lifetime",
                       fix: "use send-accept-lifetime alone, or the two separate ones")
                ok = false
            }
            if let l = lifetime(n, "\(path).send-accept-lifetime") { send = l; accept = l } else { ok = false }
        }
        if let n = f["send-lifetime"]?.value { if let l = lifetime(n, "\(path).send-lifetime") { send = l } else { ok = false } }
        if let n = f["accept-lifetime"]?.value { if let l = lifetime(n, "\(path).accept-lifetime") { accept = l } else { ok = false } }
        guard ok, let keyID, let sendID, let recvID, let alg, let secret else { return nil }
        return MKT(keyID: UInt64(keyID), sendID: UInt8(sendID), recvID: UInt8(recvID), algorithm: alg, includeOptions: include,
                   sendLifetime: send, acceptLifetime: accept, secret: secret)
    }

    /// key-string (text), hexadecimal-string, or key-file (a file holding the key as text, one
    /// trailing newline ignored; `hex:` at its start means hexadecimal). Never echoes the secret.
    mutating func readSecret(_ kind: String, _ n: Node, _ path: String) -> Secret? {
        var bytes: [UInt8]
        switch kind {
        case "key-string":
            guard let s = n.scalar?.string, !s.isEmpty else {
                report(.error, n, path, "empty secret", fix: "write the shared secret in quotes"); return nil
            }
            inlineSecrets = true
            bytes = Array(s.utf8)
        case "hexadecimal-string":
            guard let s = n.scalar?.string, let b = [UInt8](hex: s), !b.isEmpty else {
                report(.error, n, path, "not an even number of hexadecimal digits", fix: "write pairs of 0-9a-f, e.g. \"00ff17\""); return nil
            }
            inlineSecrets = true
            bytes = b
        default:
            guard let p = n.scalar?.string, !p.isEmpty else { report(.error, n, path, "no path", fix: "write the key file's path"); return nil }
            let full = p.hasPrefix("/") ? p : (file as NSString).deletingLastPathComponent + "/" + p
            guard let mode = ConfigLoader.fileMode(full) else {
                report(.error, n, path, "key file \(full) does not exist or cannot be examined", fix: "create it (mode 600) or correct the path")
                return nil
            }
            if mode & 0o004 != 0 {
                report(.error, n, path, "key file \(full) is readable by every user", fix: "chmod 600 \(full)")
                return nil
            }
            if mode & 0o040 != 0 {
                report(.warning, n, path, "key file \(full) is readable by its group", fix: "chmod 600 \(full)")
            }
            guard let data = FileManager.default.contents(atPath: full) else {
                report(.error, n, path, "key file \(full) cannot be read", fix: "check its owner and mode (tcpaod runs as root)")
                return nil
            }
            bytes = [UInt8](data)
            if bytes.last == 0x0A { bytes.removeLast(); if bytes.last == 0x0D { bytes.removeLast() } }
            if bytes.starts(with: Array("hex:".utf8)) {
                guard let b = [UInt8](hex: String(decoding: bytes.dropFirst(4), as: UTF8.self)) else {
                    report(.error, n, path, "key file \(full) starts with hex: but is not hexadecimal", fix: "write pairs of 0-9a-f after hex:")
                    return nil
                }
                bytes = b
            }
        }
        defer { for i in bytes.indices { bytes[i] = 0 } }
        if bytes.count < 8 {
            report(.error, n, path, "the secret is \(bytes.count) bytes long, too short to resist guessing",
                   fix: "use at least 16 random bytes, e.g. `openssl rand -hex 16` as a hexadecimal-string")
            return nil
        }
        if bytes.count < 12 {
            report(.warning, n, path, "the secret is only \(bytes.count) bytes (RFC 5925 5.3 advises 12-24)", fix: "use at least 16 random bytes")
        }
        if bytes.count > 80 {
            report(.warning, n, path, "the secret is \(bytes.count) bytes; Linux's TCP-AO accepts at most 80",
                   fix: "use a shorter key if a Linux host is a peer")
        }
        return Secret(bytes)
    }

    /// RFC 8177 lifetime: `always: true`, or start-date-time with one of end-date-time,
    /// no-end-time, duration (seconds). Start defaults to the beginning of time.
    mutating func lifetime(_ n: Node, _ path: String) -> Lifetime? {
        guard let f = fields(n, path, allowed: ["always", "start-date-time", "end-date-time", "no-end-time", "duration"]) else { return nil }
        if let a = f["always"]?.value {
            guard f.count == 1 else {
                report(.error, n, path, "`always` cannot be combined with dates", fix: "use `always: true` alone"); return nil
            }
            return bool(a, "\(path).always") == true ? .always : nil
        }
        var l = Lifetime.always
        if let s = f["start-date-time"]?.value {
            guard let t = date(s, "\(path).start-date-time") else { return nil }
            l.start = t
        }
        let ends = ["end-date-time", "no-end-time", "duration"].filter { f[$0] != nil }
        if ends.count > 1 {
            report(.error, n, path, "more than one end (\(ends.joined(separator: ", ")))", fix: "keep one of end-date-time, no-end-time, duration")
            return nil
        }
        if let e = f["end-date-time"]?.value {
            guard let t = date(e, "\(path).end-date-time") else { return nil }
            l.end = t
        } else if let d = f["duration"]?.value {
            guard l.start != .min else {
                report(.error, d, "\(path).duration", "a duration needs a start-date-time", fix: "add start-date-time"); return nil
            }
            guard let v = int(d, "\(path).duration", 1...Int(UInt32.max), what: "duration (seconds)") else { return nil }
            l.end = l.start + Int64(v)
        } else if let ne = f["no-end-time"]?.value {
            guard bool(ne, "\(path).no-end-time") == true else {
                report(.error, ne, "\(path).no-end-time", "`no-end-time` can only be true", fix: "write `no-end-time: true` or give an end-date-time")
                return nil
            }
        }
        if l.end <= l.start {
            report(.error, n, path, "the lifetime ends (\(RFC3339.format(l.end))) before it starts (\(RFC3339.format(l.start)))",
                   fix: "put end-date-time after start-date-time")
            return nil
        }
        return l
    }

    mutating func date(_ n: Node, _ path: String) -> Int64? {
        guard let s = n.scalar?.string, let t = RFC3339.parse(s) else {
            report(.error, n, path, "`\(n.scalar?.string ?? "?")` is not an RFC 3339 date-time", fix: "write it like 2026-01-01T00:00:00Z")
            return nil
        }
        return t
    }

    /// "No key valid now" and "lifetimes that leave a gap", for sending and for accepting.
    mutating func checkCoverage(_ c: KeyChain, node: Node?) {
        for (what, lifetimes) in [("send", c.keys.map(\.sendLifetime)), ("accept", c.keys.map(\.acceptLifetime))] {
            let fixNow = what == "send" ? "extend a key's send-lifetime to cover now, or add a key valid now"
                                        : "extend a key's accept-lifetime to cover now"
            if !lifetimes.contains(where: { $0.contains(now) }) {
                report(.error, node, "key-chains[\(c.name)]", "no key may be used to \(what) now (\(RFC3339.format(now)))", fix: fixNow)
                continue
            }
            // Walk forward from now through the union of the lifetimes.
            var t = now
            while true {
                guard let covering = lifetimes.filter({ $0.contains(t) }).map(\.end).max() else {
                    let next = lifetimes.map(\.start).filter { $0 > t }.min()
                    if let next {
                        report(.error, node, "key-chains[\(c.name)]",
                               "no key may be used to \(what) from \(RFC3339.format(t)) until \(RFC3339.format(next))",
                               fix: "extend a key's \(what)-lifetime, or start the next key earlier, so the lifetimes meet")
                    } else {
                        report(.warning, node, "key-chains[\(c.name)]", "every key's \(what)-lifetime ends by \(RFC3339.format(t))",
                               fix: "add the next key before then")
                    }
                    break
                }
                if covering == .max { break }
                t = covering
            }
        }
    }

    /// Keys unchanged since `previous` keep their serial (so flows keep their cached traffic
    /// keys across a reload); new ones get fresh serials.
    mutating func assignSerials(_ cfg: inout Configuration, previous: Configuration?) {
        let old = previous?.allKeys ?? []
        var next = (old.map(\.serial).max() ?? 0) + 1
        cfg.keyChains = cfg.keyChains.map { chain in
            chain.withSerials(chain.keys.map { k in
                if let o = old.first(where: { $0.sameKey(as: k) }) { return o.serial }
                defer { next += 1 }
                return next
            })
        }
    }

    // MARK: peers

    mutating func peer(_ node: Node, _ path: String, chains: [KeyChain]) -> PeerPolicy? {
        guard let f = fields(node, path, allowed: ["name", "prefix", "ports", "key-chain", "accept-key-mismatch", "icmp-hard-errors", "description"],
                             required: ["name", "prefix", "key-chain"]) else { return nil }
        guard let name = f["name"].flatMap({ string($0.value, "\(path).name") }) else { return nil }
        var prefix: IPPrefix? = nil
        if let n = f["prefix"]?.value, let s = string(n, "\(path).prefix") {
            if let p = IPPrefix(s) {
                if p.isCanonical { prefix = p } else {
                    report(.error, n, "\(path).prefix", "\(s) has bits set beyond its length",
                           fix: "write \(IPPrefix(address: p.masked(p.address), length: p.length)) (or /\(p.address.isV6 ? 128 : 32) for one host)")
                }
            } else {
                report(.error, n, "\(path).prefix", "`\(s)` is not an IPv4 or IPv6 prefix", fix: "write it like 192.0.2.0/24 or 2001:db8::/32")
            }
        }
        var ports: [UInt16] = []
        if let n = f["ports"]?.value, let items = list(n, "\(path).ports") {
            if items.isEmpty { report(.error, n, "\(path).ports", "an empty list protects nothing", fix: "list ports, or omit `ports` for all") }
            for (i, it) in items.enumerated() {
                if let v = int(it, "\(path).ports[\(i)]", 1...65535, what: "TCP port") { ports.append(UInt16(v)) }
            }
        }
        var chain: KeyChain? = nil
        if let n = f["key-chain"]?.value, let s = string(n, "\(path).key-chain") {
            chain = chains.first { $0.name == s }
            if chain == nil {
                let names = chains.map(\.name)
                report(.error, n, "\(path).key-chain", "no key chain named `\(s)`",
                       fix: names.isEmpty ? "define it under key-chains" : "use one of: \(names.joined(separator: ", "))")
            }
        }
        var mismatch = false
        if let n = f["accept-key-mismatch"]?.value, let b = bool(n, "\(path).accept-key-mismatch") {
            mismatch = b
            if b { report(.warning, n, "\(path).accept-key-mismatch", "segments without TCP-AO from `\(name)` will be accepted (migration)", fix: "set it to false once the peer signs") }
        }
        var dropICMP = true
        if let n = f["icmp-hard-errors"]?.value, let s = string(n, "\(path).icmp-hard-errors") {
            switch s {
            case "drop": dropICMP = true
            case "accept": dropICMP = false
            default: report(.error, n, "\(path).icmp-hard-errors", "`\(s)` is not drop or accept", fix: "write drop (RFC 5925 7.8 default) or accept")
            }
        }
        guard let prefix, let chain else { return nil }
        return PeerPolicy(name: name, prefix: prefix, ports: ports, keyChain: chain, acceptKeyMismatch: mismatch, dropICMPHardErrors: dropICMP)
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
