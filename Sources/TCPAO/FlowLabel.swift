/// A connection's TCP-AO state in the form kept outside the process, in the label bits of the
/// connection's own conntrack entry, so that a restarted daemon (or the standby gateway that
/// conntrackd replicated the entry to) can carry on with the connection. Written only when it
/// changes, never per segment; read only for a segment of a connection the daemon does not hold.
///
/// The label is a claim, not a credential: a restored flow accepts a segment only if its MAC
/// verifies with the restored ISNs and SNE (RFC 5925 7.5), so a forged or stale label can deny
/// a connection, never let an unverified segment through.
///
/// Layout, from `offset` upwards in the 128-bit label (bit N = byte N/8, bit N%8, the kernel's
/// little-endian bitmap), `FlowLabel.bitCount` bits:
///
///     version 2 | local ISN 32 | remote ISN 32 | SND.SNE 16 | RCV.SNE 16 | send quarter 2 |
///     receive quarter 2 | current_key SendID 8 | RNextKeyID known 1 | peer's RNextKeyID 8 |
///     reserved option words 4
///
/// SNEs are kept to 16 bits (2^16 wraps of 4 GiB each). The "quarters" are the top two bits of
/// each direction's highest sequence number: the label is rewritten whenever a direction's SNE
/// or quarter changes, so the restored reference point (quarter * 2^30, SNE) is behind the
/// connection by less than 2^30 plus a TCP window (at most 2^30, RFC 7323 2.3): inside RFC
/// 9187's inference window of 2^31 either way.
public struct FlowLabel: Sendable, Equatable, CustomStringConvertible {
    public static let version: UInt8 = 1
    public static let bitCount = 123
    /// Label bits are 128; the layout starts at an offset of at most this.
    public static let maxOffset = 128 - bitCount

    public var localISN: UInt32
    public var remoteISN: UInt32
    public var sendSNE: UInt16
    public var recvSNE: UInt16
    /// The top two bits of each direction's highest sequence number.
    public var sendQuarter: UInt8
    public var recvQuarter: UInt8
    public var currentSendID: UInt8
    public var peerRNextKeyID: UInt8?
    /// `FlowState.reservedOptionLength` / 4.
    public var reservedOptionWords: UInt8

    public init(localISN: UInt32, remoteISN: UInt32, sendSNE: UInt16, recvSNE: UInt16, sendQuarter: UInt8, recvQuarter: UInt8,
                currentSendID: UInt8, peerRNextKeyID: UInt8?, reservedOptionWords: UInt8) {
        self.localISN = localISN
        self.remoteISN = remoteISN
        self.sendSNE = sendSNE
        self.recvSNE = recvSNE
        self.sendQuarter = sendQuarter & 3
        self.recvQuarter = recvQuarter & 3
        self.currentSendID = currentSendID
        self.peerRNextKeyID = peerRNextKeyID
        self.reservedOptionWords = min(reservedOptionWords, 10) // at most the 40 bytes of option space
    }

    /// The label of a connection whose ISNs are both known (from the SYN-ACK on); nil before.
    @inline(__always)
    public init?(_ s: FlowState) {
        guard let l = s.localISN, let r = s.remoteISN, let k = s.currentSendID else { return nil }
        self.init(localISN: l, remoteISN: r, sendSNE: UInt16(truncatingIfNeeded: s.sendSNE.sne),
                  recvSNE: UInt16(truncatingIfNeeded: s.recvSNE.sne), sendQuarter: UInt8(s.sendSNE.seq >> 30),
                  recvQuarter: UInt8(s.recvSNE.seq >> 30), currentSendID: k, peerRNextKeyID: s.peerRNextKeyID,
                  reservedOptionWords: UInt8(min(Int(s.reservedOptionLength) / 4, 15)))
    }

    /// Whether the KeyIDs the label names (the one we sent with, the one the peer asked for) are
    /// SendIDs of `chain`. Not so for a connection that had moved to its own MKT (held in
    /// memory only, gone with a restart): restoring it with the chain's keys would let them
    /// sign and verify that connection again.
    public func usesOnlyKeysOf(_ chain: KeyChain) -> Bool {
        chain.keys.contains { $0.sendID == currentSendID }
            && (peerRNextKeyID.map { r in chain.keys.contains { $0.sendID == r } } ?? true)
    }

    /// The state of a connection restored from its label: synchronized, with each direction's
    /// SNE reference at the start of the quarter it was last written in.
    public func restoredState(now: UInt32) -> FlowState {
        var s = FlowState(phase: .established, now: now)
        s.localISN = localISN
        s.remoteISN = remoteISN
        s.sendSNE = SNETracker(seq: UInt32(sendQuarter) << 30, sne: UInt32(sendSNE))
        s.recvSNE = SNETracker(seq: UInt32(recvQuarter) << 30, sne: UInt32(recvSNE))
        s.currentSendID = currentSendID
        s.peerRNextKeyID = peerRNextKeyID
        // A RNextKeyID was only ever recorded from a verified TCP-AO segment: the peer signs, so
        // unsigned segments stay dropped for a peer in migration (accept-key-mismatch).
        s.lastRecvKeyID = peerRNextKeyID
        s.reservedOptionLength = min(reservedOptionWords, 10) * 4
        return s
    }

    // MARK: the 128-bit form

    /// The label's bits and the mask of tcpaod's bits, each 16 bytes.
    public func encode(offset: Int, into out: UnsafeMutableRawPointer) {
        var w = BitWriter(out, offset: offset)
        w.put(UInt64(FlowLabel.version), 2)
        w.put(UInt64(localISN), 32)
        w.put(UInt64(remoteISN), 32)
        w.put(UInt64(sendSNE), 16)
        w.put(UInt64(recvSNE), 16)
        w.put(UInt64(sendQuarter), 2)
        w.put(UInt64(recvQuarter), 2)
        w.put(UInt64(currentSendID), 8)
        w.put(peerRNextKeyID == nil ? 0 : 1, 1)
        w.put(UInt64(peerRNextKeyID ?? 0), 8)
        w.put(UInt64(reservedOptionWords & 15), 4)
    }

    /// Sets tcpaod's bits in a 16-byte mask (others untouched).
    public static func mask(offset: Int, into out: UnsafeMutableRawPointer) {
        Label128.store(out, Label128.load(out) | ((UInt128(1) << bitCount) - 1) << offset)
    }

    /// Reads a label; nil when tcpaod's bits hold no label of this version (all zero: never
    /// written), or its fields are impossible.
    public static func decode(_ p: UnsafeRawPointer, offset: Int) -> FlowLabel? {
        var r = BitReader(p, offset: offset)
        guard r.get(2) == UInt64(version) else { return nil }
        let l = UInt32(r.get(32)), rm = UInt32(r.get(32))
        let ss = UInt16(r.get(16)), rs = UInt16(r.get(16))
        let sq = UInt8(r.get(2)), rq = UInt8(r.get(2))
        let k = UInt8(r.get(8))
        let known = r.get(1) != 0
        let rn = UInt8(r.get(8))
        let words = UInt8(r.get(4))
        guard words <= 10 else { return nil } // at most the 40 bytes of TCP option space
        return FlowLabel(localISN: l, remoteISN: rm, sendSNE: ss, recvSNE: rs, sendQuarter: sq, recvQuarter: rq,
                         currentSendID: k, peerRNextKeyID: known ? rn : nil, reservedOptionWords: words)
    }

    /// Never anything secret (ISNs are on the wire), but kept short for logs.
    public var description: String {
        "ISNs \(localISN)/\(remoteISN) SNE \(sendSNE)/\(recvSNE) KeyID \(currentSendID) RNext \(peerRNextKeyID.map(String.init) ?? "-")"
    }
}

/// Little-endian bit packing into the kernel's label bitmap.
struct BitWriter {
    let p: UnsafeMutableRawPointer
    var bit: Int

    init(_ p: UnsafeMutableRawPointer, offset: Int) {
        self.p = p
        bit = offset
    }

    /// Writes the low `n` bits of `v` (n <= 64) at the next `n` bits; `bit + n` <= 128.
    mutating func put(_ v: UInt64, _ n: Int) {
        let m = (n == 64 ? UInt128(UInt64.max) : (UInt128(1) << n) - 1) << bit
        let x = Label128.load(p)
        Label128.store(p, (x & ~m) | ((UInt128(v) << bit) & m))
        bit += n
    }
}

/// The 16 label bytes as one little-endian 128-bit number (bit N = byte N/8, bit N%8).
enum Label128 {
    @inline(__always) static func load(_ p: UnsafeRawPointer) -> UInt128 {
        UInt128(littleEndian: p.loadUnaligned(as: UInt128.self))
    }
    @inline(__always) static func store(_ p: UnsafeMutableRawPointer, _ v: UInt128) {
        p.storeBytes(of: v.littleEndian, as: UInt128.self)
    }
}

struct BitReader {
    let p: UnsafeRawPointer
    var bit: Int

    init(_ p: UnsafeRawPointer, offset: Int) {
        self.p = p
        bit = offset
    }

    /// Reads the next `n` bits (n <= 64); `bit + n` <= 128.
    mutating func get(_ n: Int) -> UInt64 {
        let v = UInt64(truncatingIfNeeded: Label128.load(p) >> bit) & (n == 64 ? UInt64.max : (1 << UInt64(n)) - 1)
        bit += n
        return v
    }
}

/// Where a worker keeps its connections' labels (the shell: conntrack through ctnetlink). Called
/// on the packet path only when a label changes (`save`: before the segment's verdict is sent,
/// or with `AOEngine.deferStateSaves` right after its batch's verdicts) or a segment arrives
/// for a connection the engine does not hold (`load`, before the verdict).
public protocol FlowStateStore: AnyObject {
    /// The label stored for this connection; `key` is as seen from the protected side.
    func load(_ key: FlowKey) -> FlowLabel?
    /// Stores the label; false when it could not be stored (counted).
    func save(_ key: FlowKey, _ label: FlowLabel) -> Bool
}
