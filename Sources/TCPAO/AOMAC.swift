import CLibCrypto

/// Computing and checking the MAC of a segment (RFC 5925 5.1) in place, without allocating.
public enum AOMAC {
    /// Writes the MAC input that precedes the payload: SNE, pseudo-header, the TCP header with a
    /// zero checksum, and the options (all of them, or only TCP-AO when options are excluded),
    /// always with TCP-AO's MAC field zeroed. Returns its length.
    @inline(__always)
    static func writePrefix(_ p: UnsafeRawPointer, _ seg: TCPSegment, sne: UInt32, includeOptions: Bool,
                            into out: UnsafeMutableRawPointer) -> Int {
        var i = 0
        // 1. SNE (RFC 5925 5.1 item 1, Figure 4).
        store32(out, 0, sne); i = 4
        // 2. Pseudo-header exactly as for the TCP checksum (RFC 793 / RFC 8200 8.1).
        i += seg.src.write(to: out, at: i)
        i += seg.dst.write(to: out, at: i)
        if seg.isV6 {
            store32(out, i, UInt32(seg.tcpLength)); store32(out, i + 4, UInt32(Spec.ipProtoTCP)); i += 8
        } else {
            store8(out, i, 0); store8(out, i + 1, Spec.ipProtoTCP); store16(out, i + 2, UInt16(seg.tcpLength)); i += 4
        }
        // 3. The fixed TCP header with the checksum zeroed; the data offset stays as on the wire
        //    even when options are excluded (as Linux's tcp_ao_hash_header does).
        let t = seg.tcpOffset
        (out + i).copyMemory(from: p + t, byteCount: 16)
        store16(out, i + 16, 0)
        (out + i + 18).copyMemory(from: p + t + 18, byteCount: 2)
        i += 20
        if includeOptions {
            let optLen = seg.tcpHeaderLength - Spec.tcpMinHeaderLength
            (out + i).copyMemory(from: p + seg.optionsOffset, byteCount: optLen)
            if seg.aoOffset >= 0 {
                let macAt = i + (seg.aoOffset - seg.optionsOffset) + Spec.aoHeaderLength
                (out + macAt).initializeMemory(as: UInt8.self, repeating: 0, count: seg.aoMACLength)
            }
            i += optLen
        } else if seg.aoOffset >= 0 {
            // Options other than TCP-AO are skipped over, not zeroed (RFC 5925 3.1).
            (out + i).copyMemory(from: p + seg.aoOffset, byteCount: Spec.aoHeaderLength)
            (out + i + Spec.aoHeaderLength).initializeMemory(as: UInt8.self, repeating: 0, count: seg.aoMACLength)
            i += seg.aoLength
        }
        return i
    }

    /// Computes the MAC of the segment at `p` into `out` (room for 32 bytes); the AO option must be
    /// present (its MAC field's content is ignored).
    @inline(__always)
    public static func compute(_ p: UnsafeRawPointer, _ seg: TCPSegment, key: borrowing MACKey, sne: UInt32,
                               includeOptions: Bool, into out: UnsafeMutableRawPointer) {
        withUnsafeTemporaryAllocation(byteCount: Spec.maxMACPrefixLength, alignment: 8) { buf in
            let n = writePrefix(p, seg, sne: sne, includeOptions: includeOptions, into: buf.baseAddress!)
            key.compute(UnsafeRawBufferPointer(start: buf.baseAddress!, count: n),
                        UnsafeRawBufferPointer(start: p + seg.payloadOffset, count: seg.payloadLength), into: out)
        }
    }

    /// Checks the segment's MAC in constant time. The AO option's length must already have been
    /// checked against the MKT (RFC 5925 7.5 step 2.a).
    @inline(__always)
    public static func verify(_ p: UnsafeRawPointer, _ seg: TCPSegment, key: borrowing MACKey, sne: UInt32,
                              includeOptions: Bool) -> Bool {
        let macLen = key.algorithm.macLength
        guard seg.aoOffset >= 0, seg.aoMACLength == macLen else { return false }
        return withUnsafeTemporaryAllocation(byteCount: Spec.maxMACLength, alignment: 8) { out in
            compute(p, seg, key: key, sne: sne, includeOptions: includeOptions, into: out.baseAddress!)
            return CRYPTO_memcmp(out.baseAddress!, p + seg.aoOffset + Spec.aoHeaderLength, macLen) == 0
        }
    }

    /// Computes the MAC and writes it into the segment's AO option (which `AOOption.insert` made).
    @inline(__always)
    public static func sign(_ p: UnsafeMutableRawPointer, _ seg: TCPSegment, key: borrowing MACKey, sne: UInt32,
                            includeOptions: Bool) {
        let macLen = key.algorithm.macLength
        // The MAC is written into the option's MAC field and nowhere else: a key whose MAC length
        // differs from the field's would overwrite the payload (or leave stale bytes).
        precondition(seg.aoOffset >= 0 && seg.aoMACLength == macLen,
                     "AOMAC.sign: the option's MAC field (\(seg.aoMACLength) bytes) does not fit the key's MAC (\(macLen) bytes)")
        withUnsafeTemporaryAllocation(byteCount: Spec.maxMACLength, alignment: 8) { out in
            compute(p, seg, key: key, sne: sne, includeOptions: includeOptions, into: out.baseAddress!)
            (p + seg.aoOffset + Spec.aoHeaderLength).copyMemory(from: out.baseAddress!, byteCount: macLen)
        }
        // The MAC is part of the TCP checksum's coverage.
        TCPChecksum.update(p, seg, changedRange: seg.aoOffset + Spec.aoHeaderLength, macLen)
    }
}
