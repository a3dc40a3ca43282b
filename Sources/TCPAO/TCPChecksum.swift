/// Incremental TCP checksum updates (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')) and IP length
/// fields. Edits only move the payload by multiples of 4 bytes, so its contribution never changes.
enum TCPChecksum {
    /// Sum of `count` bytes at `offset`, as they contribute to the TCP checksum: a region that
    /// starts at an odd distance from the TCP header contributes byte-swapped (RFC 1071 2.B).
    @inline(__always)
    static func sumRegion(_ p: UnsafeRawPointer, tcpOffset: Int, _ offset: Int, _ count: Int) -> UInt32 {
        let s = InternetChecksum.sum(p + offset, count)
        if (offset - tcpOffset) & 1 == 0 { return s }
        let v = UInt16(truncatingIfNeeded: s)
        return UInt32(v.byteSwapped)
    }

    /// Sum of the header bytes an option edit can change (data offset byte onwards, checksum
    /// excluded) plus the pseudo-header's TCP length.
    @inline(__always)
    static func headerSum(_ p: UnsafeRawPointer, _ seg: TCPSegment) -> UInt32 {
        let t = seg.tcpOffset
        var s = InternetChecksum.sum(p + t + 12, 4) // data offset, flags, window
        s = InternetChecksum.add(s, InternetChecksum.sum(p + t + 18, seg.tcpHeaderLength - 18))
        return InternetChecksum.add(s, UInt32(seg.tcpLength))
    }

    @inline(__always)
    static func replace(_ p: UnsafeMutableRawPointer, tcpOffset: Int, removed: UInt32, added: UInt32) {
        let c = load16(p, tcpOffset + 16)
        var s = UInt32(~c)
        s = InternetChecksum.subtract(s, removed)
        s = InternetChecksum.add(s, added)
        store16(p, tcpOffset + 16, wireForm(InternetChecksum.finish(s)))
    }

    /// The checksum as tcpaod writes it: a computed 0x0000 goes out as 0xFFFF, the other
    /// ones'-complement zero. Both verify (RFC 1071 2: the sum over the segment, checksum
    /// included, is all ones either way; RFC 1624 3 discusses the two forms). Linux 6.12's
    /// TCP-AO counts segments carrying 0x0000 as pkt_bad and drops them, though their MAC is right
    /// (found by the interop harness: every such segment, byte-identical on both sides of the
    /// guest's NIC, checked by verify-pcap and scapy); a retransmission carries the same bytes, so
    /// the connection stalls. The cause is in net/ipv4/tcp_ao.c, tcp_ao_hash_pseudoheader():
    /// "Can we rely on checksum being zero to mean outbound pkt?" — a zero th->check is taken for
    /// an outbound segment, so an inbound one is hashed with the pseudo-header's addresses
    /// swapped (sk_daddr as destination). With 0xFFFF the kernel takes the inbound branch.
    @inline(__always)
    static func wireForm(_ c: UInt16) -> UInt16 { c == 0 ? 0xFFFF : c }

    /// Adds the contribution of bytes that were zero and now are not (the MAC field).
    @inline(__always)
    static func update(_ p: UnsafeMutableRawPointer, _ seg: TCPSegment, changedRange offset: Int, _ count: Int) {
        replace(p, tcpOffset: seg.tcpOffset, removed: 0, added: sumRegion(p, tcpOffset: seg.tcpOffset, offset, count))
    }

    /// Full TCP checksum of a segment (used by tests and by the pcap writer).
    static func compute(_ p: UnsafeRawPointer, _ seg: TCPSegment) -> UInt16 {
        var s = InternetChecksum.sum(p + seg.tcpOffset, 16)
        s = InternetChecksum.add(s, InternetChecksum.sum(p + seg.tcpOffset + 18, seg.tcpLength - 18))
        s = pseudoHeaderSum(seg, s)
        return InternetChecksum.finish(s)
    }

    static func pseudoHeaderSum(_ seg: TCPSegment, _ initial: UInt32) -> UInt32 {
        var s = initial
        withUnsafeTemporaryAllocation(byteCount: 32, alignment: 8) { b in
            let n = seg.src.write(to: b.baseAddress!, at: 0)
            _ = seg.dst.write(to: b.baseAddress!, at: n)
            s = InternetChecksum.add(s, InternetChecksum.sum(b.baseAddress!, 2 * n))
        }
        s = InternetChecksum.add(s, UInt32(Spec.ipProtoTCP))
        return InternetChecksum.add(s, UInt32(seg.tcpLength))
    }

    /// Sets the IP packet length to `length` (IPv4 total length and header checksum, or the IPv6
    /// payload length).
    @inline(__always)
    static func setIPLength(_ p: UnsafeMutableRawPointer, _ seg: TCPSegment, _ length: Int) {
        if seg.isV6 {
            store16(p, 4, UInt16(length - Spec.ipv6HeaderLength))
        } else {
            store16(p, 2, UInt16(length))
            store16(p, 10, 0)
            let ihl = Int(load8(p, 0) & 0x0F) * 4
            store16(p, 10, InternetChecksum.finish(InternetChecksum.sum(p, ihl)))
        }
    }
}

extension TCPSegment {
    /// True when the TCP checksum in the packet is right (either form of zero, RFC 1071).
    public func checksumIsValid(_ p: UnsafeRawPointer) -> Bool {
        let c = TCPChecksum.compute(p, self)
        let stored = load16(p, tcpOffset + 16)
        return stored == c || (c == 0 && stored == 0xFFFF)
    }

    /// Recomputes the TCP checksum from scratch (tests, pcap fixtures).
    public func recomputeChecksum(_ p: UnsafeMutableRawPointer) {
        store16(p, tcpOffset + 16, TCPChecksum.compute(p, self))
    }
}
