// What the engine is told by the configuration: the peers with their key chains and
// policies, the flow table's limits, and the snapshot that holds them (replaced on reload).

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
    public var maxAlignedOptionLength: Int { keyChain.longestOptionLength }
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
    /// The peers by prefix: `peerIndex` costs the same with 10 peers or 50,000.
    public let peerTable: PeerTable

    public init(peers: [PeerPolicy], limits: FlowLimits = FlowLimits(), passthrough: Bool = false, protectedPrefixes: [IPPrefix] = []) {
        self.peers = peers
        self.peerTable = PeerTable(peers.map(\.prefix))
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
    /// overlap (the configuration check refuses it), so the first match is the only one; it is
    /// found by a longest-prefix match (`PeerTable`), not a scan of the peers.
    @inline(__always)
    public func peerIndex(remote: IPAddress, ports a: UInt16, _ b: UInt16) -> Int? {
        guard let i = peerTable.peer(for: remote) else { return nil }
        return peers[i].matchesPorts(a, b) ? i : nil
    }

    /// `peerIndex` as a scan of the peers (the reference the table is tested against).
    public func peerIndexByScan(remote: IPAddress, ports a: UInt16, _ b: UInt16) -> Int? {
        for i in peers.indices where peers[i].prefix.contains(remote) {
            return peers[i].matchesPorts(a, b) ? i : nil
        }
        return nil
    }
}
