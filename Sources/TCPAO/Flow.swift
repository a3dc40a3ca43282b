/// Which way a segment travels relative to the protected side: egress segments leave the
/// protected host (we sign them), ingress segments come from the peer (we verify and strip them).
public enum Direction: UInt8, Sendable, Codable {
    case egress, ingress
}

/// Why a segment was dropped. Stable names (`label`) are used for counters and logs.
public enum DropReason: Int, CaseIterable, Sendable, Codable {
    case malformed
    case missingAO
    case unknownKeyID
    case expiredKey
    case badAOLength
    case badMAC
    case noState
    case unexpectedSYNACK
    case noSendKey
    case noOptionSpace
    case aoAlreadyPresent
    case icmpHardError
    case flowTableFull

    public var label: String {
        switch self {
        case .malformed: "malformed"
        case .missingAO: "missing-ao"
        case .unknownKeyID: "unknown-key-id"
        case .expiredKey: "expired-key"
        case .badAOLength: "bad-ao-length"
        case .badMAC: "bad-mac"
        case .noState: "no-state"
        case .unexpectedSYNACK: "unexpected-syn-ack"
        case .noSendKey: "no-send-key"
        case .noOptionSpace: "no-option-space"
        case .aoAlreadyPresent: "ao-already-present"
        case .icmpHardError: "icmp-hard-error"
        case .flowTableFull: "flow-table-full"
        }
    }
}

/// Which traffic key of RFC 5925 5.2 a segment uses: SYN segments (SYN set, ACK not set) use the
/// SYN keys with a zero destination ISN; every other segment uses the "other" keys.
public enum TrafficKeyKind: UInt8, Sendable, Codable {
    case syn, other
}

/// Sign an egress segment: insert TCP-AO with this KeyID/RNextKeyID and MAC it (RFC 5925 7.4).
public struct SignPlan: Sendable, Equatable {
    /// Index of the MKT in the peer's key chain.
    public var mkt: Int
    public var kind: TrafficKeyKind
    public var sne: UInt32
    public var keyID: UInt8
    public var rnextKeyID: UInt8
}

/// Verify an ingress segment with this MKT, traffic key and SNE (RFC 5925 7.5).
public struct VerifyPlan: Sendable, Equatable {
    public var mkt: Int
    public var kind: TrafficKeyKind
    public var sne: UInt32
}

public enum EgressDecision: Sendable, Equatable {
    case sign(SignPlan)
    case drop(DropReason)
}

public enum IngressDecision: Sendable, Equatable {
    case verify(VerifyPlan)
    case drop(DropReason)
}

/// The TCP-AO state of one connection (RFC 5925 4: the per-connection parameters), as a plain
/// value: ISNs, the two SNEs, current_key, the peer's last RNextKeyID, and enough of TCP's state
/// to know when the connection is synchronized and when it ends. Events (segments) update it and
/// return what to do; the caller does the cryptography and the I/O. Codable so that it can be
/// saved across a restart.
public struct FlowState: Sendable, Hashable, Codable {
    public enum Phase: UInt8, Sendable, Codable {
        /// We sent a SYN; the peer's ISN is not known.
        case synSent
        /// The peer sent a SYN; we may not have answered yet.
        case synReceived
        case established
        /// A FIN was seen in one direction.
        case finishing
        /// FINs were seen in both directions (TIME-WAIT on one of the hosts).
        case finished
        /// A valid RST ended the connection.
        case reset
    }

    public var phase: Phase
    public var localISN: UInt32?
    public var remoteISN: UInt32?
    /// SND.SNE and RCV.SNE (RFC 5925 6.2).
    public var sendSNE: SNETracker
    public var recvSNE: SNETracker
    /// current_key (RFC 5925 4): the SendID of the MKT we sign with.
    public var currentSendID: UInt8?
    /// The RNextKeyID and KeyID of the last verified segment (RFC 5925 7.1 asks to expose them).
    public var peerRNextKeyID: UInt8?
    public var lastRecvKeyID: UInt8?
    public var localFIN = false
    public var remoteFIN = false
    /// The ISN of a verified SYN that arrived while the connection was synchronized: a replayed
    /// or duplicated SYN (its MAC stays valid), or the peer starting over. The host decides:
    /// its challenge ACK (RFC 5961 4) is signed with the current keys, and only a SYN-ACK
    /// acknowledging this ISN makes it the connection's.
    public var pendingRemoteISN: UInt32?
    /// Monotonic seconds of the last segment, and of the end (FIN exchange or RST).
    public var lastSeen: UInt32
    public var endedAt: UInt32 = 0
    /// The option space reserved for this connection when the peer's SYN or SYN-ACK had its MSS
    /// lowered (the longest option of the peer's key chain then): the protected host's
    /// full-size segments fit the MTU only with an option at most this long, so current_key is
    /// kept on a key that fits (RFC 5925 7.6: the MSS must account for TCP-AO). 0: nothing
    /// reserved yet, every key fits.
    public var reservedOptionLength: UInt8 = 0

    /// RFC 5925 7.8's synchronized states: ESTABLISHED through TIME-WAIT.
    public var isSynchronized: Bool { phase == .established || phase == .finishing || phase == .finished }

    public init(phase: Phase, now: UInt32) {
        self.phase = phase
        sendSNE = SNETracker(isn: 0)
        recvSNE = SNETracker(isn: 0)
        lastSeen = now
    }

    // MARK: egress (RFC 5925 7.4)

    /// Plans an outgoing segment and records what it tells us (our ISN, FIN, RST). Egress
    /// segments are ours, so their state is committed at once.
    public mutating func planEgress(_ seg: TCPSegment, chain: KeyChain, wall: Int64, mono: UInt32) -> EgressDecision {
        lastSeen = mono
        if seg.isSYNWithoutACK {
            // A new connection (or a retransmitted SYN). A different ISN on a known 4-tuple is a
            // new connection reusing the ports: start over.
            if localISN != seg.seq || phase != .synSent {
                self = FlowState(phase: .synSent, now: mono)
                localISN = seg.seq
                sendSNE = SNETracker(isn: seg.seq)
            }
            // 7.4 step 1.a: find the MKT for a new connection: our preferred one.
            guard let k = chain.preferredSendKey(at: wall) else { return .drop(.noSendKey) }
            currentSendID = chain.keys[k].sendID
            return .sign(SignPlan(mkt: k, kind: .syn, sne: 0, keyID: chain.keys[k].sendID,
                                  rnextKeyID: chain.rnextKeyID(at: wall) ?? chain.keys[k].recvID))
        }
        if seg.isSYN {
            // SYN-ACK: answers the peer's SYN, so the peer's ISN must be known.
            if let pending = pendingRemoteISN, seg.ack == pending &+ 1 {
                // The host accepted a new connection on this 4-tuple: start over with its ISNs
                // (the new SYN's MSS was lowered when it arrived: keep that reservation).
                let reserved = reservedOptionLength
                self = FlowState(phase: .synReceived, now: mono)
                reservedOptionLength = reserved
                remoteISN = pending
                recvSNE = SNETracker(isn: pending)
            }
            guard remoteISN != nil else { return .drop(.noState) }
            if localISN != seg.seq {
                localISN = seg.seq
                sendSNE = SNETracker(isn: seg.seq)
            }
        } else {
            // Every other segment needs both ISNs for the Send_other_traffic_key (5.2); without
            // them it cannot be signed (7.7) and must not leave unsigned.
            guard localISN != nil, remoteISN != nil else { return .drop(.noState) }
        }
        guard let k = currentSendKey(chain: chain, wall: wall) else { return .drop(.noSendKey) }
        let sne = sendSNE.sne(for: seg.seq)
        sendSNE.advance(to: seg.seq, sne: sne)
        noteEnd(seg, local: true, mono: mono)
        return .sign(SignPlan(mkt: k, kind: .other, sne: sne, keyID: chain.keys[k].sendID,
                              rnextKeyID: chain.rnextKeyID(at: wall) ?? chain.keys[k].recvID))
    }

    /// current_key, resolved in the chain now. The peer's last RNextKeyID wins when we may send
    /// with that key (7.5 step 2.e; this also covers a reload that brings the key the peer asked
    /// for earlier); otherwise current_key is kept while its send lifetime lasts, and replaced
    /// by the preferred key when it ends (never sign with an expired key).
    ///
    /// A key whose option is longer than the space reserved at the handshake
    /// (`reservedOptionLength`) is chosen only when no key that fits may be sent with: the
    /// protected host's full-size segments would exceed the MTU once signed. (Then the host's
    /// own stack answers "fragmentation needed" and its path MTU shrinks.)
    @inline(__always)
    mutating func currentSendKey(chain: KeyChain, wall: Int64) -> Int? {
        let room = Int(reservedOptionLength)
        if let k = pickSendKey(chain: chain, wall: wall, room: room) ?? (room > 0 ? pickSendKey(chain: chain, wall: wall, room: 0) : nil) {
            currentSendID = chain.keys[k].sendID
            return k
        }
        return nil
    }

    /// current_key's rules among the keys that fit `room` (0: all keys): the peer's RNextKeyID,
    /// else the current key, else our preferred one.
    @inline(__always)
    func pickSendKey(chain: KeyChain, wall: Int64, room: Int) -> Int? {
        @inline(__always) func fits(_ k: Int) -> Bool { room == 0 || chain.keys[k].algorithm.alignedOptionLength <= room }
        if let r = peerRNextKeyID, r != currentSendID, let k = chain.sendKey(sendID: r, at: wall), fits(k) { return k }
        if let id = currentSendID, let k = chain.sendKey(sendID: id, at: wall), fits(k) { return k }
        return chain.preferredSendKey(at: wall, fitting: room)
    }

    // MARK: ingress (RFC 5925 7.5)

    /// Plans the verification of an incoming segment that carries TCP-AO. Changes nothing: the
    /// state moves only once the MAC is known good (`commitIngress`).
    public func planIngress(_ seg: TCPSegment, keyID: UInt8, macLength: Int, chain: KeyChain, wall: Int64) -> IngressDecision {
        // 7.5 step 1.a / 3.3: the MKT is indicated by the socket pair and the KeyID alone.
        guard let k = chain.acceptKey(recvID: keyID, at: wall) else {
            return .drop(chain.hasKey(recvID: keyID) ? .expiredKey : .unknownKeyID)
        }
        // 7.5 step 2.a: the option's length must match the MKT's MAC length.
        guard macLength == chain.keys[k].algorithm.macLength else { return .drop(.badAOLength) }
        if seg.isSYNWithoutACK {
            return .verify(VerifyPlan(mkt: k, kind: .syn, sne: 0))
        }
        if seg.isSYN {
            // A SYN-ACK must answer our SYN: checked before any key is derived, so forged
            // SYN-ACKs cost no KDF.
            guard let l = localISN, phase == .synSent || phase == .synReceived else { return .drop(.noState) }
            guard seg.ack == l &+ 1 else { return .drop(.unexpectedSYNACK) }
            return .verify(VerifyPlan(mkt: k, kind: .other, sne: 0))
        }
        guard localISN != nil, remoteISN != nil else { return .drop(.noState) }
        return .verify(VerifyPlan(mkt: k, kind: .other, sne: recvSNE.sne(for: seg.seq)))
    }

    /// Records a verified incoming segment (or, for a peer in migration, an unsigned one).
    /// `rnextKeyID` is the segment's RNextKeyID (nil when it carried no TCP-AO).
    public mutating func commitIngress(_ seg: TCPSegment, keyID: UInt8?, rnextKeyID: UInt8?, chain: KeyChain,
                                       wall: Int64, mono: UInt32) {
        lastSeen = mono
        if seg.isSYNWithoutACK {
            if phase == .synSent && localISN != nil && remoteISN == nil {
                // Simultaneous open (RFC 9293 3.5): all four traffic keys are used.
                remoteISN = seg.seq
                recvSNE = SNETracker(isn: seg.seq)
                phase = .synReceived
            } else if phase == .established || phase == .finishing {
                // A verified SYN must not reset a synchronized connection: a replay would kill it
                // as surely as a forged RST. Remember it; the host's answer decides.
                if remoteISN != seg.seq { pendingRemoteISN = seg.seq }
            } else if remoteISN != seg.seq || phase != .synReceived {
                self = FlowState(phase: .synReceived, now: mono)
                remoteISN = seg.seq
                recvSNE = SNETracker(isn: seg.seq)
            }
        } else if seg.isSYN {
            if remoteISN != seg.seq {
                remoteISN = seg.seq
                recvSNE = SNETracker(isn: seg.seq)
            }
            if phase == .synSent || phase == .synReceived { phase = .established }
        } else {
            recvSNE.advance(to: seg.seq, sne: recvSNE.sne(for: seg.seq))
            if phase == .synReceived && seg.isACK && !seg.isRST { phase = .established }
        }
        if let k = keyID { lastRecvKeyID = k }
        if let r = rnextKeyID {
            peerRNextKeyID = r
            // 7.5 step 2.e: the peer asks for the MKT whose SendID is RNextKeyID; switch
            // current_key when we have it, may send with it, and it fits the reserved space.
            if r != currentSendID, let k = chain.sendKey(sendID: r, at: wall),
               reservedOptionLength == 0 || chain.keys[k].algorithm.alignedOptionLength <= Int(reservedOptionLength) {
                currentSendID = r
            }
        }
        noteEnd(seg, local: false, mono: mono)
    }

    private mutating func noteEnd(_ seg: TCPSegment, local: Bool, mono: UInt32) {
        if seg.isRST {
            phase = .reset
            endedAt = mono
            return
        }
        if seg.isFIN {
            if local { localFIN = true } else { remoteFIN = true }
            if phase == .established || phase == .synReceived { phase = .finishing }
            if localFIN && remoteFIN && phase != .finished {
                phase = .finished
                endedAt = mono
            }
        }
    }
}
