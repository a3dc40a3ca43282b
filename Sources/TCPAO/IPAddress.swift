// An IPv4 or IPv6 address as a value: 128 bits plus the family, no heap, hashable.
// Parsing and printing are done here (not with inet_pton) so the core needs no networking libc.

public struct IPAddress: Hashable, Sendable, Comparable, Codable, CustomStringConvertible {
    /// Bytes 0..7 and 8..15 of the address in network order, read as big-endian integers.
    /// IPv4 addresses live in the low 32 bits of `lo`, `hi` is 0.
    public var hi: UInt64
    public var lo: UInt64
    public var isV6: Bool

    public init(v4: UInt32) { hi = 0; lo = UInt64(v4); isV6 = false }
    public init(v6hi: UInt64, lo: UInt64) { hi = v6hi; self.lo = lo; isV6 = true }

    @inline(__always)
    public init(v4At p: UnsafeRawPointer, _ o: Int) { self.init(v4: load32(p, o)) }

    @inline(__always)
    public init(v6At p: UnsafeRawPointer, _ o: Int) {
        hi = UInt64(bigEndian: p.loadUnaligned(fromByteOffset: o, as: UInt64.self))
        lo = UInt64(bigEndian: p.loadUnaligned(fromByteOffset: o + 8, as: UInt64.self))
        isV6 = true
    }

    public var byteCount: Int { isV6 ? 16 : 4 }

    /// Writes the address in network order; returns the number of bytes written (4 or 16).
    @inline(__always) @discardableResult
    public func write(to p: UnsafeMutableRawPointer, at o: Int) -> Int {
        if isV6 {
            p.storeBytes(of: hi.bigEndian, toByteOffset: o, as: UInt64.self)
            p.storeBytes(of: lo.bigEndian, toByteOffset: o + 8, as: UInt64.self)
            return 16
        }
        store32(p, o, UInt32(truncatingIfNeeded: lo))
        return 4
    }

    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: byteCount)
        out.withUnsafeMutableBytes { _ = write(to: $0.baseAddress!, at: 0) }
        return out
    }

    public static func < (a: IPAddress, b: IPAddress) -> Bool {
        if a.isV6 != b.isV6 { return !a.isV6 }
        return (a.hi, a.lo) < (b.hi, b.lo)
    }

    // MARK: parsing

    public init?(_ text: some StringProtocol) {
        let s = String(text)
        if s.contains(":") {
            guard let (h, l) = IPAddress.parseV6(Array(s.utf8)) else { return nil }
            self.init(v6hi: h, lo: l)
        } else {
            guard let v = IPAddress.parseV4(Array(s.utf8)) else { return nil }
            self.init(v4: v)
        }
    }

    static func parseV4(_ u: [UInt8]) -> UInt32? {
        var parts: [UInt32] = []
        var cur: UInt32 = 0
        var digits = 0
        for c in u {
            if c == 0x2E {
                guard digits > 0 else { return nil }
                parts.append(cur); cur = 0; digits = 0
            } else if c >= 0x30 && c <= 0x39 {
                // No leading zeros: "010" is ambiguous (octal in inet_aton), refuse it.
                if digits == 1 && cur == 0 { return nil }
                cur = cur * 10 + UInt32(c - 0x30); digits += 1
                if cur > 255 { return nil }
            } else { return nil }
        }
        guard digits > 0 else { return nil }
        parts.append(cur)
        guard parts.count == 4 else { return nil }
        return parts[0] << 24 | parts[1] << 16 | parts[2] << 8 | parts[3]
    }

    static func parseV6(_ u: [UInt8]) -> (UInt64, UInt64)? {
        // Split at "::" (at most one), parse groups on each side; an embedded IPv4 tail is allowed.
        let text = u
        var head: [UInt16] = []
        var tail: [UInt16] = []
        var sawDouble = false
        func groups(_ part: ArraySlice<UInt8>) -> [UInt16]? {
            if part.isEmpty { return [] }
            var out: [UInt16] = []
            let fields = part.split(separator: 0x3A, omittingEmptySubsequences: false)
            for (i, f) in fields.enumerated() {
                if f.isEmpty { return nil }
                if f.contains(0x2E) {
                    guard i == fields.count - 1, let v4 = parseV4(Array(f)) else { return nil }
                    out.append(UInt16(v4 >> 16)); out.append(UInt16(v4 & 0xFFFF))
                    continue
                }
                guard f.count <= 4 else { return nil }
                var v: UInt16 = 0
                for c in f {
                    let d: UInt16
                    switch c {
                    case 0x30...0x39: d = UInt16(c - 0x30)
                    case 0x61...0x66: d = UInt16(c - 0x61 + 10)
                    case 0x41...0x46: d = UInt16(c - 0x41 + 10)
                    default: return nil
                    }
                    v = v << 4 | d
                }
                out.append(v)
            }
            return out
        }
        if let r = findDoubleColon(text) {
            sawDouble = true
            guard let h = groups(text[..<r]), let t = groups(text[(r + 2)...]) else { return nil }
            if findDoubleColon(Array(text[(r + 2)...])) != nil { return nil }
            head = h; tail = t
        } else {
            guard let h = groups(text[...]) else { return nil }
            head = h
        }
        let total = head.count + tail.count
        if sawDouble ? total > 7 : total != 8 { return nil }
        let all = head + [UInt16](repeating: 0, count: 8 - total) + tail
        var hi: UInt64 = 0, lo: UInt64 = 0
        for i in 0..<4 { hi = hi << 16 | UInt64(all[i]) }
        for i in 4..<8 { lo = lo << 16 | UInt64(all[i]) }
        return (hi, lo)
    }

    private static func findDoubleColon(_ u: [UInt8]) -> Int? {
        var i = 0
        while i + 1 < u.count {
            if u[i] == 0x3A && u[i + 1] == 0x3A { return i }
            i += 1
        }
        return nil
    }

    // MARK: printing (RFC 5952 for IPv6)

    public var description: String {
        if !isV6 {
            let v = UInt32(truncatingIfNeeded: lo)
            return "\(v >> 24).\(v >> 16 & 255).\(v >> 8 & 255).\(v & 255)"
        }
        var g = [UInt16](repeating: 0, count: 8)
        for i in 0..<4 { g[i] = UInt16(truncatingIfNeeded: hi >> (48 - 16 * UInt64(i))) }
        for i in 0..<4 { g[4 + i] = UInt16(truncatingIfNeeded: lo >> (48 - 16 * UInt64(i))) }
        // Longest run of zero groups (length >= 2), first one on ties.
        var bestStart = -1, bestLen = 0, i = 0
        while i < 8 {
            if g[i] == 0 {
                var j = i
                while j < 8 && g[j] == 0 { j += 1 }
                if j - i > bestLen && j - i >= 2 { bestStart = i; bestLen = j - i }
                i = j
            } else { i += 1 }
        }
        var out = ""
        i = 0
        while i < 8 {
            if i == bestStart {
                out += "::"
                i += bestLen
                continue
            }
            if !out.isEmpty && !out.hasSuffix(":") { out += ":" }
            out += String(g[i], radix: 16)
            i += 1
        }
        return out
    }
}

/// An address prefix such as 192.0.2.0/24 or 2001:db8::/32.
public struct IPPrefix: Hashable, Sendable, CustomStringConvertible {
    public var address: IPAddress
    public var length: Int

    public init?(_ text: some StringProtocol) {
        let s = String(text)
        let parts = s.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let a = IPAddress(parts[0]) else { return nil }
        let maxLen = a.isV6 ? 128 : 32
        var len = maxLen
        if parts.count == 2 {
            guard let l = Int(parts[1]), (0...maxLen).contains(l), !parts[1].hasPrefix("+") else { return nil }
            len = l
        }
        address = a
        length = len
    }

    public init(address: IPAddress, length: Int) { self.address = address; self.length = length }

    /// True when bits beyond the prefix length are zero (192.0.2.0/24, not 192.0.2.1/24).
    public var isCanonical: Bool { masked(address) == address }

    @inline(__always)
    public func masked(_ a: IPAddress) -> IPAddress {
        var r = a
        if a.isV6 {
            if length <= 64 {
                r.hi = length == 0 ? 0 : a.hi & ~(UInt64.max >> UInt64(length))
                r.lo = 0
            } else {
                r.lo = length == 128 ? a.lo : a.lo & ~(UInt64.max >> UInt64(length - 64))
            }
        } else {
            let mask: UInt64 = length == 0 ? 0 : (0xFFFF_FFFF << UInt64(32 - length)) & 0xFFFF_FFFF
            r.lo = a.lo & mask
        }
        return r
    }

    @inline(__always)
    public func contains(_ a: IPAddress) -> Bool {
        a.isV6 == address.isV6 && masked(a) == masked(address)
    }

    public func overlaps(_ other: IPPrefix) -> Bool {
        guard address.isV6 == other.address.isV6 else { return false }
        let shorter = length <= other.length ? self : other
        let longer = length <= other.length ? other : self
        return shorter.contains(longer.address)
    }

    public var description: String { "\(address)/\(length)" }
}
