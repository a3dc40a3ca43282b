// Netlink messages built byte by byte for the codec tests (NFQUEUE and ctnetlink), from the
// kernel's UAPI layout rather than with the code under test:
//   struct nlmsghdr { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }   (host order)
//   struct nlattr   { u16 len; u16 type; } value, padded to 4 bytes
protocol NetlinkBytes {}

extension NetlinkBytes {
    static func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
    static func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
    static func be32(_ v: UInt32) -> [UInt8] { (0..<4).reversed().map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

    /// A netlink attribute, padded to 4 bytes; `length` overrides nla_len.
    static func attr(_ type: UInt16, _ value: [UInt8], length: UInt16? = nil) -> [UInt8] {
        var a = le16(length ?? UInt16(4 + value.count)) + le16(type) + value
        while a.count % 4 != 0 { a.append(0) }
        return a
    }

    static func nlmsg(type: UInt16, flags: UInt16 = 0, seq: UInt32 = 0, body: [UInt8], length: UInt32? = nil) -> [UInt8] {
        le32(length ?? UInt32(16 + body.count)) + le16(type) + le16(flags) + le32(seq) + le32(0) + body
    }
}
