import TCPAO

// MARK: key chains (RFC 8177) and their keys (MKTs, RFC 5925 3.1)

extension ConfigLoader {
    static let keyKeys = ["key-id", "send-id", "recv-id", "crypto-algorithm", "mac-length", "key-string", "hexadecimal-string",
                          "key-file", "include-tcp-options", "send-lifetime", "accept-lifetime", "send-accept-lifetime", "description"]

    /// `key-chains`: appends each valid chain to `cfg`; returns each chain's node by name (for
    /// the diagnostics that come later: unused chains, coverage).
    mutating func keyChains(_ n: ConfigNode, into cfg: inout Configuration) -> [String: ConfigNode] {
        var chainNodes: [String: ConfigNode] = [:]
        guard let items = list(n, "key-chains") else { return chainNodes }
        if items.isEmpty { report(.error, n, "key-chains", "no key chain", fix: "add a chain with at least one key") }
        let read = readEach(items) { l, item, i in l.keyChain(item, "key-chains[\(i)]") }
        for (i, item) in items.enumerated() {
            diagnostics += read[i].diagnostics
            if let c = read[i].value {
                if chainNodes[c.name] != nil {
                    report(.error, item, "key-chains[\(i)].name", "a chain named `\(c.name)` is defined twice", fix: "rename one of them")
                } else {
                    chainNodes[c.name] = item
                    cfg.keyChains.append(c)
                }
            }
        }
        return chainNodes
    }

    mutating func keyChain(_ node: ConfigNode, _ path: @autoclosure () -> String) -> KeyChain? {
        guard let f = fields(node, path(), allowed: ["name", "keys", "description"], required: ["name", "keys"]),
              let nameNode = f["name"]?.value, let name = string(nameNode, "\(path()).name"),
              let keysNode = f["keys"]?.value, let items = list(keysNode, "\(path()).keys") else { return nil }
        if items.isEmpty { report(.error, keysNode, "\(path()).keys", "the chain has no key", fix: "add a key"); return nil }
        var keys: [MKT] = []
        var failed = false
        for (i, item) in items.enumerated() {
            func kp() -> String { "\(path()).keys[\(i)]" }
            guard let k = key(item, kp()) else { failed = true; continue }
            if !checkKey(k, node: item, path: kp(), against: keys, chain: name) { failed = true }
            keys.append(k)
        }
        if !failed { warnMixedOptionLengths(keys, node: keysNode, path: "\(path()).keys") }
        return failed ? nil : KeyChain(name: name, keys: keys)
    }

    /// The checks of one key against the keys listed before it in its chain (the file's order):
    /// key-id unique, SendID and RecvID not shared while both keys may be used. False: an error
    /// was reported. Runtime key changes (`KeyOperation`) run the same checks.
    mutating func checkKey(_ k: MKT, node: ConfigNode?, path kp: @autoclosure () -> String, against keys: [MKT], chain name: String) -> Bool {
        var ok = true
        if let j = keys.firstIndex(where: { $0.chainKeyID == k.chainKeyID }) {
            report(.error, node, "\(kp()).key-id", "key-id \(k.chainKeyID) is used twice in chain `\(name)` (also keys[\(j)])",
                   fix: "give each key of a chain its own key-id"); ok = false
        }
        for (j, o) in keys.enumerated() {
            // RFC 5925 3.1: "The IDs of MKTs MUST NOT overlap where their TCP connection
            // identifiers overlap" -- here: while both may be used.
            if o.sendID == k.sendID && overlap(o.sendLifetime, k.sendLifetime) {
                report(.error, node, "\(kp()).send-id", "SendID \(k.sendID) is also used by keys[\(j)] (key-id \(o.chainKeyID)) while both may send",
                       fix: "give the keys different send-ids, or send lifetimes that do not overlap"); ok = false
            }
            if o.recvID == k.recvID && overlap(o.acceptLifetime, k.acceptLifetime) {
                report(.error, node, "\(kp()).recv-id", "RecvID \(k.recvID) is also used by keys[\(j)] (key-id \(o.chainKeyID)) while both may be accepted",
                       fix: "give the keys different recv-ids, or accept lifetimes that do not overlap"); ok = false
            }
        }
        return ok
    }

    /// RFC 5925 7.6: a connection's MSS is lowered at its handshake for the longest key of the
    /// chain then; a longer key added later does not fit its full-size segments, so such a
    /// connection stays on a key that fits.
    mutating func warnMixedOptionLengths(_ keys: [MKT], node: ConfigNode?, path: String) {
        let lengths = Set(keys.map(\.algorithm.alignedOptionLength)).sorted()
        guard purpose == .daemon, lengths.count > 1 else { return }
        report(.warning, node, path,
               "the keys need TCP-AO options of \(lengths.map { "\($0)" }.joined(separator: " and ")) bytes: a connection reserves room for the longest key of the chain when it opens, so connections opened before a longer key was added keep sending with a shorter one while one may send",
               fix: "add a key with a longer MAC before the connections that should use it open (or let them reconnect)")
    }

    mutating func key(_ node: ConfigNode, _ path: @autoclosure () -> String) -> MKT? {
        guard let f = fields(node, path(), allowed: ConfigLoader.keyKeys, required: ["key-id", "send-id", "recv-id", "crypto-algorithm"]) else { return nil }
        var ok = true
        let keyID = f["key-id"].flatMap { int($0.value, "\(path()).key-id", 0...Int(Int32.max), what: "key-id") }
        let sendID = f["send-id"].flatMap { int($0.value, "\(path()).send-id", 0...255, what: "TCP-AO KeyID (RFC 5925 3.1: 0-255)") }
        let recvID = f["recv-id"].flatMap { int($0.value, "\(path()).recv-id", 0...255, what: "TCP-AO KeyID (RFC 5925 3.1: 0-255)") }
        var alg: AOAlgorithm? = nil
        if let n = f["crypto-algorithm"]?.value {
            if let s = n.text, let a = AOAlgorithm(name: s) { alg = a } else {
                let names = AOAlgorithm.byName.map(\.0)
                report(.error, n, "\(path()).crypto-algorithm", "`\(n.text ?? "?")` is not a supported algorithm",
                       fix: "write one of: \(names.joined(separator: ", "))")
            }
        }
        if let n = f["mac-length"]?.value, let a = alg {
            // Linux's tcp_ao_add.maclen and router vendors let the MAC be truncated to other
            // lengths (at most the PRF's output); both ends must agree.
            if let v = int(n, "\(path()).mac-length", 4...a.kind.outputLength, what: "MAC length in bytes for \(a)") {
                if v != a.macLength && a.kind != .hmacSHA256 {
                    report(.warning, n, "\(path()).mac-length", "\(a) with a \(v)-byte MAC is not the RFC 5926 algorithm; the peer must use the same length",
                           fix: "remove mac-length to use \(a.macLength) bytes")
                }
                alg = AOAlgorithm(kind: a.kind, macLength: v)
            } else { ok = false }
        }
        let sources = ["key-string", "hexadecimal-string", "key-file"].filter { f[$0] != nil }
        var secret: Secret? = nil
        if sources.count != 1 {
            report(.error, node, path(), sources.isEmpty ? "the key has no secret" : "the key has more than one secret (\(sources.joined(separator: ", ")))",
                   fix: "give exactly one of key-string, hexadecimal-string, key-file")
            ok = false
        } else if let src = sources.first, let n = f[src]?.value {
            secret = readSecret(src, n, "\(path()).\(src)")
        }
        var include = true
        if let n = f["include-tcp-options"]?.value { if let b = bool(n, "\(path()).include-tcp-options") { include = b } else { ok = false } }
        var send = Lifetime.always, accept = Lifetime.always
        if let n = f["send-accept-lifetime"]?.value {
            if f["send-lifetime"] != nil || f["accept-lifetime"] != nil {
                report(.error, n, "\(path()).send-accept-lifetime", "given together with send-lifetime/accept-lifetime",
                       fix: "use send-accept-lifetime alone, or the two separate ones")
                ok = false
            }
            if let l = lifetime(n, "\(path()).send-accept-lifetime") { send = l; accept = l } else { ok = false }
        }
        if let n = f["send-lifetime"]?.value { if let l = lifetime(n, "\(path()).send-lifetime") { send = l } else { ok = false } }
        if let n = f["accept-lifetime"]?.value { if let l = lifetime(n, "\(path()).accept-lifetime") { accept = l } else { ok = false } }
        guard ok, let keyID, let sendID, let recvID, let alg, let secret else { return nil }
        return MKT(chainKeyID: UInt64(keyID), sendID: UInt8(sendID), recvID: UInt8(recvID), algorithm: alg, includeOptions: include,
                   sendLifetime: send, acceptLifetime: accept, secret: secret)
    }
}
