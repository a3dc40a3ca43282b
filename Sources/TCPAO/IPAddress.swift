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
        var s = String(text)
        guard let v = s.withUTF8({ IPAddress.parse($0) }) else { return nil }
        self = v
    }

    /// Dotted-quad IPv4 or RFC 4291 2.2 IPv6 text (an embedded IPv4 tail allowed), over the
    /// bytes in place: no allocation (a 50,000-peer configuration parses 50,000 prefixes).
    static func parse(_ u: UnsafeBufferPointer<UInt8>) -> IPAddress? {
        if u.contains(0x3A) {
            guard let (h, l) = parseV6(u) else { return nil }
            return IPAddress(v6hi: h, lo: l)
        }
        return parseV4(u).map { IPAddress(v4: $0) }
    }

    static func parseV4(_ u: UnsafeBufferPointer<UInt8>) -> UInt32? {
        var result: UInt32 = 0
        var cur: UInt32 = 0
        var digits = 0, dots = 0
        for c in u {
            if c == 0x2E {
                guard digits > 0, dots < 3 else { return nil }
                result = result << 8 | cur; cur = 0; digits = 0; dots += 1
            } else if c >= 0x30 && c <= 0x39 {
                // No leading zeros: "010" is ambiguous (octal in inet_aton), refuse it.
                if digits == 1 && cur == 0 { return nil }
                cur = cur * 10 + UInt32(c - 0x30); digits += 1
                if cur > 255 { return nil }
            } else { return nil }
        }
        guard digits > 0, dots == 3 else { return nil }
        return result << 8 | cur
    }

    static func parseV6(_ u: UnsafeBufferPointer<UInt8>) -> (UInt64, UInt64)? {
        // Groups left to right; "::" (at most one) marks where the zero groups go; a dotted
        // IPv4 tail counts as two groups and must end the text.
        var g = SIMD8<UInt16>()
        var n = 0
        var gap = -1
        var i = 0
        let end = u.count
        if end >= 2 && u[0] == 0x3A && u[1] == 0x3A {
            gap = 0; i = 2
            if i == end { return (0, 0) }
        }
        while true {
            // One field: up to 4 hex digits, or the IPv4 tail.
            let start = i
            var v: UInt16 = 0
            while i < end && i - start <= 4 {
                let c = u[i], d: UInt16
                switch c {
                case 0x30...0x39: d = UInt16(c - 0x30)
                case 0x61...0x66: d = UInt16(c - 0x61 + 10)
                case 0x41...0x46: d = UInt16(c - 0x41 + 10)
                default: d = 0xFFFF
                }
                if d == 0xFFFF { break }
                v = v << 4 | d
                i += 1
            }
            if i < end && u[i] == 0x2E {
                guard n <= 6, let v4 = parseV4(UnsafeBufferPointer(rebasing: u[start..<end])) else { return nil }
                g[n] = UInt16(v4 >> 16); g[n + 1] = UInt16(v4 & 0xFFFF); n += 2
                break
            }
            guard i > start, i - start <= 4, n < 8 else { return nil }
            g[n] = v; n += 1
            if i == end { break }
            guard u[i] == 0x3A else { return nil }
            i += 1
            if i < end && u[i] == 0x3A {
                guard gap < 0 else { return nil }
                gap = n; i += 1
                if i == end { break }
            } else if i == end {
                return nil
            }
        }
        if gap >= 0 {
            guard n <= 7 else { return nil }
            // Move the groups after the gap to the end.
            let tail = n - gap
            var out = SIMD8<UInt16>()
            for k in 0..<gap { out[k] = g[k] }
            for k in 0..<tail { out[8 - tail + k] = g[gap + k] }
            g = out
        } else {
            guard n == 8 else { return nil }
        }
        var hi: UInt64 = 0, lo: UInt64 = 0
        for k in 0..<4 { hi = hi << 16 | UInt64(g[k]) }
        for k in 4..<8 { lo = lo << 16 | UInt64(g[k]) }
        return (hi, lo)
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
        var s = String(text)
        guard let p = s.withUTF8({ u -> IPPrefix? in
            guard let slash = u.firstIndex(of: 0x2F) else {
                return IPAddress.parse(u).map { IPPrefix(address: $0, length: $0.isV6 ? 128 : 32) }
            }
            guard let a = IPAddress.parse(UnsafeBufferPointer(rebasing: u[..<slash])) else { return nil }
            let maxLen = a.isV6 ? 128 : 32
            // 1-3 decimal digits, no sign.
            let digits = u[(slash + 1)...]
            guard (1...3).contains(digits.count) else { return nil }
            var len = 0
            for c in digits {
                guard c >= 0x30 && c <= 0x39 else { return nil }
                len = len * 10 + Int(c - 0x30)
            }
            guard len <= maxLen else { return nil }
            return IPPrefix(address: a, length: len)
        }) else { return nil }
        self = p
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
