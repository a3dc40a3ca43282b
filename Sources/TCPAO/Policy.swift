import Synchronization

/// What the engine knows of one configured peer: who it is, which key chain protects it, and
/// the per-peer policies.
public struct PeerPolicy: Sendable {
    public var name: String
    /// The remote side (RFC 5925 3.1's TCP connection identifier, as a prefix).
    public var prefix: IPPrefix
    /// A segment matches when either of its ports is listed; empty means every port.
    public var ports: [UInt16]
    public var keyChain: KeyChain
    /// Lets unsigned segments from the peer through (migration); they are still counted.
    public var acceptKeyMismatch: Bool
    /// RFC 5925 7.8: drop ICMP hard errors for synchronized connections (the default).
    public var dropICMPHardErrors: Bool

    public init(name: String, prefix: IPPrefix, ports: [UInt16] = [], keyChain: KeyChain,
                acceptKeyMismatch: Bool = false, dropICMPHardErrors: Bool = true) {
        self.name = name
        self.prefix = prefix
        self.ports = ports
        self.keyChain = keyChain
        self.acceptKeyMismatch = acceptKeyMismatch
        self.dropICMPHardErrors = dropICMPHardErrors
    }

    @inline(__always)
    public func matchesPorts(_ a: UInt16, _ b: UInt16) -> Bool {
        if ports.isEmpty { return true }
        for p in ports where p == a || p == b { return true }
        return false
    }

    /// The most option space a segment we sign for this peer can need (for MSS clamping).
    public var maxAlignedOptionLength: Int {
        keyChain.keys.map(\.algorithm.alignedOptionLength).max() ?? 16
    }
}

/// Timeouts and limits of the flow table.
public struct FlowLimits: Sendable, Equatable {
    /// Flows kept at most (by one engine; the daemon also bounds all workers together with a
    /// shared `FlowBudget`); new connections beyond it are refused.
    public var maxFlows: Int
    /// Seconds without a segment after which an established flow is forgotten.
    public var idleTimeout: UInt32
    /// Seconds a connection may take to complete its handshake.
    public var handshakeTimeout: UInt32
    /// Seconds state is kept after FIN/FIN or RST, for retransmissions (TIME-WAIT is 60 s on Linux).
    public var linger: UInt32

    public init(maxFlows: Int = 65536, idleTimeout: UInt32 = 86400, handshakeTimeout: UInt32 = 75, linger: UInt32 = 120) {
        self.maxFlows = maxFlows
        self.idleTimeout = idleTimeout
        self.handshakeTimeout = handshakeTimeout
        self.linger = linger
    }
}

/// An immutable configuration snapshot shared by the workers; a reload makes a new one.
public final class EngineConfig: Sendable {
    public let peers: [PeerPolicy]
    public let limits: FlowLimits
    /// Tests and benchmarks: skip all TCP-AO work and accept everything (the I/O ceiling).
    public let passthrough: Bool
    /// Gateway mode: the protected hosts (empty: any). A forwarded segment is egress only from
    /// one of them to a peer, ingress only from a peer to one of them.
    public let protectedPrefixes: [IPPrefix]

    public init(peers: [PeerPolicy], limits: FlowLimits = FlowLimits(), passthrough: Bool = false, protectedPrefixes: [IPPrefix] = []) {
        self.peers = peers
        self.limits = limits
        self.passthrough = passthrough
        self.protectedPrefixes = protectedPrefixes
    }

    @inline(__always)
    public func isProtected(_ a: IPAddress) -> Bool {
        if protectedPrefixes.isEmpty { return true }
        for p in protectedPrefixes where p.contains(a) { return true }
        return false
    }

    /// The peer whose prefix holds `remote` and whose ports match. Peers' prefixes do not
    /// overlap (the configuration check refuses it), so the first match is the only one.
    @inline(__always)
    public func peerIndex(remote: IPAddress, ports a: UInt16, _ b: UInt16) -> Int? {
        for i in peers.indices where peers[i].prefix.contains(remote) {
            return peers[i].matchesPorts(a, b) ? i : nil
        }
        return nil
    }
}

/// A TCP connection as seen from the protected side.
public struct FlowKey: Hashable, Sendable, Codable, CustomStringConvertible {
    public var local: IPAddress
    public var remote: IPAddress
    public var localPort: UInt16
    public var remotePort: UInt16

    public init(local: IPAddress, remote: IPAddress, localPort: UInt16, remotePort: UInt16) {
        self.local = local
        self.remote = remote
        self.localPort = localPort
        self.remotePort = remotePort
    }

    public var description: String {
        let l = local.isV6 ? "[\(local)]" : "\(local)"
        let r = remote.isV6 ? "[\(remote)]" : "\(remote)"
        return "\(l):\(localPort) <-> \(r):\(remotePort)"
    }
}

/// The connections in a synchronized state, across all workers, for RFC 5925 7.8: an ICMP
/// error can reach a different worker than the connection it quotes (a router sent it).
/// Written only when a connection becomes synchronized or ends, never per segment.
public final class SynchronizedFlows: Sendable {
    private let flows = Mutex<Set<FlowKey>>([])

    public init() {}

    public func insert(_ k: FlowKey) { flows.withLock { _ = $0.insert(k) } }
    public func remove(_ k: FlowKey) { flows.withLock { _ = $0.remove(k) } }
    public func contains(_ k: FlowKey) -> Bool { flows.withLock { $0.contains(k) } }
    public var count: Int { flows.withLock { $0.count } }
}

/// The daemon-wide bound on tracked connections, shared by the workers' tables: one worker may
/// hold most flows (NFQUEUE's queue balancing hashes addresses only), yet `max-flows` bounds
/// the sum. Touched when a flow is created or removed, never per segment.
public final class FlowBudget: Sendable {
    public let limit: Int
    private let used = Atomic<Int>(0)

    public init(limit: Int) { self.limit = limit }

    public var count: Int { used.load(ordering: .relaxed) }

    func acquire() -> Bool {
        var cur = used.load(ordering: .relaxed)
        while cur < limit {
            let (exchanged, now) = used.compareExchange(expected: cur, desired: cur + 1, ordering: .relaxed)
            if exchanged { return true }
            cur = now
        }
        return false
    }

    func release() { used.subtract(1, ordering: .relaxed) }
}
