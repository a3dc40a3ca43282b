/// Sequence Number Extension for one direction of a connection (RFC 5925 6.2).
///
/// RFC 5925's sample pseudo-code is known to be wrong (RFC 9187 2). Like Linux
/// (tcp_ao_compute_sne in include/net/tcp_ao.h), the SNE of a segment is inferred from a
/// reference point -- the highest sequence number seen so far in this direction and its SNE --
/// as the 64-bit extended sequence number closest to that reference (RFC 9187's windowed
/// inference). Segments within 2^31 before or after the reference resolve correctly, across the
/// 2^32 wrap in either direction, which covers retransmissions of data sent before a wrap.
public struct SNETracker: Sendable, Hashable, Codable {
    /// Reference point: sequence number and its SNE (together a 64-bit sequence number).
    public private(set) var seq: UInt32
    public private(set) var sne: UInt32

    /// RFC 5925 6.2: "both initialized as zero when a connection begins"; the reference starts at
    /// the ISN, so a SYN always has SNE 0 and the byte after an ISN of 0xFFFFFFFF has SNE 1.
    public init(isn: UInt32) {
        seq = isn
        sne = 0
    }

    public init(seq: UInt32, sne: UInt32) {
        self.seq = seq
        self.sne = sne
    }

    /// The SNE for a segment starting at `s`.
    @inline(__always)
    public func sne(for s: UInt32) -> UInt32 {
        if Int32(bitPattern: s &- seq) < 0 {
            // Before the reference: the previous SNE if it lies beyond a wrap.
            return s > seq ? sne &- 1 : sne
        }
        // At or after the reference: the next SNE if the sequence number wrapped.
        return s < seq ? sne &+ 1 : sne
    }

    /// Moves the reference forward to (`s`, `sne`) when that is later than the current one.
    /// Call it only for segments that were sent by us or verified.
    @inline(__always)
    public mutating func advance(to s: UInt32, sne newSNE: UInt32) {
        let cur = UInt64(sne) << 32 | UInt64(seq)
        let new = UInt64(newSNE) << 32 | UInt64(s)
        if new > cur {
            seq = s
            sne = newSNE
        }
    }
}
