// libFuzzer target `parse`: the packet parser (IPHeaderInfo, TCPSegment and its option walk,
// ICMPErrorInfo) and the option editing (AOOption.insert, strip, clampMSS), no engine.
//
// Input: one parameter byte, then a packet (parsed in place, exactly sized).
//   bits 0-2  the MAC length to insert: 12, 16, 14, 20, 10, 13, 32, 37
//   bits 3-4  spare room in the edit buffer: 64, 0, 4, 24 bytes
//   bits 5-7  the MSS to clamp to: 536 + 128 * value
// Invariants: parsing never reads outside the packet and every offset it returns is inside it;
// an insert that succeeds gives a packet that parses to the segment it returned, with one AO of
// the asked length, the payload intact and the checksum still right; stripping it again gives back
// the original packet when nothing was trimmed; an insert that throws leaves the packet unchanged;
// strip and clampMSS keep the packet well-formed and the checksum right.
@testable import TCPAO
#if canImport(Glibc)
import Glibc
#endif

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutableRawPointer?, _ argv: UnsafeMutableRawPointer?) -> CInt {
    dumpSeedsIfAsked {
        var seeds: [(String, [UInt8])] = []
        for t in World().trace {
            seeds.append(("plain-\(t.name)", [0x00] + t.plain))
            if let w = t.wire { seeds.append(("wire-\(t.name)", [0x00] + w)) }
        }
        return seeds
    }
    return 0
}

let macLengths = [12, 16, 14, 20, 10, 13, 32, 37]
let rooms = [64, 0, 4, 24]

func checkSegment(_ s: TCPSegment, count: Int, _ what: String) {
    fuzzCheck(s.length <= count, "\(what): length \(s.length) > buffer \(count)")
    fuzzCheck(s.tcpOffset >= 20 && s.tcpHeaderLength >= 20 && s.tcpHeaderLength <= 60 && s.tcpHeaderLength % 4 == 0,
              "\(what): TCP header at \(s.tcpOffset), \(s.tcpHeaderLength) bytes")
    fuzzCheck(s.payloadOffset <= s.length, "\(what): payload offset \(s.payloadOffset) past length \(s.length)")
    if s.aoOffset >= 0 {
        fuzzCheck(s.aoOffset >= s.optionsOffset && s.aoOffset + s.aoLength <= s.optionsEnd && s.aoLength >= 4,
                  "\(what): AO option at \(s.aoOffset) length \(s.aoLength) outside the options")
    }
    if s.mssOffset >= 0 { fuzzCheck(s.mssOffset >= s.optionsOffset && s.mssOffset + 4 <= s.optionsEnd, "\(what): MSS outside the options") }
    if s.sackOffset >= 0 { fuzzCheck(s.sackOffset >= s.optionsOffset && s.sackOffset + 2 <= s.optionsEnd, "\(what): SACK outside the options") }
    if s.eolOffset >= 0 { fuzzCheck(s.eolOffset >= s.optionsOffset && s.eolOffset < s.optionsEnd, "\(what): EOL outside the options") }
}

/// Parses the buffer again and checks it agrees with the segment an edit returned.
func reparse(_ p: UnsafeRawPointer, _ s: TCPSegment, capacity: Int, _ what: String) {
    fuzzCheck(s.length <= capacity, "\(what): length \(s.length) > capacity \(capacity)")
    let r: TCPSegment
    do { r = try TCPSegment.parse(p, count: s.length) } catch {
        fuzzFail("\(what): the edited packet does not parse (\(error.name))")
    }
    fuzzCheck(r == s, "\(what): the returned segment differs from the packet's\n returned \(s)\n parsed   \(r)")
    checkSegment(r, count: s.length, what)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    let param = data[0]
    let count = size - 1
    // Parse an exact copy (libFuzzer's own buffer may be larger than the input).
    let exact = FuzzBuffer(data + 1, count: count, capacity: count)
    _ = ICMPErrorInfo.parse(exact.p, count: count)
    guard let ip = try? IPHeaderInfo.parse(exact.p, count: count) else { return 0 }
    fuzzCheck(ip.length <= count && ip.payloadOffset <= ip.length, "IP: length \(ip.length), payload at \(ip.payloadOffset), buffer \(count)")
    guard let seg = try? TCPSegment.parse(exact.p, count: count) else { return 0 }
    checkSegment(seg, count: count, "parse")
    _ = seg.mss(exact.p)
    let n = seg.length
    let valid = seg.checksumIsValid(exact.p)

    if seg.hasAO {
        _ = (seg.aoKeyID(exact.p), seg.aoRNextKeyID(exact.p), seg.aoMACLength)
        let s = AOOption.strip(exact.p, seg)
        reparse(exact.p, s, capacity: count, "strip")
        fuzzCheck(!s.hasAO, "strip: TCP-AO still there")
        fuzzCheck(s.payloadLength == seg.payloadLength, "strip: payload length changed")
        fuzzCheck(memcmp(exact.p + s.payloadOffset, data + 1 + seg.payloadOffset, s.payloadLength) == 0, "strip: payload changed")
        if valid { fuzzCheck(s.checksumIsValid(exact.p), "strip: the TCP checksum broke") }
        return 0
    }

    // Insert an AO option into a buffer with some room.
    let macLength = macLengths[Int(param & 7)]
    let capacity = n + rooms[Int(param >> 3) & 3]
    let buf = FuzzBuffer(data + 1, count: n, capacity: capacity)
    let inserted: TCPSegment
    do {
        inserted = try AOOption.insert(buf.p, capacity: capacity, seg, macLength: macLength, keyID: param, rnextKeyID: ~param)
    } catch {
        fuzzCheck(memcmp(buf.p, data + 1, n) == 0, "insert threw \(error.name) but changed the packet")
        return 0
    }
    reparse(buf.p, inserted, capacity: capacity, "insert")
    fuzzCheck(inserted.hasAO && inserted.aoLength == 4 + macLength, "insert: AO of \(inserted.aoLength) bytes for a \(macLength)-byte MAC")
    fuzzCheck(inserted.aoKeyID(buf.p) == param && inserted.aoRNextKeyID(buf.p) == ~param, "insert: KeyIDs")
    fuzzCheck(inserted.payloadLength == seg.payloadLength, "insert: payload length \(seg.payloadLength) became \(inserted.payloadLength)")
    fuzzCheck(memcmp(buf.p + inserted.payloadOffset, data + 1 + seg.payloadOffset, seg.payloadLength) == 0, "insert: payload changed")
    for i in 0..<macLength {
        fuzzCheck(buf.p.load(fromByteOffset: inserted.aoOffset + 4 + i, as: UInt8.self) == 0, "insert: MAC not zeroed")
    }
    if valid { fuzzCheck(inserted.checksumIsValid(buf.p), "insert: the TCP checksum broke") }
    let trimmed = inserted.length != n + ((4 + macLength + 3) & ~3)

    // MSS clamping on the edited packet.
    if inserted.mssOffset >= 0 {
        let clampTo = UInt16(536 + 128 * Int(param >> 5))
        let old = inserted.mss(buf.p)!
        let changed = AOOption.clampMSS(buf.p, inserted, to: clampTo)
        fuzzCheck(changed == (old > clampTo), "clampMSS: changed=\(changed) for \(old) -> \(clampTo)")
        fuzzCheck(inserted.mss(buf.p)! == min(old, clampTo), "clampMSS: MSS \(inserted.mss(buf.p)!)")
        if valid { fuzzCheck(inserted.checksumIsValid(buf.p), "clampMSS: the TCP checksum broke") }
        if changed { return 0 }
    }

    // Strip it again: the original packet comes back unless options were trimmed.
    let back = AOOption.strip(buf.p, inserted)
    reparse(buf.p, back, capacity: capacity, "strip after insert")
    fuzzCheck(!back.hasAO, "strip after insert: TCP-AO still there")
    if valid { fuzzCheck(back.checksumIsValid(buf.p), "strip after insert: the TCP checksum broke") }
    if !trimmed {
        fuzzCheck(back.length == n, "insert+strip: length \(n) became \(back.length)")
        fuzzCheck(equalModuloChecksums(buf.p, data + 1, count: n, seg),
                  "insert+strip changed the packet\n in:  \(Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(data + 1), count: n)).hexString)\n out: \(buf.bytes.prefix(n).map { $0 }.hexString)")
    }
    return 0
}
