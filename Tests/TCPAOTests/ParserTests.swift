import Testing
@testable import TCPAO
import TCPAOTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Malformed input yields an error value, never a trap.
@Suite struct ParserTests {
    static let b4 = PacketBuilder(src: "192.0.2.1", dst: "198.51.100.7", srcPort: 40000, dstPort: 830)
    static let b6 = PacketBuilder(src: "2001:db8::1", dst: "2001:db8:1::7", srcPort: 40000, dstPort: 830)

    func parse(_ bytes: [UInt8]) -> Result<TCPSegment, PacketError> {
        bytes.withUnsafeBytes { b in
            Result { () throws(PacketError) -> TCPSegment in try TCPSegment.parse(b.baseAddress!, count: b.count) }
        }
    }

    func expectError(_ bytes: [UInt8], _ e: PacketError, sourceLocation: SourceLocation = #_sourceLocation) {
        switch parse(bytes) {
        case .success: Issue.record("parsed, expected \(e)", sourceLocation: sourceLocation)
        case .failure(let got): #expect(got == e, sourceLocation: sourceLocation)
        }
    }

    @Test func goodSegments() throws {
        for b in [Self.b4, Self.b6] {
            let p = b.segment(seq: 7, ack: 9, flags: 0x18, options: PacketBuilder.tsOptions(), payload: Array(repeating: 0x41, count: 100))
            let s = try parse(p).get()
            #expect(s.seq == 7 && s.ack == 9 && s.srcPort == 40000 && s.dstPort == 830)
            #expect(s.tcpHeaderLength == 32 && s.payloadLength == 100 && !s.hasAO)
            #expect(p.withUnsafeBytes { s.checksumIsValid($0.baseAddress!) })
        }
    }

    /// A segment whose checksum computes to 0x0000 leaves an edit with 0xFFFF, which still
    /// verifies (Linux 6.12's TCP-AO drops segments carrying 0x0000; see TCPChecksum.wireForm).
    @Test func zeroChecksumIsWrittenAsAllOnes() throws {
        for b in [Self.b4, Self.b6] {
            var p = b.segment(seq: 7, ack: 9, flags: 0x18, options: PacketBuilder.tsOptions(), payload: [0, 0] + Array(repeating: 0x41, count: 98))
            let s = try parse(p).get()
            let at = s.tcpOffset + s.tcpHeaderLength
            // Choose the first payload word so that the segment's sum is all ones: checksum 0.
            p.withUnsafeMutableBytes { m in
                let sum0 = UInt16(~TCPChecksum.compute(m.baseAddress!, s))
                store16(m.baseAddress!, at, ~sum0)
                s.recomputeChecksum(m.baseAddress!)
                #expect(load16(m.baseAddress!, s.tcpOffset + 16) == 0)
                TCPChecksum.replace(m.baseAddress!, tcpOffset: s.tcpOffset, removed: 0, added: 0)
                #expect(load16(m.baseAddress!, s.tcpOffset + 16) == 0xFFFF)
                #expect(s.checksumIsValid(m.baseAddress!))
            }
            // The written form is what the packet holds afterwards, not only the closure's view.
            #expect(p.withUnsafeBytes { s.checksumIsValid($0.baseAddress!) })
        }
    }

    @Test func truncatedAnywhere() {
        for b in [Self.b4, Self.b6] {
            let p = b.segment(seq: 1, flags: 0x02, options: PacketBuilder.synOptions())
            // The IP length field still says the whole packet: every cut is "truncated", never
            // another error and never a segment.
            for n in 0..<p.count {
                switch parse(Array(p[0..<n])) {
                case .success: Issue.record("\(n) bytes parsed")
                case .failure(let e): #expect(e == .truncated, "\(n) of \(p.count) bytes")
                }
            }
        }
    }

    @Test func ipv4HeaderErrors() {
        var p = Self.b4.segment(seq: 1, flags: 0x10)
        p[0] = 0x44; expectError(p, .badIPv4HeaderLength)
        p[0] = 0x4F; expectError(p, .badIPTotalLength) // IHL 60 > total length 40
        p[0] = 0x55; expectError(p, .badIPVersion)
        p = Self.b4.segment(seq: 1, flags: 0x10)
        p[2] = 0; p[3] = 10; expectError(p, .badIPTotalLength)
        p = Self.b4.segment(seq: 1, flags: 0x10)
        p[6] = 0x20; expectError(p, .fragment) // MF
        p[6] = 0x00; p[7] = 0x08; expectError(p, .fragment) // offset
        p = Self.b4.segment(seq: 1, flags: 0x10)
        p[9] = 17; expectError(p, .notTCP)
    }

    @Test func ipv6ExtensionHeaders() throws {
        let base = Self.b6.segment(seq: 1, flags: 0x10)
        func withExt(_ type: UInt8, _ body: [UInt8]) -> [UInt8] {
            var p = base
            let tcpLen = base.count - 40
            p[6] = type
            let ext = [Spec.ipProtoTCP] + body
            p.insert(contentsOf: ext, at: 40)
            let plen = tcpLen + ext.count
            p[4] = UInt8(plen >> 8); p[5] = UInt8(plen & 255)
            return p
        }
        // Hop-by-hop and destination options (8 bytes: next, len 0, 6 bytes of PadN) are walked.
        let hbh = withExt(0, [0, 1, 4, 0, 0, 0, 0])
        #expect(try parse(hbh).get().tcpOffset == 48)
        let dst = withExt(60, [0, 1, 4, 0, 0, 0, 0])
        #expect(try parse(dst).get().tcpOffset == 48)
        // A routing header with segments left 0 is walked, with segments left refused.
        #expect(try parse(withExt(43, [0, 4, 0, 0, 0, 0, 0])).get().tcpOffset == 48)
        expectError(withExt(43, [0, 4, 1, 0, 0, 0, 0]), .routingHeaderNotFinal)
        expectError(withExt(44, [0, 0, 1, 0, 0, 0, 0]), .fragment)
        expectError(withExt(51, [1, 0, 0, 0, 0, 0, 0]), .unsupportedExtensionHeader(51))
        // Extension header longer than the packet.
        expectError(withExt(0, [200, 1, 4, 0, 0, 0, 0]), .truncated)
        var jumbo = base; jumbo[4] = 0; jumbo[5] = 0; jumbo[6] = 0
        expectError(jumbo, .jumbogram)
    }

    @Test func optionErrors() {
        func with(_ opts: [UInt8]) -> [UInt8] { Self.b4.segment(seq: 1, flags: 0x10, options: opts) }
        expectError(with([2, 0, 0, 0]), .badOptionLength)            // length 0
        expectError(with([8, 1, 0, 0]), .badOptionLength)            // length 1
        expectError(with([1, 1, 8, 10]), .optionOverrun)             // TS claims 10 of 2 remaining
        expectError(with([1, 1, 1, 8]), .optionOverrun)              // kind with no length byte
        expectError(with([29, 3, 1, 1]), .aoTooShort)                // AO length < 4
        expectError(with([29, 4, 1, 1, 29, 4, 2, 2]), .duplicateAO)  // two AOs (2.2)
        expectError(with([29, 4, 1, 1, 19, 18] + [UInt8](repeating: 0, count: 16) + [1, 1]), .md5WithAO)
        expectError(with([2, 3, 5, 1]), .badOptionLength)            // MSS must be 4 long
        var p = with([])
        p[32] = 0x40; expectError(p, .badDataOffset)                // 16 words > packet
        p[32] = 0x30; expectError(p, .badDataOffset)                // 3 words < 5
        // EOL ends the walk: what follows is padding, even if it looks like an AO option.
        #expect(try! parse(with([0, 29, 4, 1, 29, 4, 1, 1])).get().hasAO == false)
    }

    @Test func icmpHardErrorsQuoteTheSegment() throws {
        let quoted = Self.b4.segment(seq: 0x01020304, flags: 0x10)
        var icmp: [UInt8] = [3, 3, 0, 0, 0, 0, 0, 0] + Array(quoted[0..<28])
        let total = 20 + icmp.count
        var ip: [UInt8] = [0x45, 0, UInt8(total >> 8), UInt8(total & 255), 0, 0, 0, 0, 64, 1, 0, 0] + IPAddress("198.51.100.7")!.bytes + IPAddress("192.0.2.1")!.bytes
        let pkt = ip + icmp
        let e = try #require(pkt.withUnsafeBytes { ICMPErrorInfo.parse($0.baseAddress!, count: $0.count) })
        #expect(e.isHardError && e.quotedSeq == 0x01020304 && e.quotedSrcPort == 40000 && e.quotedDstPort == 830)
        #expect(e.quotedSrc == IPAddress("192.0.2.1")!)
        icmp[1] = 0 // net unreachable: a soft error
        let soft = (ip + icmp).withUnsafeBytes { ICMPErrorInfo.parse($0.baseAddress!, count: $0.count) }
        #expect(soft?.code == 0 && soft?.isHardError == false && soft?.quotedSeq == 0x01020304)
        // The IP total length cut one byte short of the quoted ports and sequence number (27 of
        // the 28 bytes needed): the quote is refused, not read past the packet's end.
        icmp[1] = 3
        ip[2] = UInt8((total - 1) >> 8); ip[3] = UInt8((total - 1) & 255)
        #expect((ip + icmp).withUnsafeBytes { ICMPErrorInfo.parse($0.baseAddress!, count: $0.count) } == nil)
        #expect((ip + icmp.dropLast()).withUnsafeBytes { ICMPErrorInfo.parse($0.baseAddress!, count: $0.count) } == nil)
    }

    @Test func addresses() {
        #expect(IPAddress("2001:db8::1")!.description == "2001:db8::1")
        #expect(IPAddress("2001:db8:0:0:1:0:0:1")!.description == "2001:db8::1:0:0:1")
        #expect(IPAddress("::ffff:192.0.2.1")!.description == "::ffff:c000:201")
        #expect(IPAddress("::")!.description == "::")
        #expect(IPAddress("192.0.2.300") == nil && IPAddress("1:2:3:4:5:6:7:8:9") == nil && IPAddress("1::2::3") == nil)
        #expect(IPAddress("192.0.02.1") == nil)
        #expect(IPPrefix("192.0.2.0/24")!.contains(IPAddress("192.0.2.77")!))
        #expect(!IPPrefix("192.0.2.0/24")!.contains(IPAddress("192.0.3.1")!))
        #expect(IPPrefix("2001:db8::/32")!.contains(IPAddress("2001:db8:ffff::1")!))
        #expect(!IPPrefix("2001:db8::/32")!.contains(IPAddress("192.0.2.1")!))
        #expect(IPPrefix("2001:db8::/32")!.overlaps(IPPrefix("2001:db8:5::/48")!))
        #expect(!IPPrefix("192.0.2.0/25")!.overlaps(IPPrefix("192.0.2.128/25")!))
        #expect(IPPrefix("192.0.2.1/24")!.isCanonical == false)
        #expect(IPPrefix("0.0.0.0/0")!.contains(IPAddress("203.0.113.9")!))
    }

    /// The address parser against glibc's inet_pton on random text built from address pieces
    /// (the two differ only where ours is stricter: no leading zero in an IPv4 byte).
    @Test func addressParserAgreesWithInetPton() {
        var r = SplitMix64(state: 0x1A2B_3C4D)
        let pieces = ["0", "1", "9", "00", "12", "255", "256", "ffff", "FfFf", "abcd", "12345", "db8", "2001", ":", ":", "::", ".", ".", "1.2.3.4", "g"]
        var checked = 0, valid6 = 0, valid4 = 0
        for _ in 0..<60_000 {
            let text = (0..<r.int(1...12)).map { _ in r.pick(pieces) }.joined()
            var v6 = [UInt8](repeating: 0, count: 16), v4 = [UInt8](repeating: 0, count: 4)
            let libc6 = inet_pton(AF_INET6, text, &v6) == 1
            let libc4 = inet_pton(AF_INET, text, &v4) == 1
            let ours = IPAddress(text)
            let leadingZero = text.split(separator: ":").last.map { $0.contains(".") && $0.split(separator: ".").contains { $0.count > 1 && $0.hasPrefix("0") } } ?? false
            if leadingZero { continue }
            checked += 1
            if libc6 { valid6 += 1 } else if libc4 { valid4 += 1 }
            if libc6 {
                #expect(ours?.isV6 == true && ours?.bytes == v6, "\(text)")
            } else if libc4 {
                #expect(ours?.isV6 == false && ours?.bytes == v4, "\(text)")
            } else {
                #expect(ours == nil, "\(text)")
            }
        }
        #expect(checked > 50_000)
        // Enough of them valid that agreeing is not only refusing together.
        #expect(valid6 > 1_000 && valid4 > 100, "\(valid6) IPv6, \(valid4) IPv4")
        #expect(IPPrefix("2001:db8::/32") == IPPrefix(address: IPAddress("2001:db8::")!, length: 32))
        #expect(IPPrefix("192.0.2.7") == IPPrefix(address: IPAddress("192.0.2.7")!, length: 32))
        for bad in ["192.0.2.0/33", "2001:db8::/129", "192.0.2.0/", "192.0.2.0/+24", "192.0.2.0/2a", "/24", "192.0.2.0/24/1", "::/1234"] {
            #expect(IPPrefix(bad) == nil, "\(bad)")
        }
    }
}
