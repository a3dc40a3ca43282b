import Synchronization

/// Where MKT serials come from: a process-wide counter, so no two MKTs made by this process
/// ever share a serial, whatever sequence of reloads (and rolled-back reloads) made them.
private let mktSerials = Atomic<UInt64>(0)

/// A time interval in seconds since the Unix epoch, [start, end). RFC 8177 key chain lifetimes.
public struct Lifetime: Sendable, Hashable, Codable, CustomStringConvertible {
    public var start: Int64
    public var end: Int64

    public init(start: Int64 = .min, end: Int64 = .max) {
        self.start = start
        self.end = end
    }

    public static let always = Lifetime()

    @inline(__always)
    public func contains(_ t: Int64) -> Bool { t >= start && t < end }

    public var description: String {
        let s = start == .min ? "always" : "\(start)"
        let e = end == .max ? "no-end" : "\(end)"
        return "[\(s), \(e))"
    }
}

/// A Master Key Tuple (RFC 5925 3.1) as configured in a key chain (RFC 8177, RFC 9648's
/// TCP-AO extensions): SendID, RecvID, algorithm, the master key, whether TCP options are
/// included in the MAC, and send and accept lifetimes. The connection identifier part of the
/// MKT is the peer the chain is attached to.
public struct MKT: Sendable, CustomStringConvertible {
    /// The key's id in its chain (RFC 8177 key-id); used in messages and counters, never on the
    /// wire. (The KeyID on the wire is `sendID` when we send, `recvID` when we receive.)
    public var chainKeyID: UInt64
    public var sendID: UInt8
    public var recvID: UInt8
    public var algorithm: AOAlgorithm
    public var includeOptions: Bool
    public var sendLifetime: Lifetime
    public var acceptLifetime: Lifetime
    public let master: MasterKey
    /// The identity of the key material for the life of the process: traffic-key contexts cached
    /// in flows are tagged with it. Every MKT made gets a serial no other MKT ever had; a reload
    /// hands an unchanged key (`sameKey`) its old serial (`KeyChain.withSerials`), so flows keep
    /// their cached contexts, and nothing else can ever match a cached context's serial.
    public internal(set) var serial: UInt64

    public init(chainKeyID: UInt64, sendID: UInt8, recvID: UInt8, algorithm: AOAlgorithm, includeOptions: Bool = true,
                sendLifetime: Lifetime = .always, acceptLifetime: Lifetime = .always, secret: Secret) {
        self.chainKeyID = chainKeyID
        self.sendID = sendID
        self.recvID = recvID
        self.algorithm = algorithm
        self.includeOptions = includeOptions
        self.sendLifetime = sendLifetime
        self.acceptLifetime = acceptLifetime
        self.master = MasterKey(algorithm: algorithm, secret: secret)
        self.serial = mktSerials.add(1, ordering: .relaxed).newValue
    }

    public var secret: Secret { master.original }

    /// Never prints the secret.
    public var description: String {
        "key \(chainKeyID) (SendID \(sendID), RecvID \(recvID), \(algorithm)\(includeOptions ? "" : ", options excluded"))"
    }

    /// Same parameters and the same secret (the serial is not compared).
    public func sameKey(as o: MKT) -> Bool {
        sendID == o.sendID && recvID == o.recvID && algorithm == o.algorithm && includeOptions == o.includeOptions
            && master.original == o.master.original
    }
}

/// A key chain: the MKTs one peer may use, with the RFC 5925 key-selection rules. Immutable
/// and shared by reference, so the packet path holds one reference rather than copies of its
/// keys.
public final class KeyChain: Sendable {
    public let name: String
    public let keys: [MKT]
    /// A connection's own MKT (`AOEngine.installConnectionKey`): preferred whenever it may send,
    /// whatever the others' lifetimes. Nil for the configuration's chains.
    public let pinned: Int?

    public init(name: String, keys: [MKT], pinned: Int? = nil) {
        self.name = name
        self.keys = keys
        self.pinned = pinned
    }

    /// The same chain, where each key that is `sameKey` as one of `previous` (the keys of the
    /// configuration being replaced) takes that key's serial, so connections keep their cached
    /// traffic-key contexts across a reload. Every other key keeps its own, never-used serial.
    public func inheritingSerials(from previous: [MKT]) -> KeyChain {
        inheritingSerials(from: MKTIndex(previous))
    }

    /// The same, with the previous keys indexed once for all chains (a configuration may hold
    /// one chain per peer, tens of thousands).
    public func inheritingSerials(from previous: MKTIndex) -> KeyChain {
        guard !previous.isEmpty else { return self }
        var k = keys
        for i in k.indices {
            if let o = previous.first(sameAs: k[i]) { k[i].serial = o.serial }
        }
        return KeyChain(name: name, keys: k)
    }

    /// The MKT we prefer to send with at `now`: among the keys whose send lifetime contains `now`,
    /// the one whose send lifetime started last (a newly rolled-in key wins); ties go to the key
    /// listed last. Nil when no key may be sent with.
    /// With `fitting` > 0, only keys whose option (padded) is at most that long are considered.
    public func preferredSendKey(at now: Int64, fitting room: Int = 0) -> Int? {
        if let p = pinned, keys[p].sendLifetime.contains(now), room == 0 || keys[p].algorithm.alignedOptionLength <= room { return p }
        var best: Int? = nil
        for i in keys.indices where keys[i].sendLifetime.contains(now) {
            if room > 0 && keys[i].algorithm.alignedOptionLength > room { continue }
            if let b = best, keys[b].sendLifetime.start > keys[i].sendLifetime.start { continue }
            best = i
        }
        return best
    }

    /// The MKT with this SendID that may be sent with at `now` (RFC 5925 7.5 step 2.e: the key a
    /// peer asks for with RNextKeyID). Never an expired key.
    @inline(__always)
    public func sendKey(sendID: UInt8, at now: Int64) -> Int? {
        for i in keys.indices where keys[i].sendID == sendID && keys[i].sendLifetime.contains(now) { return i }
        return nil
    }

    /// The MKT that authenticates an incoming segment with this KeyID (RFC 5925 7.5 step 1.a /
    /// 3.3: "indicated solely by the segment's socket pair and its TCP-AO KeyID"), if its accept
    /// lifetime contains `now`.
    @inline(__always)
    public func acceptKey(recvID: UInt8, at now: Int64) -> Int? {
        for i in keys.indices where keys[i].recvID == recvID && keys[i].acceptLifetime.contains(now) { return i }
        return nil
    }

    /// The most option space a segment signed with any key of this chain can need (the MSS
    /// reservation made at a connection's handshake, RFC 5925 7.6).
    public var longestOptionLength: Int {
        keys.map(\.algorithm.alignedOptionLength).max() ?? AOAlgorithm.hmacSHA1_96.alignedOptionLength
    }

    /// Whether any key has this RecvID, valid now or not (to tell "unknown KeyID" from "expired").
    public func hasKey(recvID: UInt8) -> Bool { keys.contains { $0.recvID == recvID } }

    /// rnext_key (RFC 5925 4, 6.1): the RecvID we advertise in RNextKeyID. The preferred send
    /// key's RecvID when that key may be received with now (keys are rolled as pairs); otherwise
    /// the acceptable key whose accept lifetime started last.
    public func rnextKeyID(at now: Int64) -> UInt8? {
        if let p = preferredSendKey(at: now), keys[p].acceptLifetime.contains(now) { return keys[p].recvID }
        var best: Int? = nil
        for i in keys.indices where keys[i].acceptLifetime.contains(now) {
            if let b = best, keys[b].acceptLifetime.start > keys[i].acceptLifetime.start { continue }
            best = i
        }
        return best.map { keys[$0].recvID }
    }
}

/// MKTs found by `sameKey` in constant time: bucketed by a hash of the parameters and the
/// secret (Swift's `Hasher`, seeded at random per process; the hash never leaves the process),
/// then compared with `sameKey` (the secret in constant time). `first(sameAs:)` answers as
/// `keys.first(where: { $0.sameKey(as: k) })` does.
public struct MKTIndex: Sendable {
    let keys: [MKT]
    let buckets: [Int: [Int]]

    public init(_ keys: [MKT]) {
        self.keys = keys
        var b: [Int: [Int]] = [:]
        for (i, k) in keys.enumerated() { b[MKTIndex.hash(k), default: []].append(i) }
        buckets = b
    }

    public var isEmpty: Bool { keys.isEmpty }

    static func hash(_ k: MKT) -> Int {
        var h = Hasher()
        h.combine(k.sendID)
        h.combine(k.recvID)
        h.combine(k.algorithm)
        h.combine(k.includeOptions)
        k.secret.withBytes { h.combine(bytes: $0) }
        return h.finalize()
    }

    public func first(sameAs k: MKT) -> MKT? {
        for i in buckets[MKTIndex.hash(k)] ?? [] where keys[i].sameKey(as: k) { return keys[i] }
        return nil
    }
}
