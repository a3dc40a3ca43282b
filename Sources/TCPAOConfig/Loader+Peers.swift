import TCPAO

// MARK: peers

extension ConfigLoader {
    /// A peer prefix shorter than this (IPv4 /8, IPv6 /16) with no `ports` is a catch-all:
    /// `check` warns, since every TCP peer in it without TCP-AO becomes unreachable.
    static let widePrefixLength = (v4: 8, v6: 16)

    /// `peers`: sets `cfg.peers`; reports overlapping prefixes, duplicate names, peers of a
    /// family no protected prefix covers (gateway mode) and chains no peer uses.
    mutating func peers(_ n: ConfigNode, into cfg: inout Configuration, chainNodes: [String: ConfigNode]) {
        guard let items = list(n, "peers") else { return }
        if items.isEmpty { report(.error, n, "peers", "no peer", fix: "add a peer: name, prefix, key-chain") }
        // A fleet may have one chain per peer (one MKT per peer pair): find chains by name, and
        // compare peers with each other by hashing and sorting, never pairwise.
        let chainsByName = Dictionary(cfg.keyChains.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        var peerNodes: [(PeerPolicy, ConfigNode)] = []
        // Where the reports comparing each peer with the ones before it go: right after that
        // peer's own diagnostics, as when each peer was compared as soon as it was read.
        var insertAt: [Int] = []
        var itemIndex: [Int] = []
        var used = Set<String>()
        let chains = cfg.keyChains
        let read = readEach(items) { l, item, i in l.peer(item, "peers[\(i)]", chains: chains, byName: chainsByName) }
        for (i, item) in items.enumerated() {
            diagnostics += read[i].diagnostics
            if let p = read[i].value {
                peerNodes.append((p, item))
                insertAt.append(diagnostics.count)
                itemIndex.append(i)
                used.insert(p.keyChain.name)
            }
        }
        let parsedEnd = diagnostics.count
        let overlaps = ConfigLoader.earlierOverlaps(peerNodes.map(\.0.prefix))
        var firstByName: [String: Int] = [:]
        var added: [(at: Int, range: Range<Int>)] = []
        for (k, (p, item)) in peerNodes.enumerated() {
            let start = diagnostics.count
            let i = itemIndex[k]
            if firstByName[p.name] != nil {
                report(.error, item, "peers[\(i)].name", "a peer named `\(p.name)` is defined twice", fix: "rename one of them")
            } else {
                firstByName[p.name] = k
            }
            for j in overlaps[k] ?? [] {
                let (q, qn) = peerNodes[j]
                let ql = "line \(qn.mark.line)"
                report(.error, item, "peers[\(i)].prefix", "\(p.prefix) overlaps \(q.prefix) of peer `\(q.name)` (\(ql))",
                       fix: "make the prefixes disjoint: each address must belong to one peer")
            }
            if diagnostics.count > start { added.append((insertAt[k], start..<diagnostics.count)) }
        }
        if !added.isEmpty {
            var out: [Diagnostic] = []
            var from = 0
            for (at, r) in added {
                out += diagnostics[from..<at]
                out += diagnostics[r]
                from = at
            }
            out += diagnostics[from..<parsedEnd]
            diagnostics = out
        }
        cfg.peers = peerNodes.map(\.0)
        if cfg.mode == .gateway && !cfg.protectedPrefixes.isEmpty {
            let families = Set(cfg.protectedPrefixes.map(\.address.isV6))
            for (p, pn) in peerNodes where !families.contains(p.prefix.address.isV6) {
                report(.error, pn, "peers", "peer `\(p.name)` is \(p.prefix.address.isV6 ? "IPv6" : "IPv4") but no protected prefix is: its traffic would not be protected",
                       fix: "add a protected prefix of that family, or remove the peer")
            }
        }
        for c in cfg.keyChains where !used.contains(c.name) {
            report(.warning, chainNodes[c.name], "key-chains", "chain `\(c.name)` is not used by any peer", fix: "attach it to a peer or remove it")
        }
    }

    /// For each prefix (by index), the earlier ones that overlap it, in order; only prefixes
    /// with such an overlap are keys. Two prefixes overlap when one holds the other (prefixes
    /// are nested or disjoint), so after sorting by (family, address, length) any overlap shows
    /// between neighbours: one pass says whether there is any (the usual answer: no). Only then
    /// is each prefix looked up among its possible containers (one hash probe per prefix
    /// length in use) and its possible contents (a range of the sorted order).
    /// `prefixes` must be canonical (no bits set beyond the length), as the loader accepts them.
    static func earlierOverlaps(_ prefixes: [IPPrefix]) -> [Int: [Int]] {
        func key(_ p: IPPrefix) -> (Int, UInt64, UInt64, Int) { (p.address.isV6 ? 1 : 0, p.address.hi, p.address.lo, p.length) }
        let order = prefixes.indices.sorted { key(prefixes[$0]) < key(prefixes[$1]) }
        var any = false
        for (a, b) in zip(order, order.dropFirst()) where prefixes[a].overlaps(prefixes[b]) { any = true; break }
        guard any else { return [:] }

        var byPrefix: [IPPrefix: [Int]] = [:]
        var lengths: [Bool: Set<Int>] = [:]
        for (i, p) in prefixes.enumerated() {
            byPrefix[p, default: []].append(i)
            lengths[p.address.isV6, default: []].insert(p.length)
        }
        var out: [Int: [Int]] = [:]
        for (k, p) in prefixes.enumerated() {
            var found: [Int] = []
            // Containers (and equal prefixes): the prefix of each length in use that holds p.
            for l in lengths[p.address.isV6, default: []] where l <= p.length {
                let c = IPPrefix(address: IPPrefix(address: p.address, length: l).masked(p.address), length: l)
                for j in byPrefix[c] ?? [] where j < k { found.append(j) }
            }
            // Contents: longer prefixes whose address lies in p, a range of the sorted order.
            var last = p.address
            if p.address.isV6 {
                if p.length <= 64 { last.hi |= UInt64.max >> UInt64(p.length); last.lo = UInt64.max } else { last.lo |= UInt64.max >> UInt64(p.length - 64) }
            } else {
                last.lo |= UInt64(0xFFFF_FFFF) >> UInt64(p.length)
            }
            var lo = 0, hi = order.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if key(prefixes[order[mid]]) < key(p) { lo = mid + 1 } else { hi = mid }
            }
            while lo < order.count {
                let j = order[lo], q = prefixes[j]
                guard q.address.isV6 == p.address.isV6, q.address <= last else { break }
                if q.length > p.length && j < k { found.append(j) }
                lo += 1
            }
            if !found.isEmpty { out[k] = found.sorted() }
        }
        return out
    }

    mutating func peer(_ node: ConfigNode, _ path: @autoclosure () -> String, chains: [KeyChain], byName: [String: KeyChain]? = nil) -> PeerPolicy? {
        guard let f = fields(node, path(), allowed: ["name", "prefix", "ports", "key-chain", "accept-key-mismatch", "icmp-hard-errors", "description"],
                             required: ["name", "prefix", "key-chain"]) else { return nil }
        guard let name = f["name"].flatMap({ string($0.value, "\(path()).name") }) else { return nil }
        var prefix: IPPrefix? = nil
        if let n = f["prefix"]?.value, let s = string(n, "\(path()).prefix") {
            if let p = IPPrefix(s) {
                if p.isCanonical { prefix = p } else {
                    report(.error, n, "\(path()).prefix", "\(s) has bits set beyond its length",
                           fix: "write \(IPPrefix(address: p.masked(p.address), length: p.length)) (or /\(p.address.isV6 ? 128 : 32) for one host)")
                }
            } else {
                report(.error, n, "\(path()).prefix", "`\(s)` is not an IPv4 or IPv6 prefix", fix: "write it like 192.0.2.0/24 or 2001:db8::/32")
            }
        }
        var ports: [UInt16] = []
        if let n = f["ports"]?.value, let items = list(n, "\(path()).ports") {
            if items.isEmpty { report(.error, n, "\(path()).ports", "an empty list protects nothing", fix: "list ports, or omit `ports` for all") }
            for (i, it) in items.enumerated() {
                if let v = int(it, "\(path()).ports[\(i)]", 1...65535, what: "TCP port") { ports.append(UInt16(v)) }
            }
        }
        if let p = prefix, f["ports"] == nil,
           p.length < (p.address.isV6 ? ConfigLoader.widePrefixLength.v6 : ConfigLoader.widePrefixLength.v4) {
            // A catch-all peer: every TCP segment to or from those addresses must then carry
            // TCP-AO (the host's own loopback traffic is left alone unless protect-loopback).
            let range = p.length == 0 ? "every \(p.address.isV6 ? "IPv6" : "IPv4") address" : "every address in \(p)"
            report(.warning, f["prefix"]?.value, "\(path()).prefix",
                   "peer `\(name)` covers \(range) on every port: every TCP peer there without TCP-AO becomes unreachable",
                   fix: "list the ports to protect (e.g. `ports: [830, 9339]`), or narrow the prefix to the hosts that use TCP-AO")
        }
        var chain: KeyChain? = nil
        if let n = f["key-chain"]?.value, let s = string(n, "\(path()).key-chain") {
            chain = byName.map { $0[s] } ?? chains.first { $0.name == s }
            if chain == nil {
                let names = chains.map(\.name)
                report(.error, n, "\(path()).key-chain", "no key chain named `\(s)`",
                       fix: names.isEmpty ? "define it under key-chains" : "use one of: \(names.joined(separator: ", "))")
            }
        }
        var mismatch = false
        if let n = f["accept-key-mismatch"]?.value, let b = bool(n, "\(path()).accept-key-mismatch") {
            mismatch = b
            if b { report(.warning, n, "\(path()).accept-key-mismatch", "segments without TCP-AO from `\(name)` will be accepted (migration)", fix: "set it to false once the peer signs") }
        }
        var dropICMP = true
        if let n = f["icmp-hard-errors"]?.value, let s = string(n, "\(path()).icmp-hard-errors") {
            switch s {
            case "drop": dropICMP = true
            case "accept": dropICMP = false
            default: report(.error, n, "\(path()).icmp-hard-errors", "`\(s)` is not drop or accept", fix: "write drop (RFC 5925 7.8 default) or accept")
            }
        }
        guard let prefix, let chain else { return nil }
        return PeerPolicy(name: name, prefix: prefix, ports: ports, keyChain: chain, acceptKeyMismatch: mismatch, dropICMPHardErrors: dropICMP)
    }
}
