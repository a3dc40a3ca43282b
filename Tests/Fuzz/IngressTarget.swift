// libFuzzer target `ingress`: verify and strip (RFC 5925 7.5) in AOEngine.process.
//
// Input: one mode byte, then a packet.
//   mode bit 0 = 0  raw: the packet arrives at host A's engine from the wire as it is (hint
//                   .ingress, or no hint with bit 1), into a buffer of exactly its size.
//   mode bit 0 = 1  pipe: peer B's engine signs the packet first (egress, inserting TCP-AO), then
//                   A verifies and strips it; when B inserted the option without trimming other
//                   options and A accepted, what A delivers must be the original packet (checksums
//                   up to the two forms of zero), except a SYN whose MSS A may lower.
//   bits 2-3        the MTU toward the peer: 0 (unknown), 1280, 576, 68 (MSS clamping).
// Invariants: a verdict for every packet; an edited packet fits its buffer, parses, carries no
// TCP-AO, and its TCP checksum is still right when it was right on the wire.
@testable import TCPAO
#if canImport(Glibc)
import Glibc
#endif

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutableRawPointer?, _ argv: UnsafeMutableRawPointer?) -> CInt {
    dumpSeedsIfAsked {
        var seeds: [(String, [UInt8])] = []
        for t in World().trace {
            if !t.fromA, let w = t.wire { seeds.append(("wire-\(t.name)", [0x00] + w)) }
            if !t.fromA { seeds.append(("pipe-\(t.name)", [0x01] + t.plain)) }
        }
        // MSS clamping with an MTU, and the ICMP path (a hard error quoting the v4 connection).
        if let syn = World().trace.first(where: { $0.name == "in-syn" })?.wire { seeds.append(("wire-in-syn-mtu576", [0x08] + syn)) }
        let quoted = World.flowV4.segment(seq: 1014, ack: 5001, flags: 0x10)
        var icmp: [UInt8] = [0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 192, 0, 2, 1, 10, 0, 0, 1, 3, 3, 0, 0, 0, 0, 0, 0]
        icmp += quoted.prefix(28)
        icmp[3] = UInt8(icmp.count)
        seeds.append(("icmp-port-unreachable", [0x00] + icmp))
        return seeds
    }
    return 0
}

let mtus = [0, 1280, 576, 68]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    let mode = data[0]
    let w = World.next()
    let count = size - 1
    let mtu = mtus[Int(mode >> 2) & 3]
    if mode & 1 == 0 {
        // Raw: exactly sized, so any read past the packet is an AddressSanitizer report.
        let buf = FuzzBuffer(data + 1, count: count, capacity: count)
        let checksumWasValid = (try? TCPSegment.parse(buf.p, count: count))?.checksumIsValid(buf.p) ?? false
        let v = w.a.process(buf.p, length: count, capacity: count, hint: mode & 2 == 0 ? .ingress : nil, mtu: mtu, clock: w.clock)
        if case .acceptModified(let n) = v {
            let s = checkModified(buf.p, length: n, capacity: count, what: "ingress")
            if mode & 2 == 0 {
                fuzzCheck(!s.hasAO, "ingress: accepted packet still carries TCP-AO")
                fuzzCheck(!checksumWasValid || s.checksumIsValid(buf.p), "ingress: the TCP checksum broke")
            }
        }
        return 0
    }
    // Pipe: B signs, A verifies and strips.
    let orig = FuzzBuffer(data + 1, count: count, capacity: count)
    let e = FuzzBuffer(data + 1, count: count, capacity: count + 64)
    let origSeg = try? TCPSegment.parse(orig.p, count: count)
    let ev = w.b.process(e.p, length: count, capacity: e.capacity, hint: .egress, clock: w.clock)
    guard case .acceptModified(let n1) = ev else { return 0 }
    let signed = checkModified(e.p, length: n1, capacity: e.capacity, what: "egress (peer)")
    fuzzCheck(signed.hasAO, "egress (peer): signed packet without TCP-AO")
    let wire = FuzzBuffer(e.p, count: n1, capacity: n1)
    let iv = w.a.process(wire.p, length: n1, capacity: n1, hint: .ingress, mtu: mtu, clock: w.clock)
    guard case .acceptModified(let n2) = iv else { return 0 }
    let s = checkModified(wire.p, length: n2, capacity: n1, what: "ingress")
    fuzzCheck(!s.hasAO, "ingress: accepted packet still carries TCP-AO")
    guard let o = origSeg else { fuzzFail("a packet that does not parse was signed") }
    if o.checksumIsValid(orig.p) {
        fuzzCheck(signed.checksumIsValid(e.p), "egress (peer): the TCP checksum broke")
        fuzzCheck(s.checksumIsValid(wire.p), "ingress: the TCP checksum broke")
    }
    // Round trip: nothing trimmed by B and no MSS to clamp, so A must give back the original.
    let aligned = (signed.aoLength + 3) & ~3
    if n1 == o.length + aligned && !(s.isSYN && s.mssOffset >= 0) {
        fuzzCheck(n2 == o.length, "round trip: length \(o.length) became \(n2)")
        fuzzCheck(equalModuloChecksums(wire.p, orig.p, count: n2, o),
                  "round trip: sign+insert then verify+strip changed the packet\n in:  \(Array(UnsafeRawBufferPointer(start: orig.p, count: o.length)).hexString)\n out: \(Array(UnsafeRawBufferPointer(start: wire.p, count: n2)).hexString)")
    }
    return 0
}
