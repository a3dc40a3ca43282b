import Testing
@testable import TCPAODaemon

// Messages are built byte by byte from the kernel's UAPI layout, not with the codec:
//   struct nlmsghdr { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }   (host order)
//   struct nfgenmsg { u8 family; u8 version; be16 res_id; }
//   struct nlattr   { u16 len; u16 type; } value, padded to 4 bytes
//   NFQA_PACKET_HDR: struct nfqnl_msg_packet_hdr { be32 packet_id; be16 hw_protocol; u8 hook; } (packed)
//   NFQA_VERDICT_HDR: struct nfqnl_msg_verdict_hdr { be32 verdict; be32 id; }
//   struct nlmsgerr { int error; struct nlmsghdr msg; } then the rest of the message answered
// linux/netfilter/nfnetlink_queue.h: NFNL_SUBSYS_QUEUE 3; NFQNL_MSG_PACKET 0, _VERDICT 1;
// NFQA_PACKET_HDR 1, _VERDICT_HDR 2, _MARK 3, _TIMESTAMP 4, _IFINDEX_INDEV 5, _IFINDEX_OUTDEV 6,
// _HWADDR 9, _PAYLOAD 10, _CAP_LEN 13, _VLAN 19. linux/netlink.h: NLMSG_NOOP 1, _ERROR 2, _DONE 3;
// NLA_F_NESTED 0x8000, NLA_F_NET_BYTEORDER 0x4000.
enum Wire: NetlinkBytes {
    static let msgPacket: UInt16 = 3 << 8 | 0
    static let msgVerdict: UInt16 = 3 << 8 | 1
    static let nlmsgError: UInt16 = 2
    static let nlmsgDone: UInt16 = 3
    static let packetHdr: UInt16 = 1, verdictHdr: UInt16 = 2, mark: UInt16 = 3, timestamp: UInt16 = 4
    static let inDev: UInt16 = 5, outDev: UInt16 = 6, hwAddr: UInt16 = 9, payload: UInt16 = 10
    static let capLen: UInt16 = 13, vlan: UInt16 = 19
    static let nested: UInt16 = 0x8000, netByteOrder: UInt16 = 0x4000


    static func nfgen(queue: UInt16) -> [UInt8] { [0, 0] + be16(queue) } // AF_UNSPEC, NFNETLINK_V0

    static func packetHeader(id: UInt32, proto: UInt16 = 0x0800, hook: UInt8) -> [UInt8] {
        attr(packetHdr, be32(id) + be16(proto) + [hook])
    }

    /// A queued packet the way nfqnl_build_packet_message lays it out (header first, payload last).
    static func packet(id: UInt32, hook: UInt8 = 3, inDev: UInt32? = nil, outDev: UInt32? = nil, payload: [UInt8]?,
                       extra: [UInt8] = [], queue: UInt16 = 7) -> [UInt8] {
        var body = nfgen(queue: queue) + packetHeader(id: id, hook: hook)
        if let inDev { body += attr(Wire.inDev, be32(inDev)) }
        if let outDev { body += attr(Wire.outDev, be32(outDev)) }
        body += extra
        if let payload { body += attr(Wire.payload, payload) }
        return nlmsg(type: msgPacket, body: body)
    }

    static let ipPacket: [UInt8] = (0..<61).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 0x45) }
}

/// A parse result with the payload as an offset into the message (for comparing).
enum Parsed: Equatable {
    case packet(id: UInt32, hook: UInt8, inDev: UInt32, outDev: UInt32, payloadAt: Int?, length: Int, capacity: Int, truncated: Bool)
    case malformed(id: UInt32?)
    case error(errno: Int32, id: UInt32?)
    case foreign(UInt16?)
}

/// Copies `bytes` into a slot of `slotSize` (filled with 0xEE past them) and parses it with
/// `received` bytes received (default: all of them).
func parse(_ bytes: [UInt8], received: Int? = nil, slotSize: Int = 4096) -> Parsed {
    let slot = UnsafeMutableRawPointer.allocate(byteCount: slotSize, alignment: 64)
    defer { slot.deallocate() }
    slot.initializeMemory(as: UInt8.self, repeating: 0xEE, count: slotSize)
    bytes.withUnsafeBytes { slot.copyMemory(from: $0.baseAddress!, byteCount: min(bytes.count, slotSize)) }
    switch NFQCodec.parseMessage(slot, received: received ?? bytes.count, slotSize: slotSize) {
    case .packet(let p):
        return .packet(id: p.id, hook: p.hook, inDev: p.inDev, outDev: p.outDev, payloadAt: p.payload.map { $0 - slot },
                       length: p.length, capacity: p.capacity, truncated: p.truncated)
    case .malformedPacket(let id): return .malformed(id: id)
    case .netlinkError(let e, let id): return .error(errno: e, id: id)
    case .foreign(let t): return .foreign(t)
    }
}

/// Encodes one verdict into a fresh buffer; returns the header bytes and the layout.
func encode(queue: UInt16, id: UInt32, verdict: Int32, payloadLength: Int?, mark: UInt32? = nil) -> ([UInt8], EncodedVerdict) {
    let h = UnsafeMutableRawPointer.allocate(byteCount: NFQCodec.verdictHeaderCapacity, alignment: 8)
    defer { h.deallocate() }
    h.initializeMemory(as: UInt8.self, repeating: 0xEE, count: NFQCodec.verdictHeaderCapacity)
    let e = NFQCodec.encodeVerdict(into: h, queue: queue, id: id, verdict: verdict, payloadLength: payloadLength, mark: mark)
    return (Array(UnsafeRawBufferPointer(start: h, count: e.headerLength)), e)
}

@Suite struct NetlinkCodecTests {
    // MARK: the packet's mark (the HMARK spread)

    @Test func theMarkIsReadAndAVerdictCanSetIt() {
        let m = Wire.packet(id: 5, payload: Wire.ipPacket, extra: Wire.attr(Wire.mark, Wire.be32(0x7441_0001)))
        let slot = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 64)
        defer { slot.deallocate() }
        m.withUnsafeBytes { slot.copyMemory(from: $0.baseAddress!, byteCount: m.count) }
        guard case .packet(let p) = NFQCodec.parseMessage(slot, received: m.count, slotSize: 4096) else { Issue.record("not a packet"); return }
        #expect(p.mark == 0x7441_0001)
        // A short NFQA_MARK is malformed.
        #expect(parse(Wire.packet(id: 5, payload: Wire.ipPacket, extra: Wire.attr(Wire.mark, [1, 2]))) == .malformed(id: 5))
        // nlmsghdr, nfgenmsg, NFQA_VERDICT_HDR, NFQA_MARK { len 8, type 3, be32 0 }, NFQA_PAYLOAD header.
        let (h, e) = encode(queue: 7, id: 5, verdict: 1, payloadLength: 61, mark: 0)
        #expect(e.headerLength == 44 && e.payloadLength == 61 && e.padding == 3)
        #expect(Array(h[32..<40]) == [8, 0, 3, 0, 0, 0, 0, 0])
        #expect(Array(h[40..<44]) == [65, 0, 10, 0])
        #expect(h[0..<4] == [UInt8(44 + 64), 0, 0, 0][...])
        let (h2, e2) = encode(queue: 7, id: 5, verdict: 1, payloadLength: nil, mark: 9)
        #expect(e2.headerLength == 40 && Array(h2[32..<40]) == [8, 0, 3, 0, 0, 0, 0, 9] && h2[0] == 40)
    }

    // MARK: queued packets

    @Test func normalPacketGivesIdHookDevicesAndPayload() {
        let m = Wire.packet(id: 0x1122_3344, hook: 3, inDev: 7, outDev: 9, payload: Wire.ipPacket)
        // nlmsghdr 16 + nfgenmsg 4 + packet header 12 + indev 8 + outdev 8 + payload header 4
        let at = 16 + 4 + 12 + 8 + 8 + 4
        #expect(parse(m) == .packet(id: 0x1122_3344, hook: 3, inDev: 7, outDev: 9, payloadAt: at, length: 61,
                                    capacity: 4096 - at, truncated: false))
    }

    @Test func capacityIsCappedAtTheLargestPacketAVerdictCarries() {
        let m = Wire.packet(id: 1, payload: Wire.ipPacket)
        let at = 16 + 4 + 12 + 4
        #expect(parse(m, slotSize: 65536 + 1024) == .packet(id: 1, hook: 3, inDev: 0, outDev: 0, payloadAt: at, length: 61,
                                                             capacity: 65531, truncated: false))
    }

    @Test func packetWithoutPayloadParsesWithNoPayload() {
        #expect(parse(Wire.packet(id: 5, hook: 1, payload: nil)) ==
            .packet(id: 5, hook: 1, inDev: 0, outDev: 0, payloadAt: nil, length: 0, capacity: 0, truncated: false))
    }

    @Test func unknownAttributesAreSkipped() {
        let extra = Wire.attr(Wire.mark, Wire.be32(0xABCD)) + Wire.attr(Wire.timestamp, [UInt8](repeating: 1, count: 16))
            + Wire.attr(Wire.hwAddr, [0, 6, 0, 0, 1, 2, 3, 4, 5, 6, 0, 0]) + Wire.attr(200, [9, 9, 9]) // odd length, padded
        let m = Wire.packet(id: 77, hook: 1, inDev: 2, payload: Wire.ipPacket, extra: extra)
        let at = 16 + 4 + 12 + 8 + extra.count + 4
        #expect(parse(m) == .packet(id: 77, hook: 1, inDev: 2, outDev: 0, payloadAt: at, length: 61, capacity: 4096 - at, truncated: false))
    }

    @Test func nestedAndByteOrderFlagsAreMasked() {
        var body = Wire.nfgen(queue: 7) + Wire.attr(Wire.packetHdr | Wire.netByteOrder, Wire.be32(42) + Wire.be16(0x86DD) + [1])
        body += Wire.attr(Wire.vlan | Wire.nested, Wire.attr(1, Wire.be16(0x8100)) + Wire.attr(2, Wire.be16(5)))
        body += Wire.attr(Wire.inDev | Wire.netByteOrder, Wire.be32(3))
        body += Wire.attr(Wire.payload | Wire.nested, Wire.ipPacket)
        let at = 16 + body.count - 68 + 4 // the payload attribute is the last 68 bytes (4 + 61, padded)
        #expect(parse(Wire.nlmsg(type: Wire.msgPacket, body: body)) ==
            .packet(id: 42, hook: 1, inDev: 3, outDev: 0, payloadAt: at, length: 61, capacity: 4096 - at, truncated: false))
    }

    @Test func capLenMarksThePacketTruncated() {
        let m = Wire.packet(id: 8, payload: Wire.ipPacket, extra: Wire.attr(Wire.capLen, Wire.be32(1500)))
        guard case .packet(_, _, _, _, _, _, _, let truncated) = parse(m) else { Issue.record("not a packet"); return }
        #expect(truncated)
    }

    @Test func trailingBytesShorterThanAnAttributeAreIgnored() {
        var m = Wire.packet(id: 9, payload: Wire.ipPacket)
        m += [0, 0]
        m.replaceSubrange(0..<4, with: Wire.le32(UInt32(m.count)))
        guard case .packet(let id, _, _, _, _, 61, _, false) = parse(m) else { Issue.record("not a packet"); return }
        #expect(id == 9)
    }

    // MARK: malformed packet messages: a verdict whenever the id is known

    @Test func attributeShorterThanItsHeaderAfterThePacketHeaderIsDroppedById() {
        let m = Wire.packet(id: 0xDEAD_BEEF, payload: nil, extra: Wire.le16(2) + Wire.le16(Wire.mark))
        #expect(parse(m) == .malformed(id: 0xDEAD_BEEF))
    }

    @Test func zeroLengthAttributeIsMalformedNotAnEndlessLoop() {
        let m = Wire.packet(id: 3, payload: nil, extra: Wire.le16(0) + Wire.le16(0))
        #expect(parse(m) == .malformed(id: 3))
    }

    @Test func attributeRunningPastTheMessageIsDroppedById() {
        let m = Wire.packet(id: 12, payload: nil, extra: Wire.attr(Wire.mark, Wire.be32(1), length: 200))
        #expect(parse(m) == .malformed(id: 12))
    }

    @Test func payloadRunningPastTheMessageIsDroppedById() {
        var m = Wire.packet(id: 13, payload: Wire.ipPacket)
        m.replaceSubrange(m.count - 68..<m.count - 66, with: Wire.le16(4 + 61 + 8)) // payload nla_len too long
        #expect(parse(m) == .malformed(id: 13))
    }

    @Test func shortFixedSizeAttributesAreMalformed() {
        #expect(parse(Wire.packet(id: 14, payload: nil, extra: Wire.attr(Wire.inDev, [0, 1]))) == .malformed(id: 14))
        #expect(parse(Wire.packet(id: 15, payload: nil, extra: Wire.attr(Wire.outDev, []))) == .malformed(id: 15))
        // A packet header of 6 bytes instead of 7: no id to answer.
        let body = Wire.nfgen(queue: 7) + Wire.attr(Wire.packetHdr, Wire.be32(16) + Wire.be16(0x0800))
        #expect(parse(Wire.nlmsg(type: Wire.msgPacket, body: body)) == .malformed(id: nil))
    }

    @Test func badAttributeBeforeThePacketHeaderLeavesNoId() {
        let body = Wire.nfgen(queue: 7) + Wire.le16(3) + Wire.le16(Wire.mark) + Wire.packetHeader(id: 20, hook: 1)
        #expect(parse(Wire.nlmsg(type: Wire.msgPacket, body: body)) == .malformed(id: nil))
    }

    @Test func missingPacketHeaderLeavesNoId() {
        let body = Wire.nfgen(queue: 7) + Wire.attr(Wire.inDev, Wire.be32(2)) + Wire.attr(Wire.payload, Wire.ipPacket)
        #expect(parse(Wire.nlmsg(type: Wire.msgPacket, body: body)) == .malformed(id: nil))
    }

    @Test func packetMessageWithoutItsNfgenmsgIsMalformed() {
        #expect(parse(Wire.nlmsg(type: Wire.msgPacket, body: [])) == .malformed(id: nil))
        #expect(parse(Wire.nlmsg(type: Wire.msgPacket, body: Wire.packetHeader(id: 1, hook: 1), length: 18)) == .malformed(id: nil))
    }

    @Test func messageCutShortByTheReceiveIsDroppedById() {
        let m = Wire.packet(id: 0x0102_0304, inDev: 2, payload: Wire.ipPacket)
        // recvmmsg copied fewer bytes than nlmsg_len (MSG_TRUNC): cut inside the payload, at an
        // attribute boundary, and right after the packet header.
        #expect(parse(m, received: m.count - 10) == .malformed(id: 0x0102_0304))
        #expect(parse(m, received: m.count - 68) == .malformed(id: 0x0102_0304))
        #expect(parse(m, received: 16 + 4 + 12) == .malformed(id: 0x0102_0304))
        // Cut inside the packet header: no id.
        #expect(parse(m, received: 16 + 4 + 10) == .malformed(id: nil))
        #expect(parse(m, received: 19) == .malformed(id: nil))
    }

    @Test func slotSmallerThanTheReceivedCountBoundsTheParse() {
        let m = Wire.packet(id: 30, payload: Wire.ipPacket)
        #expect(parse(m, received: m.count, slotSize: 40) == .malformed(id: 30))
    }

    // MARK: other messages

    @Test func tooShortForANetlinkHeaderIsForeign() {
        #expect(parse([]) == .foreign(nil))
        #expect(parse([UInt8](repeating: 0, count: 15)) == .foreign(nil))
        #expect(parse(Wire.packet(id: 1, payload: nil), received: 12) == .foreign(nil))
    }

    @Test func otherMessageTypesAreForeign() {
        #expect(parse(Wire.nlmsg(type: Wire.nlmsgDone, body: Wire.le32(0))) == .foreign(Wire.nlmsgDone))
        #expect(parse(Wire.nlmsg(type: 1, body: [])) == .foreign(1)) // NLMSG_NOOP
        #expect(parse(Wire.nlmsg(type: 3 << 8 | 2, body: Wire.nfgen(queue: 7))) == .foreign(3 << 8 | 2)) // NFQNL_MSG_CONFIG
    }

    /// The verdict message the kernel echoes in an error: built by hand, as the kernel received it.
    static func echoedVerdict(id: UInt32, verdict: UInt32 = 1) -> [UInt8] {
        Wire.nlmsg(type: Wire.msgVerdict, flags: 1, body: Wire.nfgen(queue: 7) + Wire.attr(Wire.verdictHdr, Wire.be32(verdict) + Wire.be32(id)))
    }

    @Test func errorAnsweringAVerdictGivesErrnoAndPacketId() {
        let enoent: Int32 = 2
        let m = Wire.nlmsg(type: Wire.nlmsgError, body: Wire.le32(UInt32(bitPattern: -enoent)) + Self.echoedVerdict(id: 0xCAFE))
        #expect(parse(m) == .error(errno: 2, id: 0xCAFE))
    }

    @Test func cappedErrorGivesErrnoWithoutId() {
        // NETLINK_CAP_ACK, or NLM_F_CAPPED: only the answered message's nlmsghdr is echoed.
        let echoed = Array(Self.echoedVerdict(id: 5).prefix(16))
        let m = Wire.nlmsg(type: Wire.nlmsgError, flags: 0x100, body: Wire.le32(UInt32(bitPattern: -22)) + echoed)
        #expect(parse(m) == .error(errno: 22, id: nil))
    }

    @Test func errorEchoingAnotherMessageGivesNoId() {
        let echoed = Wire.nlmsg(type: 3 << 8 | 2, body: Wire.nfgen(queue: 7) + Wire.attr(1, [1, 0, 0, 0, 0, 0, 0, 0]))
        let m = Wire.nlmsg(type: Wire.nlmsgError, body: Wire.le32(UInt32(bitPattern: -1)) + echoed)
        #expect(parse(m) == .error(errno: 1, id: nil))
    }

    @Test func errorCutShortStillGivesErrno() {
        let m = Wire.nlmsg(type: Wire.nlmsgError, body: Wire.le32(UInt32(bitPattern: -2)) + Self.echoedVerdict(id: 9))
        #expect(parse(m, received: 30) == .error(errno: 2, id: nil))
        #expect(parse(m, received: 19) == .foreign(Wire.nlmsgError))
    }

    @Test func ackIsAnErrorOfZero() {
        let m = Wire.nlmsg(type: Wire.nlmsgError, body: Wire.le32(0) + Array(Self.echoedVerdict(id: 1).prefix(16)))
        #expect(parse(m) == .error(errno: 0, id: nil))
    }

    // MARK: verdicts

    @Test func verdictWithoutPayloadIsExactly32Bytes() {
        let (bytes, e) = encode(queue: 0x0102, id: 0xA1B2_C3D4, verdict: 1, payloadLength: nil)
        let expected = Wire.le32(32) + Wire.le16(Wire.msgVerdict) + Wire.le16(1) /* NLM_F_REQUEST */ + Wire.le32(0) + Wire.le32(0)
            + [0, 0, 0x01, 0x02] + Wire.le16(12) + Wire.le16(Wire.verdictHdr) + Wire.be32(1) + Wire.be32(0xA1B2_C3D4)
        #expect(bytes == expected)
        #expect(e == EncodedVerdict(headerLength: 32, payloadLength: 0, padding: 0, verdict: 1))
    }

    @Test func dropVerdictCarriesZero() {
        let (bytes, e) = encode(queue: 7, id: 1, verdict: 0, payloadLength: nil)
        #expect(Array(bytes[24..<28]) == [0, 0, 0, 0])
        #expect(e.verdict == 0)
    }

    @Test func verdictWithPayloadAddsAPaddedPayloadAttribute() {
        // 61 bytes: nla_len 65 (unpadded), nlmsg_len counts the 3 bytes of padding.
        let (bytes, e) = encode(queue: 7, id: 99, verdict: 1, payloadLength: 61)
        let expected = Wire.le32(32 + 4 + 64) + Wire.le16(Wire.msgVerdict) + Wire.le16(1) + Wire.le32(0) + Wire.le32(0)
            + [0, 0, 0, 7] + Wire.le16(12) + Wire.le16(Wire.verdictHdr) + Wire.be32(1) + Wire.be32(99)
            + Wire.le16(65) + Wire.le16(Wire.payload)
        #expect(bytes == expected)
        #expect(e == EncodedVerdict(headerLength: 36, payloadLength: 61, padding: 3, verdict: 1))
        // The whole message, header + payload + padding, is what the kernel parses back.
        let whole = bytes + Wire.ipPacket + [0, 0, 0]
        #expect(whole == Wire.nlmsg(type: Wire.msgVerdict, flags: 1, body: Wire.nfgen(queue: 7)
            + Wire.attr(Wire.verdictHdr, Wire.be32(1) + Wire.be32(99)) + Wire.attr(Wire.payload, Wire.ipPacket)))
    }

    @Test func alignedPayloadNeedsNoPadding() {
        let (bytes, e) = encode(queue: 7, id: 1, verdict: 1, payloadLength: 40)
        #expect(Array(bytes[0..<4]) == Wire.le32(32 + 4 + 40))
        #expect(e == EncodedVerdict(headerLength: 36, payloadLength: 40, padding: 0, verdict: 1))
    }

    @Test func emptyPayloadIsStillAnAttribute() {
        let (bytes, e) = encode(queue: 7, id: 1, verdict: 1, payloadLength: 0)
        #expect(Array(bytes[0..<4]) == Wire.le32(36))
        #expect(Array(bytes[32..<36]) == Wire.le16(4) + Wire.le16(Wire.payload))
        #expect(e == EncodedVerdict(headerLength: 36, payloadLength: 0, padding: 0, verdict: 1))
    }

    @Test func largestPayloadIsSent() {
        let (bytes, e) = encode(queue: 7, id: 1, verdict: 1, payloadLength: 65531)
        #expect(Array(bytes[0..<4]) == Wire.le32(32 + 4 + 65532))
        #expect(Array(bytes[32..<34]) == Wire.le16(0xFFFF))
        #expect(e == EncodedVerdict(headerLength: 36, payloadLength: 65531, padding: 1, verdict: 1))
    }

    @Test func oversizedPayloadBecomesADropWithoutPayload() {
        for n in [65532, 65535, 70000] {
            let (bytes, e) = encode(queue: 7, id: 0x55, verdict: 1, payloadLength: n)
            let expected = Wire.le32(32) + Wire.le16(Wire.msgVerdict) + Wire.le16(1) + Wire.le32(0) + Wire.le32(0)
                + [0, 0, 0, 7] + Wire.le16(12) + Wire.le16(Wire.verdictHdr) + Wire.be32(0) + Wire.be32(0x55)
            #expect(bytes == expected)
            #expect(e == EncodedVerdict(headerLength: 32, payloadLength: 0, padding: 0, verdict: 0))
        }
    }

    @Test func encodedVerdictIsReadBackAsTheErrorsVerdictId() {
        // What the kernel echoes when it refuses our verdict: the codec finds the id again.
        let (bytes, _) = encode(queue: 7, id: 0x0BAD_F00D, verdict: 1, payloadLength: nil)
        let m = Wire.nlmsg(type: Wire.nlmsgError, body: Wire.le32(UInt32(bitPattern: -2)) + bytes)
        #expect(parse(m) == .error(errno: 2, id: 0x0BAD_F00D))
    }

    // MARK: fuzz entry point

    static let samples: [[UInt8]] = [
        Wire.packet(id: 1, hook: 3, inDev: 7, outDev: 9, payload: Wire.ipPacket),
        Wire.packet(id: 2, payload: nil, extra: Wire.attr(Wire.capLen, Wire.be32(9000))),
        Wire.packet(id: 3, payload: [UInt8](repeating: 0x45, count: 65531)),
        Wire.nlmsg(type: Wire.nlmsgError, body: Wire.le32(UInt32(bitPattern: -2)) + echoedVerdict(id: 4)),
        Wire.nlmsg(type: Wire.nlmsgDone, body: Wire.le32(0)),
    ]

    @Test func fuzzEntryPointSurvivesEveryPrefixOfRealMessages() {
        for s in Self.samples {
            s.withUnsafeBytes { b in
                for n in stride(from: 0, through: min(s.count, 200), by: 1) { NFQCodec.fuzzOne(b.baseAddress!, n) }
                NFQCodec.fuzzOne(b.baseAddress!, s.count)
            }
        }
    }

    @Test func fuzzEntryPointSurvivesMutatedMessages() {
        var rng = SplitMix(seed: 0x7C9A0D)
        for _ in 0..<1500 {
            var s = Self.samples[Int(rng.next() % 5)]
            if s.count > 4096 { s = Array(s.prefix(Int(rng.next() % 4096))) }
            for _ in 0..<(1 + Int(rng.next() % 6)) where !s.isEmpty {
                s[Int(rng.next() % UInt64(s.count))] = UInt8(truncatingIfNeeded: rng.next())
            }
            if rng.next() % 4 == 0 { s += (0..<Int(rng.next() % 64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) } }
            s.withUnsafeBytes { b in
                if let p = b.baseAddress { NFQCodec.fuzzOne(p, s.count) }
            }
        }
    }

    @Test func fuzzEntryPointCutsInputLargerThanASlot() {
        let big = Wire.packet(id: 6, payload: [UInt8](repeating: 1, count: 65531)) + [UInt8](repeating: 0xFF, count: 4000)
        big.withUnsafeBytes { NFQCodec.fuzzOne($0.baseAddress!, big.count) }
    }
}

/// A small deterministic generator (SplitMix64) for the mutation test.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
