import Foundation
import TCPAO
import TCPAOConfig
#if canImport(Glibc)
import Glibc
#endif

/// The iptables/ip6tables rules that send the configured peers' TCP traffic (and ICMP hard
/// errors, RFC 5925 7.8) to tcpaod's queues. They live in tcpaod's own chains of the mangle
/// table, jumped to from the first position of the built-in chains: mangle runs before filter,
/// so the operator's filter rules still apply to what tcpaod accepts (an NFQUEUE accept ends
/// the traversal of the table it was given in). In host mode the loopback interface is left
/// out (`! -o lo`, `! -i lo`) unless `protect-loopback: true`.
///
/// With `flow-state: conntrack` each chain starts with a rule that has no target, so it changes
/// no packet's path: `-m connlabel --label N` (no `--set`). Its presence is what the kernel
/// needs: the connlabel match turns conntrack on for the namespace (`nf_ct_netns_get`), and a
/// conntrack entry gets label space at creation only while something uses labels (without it,
/// writing a label fails with ENOSPC).
public struct RuleSet: Sendable, Equatable {
    public static let table = "mangle"
    public static let comment = "tcpaod"
    public static let labelComment = "tcpaod: reserve conntrack labels"
    /// (built-in chain, tcpaod chain) pairs a mode uses.
    public static func chains(_ mode: Mode) -> [(String, String)] {
        mode == .host ? [("OUTPUT", "TCPAOD-OUT"), ("INPUT", "TCPAOD-IN")] : [("FORWARD", "TCPAOD-FWD")]
    }
    public static let allChains: [(String, String)] = chains(.host) + chains(.gateway)
    /// The chain that spreads connections over the queues (`queue-spread: connection`), jumped
    /// to from the peers' rules only; listed last so that it is removed after them.
    public static let spreadChain = "TCPAOD-QUEUE"
    /// Every tcpaod chain, in the order they are removed.
    public static let chainNames: [String] = allChains.map(\.1) + [spreadChain]
    /// HMARK's marks start here (`--hmark-offset`): queue i gets base + i. Unlikely to be an
    /// operator's own mark; only packets that arrive with mark 0 get one, and tcpaod's verdict
    /// sets it back to 0 (`Worker.spreadMarks`).
    public static let markBase: UInt32 = 0x7441_0000
    /// HMARK's hash seed: fixed, so that a restarted tcpaod sends each connection to the same
    /// queue (`tcpa` in ASCII).
    static let hashSeed: UInt32 = 0x7463_7061

    /// The marks the HMARK spread gives (nil: the rules do not spread by connection).
    public static func spreadMarks(_ cfg: Configuration) -> ClosedRange<UInt32>? {
        guard cfg.threads > 1, cfg.queueSpread == .connection else { return nil }
        return markBase...(markBase + UInt32(cfg.threads - 1))
    }

    /// `iptables-restore --noflush` input, or nil when no peer of that family exists.
    public var v4: String?
    public var v6: String?
    /// The ipsets the rules match (`-m set --match-set`): each holds a large group of peers that
    /// share ports (see `PeerSet`). Part of the value, so a reload that only changes members is
    /// a change of the rules.
    public var sets: [PeerSet]

    public init(_ cfg: Configuration) {
        var sets: [PeerSet] = []
        v4 = RuleSet.script(cfg, v6: false, sets: &sets)
        v6 = RuleSet.script(cfg, v6: true, sets: &sets)
        self.sets = sets
    }

    /// Peers of one family sharing their ports (and, in gateway mode, the protected prefixes,
    /// which are the configuration's) are matched by one ipset when they are more than this
    /// many: two rules per peer is a linear walk per packet (50,000 peers: 100,000 rules, about
    /// 5 ms per packet here), a hash:net set one lookup per prefix length. Up to this many
    /// the rules stay one pair per peer, as before ipsets were used, and need no ipset tool.
    public static let setThreshold = 16

    static func target(_ cfg: Configuration) -> String {
        if spreadMarks(cfg) != nil { return spreadChain }
        return balance(cfg)
    }

    static func balance(_ cfg: Configuration) -> String {
        var t = cfg.threads == 1 ? "NFQUEUE --queue-num \(cfg.queue)" : "NFQUEUE --queue-balance \(cfg.queues.lowerBound):\(cfg.queues.upperBound)"
        if cfg.queueBypass { t += " --queue-bypass" }
        return t
    }

    /// The spread chain's rules: NFQUEUE's own balancing hashes the addresses only, so all the
    /// connections between two hosts share a queue. HMARK (net/netfilter/xt_HMARK.c) hashes
    /// addresses, ports and protocol, ordered so that both directions of a connection get the
    /// same mark (for an ICMP error, the mark of the connection it quotes), and the mark picks
    /// the queue. A packet that already has a mark keeps it (the operator's) and is balanced by
    /// address instead.
    static func spreadRules(_ cfg: Configuration) -> [String] {
        guard let marks = spreadMarks(cfg) else { return [] }
        let bypass = cfg.queueBypass ? " --queue-bypass" : ""
        var out = ["-A \(spreadChain) -m mark ! --mark 0 -j \(balance(cfg))",
                   "-A \(spreadChain) -j HMARK --hmark-tuple src,dst,sport,dport,proto --hmark-mod \(cfg.threads) --hmark-offset \(marks.lowerBound) --hmark-rnd \(hashSeed)"]
        for (i, q) in cfg.queues.enumerated() {
            out.append("-A \(spreadChain) -m mark --mark \(marks.lowerBound + UInt32(i)) -j NFQUEUE --queue-num \(q)\(bypass)")
        }
        // HMARK leaves a packet it cannot hash (an ICMP error too short to quote a header)
        // unmarked: queued by address rather than falling back to the chain that jumped here.
        out.append("-A \(spreadChain) -j \(balance(cfg))")
        return out
    }

    static func safe(_ s: String) -> String {
        String(s.unicodeScalars.map { CharacterSet.alphanumerics.contains($0) || "._-".unicodeScalars.contains($0) ? Character($0) : "_" })
    }

    static func script(_ cfg: Configuration, v6: Bool, sets: inout [PeerSet]) -> String? {
        let peers = cfg.peers.filter { $0.prefix.address.isV6 == v6 }
        guard !peers.isEmpty else { return nil }
        // Peers grouped by their ports; a group larger than setThreshold becomes an ipset.
        var groups: [[UInt16]: [IPPrefix]] = [:]
        for p in peers { groups[p.ports, default: []].append(p.prefix) }
        var setOf: [[UInt16]: PeerSet] = [:]
        var names = Set<String>()
        // Sorted, so that each group's name (its ports' hash, rarely salted) is the same at
        // every load of the same peers.
        for (ports, prefixes) in groups.filter({ $0.value.count > setThreshold }).sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
            var salt: UInt32 = 0
            while !names.insert(PeerSet.name(instance: cfg.instance, v6: v6, ports: ports, salt: salt)).inserted { salt += 1 }
            setOf[ports] = PeerSet(name: PeerSet.name(instance: cfg.instance, v6: v6, ports: ports, salt: salt), v6: v6, ports: ports,
                                   members: prefixes.map(\.description))
        }
        let target = target(cfg)
        let chains = chains(cfg.mode)
        var out = ["*\(table)"]
        for (_, c) in chains { out.append(":\(c) - [0:0]") }
        let spread = spreadRules(cfg)
        if !spread.isEmpty { out.append(":\(spreadChain) - [0:0]") }
        for (builtin, c) in chains { out.append("-I \(builtin) 1 -m comment --comment \(comment) -j \(c)") }
        // The chains for the segments toward the peer (egress) and from it (ingress).
        let egress = cfg.mode == .host ? "TCPAOD-OUT" : "TCPAOD-FWD"
        let ingress = cfg.mode == .host ? "TCPAOD-IN" : "TCPAOD-FWD"
        // Host mode leaves the loopback interface alone unless protect-loopback: a peer prefix
        // that covers the host's own addresses would otherwise queue its local connections
        // too. (Forwarded traffic never crosses lo, so FORWARD needs no such match.)
        let skipLoopback = cfg.mode == .host && !cfg.protectLoopback
        let notOutLo = skipLoopback ? " ! -o lo" : "", notInLo = skipLoopback ? " ! -i lo" : ""
        if cfg.flowState == .conntrack {
            // Counter only (no -j): reserves label space and keeps conntrack active (above).
            for (_, c) in chains {
                out.append("-A \(c) -p tcp -m connlabel --label \(cfg.conntrackLabelOffset) -m comment --comment \"\(labelComment)\"")
            }
        }
        // Gateway mode with protected-prefixes: only between the protected hosts and the peer.
        let locals: [String?] = cfg.mode == .gateway && !cfg.protectedPrefixes.isEmpty
            ? cfg.protectedPrefixes.filter { $0.address.isV6 == v6 }.map { "\($0)" } : [nil]
        var setDone = Set<[UInt16]>()
        for p in peers {
            var portMatches = [""]
            if !p.ports.isEmpty {
                // multiport takes at most 15 ports per rule; --ports matches source or destination.
                portMatches = stride(from: 0, to: p.ports.count, by: 15).map { i in
                    " -m multiport --ports " + p.ports[i..<min(i + 15, p.ports.count)].map(String.init).joined(separator: ",")
                }
            }
            // A peer of a large group: its set's rules, once, where the group's first peer is.
            let set = setOf[p.ports]
            if set != nil && !setDone.insert(p.ports).inserted { continue }
            let note = set.map { " -m comment --comment \"tcpaod peers in set \($0.name)\"" } ?? " -m comment --comment \"tcpaod peer \(safe(p.name))\""
            let toPeer = set.map { " -m set --match-set \($0.name) dst" } ?? " -d \(p.prefix)"
            let fromPeer = set.map { " -m set --match-set \($0.name) src" } ?? " -s \(p.prefix)"
            for local in locals {
                let from = local.map { " -s \($0)" } ?? "", to = local.map { " -d \($0)" } ?? ""
                for pm in portMatches {
                    out.append("-A \(egress)\(notOutLo)\(from)\(toPeer) -p tcp\(pm)\(note) -j \(target)")
                    out.append("-A \(ingress)\(notInLo)\(fromPeer)\(to) -p tcp\(pm)\(note) -j \(target)")
                }
            }
        }
        sets += peers.compactMap { setDone.contains($0.ports) ? setOf[$0.ports] : nil }.reduce(into: [PeerSet]()) { acc, s in
            if !acc.contains(where: { $0.name == s.name }) { acc.append(s) }
        }
        if peers.contains(where: \.dropICMPHardErrors) {
            // ICMP errors may come from any router on the path; the engine looks at the TCP
            // segment they quote and drops them only for synchronized protected connections.
            let codes = v6 ? ["1/1", "1/4"] : ["3/2", "3/3", "3/4"]
            for c in codes {
                let m = v6 ? "-p ipv6-icmp -m icmp6 --icmpv6-type \(c)" : "-p icmp -m icmp --icmp-type \(c)"
                out.append("-A \(ingress)\(notInLo) \(m) -m comment --comment \"tcpaod icmp hard error\" -j \(target)")
            }
        }
        out += spread
        out.append("COMMIT")
        return out.joined(separator: "\n") + "\n"
    }
}

/// A group of peers of one family that share their ports, matched by one ipset of type
/// hash:net (`-m set --match-set NAME dst|src`): the kernel finds a segment's peer by a hash
/// lookup per prefix length, not by walking one rule pair per peer.
///
/// Names: `tcpaod[-INSTANCE]-4|6-HASH` (HASH: 8 hex digits of the ports), at most 29 characters
/// (ipset's limit is 31; an in-place update fills `NAME-n` and swaps it in). An instance name
/// longer than 11 characters is itself replaced by a hash. ipsets belong to their network
/// namespace, as the chains do; instances in one namespace differ by name.
public struct PeerSet: Sendable, Equatable {
    public var name: String
    public var v6: Bool
    public var ports: [UInt16]
    /// The peers' prefixes, as ipset reads them.
    public var members: [String]

    /// The name of the set filled beside the live one and swapped in (`ipset swap`).
    public var swapName: String { name + "-n" }

    static func fnv(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var h: UInt32 = 0x811C_9DC5
        for b in bytes { h = (h ^ UInt32(b)) &* 0x0100_0193 }
        return h
    }

    static func hex8(_ v: UInt32) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 8 - s.count) + s
    }

    /// The instance's part of its set names ("" for the default instance).
    static func instancePart(_ instance: String) -> String {
        if instance.isEmpty { return "" }
        return "-" + (instance.count <= 11 ? instance : "h" + hex8(fnv(instance.utf8)))
    }

    public static func name(instance: String, v6: Bool, ports: [UInt16], salt: UInt32 = 0) -> String {
        var bytes: [UInt8] = []
        for p in ports { bytes += [UInt8(p >> 8), UInt8(p & 0xFF)] }
        if salt > 0 { bytes += [0xFF, UInt8(truncatingIfNeeded: salt), UInt8(truncatingIfNeeded: salt >> 8)] }
        return "tcpaod" + instancePart(instance) + (v6 ? "-6-" : "-4-") + hex8(fnv(bytes))
    }

    /// Whether `name` is one of `instance`'s sets (live or being swapped in), and only its:
    /// another instance's names differ in the part between `tcpaod` and the family.
    public static func belongs(_ name: String, to instance: String) -> Bool {
        let head = "tcpaod" + instancePart(instance) + "-"
        guard name.hasPrefix(head) else { return false }
        var rest = Substring(name.dropFirst(head.count))
        if rest.hasSuffix("-n") { rest = rest.dropLast(2) }
        let u = Array(rest.utf8)
        guard u.count == 10, u[0] == 0x34 || u[0] == 0x36, u[1] == 0x2D else { return false }
        return u[2...].allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    /// `ipset restore` lines that make `setName` hold exactly the members (created empty here).
    public func fill(_ setName: String) -> [String] {
        var hashsize = 1024
        while hashsize < members.count { hashsize <<= 1 }
        var out = ["create \(setName) hash:net family \(v6 ? "inet6" : "inet") hashsize \(hashsize) maxelem \(max(65536, members.count))"]
        out.reserveCapacity(members.count + 1)
        for m in members { out.append("add \(setName) \(m)") }
        return out
    }

    /// For people: "50000 IPv6 peers share ports [830, 179]" (or "[all]").
    public var summary: String {
        "\(members.count) \(v6 ? "IPv6" : "IPv4") peers share ports [\(ports.isEmpty ? "all" : ports.map(String.init).joined(separator: ", "))]"
    }

    /// Whether the ipset tool is where `Firewall.run` finds it (PATH, or the sbin directories).
    public static var toolInstalled: Bool {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "") + ":/usr/sbin:/sbin:/usr/bin:/bin"
        return path.split(separator: ":").contains { access("\($0)/ipset", X_OK) == 0 }
    }

    /// What to tell the operator when the tool is missing.
    public var missingToolMessage: String {
        "\(summary): tcpaod uses an ipset (\(name)) for them; install the ipset package (apt-get install ipset)"
    }
}

/// Installs and removes the rules with the iptables tools (nf_tables or legacy back end).
public struct Firewall: Sendable {
    public var backend: FirewallBackend
    /// Whose ipsets these are (`PeerSet.belongs`): a stop removes this instance's sets only.
    public var instance: String

    public init(backend: FirewallBackend, instance: String = "") {
        self.backend = backend
        self.instance = instance
    }

    func tool(_ v6: Bool, restore: Bool) -> String {
        let base = v6 ? "ip6tables" : "iptables"
        let mid = backend == .iptables ? "" : (backend == .iptablesNft ? "-nft" : "-legacy")
        return base + mid + (restore ? "-restore" : "")
    }

    struct Failure: Error, CustomStringConvertible { var description: String }

    @discardableResult
    static func run(_ tool: String, _ args: [String], input: String? = nil) -> (Int32, String) {
        Subprocess.run(tool, args, input: input)
    }

    /// Installs `rules`, taking over in place whatever an earlier run left (issue 10): the
    /// caller has bound its queues already, so the moment the new rules are in, a live process
    /// answers them. Per family:
    /// * tcpaod's chains or jumps exist (an earlier run was killed, or stopped for a restart):
    ///   one `iptables-restore --noflush` transaction declares (flushes) and refills the chains
    ///   and keeps exactly one jump each, so no segment passes unqueued at any moment; the other
    ///   mode's chains, and a family that no longer has peers, are removed only after every
    ///   family's new rules are in. If the kernel refuses the new rules it keeps the old ones
    ///   (the transaction is atomic): protected traffic stays blocked (fail closed).
    /// * nothing of tcpaod's exists: installed whole; on failure nothing of tcpaod's stays.
    ///
    /// The ipsets the rules match are made to hold their members first: a set that exists (an
    /// earlier run's, still matched by its rules) gets its new members by `ipset swap` with a
    /// set filled beside it, so the running rules never see a half-filled set; the old members
    /// stay in the swapped-out set until the rules are in, and go back should they be refused.
    /// Sets of this instance that the new rules do not use go once nothing matches them.
    public func install(_ rules: RuleSet) throws {
        let sets = try prepareSets(rules.sets)
        do { try installRules(rules) } catch {
            rollBack(sets)
            throw error
        }
        commit(sets)
        removeSets(keeping: Set(rules.sets.map(\.name)))
    }

    func installRules(_ rules: RuleSet) throws {
        var fresh: [Bool] = [], cleanups: [(Bool, String)] = []
        for (v6, script) in [(false, rules.v4), (true, rules.v6)] {
            let listing = Firewall.run(tool(v6, restore: false), ["-w", "-t", RuleSet.table, "-S"])
            // An unreadable table (no such tool, no ip6tables support) with no rules wanted is
            // nothing to take over; with rules wanted the restore below says what is wrong.
            let state = listing.0 == 0 ? FirewallState(listing: listing.1) : FirewallState()
            if let script {
                if state.isEmpty {
                    if let e = restore(v6, script) { fresh.forEach { remove(v6: $0) }; remove(v6: v6); throw e }
                    fresh.append(v6)
                } else {
                    if let e = restore(v6, RuleSet.takeover(script, existing: state)) {
                        fresh.forEach { remove(v6: $0) }
                        throw Failure(description: "\(e) (the rules of the earlier run stay in place: protected traffic is dropped until tcpaod runs)")
                    }
                }
            }
            let keep = script == nil ? [] : RuleSet.chainNames(in: script!)
            if let c = RuleSet.cleanup(existing: state, keeping: keep) { cleanups.append((v6, c)) }
        }
        for (v6, c) in cleanups where restore(v6, c) != nil { remove(v6: v6, keeping: v6 ? rules.v6 : rules.v4) }
    }

    /// Replaces the running rules `old` by `new` without a moment unprotected: where a family
    /// keeps rules, one `iptables-restore --noflush` transaction flushes and refills tcpaod's
    /// chains (declaring a chain flushes it) and leaves the jumps in place. A family that gains
    /// rules gets them whole; one that loses them has its chains removed. When a restore fails
    /// the kernel keeps what it had (the transaction is atomic), and so does this family.
    /// The ipsets are updated as by `install`: swapped in before the rules change, swapped back
    /// if the rules are refused, and those no longer used removed after.
    public func replace(_ old: RuleSet, with new: RuleSet) throws {
        let sets = try prepareSets(new.sets)
        do { try replaceRules(old, with: new) } catch {
            rollBack(sets)
            throw error
        }
        commit(sets)
        removeSets(keeping: Set(new.sets.map(\.name)))
    }

    func replaceRules(_ old: RuleSet, with new: RuleSet) throws {
        for (v6, before, after) in [(false, old.v4, new.v4), (true, old.v6, new.v6)] {
            switch (before, after) {
            case (.some, .some(let script)):
                let body = script.split(separator: "\n", omittingEmptySubsequences: false)
                    .filter { !$0.hasPrefix("-I ") }.joined(separator: "\n")
                if let e = restore(v6, body) { throw e }
            case (.none, .some(let script)):
                if let e = restore(v6, script) { throw e }
            case (.some, .none):
                remove(v6: v6)
            case (.none, .none):
                break
            }
        }
    }

    private func restore(_ v6: Bool, _ script: String) -> Failure? {
        let (rc, out) = Firewall.run(tool(v6, restore: true), ["--noflush", "--wait"], input: script)
        guard rc != 0 else { return nil }
        let hint = rc == 127 ? " (is the iptables package installed?)" : ""
        return Failure(description: "\(tool(v6, restore: true)) refused tcpaod's rules\(hint): \(out)")
    }

    /// Removes tcpaod's jumps and chains, whatever is there; absent ones are fine. Then this
    /// instance's ipsets, which nothing matches any more.
    public func remove() {
        remove(v6: false)
        remove(v6: true)
        removeSets(keeping: [])
    }

    // MARK: ipsets

    /// What `prepareSets` did, to be committed or rolled back once the rules are (or are not) in.
    struct SetUpdate {
        /// Sets made new (no rule matched them yet).
        var created: [String] = []
        /// (live set, swap set): the live set has the new members, the swap set the old ones.
        var swapped: [(live: String, old: String)] = []
    }

    /// This namespace's ipset names; nil when the ipset tool cannot be run.
    func ipsetNames() -> Set<String>? {
        let (rc, out) = Firewall.run("ipset", ["list", "-n"])
        guard rc == 0 else { return nil }
        return Set(out.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) })
    }

    /// Makes each set hold exactly its members: a new set is created and filled; an existing
    /// one (matched by running rules) gets a filled twin swapped in, atomically (`ipset swap`
    /// exchanges the two sets under their names; rules follow the name's set). One `ipset
    /// restore` per set, so a failure is known to be that set's, and what came before is undone.
    func prepareSets(_ sets: [PeerSet]) throws -> SetUpdate {
        var u = SetUpdate()
        guard !sets.isEmpty else { return u }
        guard let existing = ipsetNames() else {
            let (rc, out) = Firewall.run("ipset", ["list", "-n"])
            if rc == 127 || !PeerSet.toolInstalled { throw Failure(description: sets[0].missingToolMessage) }
            throw Failure(description: "`ipset list -n` failed (\(out)); \(sets[0].summary): tcpaod needs an ipset for them (is the kernel's ip_set support there?)")
        }
        for set in sets {
            var lines: [String] = []
            if existing.contains(set.swapName) { lines.append("destroy \(set.swapName)") } // left by an interrupted update
            let swap = existing.contains(set.name)
            if swap {
                lines += set.fill(set.swapName)
                lines.append("swap \(set.swapName) \(set.name)")
            } else {
                lines += set.fill(set.name)
            }
            let (rc, out) = Firewall.run("ipset", ["restore"], input: lines.joined(separator: "\n") + "\n")
            if rc != 0 {
                // ipset restore stops at the first failing line: the swap (the last) did not happen.
                Firewall.run("ipset", ["destroy", swap ? set.swapName : set.name])
                rollBack(u)
                throw Failure(description: "ipset refused the set \(set.name) (\(set.summary)): \(out)")
            }
            if swap { u.swapped.append((set.name, set.swapName)) } else { u.created.append(set.name) }
        }
        return u
    }

    /// The rules were not changed: the swapped sets get their old members back, the new sets go.
    func rollBack(_ u: SetUpdate) {
        for (live, old) in u.swapped {
            Firewall.run("ipset", ["swap", old, live])
            Firewall.run("ipset", ["destroy", old])
        }
        for name in u.created { Firewall.run("ipset", ["destroy", name]) }
    }

    /// The rules are in: the old members (now in the swap sets, matched by nothing) go.
    func commit(_ u: SetUpdate) {
        for (_, old) in u.swapped { Firewall.run("ipset", ["destroy", old]) }
    }

    /// Destroys this instance's sets not in `keeping` (no rule matches them any more; the
    /// kernel refuses to destroy a set still in use, which then stays). Nothing when the ipset
    /// tool is not installed: then no tcpaod made a set here.
    func removeSets(keeping: Set<String>) {
        guard let names = ipsetNames() else { return }
        for n in names.sorted() where PeerSet.belongs(n, to: instance) && !keeping.contains(n) {
            Firewall.run("ipset", ["destroy", n])
        }
    }

    /// Removes this family's tcpaod chains, except those `keeping`'s script declares.
    func remove(v6: Bool, keeping: String? = nil) {
        let t = tool(v6, restore: false)
        let keep = keeping.map(RuleSet.chainNames(in:)) ?? []
        for (builtin, chain) in RuleSet.allChains where !keep.contains(chain) {
            // Every jump to the chain (up to 16, should several runs have left one each).
            for _ in 0..<16 {
                let (rc, _) = Firewall.run(t, ["-w", "-t", RuleSet.table, "-D", builtin, "-m", "comment", "--comment", RuleSet.comment, "-j", chain])
                if rc != 0 { break }
            }
            Firewall.run(t, ["-w", "-t", RuleSet.table, "-F", chain])
            Firewall.run(t, ["-w", "-t", RuleSet.table, "-X", chain])
        }
        // The spread chain, once no chain refers to it (with chains kept, it stays if declared).
        if !keep.contains(RuleSet.spreadChain) {
            Firewall.run(t, ["-w", "-t", RuleSet.table, "-F", RuleSet.spreadChain])
            Firewall.run(t, ["-w", "-t", RuleSet.table, "-X", RuleSet.spreadChain])
        }
    }
}

/// What of tcpaod's is in a family's mangle table now, from `iptables -t mangle -S`.
public struct FirewallState: Sendable, Equatable {
    /// tcpaod chains that exist.
    public var chains: Set<String> = []
    /// tcpaod chain -> how many of tcpaod's jumps (`-m comment --comment tcpaod -j CHAIN` in
    /// the chain's built-in chain) lead to it.
    public var jumps: [String: Int] = [:]

    public init() {}

    public init(listing: String) {
        for line in listing.split(separator: "\n").map({ $0.trimmingCharacters(in: .whitespaces) }) {
            for (builtin, chain) in RuleSet.allChains {
                if line == "-N \(chain)" { chains.insert(chain) }
                if line == "-A \(builtin) -m comment --comment \(RuleSet.comment) -j \(chain)" { jumps[chain, default: 0] += 1 }
            }
            if line == "-N \(RuleSet.spreadChain)" { chains.insert(RuleSet.spreadChain) }
        }
    }

    public var isEmpty: Bool { chains.isEmpty && jumps.values.allSatisfy { $0 == 0 } }
}

extension RuleSet {
    static func jump(_ builtin: String, _ chain: String) -> String { "-m comment --comment \(comment) -j \(chain)" }

    /// The tcpaod chains a script declares.
    static func chainNames(in script: String) -> Set<String> {
        Set(script.split(separator: "\n").compactMap { l in
            l.hasPrefix(":TCPAOD-") ? String(l.dropFirst().prefix { $0 != " " }) : nil
        })
    }

    /// `script` (a family's rules as `init` makes them) rewritten to take over `existing` in one
    /// transaction: declaring a chain flushes it (or creates it), so the chains are refilled; a
    /// jump already there is kept rather than inserted again, and surplus copies (several runs
    /// each inserted one) are deleted, so exactly one jump per chain is left.
    public static func takeover(_ script: String, existing: FirewallState) -> String {
        var out: [String] = []
        for line in script.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
            guard line.hasPrefix("-I "), let chain = line.split(separator: " ").last.map(String.init),
                  let builtin = line.split(separator: " ").dropFirst().first.map(String.init) else {
                out.append(line)
                continue
            }
            let n = existing.jumps[chain] ?? 0
            if n == 0 { out.append(line) }
            for _ in 0..<max(0, n - 1) { out.append("-D \(builtin) \(jump(builtin, chain))") }
        }
        return out.joined(separator: "\n")
    }

    /// The transaction that removes tcpaod's chains not in `keeping` (another mode's, from an
    /// earlier run; or all of a family that no longer has peers): their jumps, then the chains.
    /// nil when there is nothing to remove.
    public static func cleanup(existing: FirewallState, keeping: Set<String>) -> String? {
        // The spread chain last: the others refer to it.
        let gone = chainNames.filter { !keeping.contains($0) && existing.chains.contains($0) }
        var out = ["*\(table)"] + gone.map { ":\($0) - [0:0]" } // flushed, so that they can be deleted
        for (builtin, chain) in allChains where !keeping.contains(chain) {
            for _ in 0..<(existing.jumps[chain] ?? 0) { out.append("-D \(builtin) \(jump(builtin, chain))") }
        }
        out += gone.map { "-X \($0)" }
        guard out.count > 1 else { return nil }
        out.append("COMMIT")
        return out.joined(separator: "\n") + "\n"
    }
}

/// Stop or restart: whether tcpaod's rules go when the daemon stops (issue 10).
///
/// A deliberate stop removes the rules (unless `on-exit: keep-rules`); a restart must keep them,
/// so that protected traffic is dropped, never sent unsigned, until the next process takes them
/// over. By hand: SIGTERM/SIGINT stop, SIGUSR2 stops for a restart. Under systemd the daemon
/// runs with `--on-exit keep-rules` and never removes them itself; the unit's `ExecStopPost=`
/// (`tcpaod rules --remove-unless-restarting`) decides with `decide`, from what systemd tells
/// it: `$SERVICE_RESULT` (systemd >= 232; Debian 12 has 252) and the unit's job
/// (`systemctl list-jobs`): a `systemctl stop` runs a "stop" job until the unit is inactive, a
/// `systemctl restart` a "restart" job; after a crash no job is queued yet (Restart=on-failure
/// queues one once ExecStopPost is done) and SERVICE_RESULT is not "success".
public enum StopPolicy {
    /// The unit's job as `systemctl list-jobs` shows it.
    public enum Job: Equatable, Sendable {
        /// systemctl answered and the unit has no job.
        case none
        /// "stop", "restart", "start", "try-restart", ...
        case type(String)
        /// systemctl could not be asked (no systemd, no bus).
        case unknown
    }

    public struct Decision: Equatable, Sendable {
        public var removeRules: Bool
        public var reason: String
    }

    /// Removes the rules only when sure the unit is being stopped; keeps them (fail closed)
    /// whenever a restart follows or it cannot tell.
    public static func decide(onExit: ExitPolicy, serviceResult: String?, job: Job) -> Decision {
        if onExit == .keepRules {
            return Decision(removeRules: false, reason: "on-exit: keep-rules")
        }
        switch job {
        case .type("stop"):
            return Decision(removeRules: true, reason: "the unit is being stopped (stop job)")
        case .type(let t):
            return Decision(removeRules: false, reason: "a \(t) job follows (restart): the next tcpaod takes the rules over")
        case .none, .unknown:
            let asked = job == .unknown ? " and systemd could not be asked for the unit's job" : ""
            guard let r = serviceResult, !r.isEmpty else {
                return Decision(removeRules: false, reason: "not run by systemd as ExecStopPost (no SERVICE_RESULT)\(asked); remove them with `tcpaod rules --remove`")
            }
            if r != "success" {
                return Decision(removeRules: false, reason: "the daemon failed (SERVICE_RESULT=\(r)); Restart=on-failure starts it again")
            }
            return Decision(removeRules: false, reason: "the daemon exited without a stop job (SERVICE_RESULT=success)\(asked): cannot tell a stop from a restart; remove them with `tcpaod rules --remove` or use `systemctl stop`")
        }
    }

    /// The type of `unit`'s job in `systemctl list-jobs --no-legend --full` output
    /// (columns: JOB UNIT TYPE STATE).
    public static func job(of unit: String, listJobs output: String) -> Job {
        for line in output.split(separator: "\n") {
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if f.count >= 3, f[1] == unit { return .type(String(f[2])) }
        }
        return .none
    }

    /// Asks systemd for `unit`'s job.
    public static func currentJob(of unit: String) -> Job {
        let (rc, out) = Firewall.run("systemctl", ["list-jobs", "--no-legend", "--full", "--no-pager"])
        return rc == 0 ? job(of: unit, listJobs: out) : .unknown
    }
}

/// Whether `flow-state: conntrack` can be used here, without changing anything: conntrack in
/// the kernel, the connlabel match in the kernel and in the iptables in use.
public enum ConntrackRequirements {
    /// What is missing, each as a plain sentence; empty when everything is there.
    public static func problems(backend: FirewallBackend, needIPv6: Bool = true) -> [String] {
        var out: [String] = []
        let fm = FileManager.default
        let release = kernelRelease()
        // A module is there when loaded (/sys/module), built in, or installed (modules.dep).
        // Under systemd, ExecStartPre loads them (ProtectKernelModules hides /lib/modules).
        func module(_ name: String) -> Bool {
            if fm.fileExists(atPath: "/sys/module/\(name)") { return true }
            for list in ["modules.builtin", "modules.dep"] {
                guard let text = try? String(contentsOfFile: "/lib/modules/\(release)/\(list)", encoding: .utf8) else { continue }
                if text.contains("/\(name).ko") { return true }
            }
            return false
        }
        if !fm.fileExists(atPath: "/proc/sys/net/netfilter/nf_conntrack_max") && !module("nf_conntrack") {
            out.append("the kernel has no connection tracking (nf_conntrack is neither loaded nor in /lib/modules/\(release))")
        }
        // Registered matches (built in or loaded) are listed per family under /proc/net.
        let registered = ["/proc/net/ip_tables_matches", "/proc/net/ip6_tables_matches"].contains { path in
            ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").contains("connlabel")
        }
        if !registered && !module("xt_connlabel") {
            out.append("the kernel has no connlabel match (not in /proc/net/ip_tables_matches; xt_connlabel is neither loaded nor in /lib/modules/\(release))")
        }
        let fw = Firewall(backend: backend)
        for v6 in needIPv6 ? [false, true] : [false] {
            let t = fw.tool(v6, restore: false)
            let (rc, msg) = Firewall.run(t, ["-m", "connlabel", "--help"])
            if rc != 0 {
                out.append("\(t) does not support -m connlabel (`\(t) -m connlabel --help`: \(msg.split(separator: "\n").last.map(String.init) ?? "exit \(rc)"))")
            }
        }
        return out
    }

    static func kernelRelease() -> String {
        var u = utsname()
        uname(&u)
        return withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// What tcpaod does when conntrack cannot be used.
    public static let fallback = "tcpaod keeps flow state in memory only: connections do not survive a restart of tcpaod"
}
