/// Adding and removing the TCP-AO option in a segment, in place, keeping every length field and
/// checksum right. Nothing here allocates.
public enum AOOption {
    /// Inserts a TCP-AO option (RFC 5925 2.2) with the given KeyID and RNextKeyID and a zeroed MAC
    /// of `macLength` bytes, padded to 32 bits with NOPs. It goes after the existing options (before
    /// an End-of-Option-List). When the 40-byte option space cannot hold it, SACK blocks are dropped
    /// from the end (RFC 5925 7.6); in a SYN, window scaling, then SACK-permitted, then timestamps
    /// are left out, as Linux does for its own TCP-AO SYNs (the peer never sees the offer, so both
    /// ends agree not to use it). If it still cannot fit, `.noOptionSpace` is thrown so the caller
    /// can fail closed.
    ///
    /// `capacity` is the size of the buffer at `p`; the packet grows by the option's padded size.
    /// Returns the segment as it now is.
    public static func insert(_ p: UnsafeMutableRawPointer, capacity: Int, _ seg: TCPSegment, macLength: Int,
                              keyID: UInt8, rnextKeyID: UInt8) throws(PacketError) -> TCPSegment {
        guard !seg.hasAO else { throw .duplicateAO }
        // RFC 5925 2.2: TCP-AO and TCP-MD5 never together; refused before anything is edited.
        guard !hasOption(p, seg, kind: Spec.md5Kind) else { throw .md5WithAO }
        let optionLength = Spec.aoHeaderLength + macLength
        let space = (optionLength + 3) & ~3
        guard space <= Spec.tcpMaxOptionSpace else { throw .noOptionSpace }
        var s = seg
        let removed = TCPChecksum.headerSum(p, s)
        if s.tcpHeaderLength + space > Spec.tcpMaxHeaderLength || s.length + space > capacity {
            // Trimming edits the header and moves the payload; keep the original header so a
            // failure can put everything back (a thrown error leaves the packet unchanged).
            s = try withUnsafeTemporaryAllocation(byteCount: Spec.tcpMaxHeaderLength, alignment: 8) { saved throws(PacketError) -> TCPSegment in
                saved.baseAddress!.copyMemory(from: p + seg.tcpOffset, byteCount: seg.tcpHeaderLength)
                var t = seg
                if t.tcpHeaderLength + space > Spec.tcpMaxHeaderLength, t.sackOffset >= 0,
                   let trimmed = trimSACK(p, t, free: t.tcpHeaderLength + space - Spec.tcpMaxHeaderLength) {
                    t = trimmed
                }
                if t.isSYN {
                    for kind in [Spec.optWindowScale, Spec.optSACKPermitted, Spec.optTimestamps]
                    where t.tcpHeaderLength + space > Spec.tcpMaxHeaderLength {
                        if let u = removeOption(p, t, kind: kind) { t = u }
                    }
                }
                let fits = t.tcpHeaderLength + space <= Spec.tcpMaxHeaderLength
                if fits && t.length + space <= capacity { return t }
                if t.tcpHeaderLength != seg.tcpHeaderLength {
                    (p + seg.payloadOffset).copyMemory(from: p + t.payloadOffset, byteCount: t.payloadLength) // memmove
                }
                (p + seg.tcpOffset).copyMemory(from: saved.baseAddress!, byteCount: seg.tcpHeaderLength)
                throw fits ? PacketError.noBufferSpace : PacketError.noOptionSpace
            }
        }
        let at = s.eolOffset >= 0 ? s.eolOffset : s.optionsEnd
        (p + at + space).copyMemory(from: p + at, byteCount: s.length - at) // memmove semantics
        store8(p, at, Spec.aoKind)
        store8(p, at + 1, UInt8(optionLength))
        store8(p, at + 2, keyID)
        store8(p, at + 3, rnextKeyID)
        (p + at + Spec.aoHeaderLength).initializeMemory(as: UInt8.self, repeating: 0, count: macLength)
        if space > optionLength {
            (p + at + optionLength).initializeMemory(as: UInt8.self, repeating: Spec.optNOP, count: space - optionLength)
        }
        s.tcpHeaderLength += space
        s.length += space
        setDataOffset(p, s)
        TCPChecksum.setIPLength(p, s, s.length)
        TCPChecksum.replace(p, tcpOffset: s.tcpOffset, removed: removed, added: TCPChecksum.headerSum(p, s))
        try s.scanOptions(p)
        return s
    }

    /// Removes the TCP-AO option, together with the NOPs that padded it to 32 bits when its length
    /// is not a multiple of 4. Returns the segment as it now is. Without AO, returns it unchanged.
    public static func strip(_ p: UnsafeMutableRawPointer, _ seg: TCPSegment) -> TCPSegment {
        guard seg.hasAO else { return seg }
        var s = seg
        let removedSum = TCPChecksum.headerSum(p, s)
        var start = s.aoOffset
        var end = s.aoOffset + s.aoLength
        // Take padding NOPs after, then before, the option until the removal is whole words. A
        // byte after an option starts the next option; a byte before it may be the last data
        // byte of the previous one, so only NOP options found by walking the list are taken.
        let nops = nopRunStart(p, s, before: start)
        while (end - start) & 3 != 0 && end < s.optionsEnd && load8(p, end) == Spec.optNOP { end += 1 }
        while (end - start) & 3 != 0 && start > nops { start -= 1 }
        var cut = end - start
        let leftover = cut & 3
        if leftover != 0 {
            // Not enough NOPs around: keep `leftover` bytes of the option's place as NOPs.
            (p + start).initializeMemory(as: UInt8.self, repeating: Spec.optNOP, count: leftover)
            start += leftover
            cut -= leftover
        }
        (p + start).copyMemory(from: p + end, byteCount: s.length - end) // memmove semantics
        s.tcpHeaderLength -= cut
        s.length -= cut
        setDataOffset(p, s)
        TCPChecksum.setIPLength(p, s, s.length)
        TCPChecksum.replace(p, tcpOffset: s.tcpOffset, removed: removedSum, added: TCPChecksum.headerSum(p, s))
        try? s.scanOptions(p) // cannot fail: the remaining options were valid before
        return s
    }

    /// Lowers the MSS option to `maximum` when it is larger (SYN and SYN-ACK). Returns true when
    /// the value changed.
    @discardableResult
    public static func clampMSS(_ p: UnsafeMutableRawPointer, _ seg: TCPSegment, to maximum: UInt16) -> Bool {
        guard seg.mssOffset >= 0 else { return false }
        let at = seg.mssOffset + 2
        let old = load16(p, at)
        guard old > maximum else { return false }
        let before = TCPChecksum.sumRegion(p, tcpOffset: seg.tcpOffset, at, 2)
        store16(p, at, maximum)
        TCPChecksum.replace(p, tcpOffset: seg.tcpOffset, removed: before,
                            added: TCPChecksum.sumRegion(p, tcpOffset: seg.tcpOffset, at, 2))
        return true
    }

    @inline(__always)
    static func setDataOffset(_ p: UnsafeMutableRawPointer, _ s: TCPSegment) {
        let b = load8(p, s.tcpOffset + 12)
        store8(p, s.tcpOffset + 12, UInt8(s.tcpHeaderLength / 4) << 4 | (b & 0x0F))
    }

    /// Removes the first option of `kind` with the NOPs that aligned it (or pads its place back
    /// to whole words). Lengths are updated; the checksum is left to the caller. Nil when absent.
    static func removeOption(_ p: UnsafeMutableRawPointer, _ seg: TCPSegment, kind: UInt8) -> TCPSegment? {
        var i = seg.optionsOffset
        let endOpts = seg.eolOffset >= 0 ? seg.eolOffset : seg.optionsEnd
        while i < endOpts {
            let k = load8(p, i)
            if k == Spec.optNOP { i += 1; continue }
            guard i + 1 < endOpts else { return nil }
            let len = Int(load8(p, i + 1))
            guard len >= 2, i + len <= endOpts else { return nil }
            if k == kind { return cut(p, seg, start: i, end: i + len) }
            i += len
        }
        return nil
    }

    /// Whether the options hold one of `kind` (a walk that stops at anything malformed).
    static func hasOption(_ p: UnsafeRawPointer, _ seg: TCPSegment, kind: UInt8) -> Bool {
        var i = seg.optionsOffset
        let endOpts = seg.eolOffset >= 0 ? seg.eolOffset : seg.optionsEnd
        while i < endOpts {
            let k = load8(p, i)
            if k == Spec.optNOP { i += 1; continue }
            if k == kind { return true }
            guard i + 1 < endOpts else { return false }
            let len = Int(load8(p, i + 1))
            guard len >= 2 else { return false }
            i += len
        }
        return false
    }

    /// Where the run of NOP options that ends at `before` (an option boundary) starts: `before`
    /// itself when the option before it is not a NOP. Found by walking the option list, since a
    /// byte 0x01 just before an option may be data of the option before it.
    static func nopRunStart(_ p: UnsafeRawPointer, _ seg: TCPSegment, before: Int) -> Int {
        var i = seg.optionsOffset
        var run = i
        while i < before {
            let k = load8(p, i)
            if k == Spec.optNOP {
                i += 1
                continue
            }
            guard k != Spec.optEOL, i + 1 < before else { return before }
            let len = Int(load8(p, i + 1))
            guard len >= 2 else { return before }
            i += len
            run = i
        }
        return i == before ? run : before
    }

    /// Removes [start, end) of the options, widened over adjacent NOPs (or narrowed, leaving NOPs)
    /// so that whole 32-bit words go.
    static func cut(_ p: UnsafeMutableRawPointer, _ seg: TCPSegment, start s0: Int, end e0: Int) -> TCPSegment? {
        var s = seg
        var start = s0, end = e0
        let nops = nopRunStart(p, s, before: start)
        while (end - start) & 3 != 0 && start > nops { start -= 1 }
        while (end - start) & 3 != 0 && end < s.optionsEnd && load8(p, end) == Spec.optNOP { end += 1 }
        let leftover = (end - start) & 3
        if leftover != 0 {
            (p + start).initializeMemory(as: UInt8.self, repeating: Spec.optNOP, count: leftover)
            start += leftover
        }
        let n = end - start
        guard n > 0 else { return nil }
        (p + start).copyMemory(from: p + end, byteCount: s.length - end)
        s.tcpHeaderLength -= n
        s.length -= n
        do { try s.scanOptions(p) } catch { return nil }
        return s
    }

    /// Frees at least `free` bytes (a multiple of 4) of option space by dropping SACK blocks from
    /// the end, or the whole SACK option. Lengths are updated; the checksum is left to the caller.
    static func trimSACK(_ p: UnsafeMutableRawPointer, _ seg: TCPSegment, free: Int) -> TCPSegment? {
        guard seg.sackOffset >= 0 else { return nil }
        let sackLen = Int(load8(p, seg.sackOffset + 1))
        let blocks = (sackLen - 2) / Spec.sackBlockLength
        let drop = (free + Spec.sackBlockLength - 1) / Spec.sackBlockLength
        let end = seg.sackOffset + sackLen
        if drop < blocks {
            // Keep the first blocks (the most recent, RFC 2018 4); the cut is whole words.
            store8(p, seg.sackOffset + 1, UInt8(sackLen - drop * Spec.sackBlockLength))
            return cut(p, seg, start: end - drop * Spec.sackBlockLength, end: end)
        }
        return cut(p, seg, start: seg.sackOffset, end: end)
    }
}
