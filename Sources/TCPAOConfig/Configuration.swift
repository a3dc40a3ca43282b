import TCPAO

/// Where tcpaod sits: in front of this host's own sockets, or in front of hosts it routes for.
public enum Mode: String, Sendable, CaseIterable {
    /// Protects this host's sockets: rules on OUTPUT (egress) and INPUT (ingress).
    case host
    /// Protects hosts behind this machine: rules on FORWARD; the peer is the far side.
    case gateway
}

/// What happens to the iptables rules when tcpaod stops cleanly.
public enum ExitPolicy: String, Sendable, CaseIterable {
    /// Remove them: protected traffic then flows as plain TCP (the peer will refuse it).
    case removeRules = "remove-rules"
    /// Keep them: with nobody reading the queues the kernel drops protected traffic (fail closed).
    case keepRules = "keep-rules"
}

/// Where a flow's TCP-AO state (ISNs, SNEs, KeyIDs) is kept.
public enum FlowStateMode: String, Sendable, CaseIterable {
    /// Also in the kernel's conntrack entry of the connection (123 bits of its conntrack label), so
    /// it outlives a restart of tcpaod and can be replicated (conntrackd). tcpaod's rules make
    /// conntrack active for the protected flows and reserve label space. Falls back to
    /// `memory` (logged) where conntrack or the connlabel match cannot be used.
    case conntrack
    /// Only in tcpaod's memory: connections do not survive a restart of tcpaod.
    case memory
}

/// Which iptables front end installs the rules.
public enum FirewallBackend: String, Sendable, CaseIterable {
    /// `iptables-restore` / `ip6tables-restore` as the system's alternatives select them.
    case iptables
    /// The nf_tables back end explicitly (`iptables-nft-restore`).
    case iptablesNft = "iptables-nft"
    /// The legacy x_tables back end explicitly (`iptables-legacy-restore`).
    case iptablesLegacy = "iptables-legacy"
}

/// How the rules spread connections over the queues (workers) when `threads` > 1.
public enum QueueSpread: String, Sendable, CaseIterable {
    /// By the two addresses only (`NFQUEUE --queue-balance`, the default): every connection
    /// between the same two hosts lands on one queue; a fleet of peers spreads well.
    case addresses
    /// By connection, ports included, both directions of a connection on one queue: the kernel's
    /// HMARK target hashes the 5-tuple symmetrically into a mark, one NFQUEUE rule per mark, so
    /// the connections between one pair of hosts use every queue. Packets that carry a mark
    /// already keep it and are spread by address, so a connection's packets must be marked in
    /// both directions or in neither; tcpaod's verdict gives the others back mark 0. Falls back
    /// to `addresses` (logged) where the kernel has no HMARK.
    case connection
}

/// A loaded and checked configuration.
public struct Configuration: Sendable {
    public var file: String
    public var mode: Mode = .host
    /// First NFQUEUE number; workers use queue ..< queue + threads.
    public var queue: UInt16 = 100
    public var threads: Int = 2
    /// `--queue-bypass`: traffic flows unprotected when tcpaod is not running. Off by default.
    public var queueBypass = false
    public var onExit: ExitPolicy = .removeRules
    public var flowState: FlowStateMode = .conntrack
    public var queueSpread: QueueSpread = .addresses
    /// First of the conntrack label bits tcpaod uses (`conntrackLabelBits` of the 128).
    public var conntrackLabelOffset = 0
    /// Benchmark reference: same I/O path, no TCP-AO work.
    public var passthrough = false
    public var limits = FlowLimits()
    public var logLevel = "info"
    /// Seconds between counter summaries in the log (0: none).
    public var statsInterval = 60
    /// This daemon's name among several on one host (one per network namespace): its control
    /// socket and default stats file live under `/run/tcpaod/NAME/`. Empty: the default
    /// instance (`/run/tcpaod/control.sock`, `/run/tcpaod/stats.json`).
    public var instance = ""
    /// `stats-file` as written in the file (nil: the instance's default).
    public var statsFileSetting: String? = nil
    /// Where `tcpaod stats` finds the running daemon's counters: `stats-file`, else the
    /// instance's default.
    public var statsFile: String {
        get { statsFileSetting ?? RuntimePaths(instance: instance).statsFile }
        set { statsFileSetting = newValue }
    }
    public var firewall: FirewallBackend = .iptables
    /// Gateway mode: the hosts this gateway protects. Only segments from them toward a peer are
    /// signed, only segments from a peer toward them are verified; empty means any address.
    public var protectedPrefixes: [IPPrefix] = []
    /// Host mode: also queue TCP over the loopback interface. Off by default: connections
    /// between this host's own sockets do not need TCP-AO, and a peer prefix that covers the
    /// host's own addresses (0.0.0.0/0, ::/0) would otherwise queue them too, which stalls
    /// loopback bulk transfers.
    public var protectLoopback = false
    public var keyChains: [KeyChain] = []
    public var peers: [PeerPolicy] = []
    /// `metrics`: where tcpaod serves Prometheus metrics (nil: nowhere). Changes on restart only.
    public var metrics: MetricsSettings? = nil

    public init(file: String) { self.file = file }

    /// conntrack label bits used per flow (`FlowLabel`'s layout: two ISNs, two 16-bit SNEs,
    /// their sequence-space quarters, current_key, the peer's RNextKeyID, the MSS room).
    public static let conntrackLabelBits = FlowLabel.bitCount
    /// The label bits tcpaod owns.
    public var conntrackLabelBitRange: Range<Int> { conntrackLabelOffset ..< conntrackLabelOffset + Configuration.conntrackLabelBits }

    public var queues: ClosedRange<UInt16> { queue...UInt16(clamping: Int(queue) + threads - 1) }

    /// `max-flows` bounds the whole daemon: each worker's table may hold that many (queue
    /// balancing can put most flows on one worker) and a shared `FlowBudget` bounds the sum.
    public func engineConfig() -> EngineConfig {
        EngineConfig(peers: peers, limits: limits, passthrough: passthrough, protectedPrefixes: protectedPrefixes)
    }

    /// Every MKT of every chain.
    public var allKeys: [MKT] { keyChains.flatMap(\.keys) }
}

/// Where a tcpaod instance keeps its runtime files. The default instance (name "" or
/// "default") uses /run/tcpaod/control.sock and /run/tcpaod/stats.json, as before instances
/// existed; instance NAME uses /run/tcpaod/NAME/control.sock and /run/tcpaod/NAME/stats.json.
public struct RuntimePaths: Sendable, Equatable {
    public static let base = "/run/tcpaod"
    /// "" for the default instance.
    public let instance: String

    public init(instance: String) {
        self.instance = RuntimePaths.normalized(instance)
    }

    public var isDefault: Bool { instance.isEmpty }
    /// The instance's name for messages.
    public var displayName: String { isDefault ? "default" : instance }
    public var directory: String { isDefault ? RuntimePaths.base : RuntimePaths.base + "/" + instance }
    public var controlSocket: String { directory + "/control.sock" }
    public var statsFile: String { directory + "/stats.json" }

    /// "default" is the default instance's name too.
    public static func normalized(_ name: String) -> String { name == "default" ? "" : name }

    /// Why `name` cannot name an instance (nil: it can). A directory name under /run/tcpaod:
    /// 1 to 32 letters, digits, `.`, `_`, `-`, starting with a letter or digit.
    public static func problem(_ name: String) -> String? {
        if name.isEmpty { return "an instance name cannot be empty" }
        if name.utf8.count > 32 { return "`\(name)` is longer than 32 characters" }
        let ok = name.unicodeScalars.allSatisfy { c in
            (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || c == "." || c == "_" || c == "-"
        }
        guard ok, let f = name.unicodeScalars.first, f != ".", f != "-", f != "_" else {
            return "`\(name)` is not an instance name: use letters, digits, `.`, `_` and `-`, starting with a letter or digit"
        }
        return nil
    }
}

/// `metrics: { listen: ADDRESS:PORT }`: an HTTP listener answering `GET /metrics` with the
/// Prometheus text format.
public struct MetricsSettings: Sendable, Equatable {
    public var listen: ListenAddress

    public init(listen: ListenAddress) { self.listen = listen }
}

/// An IP address and a TCP port to listen on: `127.0.0.1:9477`, `[::1]:9477`, `0.0.0.0:9477`,
/// `[::]:9477`. Addresses only: a host name is not resolved.
public struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    public var address: IPAddress
    public var port: UInt16

    public init(address: IPAddress, port: UInt16) {
        self.address = address
        self.port = port
    }

    public var description: String { address.isV6 ? "[\(address)]:\(port)" : "\(address):\(port)" }

    /// Why a text is not a listen address, and what to write instead.
    public struct Problem: Error, Equatable, CustomStringConvertible {
        public var message: String
        public var fix: String
        public var description: String { "\(message) (fix: \(fix))" }
    }

    static let example = "write it like 127.0.0.1:9477, or \"[::1]:9477\" (quoted: YAML) for IPv6"

    /// Parses `ADDRESS:PORT` (an IPv6 address in brackets); port 1 to 65535.
    public static func parse(_ text: String) -> Result<ListenAddress, Problem> {
        let host: Substring, portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else {
                return .failure(Problem(message: "`\(text)` has no closing `]`", fix: example))
            }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.first == ":" else {
                return .failure(Problem(message: "`\(text)` has no port after the address", fix: example))
            }
            portText = rest.dropFirst()
            guard let a = IPAddress(host), a.isV6 else {
                return .failure(Problem(message: "`\(host)` is not an IPv6 address", fix: example))
            }
            return port(portText, text).map { ListenAddress(address: a, port: $0) }
        }
        guard let colon = text.lastIndex(of: ":") else {
            return .failure(Problem(message: "`\(text)` has no port", fix: example))
        }
        host = text[..<colon]
        portText = text[text.index(after: colon)...]
        if host.contains(":") {
            return .failure(Problem(message: "`\(text)`: an IPv6 address needs brackets around it", fix: "write it like \"[::1]:9477\" (quoted: YAML)"))
        }
        guard let a = IPAddress(host), !a.isV6 else {
            return .failure(Problem(message: "`\(host)` is not an IP address (host names are not resolved)", fix: example))
        }
        return port(portText, text).map { ListenAddress(address: a, port: $0) }
    }

    private static func port(_ s: Substring, _ text: String) -> Result<UInt16, Problem> {
        guard let v = Int(s), (1...65535).contains(v) else {
            return .failure(Problem(message: "`\(s)` in `\(text)` is not a port: use a number from 1 to 65535", fix: example))
        }
        return .success(UInt16(v))
    }
}
