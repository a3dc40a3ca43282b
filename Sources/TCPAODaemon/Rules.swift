import Foundation
import TCPAO
import TCPAOConfig

/// The iptables/ip6tables rules that send the configured peers' TCP traffic (and ICMP hard
/// errors, RFC 5925 7.8) to tcpaod's queues. They live in tcpaod's own chains of the mangle
/// table, jumped to from the first position of the built-in chains: mangle runs before filter,
/// so the operator's filter rules still apply to what tcpaod accepts (an NFQUEUE accept ends
/// the traversal of the table it was given in). In host mode the loopback interface is left
/// out (`! -o lo`, `! -i lo`) unless `protect-loopback: true`.
public struct RuleSet: Sendable, Equatable {
    public static let table = "mangle"
    public static let comment = "tcpaod"
    /// (built-in chain, tcpaod chain) pairs a mode uses.
    public static func chains(_ mode: Mode) -> [(String, String)] {
        mode == .host ? [("OUTPUT", "TCPAOD-OUT"), ("INPUT", "TCPAOD-IN")] : [("FORWARD", "TCPAOD-FWD")]
    }
    public static let allChains: [(String, String)] = chains(.host) + chains(.gateway)

    /// `iptables-restore --noflush` input, or nil when no peer of that family exists.
    public var v4: String?
    public var v6: String?

    public init(_ cfg: Configuration) {
        v4 = RuleSet.script(cfg, v6: false)
        v6 = RuleSet.script(cfg, v6: true)
    }

    static func target(_ cfg: Configuration) -> String {
        var t = cfg.threads == 1 ? "NFQUEUE --queue-num \(cfg.queue)" : "NFQUEUE --queue-balance \(cfg.queues.lowerBound):\(cfg.queues.upperBound)"
        if cfg.queueBypass { t += " --queue-bypass" }
        return t
    }

    static func safe(_ s: String) -> String {
        String(s.unicodeScalars.map { CharacterSet.alphanumerics.contains($0) || "._-".unicodeScalars.contains($0) ? Character($0) : "_" })
    }

    static func script(_ cfg: Configuration, v6: Bool) -> String? {
        let peers = cfg.peers.filter { $0.prefix.address.isV6 == v6 }
        guard !peers.isEmpty else { return nil }
        let target = target(cfg)
        let chains = chains(cfg.mode)
        var out = ["*\(table)"]
        for (_, c) in chains { out.append(":\(c) - [0:0]") }
        for (builtin, c) in chains { out.append("-I \(builtin) 1 -m comment --comment \(comment) -j \(c)") }
        // The chains for the segments toward the peer (egress) and from it (ingress).
        let egress = cfg.mode == .host ? "TCPAOD-OUT" : "TCPAOD-FWD"
        let ingress = cfg.mode == .host ? "TCPAOD-IN" : "TCPAOD-FWD"
        // Host mode leaves the loopback interface alone unless protect-loopback: a peer prefix
        // that covers the host's own addresses would otherwise queue its local connections
        // too. (Forwarded traffic never crosses lo, so FORWARD needs no such match.)
        let skipLoopback = cfg.mode == .host && !cfg.protectLoopback
        let notOutLo = skipLoopback ? " ! -o lo" : "", notInLo = skipLoopback ? " ! -i lo" : ""
        for p in peers {
            var portMatches = [""]
            if !p.ports.isEmpty {
                // multiport takes at most 15 ports per rule; --ports matches source or destination.
                portMatches = stride(from: 0, to: p.ports.count, by: 15).map { i in
                    " -m multiport --ports " + p.ports[i..<min(i + 15, p.ports.count)].map(String.init).joined(separator: ",")
                }
            }
            let note = " -m comment --comment \"tcpaod peer \(safe(p.name))\""
            // Gateway mode with protected-prefixes: only between the protected hosts and the peer.
            let locals: [String?] = cfg.mode == .gateway && !cfg.protectedPrefixes.isEmpty
                ? cfg.protectedPrefixes.filter { $0.address.isV6 == v6 }.map { "\($0)" } : [nil]
            for local in locals {
                let from = local.map { " -s \($0)" } ?? "", to = local.map { " -d \($0)" } ?? ""
                for pm in portMatches {
                    out.append("-A \(egress)\(notOutLo)\(from) -d \(p.prefix) -p tcp\(pm)\(note) -j \(target)")
                    out.append("-A \(ingress)\(notInLo) -s \(p.prefix)\(to) -p tcp\(pm)\(note) -j \(target)")
                }
            }
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
        out.append("COMMIT")
        return out.joined(separator: "\n") + "\n"
    }
}

/// Installs and removes the rules with the iptables tools (nf_tables or legacy back end).
public struct Firewall: Sendable {
    public var backend: FirewallBackend

    public init(backend: FirewallBackend) { self.backend = backend }

    func tool(_ v6: Bool, restore: Bool) -> String {
        let base = v6 ? "ip6tables" : "iptables"
        let mid = backend == .iptables ? "" : (backend == .iptablesNft ? "-nft" : "-legacy")
        return base + mid + (restore ? "-restore" : "")
    }

    struct Failure: Error, CustomStringConvertible { var description: String }

    @discardableResult
    static func run(_ tool: String, _ args: [String], input: String? = nil) -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [tool] + args
        let inPipe = Pipe(), outPipe = Pipe()
        p.standardInput = inPipe
        p.standardOutput = outPipe
        p.standardError = outPipe
        do { try p.run() } catch { return (127, "\(tool): \(error)") }
        if let input { inPipe.fileHandleForWriting.write(Data(input.utf8)) }
        try? inPipe.fileHandleForWriting.close()
        let data = outPipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Installs `rules` after removing any left by an earlier run. On failure nothing of tcpaod's
    /// stays installed.
    public func install(_ rules: RuleSet) throws {
        remove()
        for (v6, script) in [(false, rules.v4), (true, rules.v6)] {
            guard let script else { continue }
            if let e = restore(v6, script) {
                remove()
                throw e
            }
        }
    }

    /// Replaces the running rules `old` by `new` without a moment unprotected: where a family
    /// keeps rules, one `iptables-restore --noflush` transaction flushes and refills tcpaod's
    /// chains (declaring a chain flushes it) and leaves the jumps in place. A family that gains
    /// rules gets them whole; one that loses them has its chains removed. When a restore fails
    /// the kernel keeps what it had (the transaction is atomic), and so does this family.
    public func replace(_ old: RuleSet, with new: RuleSet) throws {
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

    /// Removes tcpaod's jumps and chains, whatever is there; absent ones are fine.
    public func remove() {
        remove(v6: false)
        remove(v6: true)
    }

    func remove(v6: Bool) {
        let t = tool(v6, restore: false)
        for (builtin, chain) in RuleSet.allChains {
            // Every jump to the chain (up to 16, should several runs have left one each).
            for _ in 0..<16 {
                let (rc, _) = Firewall.run(t, ["-w", "-t", RuleSet.table, "-D", builtin, "-m", "comment", "--comment", RuleSet.comment, "-j", chain])
                if rc != 0 { break }
            }
            Firewall.run(t, ["-w", "-t", RuleSet.table, "-F", chain])
            Firewall.run(t, ["-w", "-t", RuleSet.table, "-X", chain])
        }
    }
}
