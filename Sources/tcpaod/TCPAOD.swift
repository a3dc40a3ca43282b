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
        // Looks only (files under /proc, /sys, /lib/modules; `iptables -m connlabel --help`).
        switch cfg.flowState {
        case .memory:
            print("  flow state: memory (flow-state: memory): connections do not survive a restart of tcpaod")
        case .conntrack:
            let problems = ConntrackRequirements.problems(backend: cfg.firewall, needIPv6: RuleSet(cfg).v6 != nil)
            if problems.isEmpty {
                let r = cfg.conntrackLabelBitRange
                print("  flow state: conntrack: tcpaod's rules make conntrack active for the protected flows and reserve label space; tcpaod uses label bits \(r.lowerBound)-\(r.upperBound - 1)")
            } else {
                print("  flow state: conntrack CANNOT be used here:")
                for p in problems { print("    - \(p)") }
                print("    so \(ConntrackRequirements.fallback) (set flow-state: memory to say so and silence this)")
            }
        }
    }
}
