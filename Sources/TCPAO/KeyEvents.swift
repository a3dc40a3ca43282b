/// A connection's keys moved: what an operator wants in the log per connection (RFC 5925 7.1
/// asks to expose current_key, the peer's RNextKeyID and the last received KeyID; these are
/// their changes). Recorded by the engine on the packet path into a bounded buffer, taken by
/// the daemon once a second and logged off the packet path.
public struct FlowKeyEvent: Sendable, Equatable {
    public enum Kind: UInt8, Sendable {
        /// current_key changed: the KeyID we send with (`followsPeer`: to the peer's RNextKeyID,
        /// RFC 5925 7.5 step 2.e; otherwise current_key's send lifetime ended or it left the chain).
        case sending
        /// The peer's segments now carry another KeyID (verified).
        case peerSending
        /// The peer's RNextKeyID changed: it asks us to send with that KeyID.
        case peerAsks
    }

    public var kind: Kind
    public var key: FlowKey
    public var peer: Int32
    public var from: UInt8
    public var to: UInt8
    public var followsPeer: Bool

    public init(kind: Kind, key: FlowKey, peer: Int32, from: UInt8, to: UInt8, followsPeer: Bool = false) {
        self.kind = kind
        self.key = key
        self.peer = peer
        self.from = from
        self.to = to
        self.followsPeer = followsPeer
    }
}

/// A bounded buffer of `FlowKeyEvent`s with its capacity reserved up front: recording never
/// allocates; when full, events are counted as lost (the log says how many).
public struct FlowKeyEventBuffer: Sendable {
    public static let capacity = 256
    public private(set) var events: [FlowKeyEvent] = []
    public private(set) var lost: UInt64 = 0

    public init() { events.reserveCapacity(FlowKeyEventBuffer.capacity) }

    @inline(__always)
    mutating func record(_ e: FlowKeyEvent) {
        if events.count < FlowKeyEventBuffer.capacity { events.append(e) } else { lost &+= 1 }
    }

    /// The events recorded since the last call and how many did not fit; the buffer keeps its
    /// capacity.
    public mutating func take() -> (events: [FlowKeyEvent], lost: UInt64) {
        let r = (Array(events), lost)
        events.removeAll(keepingCapacity: true)
        lost = 0
        return r
    }

    /// The changes between two states of one connection (nothing for a new connection: its
    /// first keys are no move).
    @inline(__always)
    mutating func note(_ key: FlowKey, peer: Int32, before b: FlowState, after a: FlowState) {
        if let f = b.currentSendID, let t = a.currentSendID, f != t {
            record(FlowKeyEvent(kind: .sending, key: key, peer: peer, from: f, to: t, followsPeer: a.peerRNextKeyID == t))
        }
        if let f = b.lastRecvKeyID, let t = a.lastRecvKeyID, f != t {
            record(FlowKeyEvent(kind: .peerSending, key: key, peer: peer, from: f, to: t))
        }
        if let f = b.peerRNextKeyID, let t = a.peerRNextKeyID, f != t {
            record(FlowKeyEvent(kind: .peerAsks, key: key, peer: peer, from: f, to: t))
        }
    }
}
