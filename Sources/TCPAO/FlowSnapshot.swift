// Read-only views of an engine's flows for the control interface (`tcpaod flows`, `keys`).
// Never on the packet path: the daemon calls these between batches, a bounded chunk at a time.
// No key material: traffic keys and MAC contexts stay in the table.

/// One connection as `tcpaod flows` shows it: a copy, consistent for this flow at the moment
/// it was taken. Plain values only (copying thousands costs no reference counting).
public struct FlowInfo: Sendable, Equatable {
    public var key: FlowKey
    /// The peer's index in the configuration the engine had when the copy was taken.
    public var peer: Int
    public var phase: FlowState.Phase
    /// Monotonic seconds: when the engine started tracking it (created or restored after a
    /// restart), and its last segment.
    public var createdAt: UInt32
    public var lastSeen: UInt32
    public var localISN: UInt32?
    public var remoteISN: UInt32?
    /// The SNEs of the two directions' highest sequence numbers (RFC 5925 6.2).
    public var sendSNE: UInt32
    public var recvSNE: UInt32
    /// current_key's SendID (the KeyID we sign with), the peer's last RNextKeyID and the KeyID
    /// of its last verified segment (RFC 5925 7.1).
    public var currentSendID: UInt8?
    public var peerRNextKeyID: UInt8?
    public var lastRecvKeyID: UInt8?
    public var signed: UInt64
    public var verified: UInt64
    public var dropped: UInt64
    /// Its state has been written to the conntrack label (flow-state: conntrack).
    public var labelSaved: Bool
    /// The connection's own MKT, if an agent installed one (`installConnectionKey`).
    public var connectionKey: ConnectionKeyInfo?

    public init(key: FlowKey, peer: Int, phase: FlowState.Phase, createdAt: UInt32, lastSeen: UInt32,
                localISN: UInt32? = nil, remoteISN: UInt32? = nil, sendSNE: UInt32 = 0, recvSNE: UInt32 = 0,
                currentSendID: UInt8? = nil, peerRNextKeyID: UInt8? = nil, lastRecvKeyID: UInt8? = nil,
                signed: UInt64 = 0, verified: UInt64 = 0, dropped: UInt64 = 0, labelSaved: Bool = false,
                connectionKey: ConnectionKeyInfo? = nil) {
        self.key = key
        self.peer = peer
        self.phase = phase
        self.createdAt = createdAt
        self.lastSeen = lastSeen
        self.localISN = localISN
        self.remoteISN = remoteISN
        self.sendSNE = sendSNE
        self.recvSNE = recvSNE
        self.currentSendID = currentSendID
        self.peerRNextKeyID = peerRNextKeyID
        self.lastRecvKeyID = lastRecvKeyID
        self.signed = signed
        self.verified = verified
        self.dropped = dropped
        self.labelSaved = labelSaved
        self.connectionKey = connectionKey
    }
}

extension FlowState.Phase {
    /// Stable names for reports.
    public var label: String {
        switch self {
        case .synSent: "syn-sent"
        case .synReceived: "syn-received"
        case .established: "established"
        case .finishing: "finishing"
        case .finished: "finished"
        case .reset: "reset"
        }
    }
}

extension AOEngine {
    /// Copies the live flows among table slots `cursor ..< cursor + slots` (all peers, or only
    /// `peer`, an index in `config.peers`) to `out`. Returns the slot to continue from, or nil
    /// once the table has been walked to its end. Looks at most at `slots` slots, so the
    /// caller bounds the work of one call; a walk in several calls is no atomic snapshot (a
    /// flow created or removed in between may be missed), each flow's copy is consistent.
    public func copyFlows(from cursor: Int, slots: Int, peer: Int? = nil, into out: inout [FlowInfo]) -> Int? {
        let end = min(table.highWater, cursor + max(slots, 1))
        var i = max(cursor, 0)
        while i < end {
            if table.live[i] {
                let p = Int(table.entries[i].peer)
                if peer == nil || peer == p {
                    let st = table.entries[i].state
                    out.append(FlowInfo(
                        key: table.entries[i].key, peer: p, phase: st.phase,
                        createdAt: table.entries[i].createdAt, lastSeen: st.lastSeen,
                        localISN: st.localISN, remoteISN: st.remoteISN, sendSNE: st.sendSNE.sne, recvSNE: st.recvSNE.sne,
                        currentSendID: st.currentSendID, peerRNextKeyID: st.peerRNextKeyID, lastRecvKeyID: st.lastRecvKeyID,
                        signed: table.entries[i].signed, verified: table.entries[i].verified, dropped: table.entries[i].dropped,
                        labelSaved: table.entries[i].savedLabel != nil,
                        connectionKey: table.entries[i].connectionKey.map {
                            ConnectionKeyInfo(sendID: $0.mkt.sendID, recvID: $0.mkt.recvID, algorithm: $0.mkt.algorithm, exclusive: $0.exclusive)
                        }))
                }
            }
            i += 1
        }
        return end < table.highWater ? end : nil
    }
}
