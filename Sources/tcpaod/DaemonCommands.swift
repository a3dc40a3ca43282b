import ArgumentParser
import Foundation
import Logging
import TCPAO
import TCPAOConfig
import TCPAODaemon

extension TCPAOD {
    static let daemonSubcommands: [ParsableCommand.Type] = [Run.self, Rules.self, Stats.self, Status.self, Flows.self, Keys.self, Key.self]
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the TCP-AO gateway in the foreground (logs to stderr).",
        discussion: """
        Binds one NFQUEUE per thread, installs tcpaod's iptables/ip6tables chains (mangle table) sending the \
        configured peers' TCP traffic to them, then signs egress segments and verifies and strips ingress ones. \
        SIGHUP re-reads the configuration (new keys reach running connections through RNextKeyID); SIGTERM or \
        SIGINT removes the rules (unless on-exit: keep-rules) and gives every queued packet its verdict before \
        exiting; SIGUSR2 does the same but keeps the rules, for a restart: protected traffic is dropped, never \
        sent unsigned, until the next `tcpaod run` binds its queues and takes the rules over in place. \
        A bad configuration changes nothing and exits 1.
        """)

    @Option(name: .shortAndLong, help: "Configuration file.")
    var config: String

    @Flag(help: "Do not install or remove iptables rules (the operator manages them; see `tcpaod rules`).")
    var noRules = false

    @Option(help: ArgumentHelp("What SIGTERM/SIGINT do with the rules, overriding the file's on-exit: remove-rules or keep-rules. The systemd unit passes keep-rules and removes them in ExecStopPost unless restarting.", valueName: "policy"))
    var onExit: String?

    @Option(help: ArgumentHelp("This tcpaod's instance name, overriding the file's `instance`: its control socket is /run/tcpaod/NAME/control.sock and its default stats file /run/tcpaod/NAME/stats.json (\"default\": /run/tcpaod/control.sock). One per tcpaod on a host (e.g. per network namespace).", valueName: "name"))
    var instance: String?

    func run() throws {
        var exitPolicy: ExitPolicy?
        if let onExit {
            guard let p = ExitPolicy(rawValue: onExit) else {
                FileHandle.standardError.write(Data("tcpaod: --on-exit \(onExit): write remove-rules or keep-rules\n".utf8))
                throw ExitCode(2)
            }
            exitPolicy = p
        }
        if let instance, instance != "default", let why = RuntimePaths.problem(instance) {
            FileHandle.standardError.write(Data("tcpaod: --instance: \(why)\n".utf8))
            throw ExitCode(2)
        }
        let cfg = try loadConfiguration(config)
        let level = Logger.Level(rawValue: cfg.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let daemon = Daemon(configPath: config, config: cfg, manageRules: !noRules, onExit: exitPolicy, instance: instance, log: Logger(label: "tcpaod"))
        do { try daemon.start() } catch {
            FileHandle.standardError.write(Data("tcpaod: \(error)\n".utf8))
            throw ExitCode(1)
        }
        dispatchMain()
    }
}

struct Rules: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the iptables and ip6tables rules tcpaod would install (iptables-restore --noflush input).",
        discussion: """
        For operators who manage their own rules and run `tcpaod run --no-rules`. With --remove, deletes tcpaod's \
        chains instead (e.g. after on-exit: keep-rules). --remove-unless-restarting is the systemd unit's \
        ExecStopPost: it removes them only when the unit is being stopped (a stop job), and keeps them when a \
        restart follows (a restart job, or the daemon failed and Restart=on-failure starts it again) or when it \
        cannot tell (fail closed).
        """)

    @Option(name: .shortAndLong, help: "Configuration file.")
    var config: String

    @Flag(help: "Remove tcpaod's chains and jumps from the running system.")
    var remove = false

    @Flag(help: "systemd ExecStopPost: remove the rules only if the unit is being stopped, not restarted ($SERVICE_RESULT, systemctl list-jobs).")
    var removeUnlessRestarting = false

    @Option(help: "The systemd unit (with --remove-unless-restarting; the unit file passes %n).")
    var unit = "tcpaod.service"

    func run() throws {
        if removeUnlessRestarting {
            // A configuration that no longer loads: its on-exit is unknown, keep the rules.
            let cfg: Configuration
            do { cfg = try loadConfiguration(config, quietWarnings: true) } catch {
                print("tcpaod: rules kept: \(config) does not load, so whether to keep them is unknown (fail closed); `tcpaod rules --remove` clears them")
                throw error
            }
            let env = ProcessInfo.processInfo.environment
            let d = StopPolicy.decide(onExit: cfg.onExit, serviceResult: env["SERVICE_RESULT"], job: StopPolicy.currentJob(of: unit))
            if d.removeRules { Firewall(backend: cfg.firewall, instance: cfg.instance).remove() }
            print("tcpaod: rules \(d.removeRules ? "removed" : "kept"): \(d.reason) (SERVICE_RESULT=\(env["SERVICE_RESULT"] ?? "-") EXIT_CODE=\(env["EXIT_CODE"] ?? "-") EXIT_STATUS=\(env["EXIT_STATUS"] ?? "-"))")
            return
        }
        let cfg = try loadConfiguration(config, quietWarnings: true)
        if remove {
            Firewall(backend: cfg.firewall, instance: cfg.instance).remove()
            print("tcpaod's chains removed (\(cfg.firewall.rawValue))")
            return
        }
        let r = RuleSet(cfg)
        for set in r.sets {
            print("# \(set.summary): feed to ipset restore before the rules\n" + set.fill(set.name).joined(separator: "\n"))
        }
        if let v4 = r.v4 { print("# IPv4: feed to iptables-restore --noflush\n" + v4) }
        if let v6 = r.v6 { print("# IPv6: feed to ip6tables-restore --noflush\n" + v6) }
    }
}

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the running daemon's counters (per peer, per key, per queue).")

    @Option(name: .shortAndLong, help: "Configuration file (to find the stats file).")
    var config: String?

    @Option(help: "The stats file (default: the configuration's stats-file, else /run/tcpaod/stats.json).")
    var file: String?

    @Option(help: ArgumentHelp("Ask this instance's daemon over its control socket instead of reading a stats file.", valueName: "name"))
    var instance: String?

    @Option(help: ArgumentHelp("Ask the daemon on this control socket instead of reading a stats file.", valueName: "path"))
    var socket: String?

    @Flag(help: "Print the raw JSON.")
    var json = false

    func run() throws {
        let data: Data
        if instance != nil || socket != nil {
            let (answer, _) = try ControlTarget(instance: instance, socket: socket, config: nil).ask(ControlRequest(command: "stats"))
            var w = JSONWriter()
            w.value(answer["stats"] ?? .null)
            data = Data(w.bytes)
        } else {
            var path = file ?? "/run/tcpaod/stats.json"
            if file == nil, let config { path = try loadConfiguration(config, purpose: .daemon, quietWarnings: true).statsFile }
            guard let d = FileManager.default.contents(atPath: path) else {
                FileHandle.standardError.write(Data("tcpaod: no stats at \(path): is tcpaod running?\n".utf8))
                throw ExitCode(2)
            }
            data = d
        }
        if json { print(String(decoding: data, as: UTF8.self)); return }
        let r = try JSONDecoder().decode(StatsReport.self, from: data)
        print("tcpaod pid \(r.pid), mode \(r.mode), up \(r.uptime) s, \(r.reloads) reload(s), \(r.synchronizedFlows) synchronized connection(s)")
        func show(_ d: [String: UInt64], indent: String) {
            for (k, v) in d.sorted(by: { $0.key < $1.key }) where v > 0 { print("\(indent)\(k): \(v)") }
        }
        print("total:")
        show(r.counters.total, indent: "  ")
        for (p, d) in r.counters.peers.sorted(by: { $0.key < $1.key }) {
            print("peer \(p):")
            show(d, indent: "  ")
            for (k, kd) in (r.counters.keys[p] ?? [:]).sorted(by: { $0.key < $1.key }) {
                print("  key \(k): " + kd.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
            }
        }
        for q in r.queues {
            print("queue \(q.queue): packets=\(q.packets) batches=\(q.batches) modified=\(q.modified) dropped=\(q.dropped) enobufs=\(q.enobufs) flows=\(q.flows)")
        }
        for k in r.kernelQueues {
            print("kernel queue \(k.queue): waiting=\(k.queued) queue_dropped=\(k.queueDropped) user_dropped=\(k.userDropped)")
        }
    }
}
