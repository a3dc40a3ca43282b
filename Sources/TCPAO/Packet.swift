// Views over raw IP packets carrying TCP. Parsing never traps: every length is checked and
// malformed input yields a `PacketError`. Offsets are from the start of the IP header.

public enum PacketError: Error, Equatable, Sendable {
    case truncated
    case badIPVersion
    case badIPv4HeaderLength
    case badIPTotalLength
    case notTCP
    case fragment
    case jumbogram
    case unsupportedExtensionHeader(UInt8)
    case routingHeaderNotFinal
    case badDataOffset
    case badOptionLength
    case optionOverrun
    case duplicateAO
    case aoTooShort
    case md5WithAO
    /// The AO option's length is not 4 + the MKT's MAC length (RFC 5925 7.5 step 2.a).
    case aoLengthMismatch
    /// No room for AO in the 40-byte option space, even without SACK blocks (RFC 5925 7.6).
    case noOptionSpace
    /// The packet buffer cannot grow by the AO option.
    case noBufferSpace

    /// A stable short name, used as a counter label and in verify-pcap's output.
    public var name: String {
        switch self {
        case .truncated: "truncated"
        case .badIPVersion: "bad-ip-version"
        case .badIPv4HeaderLength: "bad-ipv4-header-length"
        case .badIPTotalLength: "bad-ip-total-length"
        case .notTCP: "not-tcp"
        case .fragment: "fragment"
        case .jumbogram: "jumbogram"
        case .unsupportedExtensionHeader: "unsupported-extension-header"
        case .routingHeaderNotFinal: "routing-header-not-final"
        case .badDataOffset: "bad-data-offset"
        case .badOptionLength: "bad-option-length"
        case .optionOverrun: "option-overrun"
        case .duplicateAO: "duplicate-ao"
        case .aoTooShort: "ao-too-short"
        case .md5WithAO: "md5-with-ao"
        case .aoLengthMismatch: "ao-length-mismatch"
        case .noOptionSpace: "no-option-space"
        case .noBufferSpace: "no-buffer-space"
        }
    }
}

/// A parsed TCP segment inside an IPv4 or IPv6 packet. Plain value, no references to the bytes:
/// the caller keeps the buffer and passes it back to the editing and MAC functions.
public struct TCPSegment: Sendable, Equatable {
    public var isV6: Bool
    /// Bytes of the IP packet (IPv4 total length / 40 + IPv6 payload length); trailing bytes of the
    /// buffer (link padding) are not part of it.
    public var length: Int
    public var tcpOffset: Int
    public var tcpHeaderLength: Int
    public var src: IPAddress
    public var dst: IPAddress
    public var srcPort: UInt16
    public var dstPort: UInt16
    public var seq: UInt32
    public var ack: UInt32
    public var flags: UInt8
    /// Offset of the AO option (its Kind byte), or -1.
    public var aoOffset: Int
    /// The AO option's Length field, 0 when absent.
    public var aoLength: Int
    /// Offset of the MSS option, or -1.
    public var mssOffset: Int
    /// Offset of the SACK option, or -1.
    public var sackOffset: Int
    /// Offset of the End-of-Option-List byte, or -1.
    public var eolOffset: Int

    @inline(__always) public var payloadOffset: Int { tcpOffset + tcpHeaderLength }
    @inline(__always) public var payloadLength: Int { length - tcpOffset - tcpHeaderLength }
    /// TCP length as in the pseudo-header: header plus payload.
    @inline(__always) public var tcpLength: Int { length - tcpOffset }
    @inline(__always) public var hasAO: Bool { aoOffset >= 0 }
    @inline(__always) public var isSYN: Bool { flags & Spec.flagSYN != 0 }
    @inline(__always) public var isACK: Bool { flags & Spec.flagACK != 0 }
    @inline(__always) public var isRST: Bool { flags & Spec.flagRST != 0 }
    @inline(__always) public var isFIN: Bool { flags & Spec.flagFIN != 0 }
    /// RFC 5925 5.2: "SYN segments (SYN set, no ACK set)" use a destination ISN of zero.
    @inline(__always) public var isSYNWithoutACK: Bool { flags & (Spec.flagSYN | Spec.flagACK) == Spec.flagSYN }
    /// Sequence space the segment occupies (SYN and FIN count one each).
    @inline(__always) public var sequenceLength: UInt32 {
        UInt32(truncatingIfNeeded: payloadLength) &+ (isSYN ? 1 : 0) &+ (isFIN ? 1 : 0)
    }
    @inline(__always) public var optionsOffset: Int { tcpOffset + Spec.tcpMinHeaderLength }
    @inline(__always) public var optionsEnd: Int { tcpOffset + tcpHeaderLength }

    /// Parses the IP and TCP headers at `p` (at most `count` bytes).
    public static func parse(_ p: UnsafeRawPointer, count: Int) throws(PacketError) -> TCPSegment {
        let ip = try IPHeaderInfo.parse(p, count: count)
        guard ip.protocolNumber == Spec.ipProtoTCP else { throw .notTCP }
        return try parseTCP(p, ip: ip)
    }

    static func parseTCP(_ p: UnsafeRawPointer, ip: IPHeaderInfo) throws(PacketError) -> TCPSegment {
        let t = ip.payloadOffset
        guard ip.length - t >= Spec.tcpMinHeaderLength else { throw .truncated }
        let doff = Int(load8(p, t + 12) >> 4) * 4
        guard doff >= Spec.tcpMinHeaderLength, doff <= ip.length - t else { throw .badDataOffset }
        var seg = TCPSegment(
            isV6: ip.isV6, length: ip.length, tcpOffset: t, tcpHeaderLength: doff,
            src: ip.src, dst: ip.dst,
            srcPort: load16(p, t), dstPort: load16(p, t + 2),
            seq: load32(p, t + 4), ack: load32(p, t + 8), flags: load8(p, t + 13),
            aoOffset: -1, aoLength: 0, mssOffset: -1, sackOffset: -1, eolOffset: -1)
        try seg.scanOptions(p)
        return seg
    }

    /// Walks the options (RFC 9293 3.2): kinds 0 and 1 are single bytes, every other kind has a
    /// length byte >= 2 that must stay inside the header.
    mutating func scanOptions(_ p: UnsafeRawPointer) throws(PacketError) {
        aoOffset = -1; aoLength = 0; mssOffset = -1; sackOffset = -1; eolOffset = -1
        var i = optionsOffset
        let end = optionsEnd
        var sawMD5 = false
        while i < end {
            let kind = load8(p, i)
            if kind == Spec.optEOL { eolOffset = i; break }
            if kind == Spec.optNOP { i += 1; continue }
            guard i + 1 < end else { throw .optionOverrun }
            let len = Int(load8(p, i + 1))
            guard len >= 2 else { throw .badOptionLength }
            guard i + len <= end else { throw .optionOverrun }
            switch kind {
            case Spec.aoKind:
                // RFC 5925 2.2: more than one TCP-AO -> discard; Length < 4 -> discard.
                guard aoOffset < 0 else { throw .duplicateAO }
                guard len >= Spec.aoHeaderLength else { throw .aoTooShort }
                aoOffset = i; aoLength = len
            case Spec.md5Kind: sawMD5 = true
            case Spec.optMSS: if len == Spec.optMSSLength { mssOffset = i } else { throw .badOptionLength }
            case Spec.optSACK: sackOffset = i
            default: break
            }
            i += len
        }
        // RFC 5925 2.2: "When both options appear, TCP MUST silently discard the segment."
        if sawMD5 && aoOffset >= 0 { throw .md5WithAO }
    }

    @inline(__always) public func aoKeyID(_ p: UnsafeRawPointer) -> UInt8 { load8(p, aoOffset + 2) }
    @inline(__always) public func aoRNextKeyID(_ p: UnsafeRawPointer) -> UInt8 { load8(p, aoOffset + 3) }
    @inline(__always) public var aoMACLength: Int { aoLength - Spec.aoHeaderLength }
    public func mss(_ p: UnsafeRawPointer) -> UInt16? { mssOffset >= 0 ? load16(p, mssOffset + 2) : nil }
}

/// The IP layer of a packet: addresses, the upper-layer protocol and where it starts.
public struct IPHeaderInfo: Sendable, Equatable {
    public var isV6: Bool
    public var length: Int
    public var payloadOffset: Int
    public var protocolNumber: UInt8
    public var src: IPAddress
    public var dst: IPAddress

    public static func parse(_ p: UnsafeRawPointer, count: Int) throws(PacketError) -> IPHeaderInfo {
        guard count >= 1 else { throw .truncated }
        switch load8(p, 0) >> 4 {
        case 4: return try parseV4(p, count: count)
        case 6: return try parseV6(p, count: count)
        default: throw .badIPVersion
        }
    }

    static func parseV4(_ p: UnsafeRawPointer, count: Int) throws(PacketError) -> IPHeaderInfo {
        guard count >= Spec.ipv4MinHeaderLength else { throw .truncated }
        let ihl = Int(load8(p, 0) & 0x0F) * 4
        guard ihl >= Spec.ipv4MinHeaderLength else { throw .badIPv4HeaderLength }
        let total = Int(load16(p, 2))
        guard total >= ihl else { throw .badIPTotalLength }
        guard total <= count else { throw .truncated }
        // MF set or a non-zero fragment offset: a fragment. Reassembly is the kernel's job
        // (nf_defrag runs before our hooks); a fragment that reaches us is refused.
        if load16(p, 6) & 0x3FFF != 0 { throw .fragment }
        return IPHeaderInfo(isV6: false, length: total, payloadOffset: ihl, protocolNumber: load8(p, 9),
                            src: IPAddress(v4At: p, 12), dst: IPAddress(v4At: p, 16))
    }

    static func parseV6(_ p: UnsafeRawPointer, count: Int) throws(PacketError) -> IPHeaderInfo {
        guard count >= Spec.ipv6HeaderLength else { throw .truncated }
        let plen = Int(load16(p, 4))
        // Payload length 0 with a Hop-by-Hop header means a jumbogram (RFC 2675): refused.
        if plen == 0 && load8(p, 6) == Spec.ipv6HopByHop { throw .jumbogram }
        let total = Spec.ipv6HeaderLength + plen
        guard total <= count else { throw .truncated }
        var next = load8(p, 6)
        var off = Spec.ipv6HeaderLength
        // Walk the extension headers RFC 8200 4.1 lists before an upper layer we can handle.
        while true {
            switch next {
            case Spec.ipv6HopByHop, Spec.ipv6DestinationOptions, Spec.ipv6Routing:
                guard off + 8 <= total else { throw .truncated }
                let len = (Int(load8(p, off + 1)) + 1) * 8
                guard off + len <= total else { throw .truncated }
                // The pseudo-header's destination is the final one (RFC 8200 8.1); with segments
                // left the final destination is inside the routing header: refused.
                if next == Spec.ipv6Routing && load8(p, off + 3) != 0 { throw .routingHeaderNotFinal }
                next = load8(p, off)
                off += len
            case Spec.ipv6Fragment:
                throw .fragment
            case 50, 51, 135, 139, 140, 253, 254:
                // ESP, AH, Mobility, HIP, Shim6, experimental: extension headers we do not walk,
                // so the TCP header behind them (if any) cannot be found.
                throw .unsupportedExtensionHeader(next)
            default:
                return IPHeaderInfo(isV6: true, length: total, payloadOffset: off, protocolNumber: next,
                                    src: IPAddress(v6At: p, 8), dst: IPAddress(v6At: p, 24))
            }
        }
    }
}

/// An ICMP error that quotes a TCP segment (RFC 792, RFC 4443): what RFC 5925 7.8 asks about.
public struct ICMPErrorInfo: Sendable, Equatable {
    public var isV6: Bool
    public var type: UInt8
    public var code: UInt8
    /// The quoted segment's addresses and ports as the *quoted* packet had them, i.e. the
    /// segment we (or the protected host) sent: src is the local side.
    public var quotedSrc: IPAddress
    public var quotedDst: IPAddress
    public var quotedSrcPort: UInt16
    public var quotedDstPort: UInt16
    public var quotedSeq: UInt32

    /// RFC 5925 7.8: ICMPv4 type 3 codes 2-4, ICMPv6 type 1 codes 1 and 4.
    public var isHardError: Bool {
        if isV6 { return type == Spec.icmpv6DestUnreachable && Spec.icmpv6HardErrorCodes.contains(code) }
        return type == Spec.icmpv4DestUnreachable && Spec.icmpv4HardErrorCodes.contains(code)
    }

    /// Parses an ICMP or ICMPv6 destination-unreachable style error quoting a TCP header.
    /// Returns nil for anything else (echo, other protocols, short quotes).
    public static func parse(_ p: UnsafeRawPointer, count: Int) -> ICMPErrorInfo? {
        guard let ip = try? IPHeaderInfo.parse(p, count: count) else { return nil }
        let o = ip.payloadOffset
        let isError: Bool
        if ip.isV6 {
            guard ip.protocolNumber == Spec.ipProtoICMPv6, ip.length - o >= 8 else { return nil }
            isError = load8(p, o) < 128 // RFC 4443 2.1: error messages have types 0-127
        } else {
            guard ip.protocolNumber == Spec.ipProtoICMP, ip.length - o >= 8 else { return nil }
            let t = load8(p, o)
            isError = t == 3 || t == 11 || t == 12 || t == 5
        }
        guard isError else { return nil }
        let inner = o + 8
        let innerCount = ip.length - inner
        guard innerCount > 0 else { return nil }
        let q = p + inner
        // The quote is truncated by design; parse just the headers we need.
        let quotedIP: IPHeaderInfo
        if ip.isV6 {
            guard innerCount >= Spec.ipv6HeaderLength + 8, load8(q, 0) >> 4 == 6, load8(q, 6) == Spec.ipProtoTCP else { return nil }
            quotedIP = IPHeaderInfo(isV6: true, length: innerCount, payloadOffset: Spec.ipv6HeaderLength,
                                    protocolNumber: Spec.ipProtoTCP, src: IPAddress(v6At: q, 8), dst: IPAddress(v6At: q, 24))
        } else {
            guard innerCount >= Spec.ipv4MinHeaderLength, load8(q, 0) >> 4 == 4 else { return nil }
            let ihl = Int(load8(q, 0) & 0x0F) * 4
            guard ihl >= 20, innerCount >= ihl + 8, load8(q, 9) == Spec.ipProtoTCP else { return nil }
            quotedIP = IPHeaderInfo(isV6: false, length: innerCount, payloadOffset: ihl,
                                    protocolNumber: Spec.ipProtoTCP, src: IPAddress(v4At: q, 12), dst: IPAddress(v4At: q, 16))
        }
        let t = quotedIP.payloadOffset
        return ICMPErrorInfo(isV6: ip.isV6, type: load8(p, o), code: load8(p, o + 1),
                             quotedSrc: quotedIP.src, quotedDst: quotedIP.dst,
                             quotedSrcPort: load16(q, t), quotedDstPort: load16(q, t + 2), quotedSeq: load32(q, t + 4))
    }
}
