import Foundation
import Testing
import PropertyBased
@testable import TCPAO
import TCPAOTestSupport

/// Properties over random input: no packet crashes the parser or the engine; insert then strip
/// gives back the original segment; checksums stay right after every edit.
@Suite struct PropertyTests {
    /// Random bytes, often behind a plausible IPv4 or IPv6 header (right version, length and
    /// protocol), or segments built from option pieces with one byte sometimes replaced, so that
    /// the TCP header and option walk is reached, not only the IP checks. What
    /// parses is consistent with the bytes: lengths inside the packet, each option offset the
    /// parser reports points at an option of that kind lying wholly inside the TCP header, and
    /// bytes after the IP length (link padding) change nothing. An ICMP error it reports quotes
    /// a TCP header that lies inside the packet.
    @Test func arbitraryBytesNeverCrashTheParser() async {
        let parsed = Tally()
        await propertyCheck(count: 3000, input: Gen.uint8().array(of: 0...120), Gen.uint8(in: 0...4), Gen.uint8().array(of: 0...8)) { raw, shape, padding in
            var bytes = raw
            if shape >= 3 { // a TCP segment whose options are legal pieces (AO, MD5, EOL too), one byte of them sometimes replaced
                var opts: [UInt8] = []
                for b in raw.prefix(6) where opts.count + Self.parserPieces[Int(b) % Self.parserPieces.count].count <= 40 {
                    opts += Self.parserPieces[Int(b) % Self.parserPieces.count]
                }
                while opts.count % 4 != 0 { opts.append(1) }
                if raw.count > 8, raw[6] & 1 == 1, !opts.isEmpty { opts[Int(raw[7]) % opts.count] = raw[8] }
                let v6 = shape == 4
                bytes = PacketBuilder(src: v6 ? "2001:db8::1" : "192.0.2.1", dst: v6 ? "2001:db8::2" : "192.0.2.2", srcPort: 1, dstPort: 2)
                    .segment(seq: 1, flags: 0x10, options: opts, payload: Array(raw.dropFirst(9).prefix(20)))
            } else if shape == 1 && bytes.count >= 20 { // IPv4, IHL 5, total length = all of it, no fragment, TCP
                bytes[0] = 0x45; bytes[2] = UInt8(bytes.count >> 8); bytes[3] = UInt8(bytes.count & 255)
                bytes[6] = 0; bytes[7] = 0; bytes[9] = Spec.ipProtoTCP
            } else if shape == 2 && bytes.count >= 40 { // IPv6, payload length = the rest, next header TCP
                bytes[0] = 0x60; bytes[4] = UInt8((bytes.count - 40) >> 8); bytes[5] = UInt8((bytes.count - 40) & 255)
                bytes[6] = Spec.ipProtoTCP
            }
            func parse(_ b: [UInt8]) -> Result<TCPSegment, PacketError> {
                b.withUnsafeBytes { r in
                    let p = r.baseAddress ?? UnsafeRawPointer(bitPattern: 8)!
                    return Result { () throws(PacketError) -> TCPSegment in try TCPSegment.parse(p, count: r.count) }
                }
            }
            if case .success(let s) = parse(bytes) {
                parsed.add(s.tcpHeaderLength > 20 ? 2 : 1)
                #expect(s.isV6 == (bytes[0] >> 4 == 6))
                #expect(s.length <= bytes.count && s.tcpOffset >= (s.isV6 ? 40 : 20))
                #expect(s.tcpHeaderLength >= 20 && s.tcpHeaderLength <= 60 && s.tcpHeaderLength % 4 == 0)
                #expect(s.payloadOffset <= s.length && s.payloadLength >= 0)
                #expect(s.srcPort == UInt16(bytes[s.tcpOffset]) << 8 | UInt16(bytes[s.tcpOffset + 1]))
                #expect(s.flags == bytes[s.tcpOffset + 13])
                func inOptions(_ at: Int, _ len: Int) -> Bool { at >= s.optionsOffset && at + len <= s.optionsEnd }
                if s.hasAO {
                    #expect(inOptions(s.aoOffset, s.aoLength) && bytes[s.aoOffset] == 29)
                    #expect(s.aoLength >= 4 && Int(bytes[s.aoOffset + 1]) == s.aoLength)
                } else {
                    #expect(s.aoLength == 0)
                }
                if s.mssOffset >= 0 { #expect(inOptions(s.mssOffset, 4) && bytes[s.mssOffset] == 2 && bytes[s.mssOffset + 1] == 4) }
                if s.sackOffset >= 0 { #expect(inOptions(s.sackOffset, 2) && bytes[s.sackOffset] == 5 && inOptions(s.sackOffset, Int(bytes[s.sackOffset + 1]))) }
                if s.eolOffset >= 0 { #expect(inOptions(s.eolOffset, 1) && bytes[s.eolOffset] == 0) }
                #expect(parse(bytes + padding) == .success(s))
            }
            bytes.withUnsafeBytes { b in
                let p = b.baseAddress ?? UnsafeRawPointer(bitPattern: 8)!
                if let e = ICMPErrorInfo.parse(p, count: b.count) {
                    #expect(e.isV6 == (bytes[0] >> 4 == 6))
                    // Outer IP header, 8 bytes of ICMP, the quoted IP header, 8 bytes of its TCP header.
                    #expect(bytes.count >= (e.isV6 ? 40 + 8 + 40 + 8 : 20 + 8 + 20 + 8))
                }
            }
        }
        // Not vacuous: many inputs got through the whole parser, some of them with options.
        #expect(parsed.count >= 300 && parsed.withOptions >= 100, "parsed \(parsed.count), with options \(parsed.withOptions)")
    }

    /// Arbitrary bytes after a valid IPv4/IPv6 + TCP prefix, through a whole engine in both
    /// directions: a verdict every time, never a trap.
    @Test func arbitraryPacketsNeverCrashTheEngine() async {
        let cfg = testConfig(peer: "0.0.0.0/0", chain: testChain())
        let cfg6 = testConfig(peer: "::/0", chain: testChain())
        await propertyCheck(count: 3000, input: Gen.uint8().array(of: 0...100), Gen.bool, Gen.uint8(in: 0...3)) { tail, v6, mode in
            let b = PacketBuilder(src: v6 ? "2001:db8::1" : "192.0.2.1", dst: v6 ? "2001:db8::2" : "192.0.2.2", srcPort: 1, dstPort: 2)
            var pkt = b.segment(seq: 1, flags: mode & 1 == 0 ? 0x02 : 0x10)
            // Keep the IP length right (or not, in mode 3) and splice random bytes over the TCP header.
            let t = v6 ? 40 : 20
            pkt = Array(pkt[0..<(t + 12)]) + tail
            if mode != 3 {
                if v6 { let l = pkt.count - 40; pkt[4] = UInt8(l >> 8); pkt[5] = UInt8(l & 255) }
                else { pkt[2] = UInt8(pkt.count >> 8); pkt[3] = UInt8(pkt.count & 255) }
            }
            var e = AOEngine(config: v6 ? cfg6 : cfg)
            let buf = PacketBuffer(pkt)
            let v = e.process(buf.pointer, length: buf.length, capacity: buf.capacity, hint: mode & 2 == 0 ? .egress : .ingress,
                              clock: EngineClock(wall: 1_790_000_000, mono: 1))
            if case .acceptModified(let n) = v { #expect(n <= buf.capacity) }
        }
    }

    /// Option pieces for the parser property: the legal ones below, TCP-AO (12-byte MAC and an
    /// empty one), TCP-MD5, EOL.
    static let parserPieces: [[UInt8]] = optionPieces + [[29, 16, 1, 2] + [UInt8](repeating: 0xAA, count: 12), [29, 4, 0, 0],
                                                         [19, 18] + [UInt8](repeating: 0xBB, count: 16), [0]]

    static let optionPieces: [[UInt8]] = [
        [2, 4, 5, 0xB4], [4, 2], [1], [3, 3, 7], [8, 10, 0, 0, 0, 1, 0, 0, 0, 2], [5, 10, 0, 0, 0, 1, 0, 0, 0, 2],
        [5, 18, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4], [254, 6, 0xF9, 0x89, 1, 2], [30, 4, 0, 0],
    ]

    /// Random legal option lists (NOPs, MSS, SACK, timestamps, experimental, MPTCP-like),
    /// optionally ended with EOL, random payload and flags, IPv4 and IPv6.
    static let segments =
        zip(Gen.int(in: 0...(optionPieces.count - 1)).array(of: 0...6), Gen.bool, Gen.bool,
            Gen.uint8().array(of: 0...300), Gen.uint8(in: 0...0x3F), Gen.uint32()).map { picks, eol, v6, payload, flags, seq in
            var opts: [UInt8] = []
            for i in picks where opts.count + optionPieces[i].count <= 24 { opts += optionPieces[i] }
            if eol { opts.append(0) }
            while opts.count % 4 != 0 { opts.append(eol ? 0 : 1) }
            let b = PacketBuilder(src: v6 ? "2001:db8::1" : "192.0.2.1", dst: v6 ? "2001:db8:9::2" : "198.51.100.2", srcPort: 4000, dstPort: 830)
            return b.segment(seq: seq, ack: seq &* 3, flags: flags, options: opts, payload: payload)
        }

    @Test func insertThenStripGivesBackTheSegment() async {
        await propertyCheck(count: 2000, input: Self.segments, Gen.int(in: 4...24), Gen.uint8(), Gen.uint8()) { pkt, macLen, kid, rnext in
            let buf = PacketBuffer(pkt, capacity: pkt.count + 64)
            guard let seg = try? buf.segment() else { Issue.record("generator made a bad segment"); return }
            let aligned = (4 + macLen + 3) & ~3
            guard seg.tcpHeaderLength + aligned <= 60 else {
                // Needs trimming: either it works (checked elsewhere) or the packet is untouched.
                if (try? AOOption.insert(buf.pointer, capacity: buf.capacity, seg, macLength: macLen, keyID: kid, rnextKeyID: rnext)) == nil {
                    #expect(buf.bytes == pkt)
                }
                return
            }
            let ins = try! AOOption.insert(buf.pointer, capacity: buf.capacity, seg, macLength: macLen, keyID: kid, rnextKeyID: rnext)
            buf.setLength(ins.length)
            #expect(ins.hasAO && ins.aoLength == 4 + macLen && ins.payloadLength == seg.payloadLength)
            #expect(ins.checksumIsValid(buf.pointer))
            #expect((try? buf.segment()) == ins)
            let out = AOOption.strip(buf.pointer, ins)
            buf.setLength(out.length)
            #expect(buf.bytes == pkt)
        }
    }

    /// Found by checksumsStayValidAfterEveryEdit: a SYN with 28 bytes of options (MSS,
    /// SACK-permitted and an experimental option twice, then EOL) has SACK-permitted trimmed and
    /// still no room for AO. The insert must fail leaving the packet exactly as it was.
    @Test func failedInsertLeavesThePacketUnchanged() throws {
        let pkt: [UInt8] = [69, 0, 0, 68, 18, 52, 64, 0, 64, 6, 60, 73, 192, 0, 2, 1, 198, 51, 100, 2, 15, 160, 3, 62, 0, 0, 0, 0, 0, 0, 0, 0,
                            192, 2, 250, 240, 61, 38, 0, 0, 4, 2, 2, 4, 5, 180, 254, 6, 249, 137, 1, 2, 2, 4, 5, 180, 4, 2, 254, 6, 249, 137,
                            1, 2, 0, 0, 0, 0]
        let buf = PacketBuffer(pkt, capacity: 200)
        let seg = try buf.segment()
        #expect(seg.checksumIsValid(buf.pointer))
        #expect(throws: PacketError.noOptionSpace) {
            try AOOption.insert(buf.pointer, capacity: buf.capacity, seg, macLength: 12, keyID: 1, rnextKeyID: 1)
        }
        #expect(buf.bytes == pkt)
        // Room enough but no buffer to grow into: also unchanged.
        let syn = PacketBuilder(src: "192.0.2.1", dst: "198.51.100.2", srcPort: 1, dstPort: 2)
            .segment(seq: 1, flags: 0x02, options: PacketBuilder.synOptions() + [1, 1, 1, 1])
        let small = PacketBuffer(syn, capacity: syn.count + 8)
        #expect(throws: PacketError.noBufferSpace) {
            try AOOption.insert(small.pointer, capacity: small.capacity, try small.segment(), macLength: 12, keyID: 1, rnextKeyID: 1)
        }
        #expect(small.bytes == syn)
    }

    @Test func checksumsStayValidAfterEveryEdit() async {
        await propertyCheck(count: 2000, input: Self.segments, Gen.uint16(in: 500...1500)) { pkt, mss in
            let buf = PacketBuffer(pkt, capacity: pkt.count + 64)
            guard var seg = try? buf.segment() else { return }
            if let s = try? AOOption.insert(buf.pointer, capacity: buf.capacity, seg, macLength: 12, keyID: 3, rnextKeyID: 4) {
                seg = s
                buf.setLength(s.length)
                #expect(seg.checksumIsValid(buf.pointer))
                let key = MACKey(algorithm: .hmacSHA1_96, bytes: [UInt8](repeating: 7, count: 20))
                AOMAC.sign(buf.pointer, seg, key: key, sne: 9, includeOptions: true)
                #expect(seg.checksumIsValid(buf.pointer))
                let ok = AOMAC.verify(buf.pointer, seg, key: key, sne: 9, includeOptions: true)
                #expect(ok)
            }
            AOOption.clampMSS(buf.pointer, seg, to: mss)
            #expect(seg.checksumIsValid(buf.pointer))
            seg = AOOption.strip(buf.pointer, seg)
            buf.setLength(seg.length)
            #expect(seg.checksumIsValid(buf.pointer))
            if let ip = try? IPHeaderInfo.parse(buf.pointer, count: buf.length), !ip.isV6 {
                #expect(buf.bytes.withUnsafeBytes { InternetChecksum.sum($0.baseAddress!, 20) } == 0xFFFF)
            }
        }
    }
}

/// A thread-safe count of what a property saw, to show its assertions were reached.
final class Tally: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0, opts = 0
    func add(_ kind: Int) { lock.lock(); n += 1; if kind == 2 { opts += 1 }; lock.unlock() }
    var count: Int { lock.lock(); defer { lock.unlock() }; return n }
    var withOptions: Int { lock.lock(); defer { lock.unlock() }; return opts }
}
