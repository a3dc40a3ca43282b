import TCPAO

/// ctnetlink constants, numeric, from the kernel's UAPI headers (so this file needs no C module):
/// linux/netlink.h, linux/netfilter/nfnetlink.h, linux/netfilter/nfnetlink_conntrack.h,
/// linux/socket.h (address families), linux/in.h (IPPROTO_TCP).
enum CTNL {
    // linux/netlink.h
    static let nlmFRequest: UInt16 = 0x01   // NLM_F_REQUEST
    static let nlmFAck: UInt16 = 0x04       // NLM_F_ACK
    static let nlmsgError: UInt16 = 2       // NLMSG_ERROR
    static let nlaFNested: UInt16 = 0x8000  // NLA_F_NESTED
    static let nlaTypeMask: UInt16 = 0x3FFF // NLA_TYPE_MASK
    static let solNetlink: Int32 = 270      // SOL_NETLINK
    static let netlinkCapAck: Int32 = 10    // NETLINK_CAP_ACK: errors do not echo the request's payload
    // linux/netfilter/nfnetlink.h
    static let subsysCtnetlink: UInt16 = 1  // NFNL_SUBSYS_CTNETLINK
    static let nfnetlinkV0: UInt8 = 0       // NFNETLINK_V0
    // linux/netfilter/nfnetlink_conntrack.h: message types are (subsystem << 8) | cntl_msg_types
    static let msgNew: UInt16 = subsysCtnetlink << 8 | 0 // IPCTNL_MSG_CT_NEW (also the GET answer)
    static let msgGet: UInt16 = subsysCtnetlink << 8 | 1 // IPCTNL_MSG_CT_GET
    static let ctaTupleOrig: UInt16 = 1     // enum ctattr_type
    static let ctaLabels: UInt16 = 22
    static let ctaLabelsMask: UInt16 = 23
    static let ctaTupleIP: UInt16 = 1       // enum ctattr_tuple
    static let ctaTupleProto: UInt16 = 2
    static let ctaIPv4Src: UInt16 = 1       // enum ctattr_ip
    static let ctaIPv4Dst: UInt16 = 2
    static let ctaIPv6Src: UInt16 = 3
    static let ctaIPv6Dst: UInt16 = 4
    static let ctaProtoNum: UInt16 = 1      // enum ctattr_l4proto
    static let ctaProtoSrcPort: UInt16 = 2
    static let ctaProtoDstPort: UInt16 = 3
    // linux/socket.h, linux/in.h
    static let afInet: UInt8 = 2
    static let afInet6: UInt8 = 10
    static let ipprotoTCP: UInt8 = 6
    /// struct nlmsghdr + struct nfgenmsg: where a ctnetlink message's attributes start.
    static let headerLength = 16 + 4
    /// NF_CT_LABELS_MAX_SIZE (include/net/netfilter/nf_conntrack_labels.h): 128 bits.
    static let labelBytes = 16
}

/// One netlink message received on the ctnetlink socket, as the label client needs it. `seq` is
/// the message's nlmsg_seq: the kernel copies the request's into its answer (and into the
/// acknowledgement or error), so a late answer to an earlier request is recognised.
enum ConntrackMessage: Equatable {
    /// A conntrack entry (IPCTNL_MSG_CT_NEW, what CT_GET answers). `labelLength` is the length
    /// of CTA_LABELS's value (min(it, 16) bytes were copied); nil when the entry has no
    /// CTA_LABELS. The kernel leaves it out both when the entry has no label space and when all
    /// its label bits are zero (ctnetlink_dump_labels), so "no labels" reads as all zeros.
    case entry(seq: UInt32, labelLength: Int?)
    /// NLMSG_ERROR: `errno` positive, 0 for an acknowledgement (ENOENT: no such entry; ENOSPC on
    /// a label write: the entry has no label space).
    case error(seq: UInt32, errno: Int32)
    /// A ctnetlink entry or error message whose lengths do not hold together (an attribute
    /// running past the message, the message cut short by the receive). `seq` when the header
    /// was readable.
    case malformed(seq: UInt32?)
    /// Anything else (NLMSG_NOOP, NLMSG_DONE, other types), or too short to have a header.
    case foreign(type: UInt16?, seq: UInt32?)
}

/// The ctnetlink codec for reading and writing a TCP connection's conntrack labels: encodes
/// IPCTNL_MSG_CT_GET and label-updating IPCTNL_MSG_CT_NEW requests, parses the answers. Pure
/// functions over caller-provided raw memory: no system calls, no allocation, no global state;
/// the socket (`ConntrackLabels`) only moves bytes.
///
/// Label bytes are the kernel's bitmap as it stores it (struct nf_conn_labels:
/// `unsigned long bits[NF_CT_LABELS_MAX_SIZE / sizeof(long)]`), sent and received raw. On a
/// little-endian machine (x86_64, arm64) label bit N is byte N / 8, bit N % 8 (bit 0 = 0x01 of
/// byte 0; bit 127 = 0x80 of byte 15), the numbering `iptables -m connlabel --label N`,
/// `nft ct label` and `conntrack -o labels` use.
enum ConntrackCodec {
    /// The most bytes an encoder writes (an IPv6 label update: 136).
    static let requestCapacity = 160

    /// Writes an IPCTNL_MSG_CT_GET request for the TCP connection a packet from `src`:`srcPort`
    /// to `dst`:`dstPort` belongs to (either direction's tuple finds the entry:
    /// nf_conntrack_find_get). NLM_F_REQUEST only: the answer is the entry (IPCTNL_MSG_CT_NEW) or
    /// an NLMSG_ERROR (ENOENT: no entry); no acknowledgement follows a found entry. Returns the
    /// message length (72 for IPv4, 96 for IPv6), or 0 when the addresses' families differ.
    static func encodeGet(into p: UnsafeMutableRawPointer, seq: UInt32,
                          src: IPAddress, srcPort: UInt16, dst: IPAddress, dstPort: UInt16) -> Int {
        guard src.isV6 == dst.isV6 else { return 0 }
        var o = header(p, type: CTNL.msgGet, flags: CTNL.nlmFRequest, seq: seq, v6: src.isV6)
        o = tuple(p, o, src: src, srcPort: srcPort, dst: dst, dstPort: dstPort)
        p.storeBytes(of: UInt32(o), as: UInt32.self)
        return o
    }

    /// Writes an IPCTNL_MSG_CT_NEW request that changes the label bits under `mask` of an
    /// existing entry to those of `labels` (16 bytes each) and leaves the others as they are:
    /// label space is shared with nft rules, OVS, tc act_ct. Without NLM_F_CREATE it never
    /// creates an entry (ENOENT when there is none); NLM_F_ACK asks for the acknowledgement.
    /// The value is written as `labels & mask`: nf_connlabels_replace keeps the bits outside the
    /// mask and ORs the value in, so an unmasked 1 would be set too.
    /// Returns the message length (112 for IPv4, 136 for IPv6), or 0 when the families differ.
    static func encodeLabelUpdate(into p: UnsafeMutableRawPointer, seq: UInt32,
                                  src: IPAddress, srcPort: UInt16, dst: IPAddress, dstPort: UInt16,
                                  labels: UnsafeRawPointer, mask: UnsafeRawPointer) -> Int {
        guard src.isV6 == dst.isV6 else { return 0 }
        var o = header(p, type: CTNL.msgNew, flags: CTNL.nlmFRequest | CTNL.nlmFAck, seq: seq, v6: src.isV6)
        o = tuple(p, o, src: src, srcPort: srcPort, dst: dst, dstPort: dstPort)
        o = attr(p, o, CTNL.ctaLabels, CTNL.labelBytes)
        for i in 0..<CTNL.labelBytes {
            let v = labels.load(fromByteOffset: i, as: UInt8.self) & mask.load(fromByteOffset: i, as: UInt8.self)
            p.storeBytes(of: v, toByteOffset: o + i, as: UInt8.self)
        }
        o += CTNL.labelBytes
        o = attr(p, o, CTNL.ctaLabelsMask, CTNL.labelBytes)
        p.advanced(by: o).copyMemory(from: mask, byteCount: CTNL.labelBytes)
        o += CTNL.labelBytes
        p.storeBytes(of: UInt32(o), as: UInt32.self)
        return o
    }

    /// Parses the netlink message at `base` (of `count` bytes received from there on: a datagram
    /// may hold several). For an entry, writes its labels to `labels` (16 bytes: CTA_LABELS's
    /// first 16 bytes, zeros where it is shorter or absent); writes nothing there otherwise.
    /// Returns the message and the bytes it takes (NLMSG_ALIGN(nlmsg_len)), or `count` when it
    /// cannot be delimited (the rest of the datagram is then unusable). Reads nothing at or past
    /// `base + count`.
    static func parse(_ base: UnsafeRawPointer, count: Int,
                      labels: UnsafeMutableRawPointer) -> (message: ConntrackMessage, length: Int) {
        guard count >= 16 else { return (.foreign(type: nil, seq: nil), max(count, 0)) }
        let messageLength = Int(base.loadUnaligned(as: UInt32.self))
        let type = base.loadUnaligned(fromByteOffset: 4, as: UInt16.self)
        let seq = base.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
        guard messageLength >= 16, messageLength <= count else {
            let ours = type == CTNL.nlmsgError || type == CTNL.msgNew
            return (ours ? .malformed(seq: seq) : .foreign(type: type, seq: seq), count)
        }
        let used = min((messageLength + 3) & ~3, count)
        switch type {
        case CTNL.nlmsgError:
            // struct nlmsgerr { int error; struct nlmsghdr msg; ... }
            guard messageLength >= 20 else { return (.malformed(seq: seq), used) }
            let code = base.loadUnaligned(fromByteOffset: 16, as: Int32.self)
            let e = code == Int32.min ? Int32.max : (code < 0 ? -code : code)
            return (.error(seq: seq, errno: e), used)
        case CTNL.msgNew:
            guard messageLength >= CTNL.headerLength else { return (.malformed(seq: seq), used) }
            // Only the top level is walked: nested attributes (tuples, protoinfo, counters) are
            // skipped whole by their length.
            var found: (offset: Int, length: Int)?
            var off = CTNL.headerLength
            while off + 4 <= messageLength {
                let alen = Int(base.loadUnaligned(fromByteOffset: off, as: UInt16.self))
                let atype = base.loadUnaligned(fromByteOffset: off + 2, as: UInt16.self) & CTNL.nlaTypeMask
                guard alen >= 4, off + alen <= messageLength else { return (.malformed(seq: seq), used) }
                if atype == CTNL.ctaLabels { found = (off + 4, alen - 4) }
                off += (alen + 3) & ~3
            }
            labels.initializeMemory(as: UInt8.self, repeating: 0, count: CTNL.labelBytes)
            if let f = found {
                labels.copyMemory(from: base + f.offset, byteCount: min(f.length, CTNL.labelBytes))
            }
            return (.entry(seq: seq, labelLength: found?.length), used)
        default:
            return (.foreign(type: type, seq: seq), used)
        }
    }

    // MARK: encoding pieces

    /// struct nlmsghdr (length filled in last; pid 0: to the kernel) and struct nfgenmsg
    /// { u8 family; u8 version; be16 res_id; } with the tuple's family. Returns the next offset.
    @inline(__always)
    private static func header(_ p: UnsafeMutableRawPointer, type: UInt16, flags: UInt16, seq: UInt32, v6: Bool) -> Int {
        p.storeBytes(of: UInt32(0), toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: type, toByteOffset: 4, as: UInt16.self)
        p.storeBytes(of: flags, toByteOffset: 6, as: UInt16.self)
        p.storeBytes(of: seq, toByteOffset: 8, as: UInt32.self)
        p.storeBytes(of: UInt32(0), toByteOffset: 12, as: UInt32.self)
        p.storeBytes(of: v6 ? CTNL.afInet6 : CTNL.afInet, toByteOffset: 16, as: UInt8.self)
        p.storeBytes(of: CTNL.nfnetlinkV0, toByteOffset: 17, as: UInt8.self)
        p.storeBytes(of: UInt16(0), toByteOffset: 18, as: UInt16.self)
        return CTNL.headerLength
    }

    /// An attribute header for a value of `length` bytes, the padding after the value zeroed.
    /// Returns the value's offset.
    @inline(__always)
    private static func attr(_ p: UnsafeMutableRawPointer, _ o: Int, _ type: UInt16, _ length: Int) -> Int {
        let padded = (length + 3) & ~3
        if padded > length {
            // The last 4 bytes of the padded value; the value is written over its part of them.
            p.storeBytes(of: UInt32(0), toByteOffset: o + 4 + padded - 4, as: UInt32.self)
        }
        p.storeBytes(of: UInt16(4 + length), toByteOffset: o, as: UInt16.self)
        p.storeBytes(of: type, toByteOffset: o + 2, as: UInt16.self)
        return o + 4
    }

    /// CTA_TUPLE_ORIG { CTA_TUPLE_IP { src, dst }, CTA_TUPLE_PROTO { NUM 6, SRC_PORT, DST_PORT } },
    /// the nests flagged NLA_F_NESTED, addresses and ports in network order
    /// (ctnetlink_parse_tuple_ip / _proto: nla_get_in_addr, nla_get_be16). Returns the end.
    @inline(__always)
    private static func tuple(_ p: UnsafeMutableRawPointer, _ start: Int,
                              src: IPAddress, srcPort: UInt16, dst: IPAddress, dstPort: UInt16) -> Int {
        let a = src.byteCount
        let ipLength = 4 + 2 * (4 + a)
        let protoLength = 4 + 3 * 8
        var o = attr(p, start, CTNL.ctaTupleOrig | CTNL.nlaFNested, ipLength + protoLength)
        o = attr(p, o, CTNL.ctaTupleIP | CTNL.nlaFNested, ipLength - 4)
        o = attr(p, o, src.isV6 ? CTNL.ctaIPv6Src : CTNL.ctaIPv4Src, a)
        o += src.write(to: p, at: o)
        o = attr(p, o, dst.isV6 ? CTNL.ctaIPv6Dst : CTNL.ctaIPv4Dst, a)
        o += dst.write(to: p, at: o)
        o = attr(p, o, CTNL.ctaTupleProto | CTNL.nlaFNested, protoLength - 4)
        o = attr(p, o, CTNL.ctaProtoNum, 1)
        p.storeBytes(of: CTNL.ipprotoTCP, toByteOffset: o, as: UInt8.self)
        o += 4
        o = attr(p, o, CTNL.ctaProtoSrcPort, 2)
        p.storeBytes(of: srcPort.bigEndian, toByteOffset: o, as: UInt16.self)
        o += 4
        o = attr(p, o, CTNL.ctaProtoDstPort, 2)
        p.storeBytes(of: dstPort.bigEndian, toByteOffset: o, as: UInt16.self)
        return o + 4
    }
}
