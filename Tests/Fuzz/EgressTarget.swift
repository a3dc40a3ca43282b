// libFuzzer target `egress`: sign and insert (RFC 5925 7.4) in AOEngine.process.
//
// Input: one mode byte, then a packet that host A sends toward peer B.
//   bits 0-1  spare room in the buffer: 64, 0, 12, 20 bytes (the buffer is exactly length + room,
//             so writing past the capacity is an AddressSanitizer report)
//   bit 2     no direction hint (the peer prefixes decide), else hint .egress
//   bit 3     the signed packet then goes to B's ingress (verify and strip)
//   bits 4-5  the MTU B's ingress uses for MSS clamping: 0, 1280, 576, 1500
// Invariants: the verdict's length is within the capacity; a signed packet parses, carries exactly
// one TCP-AO option of 4 + MAC length bytes, and its checksums are right when they were before;
// a dropped packet is left as it was.
@testable import TCPAO
#if canImport(Glibc)
import Glibc
#endif

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutableRawPointer?, _ argv: UnsafeMutableRawPointer?) -> CInt {
    dumpSeedsIfAsked {
        var seeds: [(String, [UInt8])] = []
        for t in World().trace where t.fromA {
            seeds.append(("plain-\(t.name)", [0x08] + t.plain))
        }
        // Option space: a SYN with 40 bytes of options, a segment with 4 SACK blocks, a segment
        // whose buffer has no room.
        let c = World.flowV4
        seeds.append(("full-syn", [0x08] + c.segment(seq: 77, flags: 0x02, options: FuzzPacket.synOptions() + [1, 1, 1, 1] + [30, 6, 1, 2, 3, 4] + [1, 1, 1, 1, 1, 1, 1, 1, 1, 1])))
        seeds.append(("sack4", [0x00] + c.segment(seq: 1014, ack: 5001, flags: 0x10, options: FuzzPacket.sackOption(blocks: 4))))
        seeds.append(("sack3-ts", [0x00] + c.segment(seq: 1014, ack: 5001, flags: 0x10, options: FuzzPacket.tsOptions() + FuzzPacket.sackOption(blocks: 3))))
        seeds.append(("noroom", [0x01] + c.segment(seq: 1014, ack: 5001, flags: 0x10, options: FuzzPacket.tsOptions())))
        seeds.append(("eol", [0x08] + c.segment(seq: 1014, ack: 5001, flags: 0x10, options: [1, 0, 0, 0])))
        seeds.append(("v6-fin", [0x08] + World.flowV6.segment(seq: 0x7000_0001, ack: 0x1234_567E, flags: 0x11, options: FuzzPacket.tsOptions())))
        return seeds
    }
    return 0
}

let rooms = [64, 0, 12, 20]
let mtus = [0, 1280, 576, 1500]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    let mode = data[0]
    let w = World.next()
    let count = size - 1
    let capacity = count + rooms[Int(mode & 3)]
    let buf = FuzzBuffer(data + 1, count: count, capacity: capacity)
    let before = try? TCPSegment.parse(buf.p, count: count)
    let checksumWasValid = before?.checksumIsValid(buf.p) ?? false
    let v = w.a.process(buf.p, length: count, capacity: capacity, hint: mode & 4 == 0 ? .egress : nil, clock: w.clock)
    switch v {
    case .drop:
        // (Finding 1, fixed: an insert into a segment carrying TCP-MD5 used to edit it first.)
        fuzzCheck(memcmp(buf.p, data + 1, count) == 0, "egress: a dropped packet was changed")
        return 0
    case .accept:
        fuzzCheck(memcmp(buf.p, data + 1, count) == 0, "egress: an accepted packet was changed")
        return 0
    case .acceptModified(let n):
        let s = checkModified(buf.p, length: n, capacity: capacity, what: "egress")
        fuzzCheck(s.hasAO, "egress: signed packet without TCP-AO")
        fuzzCheck(s.tcpHeaderLength <= Spec.tcpMaxHeaderLength, "egress: TCP header of \(s.tcpHeaderLength) bytes")
        if let b = before {
            fuzzCheck(n >= b.length - 40 && n <= b.length + 40, "egress: length \(b.length) became \(n)")
            fuzzCheck(s.payloadLength == b.payloadLength, "egress: payload length \(b.payloadLength) became \(s.payloadLength)")
            if checksumWasValid { fuzzCheck(s.checksumIsValid(buf.p), "egress: the TCP checksum broke") }
            if !b.isV6 {
                if ipv4HeaderChecksumIsValid(data + 1) {
                    fuzzCheck(ipv4HeaderChecksumIsValid(buf.p), "egress: the IPv4 header checksum broke")
                }
            }
        }
        if mode & 8 != 0 {
            let wire = FuzzBuffer(buf.p, count: n, capacity: n)
            let iv = w.b.process(wire.p, length: n, capacity: n, hint: .ingress, mtu: mtus[Int(mode >> 4) & 3], clock: w.clock)
            if case .acceptModified(let m) = iv {
                let r = checkModified(wire.p, length: m, capacity: n, what: "ingress (peer)")
                fuzzCheck(!r.hasAO, "ingress (peer): accepted packet still carries TCP-AO")
            }
        }
        return 0
    }
}
