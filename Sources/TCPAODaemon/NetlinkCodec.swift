import CNetfilterQueue

/// Netfilter and netlink constants used by the data path, from the kernel's UAPI headers
/// (linux/netlink.h, linux/netfilter/nfnetlink_queue.h), in one place.
enum NF {
    static let drop: Int32 = 0       // NF_DROP
    static let accept: Int32 = 1     // NF_ACCEPT
    static let hookLocalIn: UInt8 = 1
    static let hookForward: UInt8 = 2
    static let hookLocalOut: UInt8 = 3
    static let msgPacket = UInt16(NFNL_SUBSYS_QUEUE) << 8 | UInt16(NFQNL_MSG_PACKET.rawValue)
    static let msgVerdict = UInt16(NFNL_SUBSYS_QUEUE) << 8 | UInt16(NFQNL_MSG_VERDICT.rawValue)
    static let nlmsgError = UInt16(NLMSG_ERROR)
    static let attrPacketHdr = UInt16(NFQA_PACKET_HDR.rawValue)
    static let attrVerdictHdr = UInt16(NFQA_VERDICT_HDR.rawValue)
    static let attrPayload = UInt16(NFQA_PAYLOAD.rawValue)
    static let attrInDev = UInt16(NFQA_IFINDEX_INDEV.rawValue)
    static let attrOutDev = UInt16(NFQA_IFINDEX_OUTDEV.rawValue)
    static let attrCapLen = UInt16(NFQA_CAP_LEN.rawValue)
    static let attrMark = UInt16(NFQA_MARK.rawValue)
    static let nlaTypeMask: UInt16 = 0x3FFF // NLA_TYPE_MASK: strips NLA_F_NESTED / NLA_F_NET_BYTEORDER
    /// NFQNL_MAX_COPY_RANGE (0xffff - NLA_HDRLEN): the largest packet a verdict can carry.
    static let maxPacket = 65531
    /// struct nlmsghdr + struct nfgenmsg: where a queue message's attributes start.
    static let headerLength = 16 + 4
    /// struct nfqnl_msg_packet_hdr { be32 packet_id; be16 hw_protocol; u8 hook; } (packed).
    static let packetHdrLength = 7
    static let solNetlink: Int32 = 270
    static let netlinkNoENOBUFS: Int32 = 5
    static let netlinkExtAck: Int32 = 11
}

/// One packet of a received batch, parsed from its netlink message. The payload points into the
/// receive slot, whose free tail lets the packet grow in place.
struct QueuedPacket: Equatable {
    var id: UInt32
    var hook: UInt8
    var inDev: UInt32
    var outDev: UInt32
    var payload: UnsafeMutableRawPointer?
    var length: Int
    /// Bytes available at `payload` for the packet to grow into.
    var capacity: Int
    /// The kernel copied less than the whole packet (NFQA_CAP_LEN): it cannot be edited.
    var truncated: Bool
    /// skb->mark (NFQA_MARK; 0 when absent): the rules' HMARK spread sets it, the verdict
    /// gives the packet back its own (`encodeVerdict`'s mark).
    var mark: UInt32 = 0
}

/// What one received netlink message is, for the worker.
enum NFQMessage: Equatable {
    /// A queued packet, whole and well-formed.
    case packet(QueuedPacket)
    /// A packet message that cannot be used: an attribute with a bad length, a short fixed-size
    /// attribute, or the message cut short by the receive (nlmsg_len > bytes received, MSG_TRUNC).
    /// With its id known it must still get a verdict (DROP), or it waits in the kernel's queue;
    /// without one (no readable packet header) nothing can answer it.
    case malformedPacket(id: UInt32?)
    /// NLMSG_ERROR from the kernel: `errno` (positive; 0 is an acknowledgement) and, when the
    /// message it answers is echoed and was one of our verdicts, that verdict's packet id.
    case netlinkError(errno: Int32, verdictID: UInt32?)
    /// Anything else (NLMSG_NOOP, NLMSG_DONE, other types, or too short to have a type).
    case foreign(type: UInt16?)
}

/// What `encodeVerdict` wrote: the header bytes, and the payload and zero padding that must
/// follow them (sent from where they are).
struct EncodedVerdict: Equatable {
    /// 32 without a payload, 36 with one (the NFQA_PAYLOAD attribute header included); 8 more
    /// with NFQA_MARK.
    var headerLength: Int
    /// 0 when no payload goes with the verdict.
    var payloadLength: Int
    /// Zero bytes after the payload, up to a multiple of 4.
    var padding: Int
    /// The verdict actually encoded (DROP when an oversized payload was refused).
    var verdict: Int32
}

/// The NFQUEUE netlink codec: parses received queue messages and encodes verdicts. Pure
/// functions over raw memory: no system calls, no allocation (the fuzz entry point aside), no
/// global state, so the socket code (NFQueueSocket) only moves bytes and another packet source
/// can replace it. This file compiles on its own (with CNetfilterQueue for the constants): the
/// libFuzzer target Tests/Fuzz/NetlinkTarget.swift is built from it alone.
public enum NFQCodec {
    /// The most header bytes `encodeVerdict` writes.
    static let verdictHeaderCapacity = 48

    /// Parses the message at `base`, of which `received` bytes arrived, in a receive slot of
    /// `slotSize` bytes (the packet may grow into the rest). Reads nothing at or past
    /// `min(received, slotSize)`; a message longer than that (nlmsg_len > received: cut short by
    /// the receive, MSG_TRUNC) is malformed.
    @inline(__always)
    static func parseMessage(_ base: UnsafeMutableRawPointer, received: Int, slotSize: Int) -> NFQMessage {
        let limit = min(received, slotSize)
        guard limit >= 16 else { return .foreign(type: nil) } // not even a struct nlmsghdr
        let messageLength = Int(base.loadUnaligned(as: UInt32.self))
        let type = base.loadUnaligned(fromByteOffset: 4, as: UInt16.self)
        if type == NF.nlmsgError { return parseError(base, limit: limit, messageLength: messageLength) }
        guard type == NF.msgPacket else { return .foreign(type: type) }

        // Attributes end at nlmsg_len, or earlier when the receive cut the message short.
        let cut = messageLength > limit
        let end = min(messageLength, limit)
        var p = QueuedPacket(id: 0, hook: 0, inDev: 0, outDev: 0, payload: nil, length: 0, capacity: 0, truncated: false)
        var haveHeader = false
        var bad = cut || messageLength < NF.headerLength
        var off = NF.headerLength
        walk: while off + 4 <= end {
            let alen = Int(base.loadUnaligned(fromByteOffset: off, as: UInt16.self))
            let atype = base.loadUnaligned(fromByteOffset: off + 2, as: UInt16.self) & NF.nlaTypeMask
            guard alen >= 4, off + alen <= end else { bad = true; break walk }
            let v = off + 4
            switch atype {
            case NF.attrPacketHdr:
                guard alen >= 4 + NF.packetHdrLength else { bad = true; break walk }
                p.id = UInt32(bigEndian: base.loadUnaligned(fromByteOffset: v, as: UInt32.self))
                p.hook = base.load(fromByteOffset: v + 6, as: UInt8.self)
                haveHeader = true
            case NF.attrPayload:
                p.payload = base + v
                p.length = alen - 4
            case NF.attrInDev:
                guard alen >= 8 else { bad = true; break walk }
                p.inDev = UInt32(bigEndian: base.loadUnaligned(fromByteOffset: v, as: UInt32.self))
            case NF.attrOutDev:
                guard alen >= 8 else { bad = true; break walk }
                p.outDev = UInt32(bigEndian: base.loadUnaligned(fromByteOffset: v, as: UInt32.self))
            case NF.attrCapLen:
                p.truncated = true
            case NF.attrMark:
                guard alen >= 8 else { bad = true; break walk }
                p.mark = UInt32(bigEndian: base.loadUnaligned(fromByteOffset: v, as: UInt32.self))
            default:
                break // attributes the data path does not use (timestamp, hwaddr, ...)
            }
            off += (alen + 3) & ~3
        }
        // The kernel writes NFQA_PACKET_HDR first (nfqnl_build_packet_message), so a message
        // broken or cut short after it still names its packet, which then gets a DROP verdict
        // (as Suricata's source-nfq.c does, so that no packet waits in the kernel's queue).
        guard haveHeader else { return .malformedPacket(id: nil) }
        guard !bad else { return .malformedPacket(id: p.id) }
        if let pl = p.payload {
            // The payload is the message's last attribute; the rest of the slot is free.
            p.capacity = min(slotSize - (pl - base), NF.maxPacket)
        }
        return .packet(p)
    }

    /// struct nlmsgerr { int error; struct nlmsghdr msg; } then, unless NETLINK_CAP_ACK, the rest
    /// of the message answered: for one of our verdicts, nfgenmsg then NFQA_VERDICT_HDR
    /// { be32 verdict; be32 id; }.
    @inline(__always)
    private static func parseError(_ base: UnsafeRawPointer, limit: Int, messageLength: Int) -> NFQMessage {
        guard limit >= 20, messageLength >= 20 else { return .foreign(type: NF.nlmsgError) }
        let code = base.loadUnaligned(fromByteOffset: 16, as: Int32.self)
        let e = code == Int32.min ? Int32.max : (code < 0 ? -code : code)
        var id: UInt32?
        let echo = 20 // the answered message's nlmsghdr
        let attr = echo + NF.headerLength
        if min(limit, messageLength) >= attr + 12,
           base.loadUnaligned(fromByteOffset: echo + 4, as: UInt16.self) == NF.msgVerdict,
           base.loadUnaligned(fromByteOffset: attr + 2, as: UInt16.self) & NF.nlaTypeMask == NF.attrVerdictHdr,
           base.loadUnaligned(fromByteOffset: attr, as: UInt16.self) >= 12 {
            id = UInt32(bigEndian: base.loadUnaligned(fromByteOffset: attr + 8, as: UInt32.self))
        }
        return .netlinkError(errno: e, verdictID: id)
    }

    /// Writes the headers of a verdict for packet `id` of queue `queue` at `h` (at least
    /// `verdictHeaderCapacity` bytes): struct nlmsghdr, struct nfgenmsg, NFQA_VERDICT_HDR and,
    /// with `mark`, NFQA_MARK (the packet's skb->mark set to it), and with `payloadLength`, the
    /// NFQA_PAYLOAD attribute header; the caller sends the payload and the padding after them. A
    /// payload the kernel cannot take back (over NFQNL_MAX_COPY_RANGE) turns the verdict into a
    /// DROP without payload: it is never sent.
    @inline(__always)
    static func encodeVerdict(into h: UnsafeMutableRawPointer, queue: UInt16, id: UInt32, verdict v: Int32, payloadLength: Int?,
                              mark: UInt32? = nil) -> EncodedVerdict {
        var length = payloadLength ?? -1
        var verdict = v
        if length > NF.maxPacket { verdict = NF.drop; length = -1 }
        let hasPayload = length >= 0
        let padded = hasPayload ? (length + 3) & ~3 : 0
        let fixed = mark == nil ? 32 : 40
        let total = fixed + (hasPayload ? 4 + padded : 0)
        // struct nlmsghdr: what nfq_nlmsg_put() writes for NFQNL_MSG_VERDICT.
        h.storeBytes(of: UInt32(total), toByteOffset: 0, as: UInt32.self)
        h.storeBytes(of: NF.msgVerdict, toByteOffset: 4, as: UInt16.self)
        h.storeBytes(of: UInt16(NLM_F_REQUEST), toByteOffset: 6, as: UInt16.self)
        h.storeBytes(of: UInt64(0), toByteOffset: 8, as: UInt64.self) // seq, pid
        // struct nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id = queue (big-endian).
        h.storeBytes(of: UInt8(0), toByteOffset: 16, as: UInt8.self)
        h.storeBytes(of: UInt8(NFNETLINK_V0), toByteOffset: 17, as: UInt8.self)
        h.storeBytes(of: queue.bigEndian, toByteOffset: 18, as: UInt16.self)
        // NFQA_VERDICT_HDR: struct nfqnl_msg_verdict_hdr { be32 verdict; be32 id; }
        h.storeBytes(of: UInt16(12), toByteOffset: 20, as: UInt16.self)
        h.storeBytes(of: NF.attrVerdictHdr, toByteOffset: 22, as: UInt16.self)
        h.storeBytes(of: UInt32(bitPattern: verdict).bigEndian, toByteOffset: 24, as: UInt32.self)
        h.storeBytes(of: id.bigEndian, toByteOffset: 28, as: UInt32.self)
        if let mark {
            // NFQA_MARK: be32 (nfqnl_recv_verdict sets skb->mark from it).
            h.storeBytes(of: UInt16(8), toByteOffset: 32, as: UInt16.self)
            h.storeBytes(of: NF.attrMark, toByteOffset: 34, as: UInt16.self)
            h.storeBytes(of: mark.bigEndian, toByteOffset: 36, as: UInt32.self)
        }
        guard hasPayload else { return EncodedVerdict(headerLength: fixed, payloadLength: 0, padding: 0, verdict: verdict) }
        h.storeBytes(of: UInt16(4 + length), toByteOffset: fixed, as: UInt16.self)
        h.storeBytes(of: NF.attrPayload, toByteOffset: fixed + 2, as: UInt16.self)
        return EncodedVerdict(headerLength: fixed + 4, payloadLength: length, padding: padded - length, verdict: verdict)
    }

    /// The receive slot size the fuzz entry point parses into (the socket's default).
    public static let fuzzSlotSize = 65536 + 1024

    /// Fuzz entry point (for a libFuzzer harness): parses `count` arbitrary bytes at `data` as
    /// one received message in a slot of `fuzzSlotSize` bytes (bytes past the slot are cut, as
    /// the receive would), then encodes the verdict the worker would send for it, and checks
    /// the invariants the worker relies on. Never reads outside the copy it makes.
    public static func fuzzOne(_ data: UnsafeRawPointer, _ count: Int) {
        let slotSize = fuzzSlotSize
        let slot = UnsafeMutableRawPointer.allocate(byteCount: slotSize, alignment: 64)
        defer { slot.deallocate() }
        let received = max(0, min(count, slotSize))
        slot.initializeMemory(as: UInt8.self, repeating: 0xA5, count: slotSize)
        if received > 0 { slot.copyMemory(from: data, byteCount: received) }
        let h = UnsafeMutableRawPointer.allocate(byteCount: verdictHeaderCapacity, alignment: 8)
        defer { h.deallocate() }
        switch parseMessage(slot, received: received, slotSize: slotSize) {
        case .packet(let p):
            if let pl = p.payload {
                let off = pl - slot
                precondition(off >= NF.headerLength && off + p.length <= received, "payload outside the message")
                precondition(p.capacity >= p.length && off + p.capacity <= slotSize, "capacity outside the slot")
                // As the engine may: the packet grown to its capacity, then one byte too many.
                for n in [p.length, p.capacity, p.capacity + 1] {
                    let e = encodeVerdict(into: h, queue: 7, id: p.id, verdict: NF.accept, payloadLength: n)
                    precondition(e.headerLength + e.payloadLength + e.padding <= 36 + NF.maxPacket + 3)
                    precondition(e.payloadLength <= NF.maxPacket && (e.headerLength + e.payloadLength + e.padding) % 4 == 0)
                    precondition(Int(h.load(as: UInt32.self)) == e.headerLength + e.payloadLength + e.padding)
                }
            } else {
                _ = encodeVerdict(into: h, queue: 7, id: p.id, verdict: NF.drop, payloadLength: nil)
            }
        case .malformedPacket(let id):
            if let id { _ = encodeVerdict(into: h, queue: 7, id: id, verdict: NF.drop, payloadLength: nil) }
        case .netlinkError(let e, _):
            precondition(e >= 0)
        case .foreign:
            break
        }
    }
}
