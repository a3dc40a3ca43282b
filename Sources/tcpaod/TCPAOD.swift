import ArgumentParser
import Foundation
import TCPAO
import TCPAOConfig
import TCPAODaemon

@main
struct TCPAOD: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tcpaod",
        abstract: "TCP-AO (RFC 5925) for applications that know nothing about it, through NFQUEUE.",
        discussion: "Exit status: 0 success, 1 the check failed (bad config, failed verification), 2 usage or I/O error.",
        subcommands: subcommandList)

    static var subcommandList: [ParsableCommand.Type] { baseSubcommands + daemonSubcommands }
    static let baseSubcommands: [ParsableCommand.Type] = [Check.self, VerifyPcap.self]
}

/// The current time, for key lifetimes.
func wallClock() -> Int64 { Int64(Date().timeIntervalSince1970) }

/// Prints diagnostics to stderr; returns the configuration or throws exit 1.
func loadConfiguration(_ path: String, purpose: ConfigLoader.Purpose = .daemon, quietWarnings: Bool = false) throws -> Configuration {
    let (cfg, diags) = ConfigLoader.load(path: path, purpose: purpose, now: wallClock())
    for d in diags where d.severity == .error || !quietWarnings { FileHandle.standardError.write(Data((d.description + "\n").utf8)) }
    guard let cfg else {
        FileHandle.standardError.write(Data("tcpaod: \(path): \(diags.errors.count) error(s); nothing was changed\n".utf8))
        throw ExitCode(1)
    }
    return cfg
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a configuration without touching the system.",
        discussion: "Reports every problem with its location (file:line:column, key path) and what would fix it. Exit 0 when there is no error (warnings allowed).")

    @Option(name: .shortAndLong, help: "Configuration file.")
    var config: String

    func run() throws {
        let cfg = try loadConfiguration(config)
        let keys = cfg.keyChains.reduce(0) { $0 + $1.keys.count }
        print("\(config): OK: mode \(cfg.mode.rawValue), queues \(cfg.queues.lowerBound)-\(cfg.queues.upperBound), \(cfg.peers.count) peer(s), \(cfg.keyChains.count) key chain(s), \(keys) key(s)")
        let now = wallClock()
        for p in cfg.peers {
            let chain = p.keyChain
            let send = chain.preferredSendKey(at: now).map { "\(chain.keys[$0])" } ?? "none"
            print("  peer \(p.name): \(p.prefix) ports \(p.ports.isEmpty ? "all" : p.ports.map(String.init).joined(separator: ",")), chain \(chain.name), sends with \(send)")
        }
        for chain in cfg.keyChains {
            for line in Check.schedule(RotationSchedule(chain: chain, now: now), chain) { print("  " + line) }
        }
        // Looks only (files under /proc, /sys, /lib/modules; `iptables -m connlabel --help`).
        switch cfg.flowState {
        case .memory:
            print("  flow state: memory (flow-state: memory): connections do not survive a restart of tcpaod")
        case .conntrack:
            let problems = ConntrackRequirements.problems(backend: cfg.firewall, needIPv6: cfg.peers.contains { $0.prefix.address.isV6 })
            if problems.isEmpty {
                let r = cfg.conntrackLabelBitRange
                print("  flow state: conntrack: tcpaod's rules make conntrack active for the protected flows and reserve label space; tcpaod uses label bits \(r.lowerBound)-\(r.upperBound - 1)")
            } else {
                print("  flow state: conntrack CANNOT be used here:")
                for p in problems { print("    - \(p)") }
                print("    so \(ConntrackRequirements.fallback) (set flow-state: memory to say so and silence this)")
            }
        }
        // Large groups of peers sharing ports are matched by an ipset (RuleSet.setThreshold).
        let sets = RuleSet(cfg).sets
        let ipsetTool = sets.isEmpty || PeerSet.toolInstalled
        for set in sets {
            print(ipsetTool ? "  rules: \(set.summary): matched by the ipset \(set.name) (hash:net), not one rule pair each"
                            : "  rules: \(set.missingToolMessage)")
        }
        if let m = cfg.metrics {
            print("  metrics: http://\(m.listen)/metrics (Prometheus text format; plain HTTP, no authentication)")
        }
    }

    /// Hand-overs printed at most; the rest are counted.
    static let shownHandOvers = 3

    /// The chain's rotation schedule for people, e.g.
    /// `chain dev1: key 1 (SendID 1) sends now, until 2026-12-01T00:00:00Z (in 2 d); then key 2
    /// (SendID 2), with no end; both accepted 2026-11-30T12:00Z–2026-12-01T12:00Z (24 h overlap)`.
    static func schedule(_ s: RotationSchedule, _ chain: KeyChain) -> [String] {
        func key(_ i: Int) -> String { "key \(chain.keys[i].chainKeyID) (SendID \(chain.keys[i].sendID))" }
        func when(_ t: Int64) -> String { "\(RFC3339.format(t)) (\(s.relative(t)))" }
        func accepted(_ h: RotationSchedule.HandOver) -> String {
            guard let b = h.bothAccepted else { return "never both accepted" }
            let from = b.start == .min ? "always" : RotationSchedule.shortDate(b.start)
            if b.end == .max { return b.start == .min ? "both always accepted" : "both accepted from \(from) on" }
            return "both accepted \(from)–\(RotationSchedule.shortDate(b.end)) (\(RotationSchedule.span(h.overlap)) overlap)"
        }
        let accepting = s.acceptEnd == .max ? "accepted with no end" : "the last key accepted until \(when(s.acceptEnd))"
        guard let current = s.current else { return ["chain \(chain.name): no key sends now; \(accepting)"] }
        var lines: [String] = []
        var line = "chain \(chain.name): \(key(current)) sends now"
        guard !s.handOvers.isEmpty else { return [line + ", with no end"] }
        for (n, h) in s.handOvers.enumerated() {
            if n == Check.shownHandOvers, s.handOvers.count > n + 1 {
                let last = s.handOvers[s.handOvers.count - 1]
                let more = s.handOvers.count - n
                lines.append(line)
                if let to = last.to {
                    line = "  ... \(more) more hand-overs, the last to \(key(to)) at \(when(last.at)), with no end"
                } else {
                    line = "  ... \(more - 1) more hand-overs, then no key from \(when(last.at))"
                    line += last.resumes.map { " until \(when($0))" } ?? "; \(accepting)"
                }
                break
            }
            if n == 0 { line += ", until \(when(h.at))" } else { lines.append(line); line = "  then" }
            guard let to = h.to else {
                line += n == 0 ? "; then no key" : " no key from \(when(h.at))"
                line += h.resumes.map { " until \(when($0))" } ?? (n == 0 ? " after that; " : "; ") + accepting
                break
            }
            line += n == 0 ? "; then \(key(to))" : " \(key(to)) from \(when(h.at))"
            if n == s.handOvers.count - 1 { line += ", with no end" }
            line += "; \(accepted(h))"
        }
        lines.append(line)
        return lines
    }
}
