// Big-endian loads and stores over raw packet memory. Packets are not aligned, so every access
// is an unaligned byte-wise load; the optimizer turns these into single moves plus bswap.

@inline(__always) func load8(_ p: UnsafeRawPointer, _ o: Int) -> UInt8 {
    p.load(fromByteOffset: o, as: UInt8.self)
}
@inline(__always) func load16(_ p: UnsafeRawPointer, _ o: Int) -> UInt16 {
    UInt16(bigEndian: p.loadUnaligned(fromByteOffset: o, as: UInt16.self))
}
@inline(__always) func load32(_ p: UnsafeRawPointer, _ o: Int) -> UInt32 {
    UInt32(bigEndian: p.loadUnaligned(fromByteOffset: o, as: UInt32.self))
}
@inline(__always) func store8(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: UInt8) {
    p.storeBytes(of: v, toByteOffset: o, as: UInt8.self)
}
@inline(__always) func store16(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: UInt16) {
    p.storeBytes(of: v.bigEndian, toByteOffset: o, as: UInt16.self)
}
@inline(__always) func store32(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: UInt32) {
    p.storeBytes(of: v.bigEndian, toByteOffset: o, as: UInt32.self)
}

extension Array where Element == UInt8 {
    /// Hex decoding for tests, vectors and configuration; nil on any non-hex character.
    public init?(hex: some StringProtocol) {
        var out: [UInt8] = []
        out.reserveCapacity(hex.utf8.count / 2)
        var high: UInt8? = nil
        for c in hex.utf8 {
            let v: UInt8
            switch c {
            case 0x30...0x39: v = c - 0x30
            case 0x61...0x66: v = c - 0x61 + 10
            case 0x41...0x46: v = c - 0x41 + 10
            case 0x3A, 0x20: continue // tolerate "aa:bb" and "aa bb"
            default: return nil
            }
            if let h = high { out.append(h << 4 | v); high = nil } else { high = v }
        }
        if high != nil { return nil }
        self = out
    }

    public var hexString: String {
        let digits = Array("0123456789abcdef".utf8)
        var s: [UInt8] = []
        s.reserveCapacity(count * 2)
        for b in self { s.append(digits[Int(b >> 4)]); s.append(digits[Int(b & 15)]) }
        return String(decoding: s, as: UTF8.self)
    }
}
