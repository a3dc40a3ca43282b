// The Internet checksum (RFC 1071) and its incremental update (RFC 1624), over raw memory.

public enum InternetChecksum {
    /// Ones-complement sum of `count` bytes at `p`, folded to 16 bits but not complemented.
    /// `count` may be odd (the last byte is padded with zero, RFC 1071).
    @inline(__always)
    public static func sum(_ p: UnsafeRawPointer, _ count: Int, initial: UInt32 = 0) -> UInt32 {
        var acc: UInt64 = 0
        var i = 0
        // 8 bytes at a time into a 64-bit accumulator; the carries are folded at the end.
        while i + 8 <= count {
            let w = p.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            let (s, o) = acc.addingReportingOverflow(w)
            acc = s &+ (o ? 1 : 0)
            i += 8
        }
        var tail: UInt64 = 0
        var shift: UInt64 = 0
        while i < count {
            tail |= UInt64(p.load(fromByteOffset: i, as: UInt8.self)) << shift
            shift += 8
            i += 1
        }
        let (s, o) = acc.addingReportingOverflow(tail)
        acc = s &+ (o ? 1 : 0)
        // Fold 64 -> 16. The words were loaded in host (little-endian) order; the folded sum is
        // byte-swapped at the end, which is how RFC 1071 lets any byte order be used.
        var folded = (acc & 0xFFFF_FFFF) &+ (acc >> 32)
        folded = (folded & 0xFFFF) &+ (folded >> 16)
        folded = (folded & 0xFFFF) &+ (folded >> 16)
        folded = (folded & 0xFFFF) &+ (folded >> 16)
        let le = UInt16(truncatingIfNeeded: folded)
        return add(UInt32(le.byteSwapped), initial)
    }

    @inline(__always)
    public static func add(_ a: UInt32, _ b: UInt32) -> UInt32 {
        var s = a &+ b
        s = (s & 0xFFFF) &+ (s >> 16)
        s = (s & 0xFFFF) &+ (s >> 16)
        return s
    }

    /// Ones-complement subtraction: a - b = a + ~b.
    @inline(__always)
    public static func subtract(_ a: UInt32, _ b: UInt32) -> UInt32 {
        add(a, UInt32(~UInt16(truncatingIfNeeded: fold(b))))
    }

    @inline(__always)
    public static func fold(_ v: UInt32) -> UInt32 {
        var s = v
        s = (s & 0xFFFF) &+ (s >> 16)
        s = (s & 0xFFFF) &+ (s >> 16)
        return s
    }

    @inline(__always)
    public static func finish(_ sum: UInt32) -> UInt16 {
        ~UInt16(truncatingIfNeeded: fold(sum))
    }
}
