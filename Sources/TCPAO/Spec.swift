// Protocol constants in one place (WireGuard style). Every number here is from an RFC named
// beside it; code elsewhere refers to these names, never to the literals.

public enum Spec {
    // RFC 5925 2.2: the TCP Authentication Option.
    public static let aoKind: UInt8 = 29
    /// Kind, Length, KeyID, RNextKeyID.
    public static let aoHeaderLength = 4
    /// RFC 5925 2.2: "A single TCP segment MUST NOT have more than one TCP-AO"; and MD5 (RFC 2385)
    /// together with AO is discarded.
    public static let md5Kind: UInt8 = 19

    // RFC 9293 3.1 / 3.2: TCP header and options.
    public static let tcpMinHeaderLength = 20
    public static let tcpMaxHeaderLength = 60
    public static let tcpMaxOptionSpace = 40
    public static let optEOL: UInt8 = 0
    public static let optNOP: UInt8 = 1
    public static let optMSS: UInt8 = 2
    public static let optMSSLength = 4
    public static let optWindowScale: UInt8 = 3
    public static let optSACKPermitted: UInt8 = 4
    public static let optSACK: UInt8 = 5 // RFC 2018
    public static let sackBlockLength = 8
    public static let optTimestamps: UInt8 = 8

    // TCP flags (RFC 9293 3.1).
    public static let flagFIN: UInt8 = 0x01
    public static let flagSYN: UInt8 = 0x02
    public static let flagRST: UInt8 = 0x04
    public static let flagPSH: UInt8 = 0x08
    public static let flagACK: UInt8 = 0x10

    // IP (RFC 791, RFC 8200).
    public static let ipProtoTCP: UInt8 = 6
    public static let ipProtoICMP: UInt8 = 1
    public static let ipProtoICMPv6: UInt8 = 58
    public static let ipv4MinHeaderLength = 20
    public static let ipv6HeaderLength = 40
    public static let ipv6HopByHop: UInt8 = 0
    public static let ipv6Routing: UInt8 = 43
    public static let ipv6Fragment: UInt8 = 44
    public static let ipv6DestinationOptions: UInt8 = 60
    public static let ipv6NoNextHeader: UInt8 = 59

    // RFC 5925 5.1: pseudo-header sizes (RFC 793 / RFC 8200 8.1).
    public static let pseudoHeaderLengthV4 = 12
    public static let pseudoHeaderLengthV6 = 40
    /// SNE (4) + IPv6 pseudo-header (40) + maximal TCP header (60).
    public static let maxMACPrefixLength = 4 + 40 + 60

    // RFC 5926 3.1.1: KDF input = i(=1) | Label "TCP-AO" | Context | Output_Length (bits, 16 bit).
    public static let kdfLabel: [UInt8] = Array("TCP-AO".utf8)

    // RFC 5925 7.8: ICMP "hard errors" ignored for synchronized, MKT-matching connections.
    public static let icmpv4DestUnreachable: UInt8 = 3
    public static let icmpv4HardErrorCodes: ClosedRange<UInt8> = 2...4
    public static let icmpv6DestUnreachable: UInt8 = 1
    public static let icmpv6HardErrorCodes: [UInt8] = [1, 4]

    /// The largest MAC we produce (HMAC-SHA-256 untruncated).
    public static let maxMACLength = 32
    /// The largest traffic key (HMAC-SHA-256 KDF output).
    public static let maxTrafficKeyLength = 32
}
