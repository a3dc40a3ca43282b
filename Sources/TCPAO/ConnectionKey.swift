// Per-connection MKTs: an agent that keyed one connection (e.g. from its TLS handshake, the
// opportunistic TCP-AO idea) installs an MKT for that connection only. RFC 5925 allows any
// number of MKTs per connection as long as their KeyIDs are distinct (3.1); moving from one to
// another is the ordinary key change (6.1, 7.5): from the moment the MKT is installed the
// connection advertises its RecvID as RNextKeyID; it keeps sending with its current key until
// the peer's segments advertise the new MKT's SendID, then switches (7.5 step 2.e). Once a
// segment from the peer verified with the connection's MKT, the peer's configured keys are no
// longer accepted on this connection: a party who knows only those can no longer inject.
// The MKT lives with the connection's flow and is forgotten with it (and with a new
// connection on the same 4-tuple); it is held in memory only (not in the conntrack label): a
// connection restored from its label after a restart uses the peer's configured keys only, and
// one whose label names a KeyID those do not have (it had moved to its own MKT) is not restored.

/// A connection's own MKT and the key chain the connection uses with it: the peer's chain's
/// keys at their indices (so per-key counters and cached contexts stay valid), the MKT last
/// and pinned as the preferred key. Exclusive: the peer's keys kept at their indices with
/// empty lifetimes (never sent or accepted again on this connection).
final class ConnectionKey: @unchecked Sendable {
    let mkt: MKT
    private(set) var chain: KeyChain
    private(set) var exclusive = false

    init(mkt: MKT, base: KeyChain) {
        self.mkt = mkt
        chain = ConnectionKey.chain(mkt, base: base, exclusive: false)
    }

    /// The MKT's index in `chain`.
    var own: Int { chain.keys.count - 1 }

    /// The peer's chain changed (reload, runtime key change).
    func rebase(_ base: KeyChain) {
        chain = ConnectionKey.chain(mkt, base: base, exclusive: exclusive)
    }

    /// The peer signed with the connection's MKT: its configured keys are done here.
    func makeExclusive(base: KeyChain) {
        exclusive = true
        chain = ConnectionKey.chain(mkt, base: base, exclusive: true)
    }

    static func chain(_ mkt: MKT, base: KeyChain, exclusive: Bool) -> KeyChain {
        var keys = base.keys
        let never = Lifetime(start: .max, end: .max)
        // Exclusive: the configured keys are done. Before: a configured key that shares a KeyID
        // with the MKT (one added by a reload since, RFC 5925 3.1) is left out, not the MKT.
        for i in keys.indices where exclusive || keys[i].sendID == mkt.sendID || keys[i].recvID == mkt.recvID {
            keys[i].sendLifetime = never
            keys[i].acceptLifetime = never
        }
        keys.append(mkt)
        return KeyChain(name: base.name, keys: keys, pinned: keys.count - 1)
    }
}

/// What became of a request to install a connection's MKT.
public enum ConnectionKeyResult: Sendable, Equatable {
    case installed
    /// This engine does not hold the connection.
    case notFound
    /// Refused, with the reason (an operator's sentence).
    case refused(String)
}

/// A connection's own MKT as `tcpaod flows` shows it (never the secret).
public struct ConnectionKeyInfo: Sendable, Equatable {
    public var sendID: UInt8
    public var recvID: UInt8
    public var algorithm: AOAlgorithm
    /// The peer signed with it: the configured keys are no longer accepted on the connection.
    public var exclusive: Bool
}

extension AOEngine {
    /// Installs `mkt` for the connection `key` only (see the top of this file). Refused: a
    /// connection that is not established, one that has its own MKT already, KeyIDs shared with
    /// the peer's chain (RFC 5925 3.1: a connection's MKTs must differ in SendID and RecvID), an
    /// MKT whose option does not fit the room reserved at the handshake (7.6), a key not valid
    /// now to send and accept.
    public mutating func installConnectionKey(_ key: FlowKey, _ mkt: MKT, wall: Int64) -> ConnectionKeyResult {
        guard let i = table.find(key, hash: table.hash(key)) else { return .notFound }
        let st = table.entries[i].state
        guard st.phase == .established, st.localISN != nil, st.remoteISN != nil else {
            return .refused("connection \(key) is \(st.phase.label), not established: its MKT can be installed once both ISNs are known and before it closes")
        }
        if let c = table.entries[i].connectionKey {
            return .refused("connection \(key) has its own MKT already (SendID \(c.mkt.sendID), RecvID \(c.mkt.recvID)); one per connection")
        }
        guard mkt.sendLifetime.contains(wall), mkt.acceptLifetime.contains(wall) else {
            return .refused("the MKT is not valid now to send and to accept: a connection's MKT must be usable at once")
        }
        let peer = Int(table.entries[i].peer)
        let base = config.peers[peer].keyChain
        for k in base.keys {
            if k.sendID == mkt.sendID || k.recvID == mkt.recvID {
                let which = k.sendID == mkt.sendID ? "SendID \(mkt.sendID)" : "RecvID \(mkt.recvID)"
                return .refused("\(which) is also key \(k.chainKeyID)'s of chain \(base.name) (RFC 5925 3.1: the MKTs of a connection need distinct KeyIDs); pick KeyIDs the chain does not use")
            }
        }
        let room = Int(st.reservedOptionLength)
        if room > 0 && mkt.algorithm.alignedOptionLength > room {
            return .refused("\(mkt.algorithm) needs a \(mkt.algorithm.alignedOptionLength)-byte TCP-AO option, but the connection reserved \(room) bytes at its handshake (its MSS was lowered by that much, RFC 5925 7.6): use an algorithm whose MAC fits, e.g. the chain's own")
        }
        table.entries[i].connectionKey = ConnectionKey(mkt: mkt, base: base)
        return .installed
    }

    /// The key chain a flow uses: its own (with the connection's MKT) or its peer's.
    @inline(__always)
    func flowChain(_ i: Int, peer: Int) -> KeyChain {
        table.entries[i].connectionKey?.chain ?? config.peers[peer].keyChain
    }

    /// A verified segment from the peer: if it was signed with the connection's MKT, the peer's
    /// configured keys are no longer accepted on this connection.
    @inline(__always)
    mutating func noteConnectionKeyUse(_ i: Int, key k: Int, peer: Int) {
        guard let c = table.entries[i].connectionKey, !c.exclusive, k == c.own else { return }
        c.makeExclusive(base: config.peers[peer].keyChain)
    }
}
