// libFuzzer target `netlink`: the NFQUEUE codec (Sources/TCPAODaemon/NetlinkCodec.swift,
// compiled alone into this binary): parsing received queue messages and encoding verdicts.
//
// Input: one mode byte, then the bytes of one received netlink message.
//   1. NFQCodec.fuzzOne over the message (the codec's own entry point and invariants).
//   2. parseMessage over a slot of exactly the right size, with the slot's bytes past what was
//      received poisoned for AddressSanitizer, so that reading past the receive is reported:
//      mode bits 0-1  the slot's free room after the message: 0, 16, 64, 4096 bytes
//      mode bit 2     the receive was cut short instead (MSG_TRUNC): the slot ends 1 + bits 3-7
//                     bytes before the message does
//   Invariants: a packet's payload lies inside what was received, its capacity inside the slot
//   and at least its length; a verdict's header says its own length.
import CNetfilterQueue
#if canImport(Glibc)
import Glibc
#endif

@_silgen_name("__asan_poison_memory_region")
func asanPoison(_ p: UnsafeRawPointer, _ n: Int)
@_silgen_name("__asan_unpoison_memory_region")
func asanUnpoison(_ p: UnsafeRawPointer, _ n: Int)

func fail(_ message: String) -> Never {
    fputs("FUZZ INVARIANT VIOLATED (netlink): \(message)\n", stderr)
    abort()
}

// MARK: seeds

/// Little-endian netlink message builder (nlmsghdr and nlattr are host order; x86-64).
func le16(_ v: Int) -> [UInt8] { [UInt8(v & 255), UInt8(v >> 8 & 255)] }
func le32(_ v: Int) -> [UInt8] { le16(v & 0xFFFF) + le16(v >> 16 & 0xFFFF) }
func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 255), UInt8(v >> 8 & 255), UInt8(v & 255)] }
func attr(_ type: Int, _ value: [UInt8], pad: Bool = true) -> [UInt8] {
    let a = le16(4 + value.count) + le16(type) + value
    return pad ? a + [UInt8](repeating: 0, count: (4 - a.count % 4) % 4) : a
}
func message(type: Int, flags: Int = 0, _ body: [UInt8], length: Int? = nil) -> [UInt8] {
    le32(length ?? 16 + body.count) + le16(type) + le16(flags) + le32(1) + le32(0) + body
}
let queueMsg = 3 << 8 | 0     // NFNL_SUBSYS_QUEUE, NFQNL_MSG_PACKET
let verdictMsg = 3 << 8 | 1   // NFQNL_MSG_VERDICT
let nfgen: [UInt8] = [2, 0, 0, 7] // AF_INET, NFNETLINK_V0, queue 7 (big-endian)
func packetHdr(id: UInt32, hook: UInt8) -> [UInt8] { attr(1, be32(id) + [0x08, 0x00, hook]) }
let ipPacket: [UInt8] = [0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 192, 0, 2, 2,
                         0x9c, 0x40, 0x03, 0x3e, 0, 0, 3, 0xe8, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]

func seeds() -> [(String, [UInt8])] {
    var s: [(String, [UInt8])] = []
    let hdr = packetHdr(id: 42, hook: 3)
    s.append(("packet-out", message(type: queueMsg, nfgen + hdr + attr(6, be32(2)) + attr(10, ipPacket))))
    s.append(("packet-in-full", message(type: queueMsg, nfgen + packetHdr(id: 7, hook: 1) + attr(3, be32(0x10))
        + attr(4, [UInt8](repeating: 1, count: 16)) + attr(5, be32(2)) + attr(9, [0, 6, 0, 0] + [2, 0, 0, 0, 0, 1, 0, 0])
        + attr(14, be32(0)) + attr(16, be32(0)) + attr(17, be32(0)) + attr(10, ipPacket + [1, 2, 3]))))
    s.append(("packet-caplen", message(type: queueMsg, nfgen + hdr + attr(13, be32(1500)) + attr(10, ipPacket))))
    s.append(("packet-nested-flag", message(type: queueMsg, nfgen + hdr + attr(0x8000 | 19, attr(1, [0x81, 0x00]) + attr(2, [0, 5])) + attr(10, ipPacket))))
    s.append(("packet-no-payload", message(type: queueMsg, nfgen + hdr)))
    s.append(("packet-no-header", message(type: queueMsg, nfgen + attr(10, ipPacket))))
    s.append(("packet-short-header", message(type: queueMsg, nfgen + attr(1, [0, 0, 0, 9, 8]) + attr(10, ipPacket))))
    s.append(("packet-attr-len-3", message(type: queueMsg, nfgen + hdr + [3, 0, 10, 0] + ipPacket)))
    s.append(("packet-attr-overrun", message(type: queueMsg, nfgen + hdr + le16(400) + le16(10) + ipPacket)))
    s.append(("packet-short-indev", message(type: queueMsg, nfgen + hdr + attr(5, [1, 2]) + attr(10, ipPacket))))
    s.append(("packet-cut-short", message(type: queueMsg, nfgen + hdr + attr(10, ipPacket), length: 16 + 4 + 12 + 44 + 200)))
    s.append(("packet-len-below-header", message(type: queueMsg, nfgen + hdr + attr(10, ipPacket), length: 18)))
    s.append(("error-verdict-echo", message(type: 2, le32(-22 & 0xFFFF_FFFF)
        + message(type: verdictMsg, flags: 1, nfgen + attr(2, be32(1) + be32(42))))))
    s.append(("error-ack", message(type: 2, le32(0) + message(type: verdictMsg, [], length: 16))))
    s.append(("error-int-min", message(type: 2, le32(0x8000_0000))))
    s.append(("error-short", message(type: 2, [0xff, 0xff])))
    s.append(("done", message(type: 3, le32(0))))
    s.append(("noop", message(type: 1, [])))
    s.append(("short", [16, 0, 0, 0, 0, 3]))
    return s.map { ($0.0, [0x01] + $0.1) }
}

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutableRawPointer?, _ argv: UnsafeMutableRawPointer?) -> CInt {
    guard let d = getenv("FUZZ_DUMP_SEEDS") else { return 0 }
    let dir = String(cString: d)
    mkdir(dir, 0o755)
    for (name, bytes) in seeds() {
        guard let f = fopen(dir + "/" + name, "wb") else { fail("cannot write \(dir)/\(name)") }
        _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
        fclose(f)
    }
    exit(0)
}

let rooms = [0, 16, 64, 4096]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    let mode = data[0]
    let count = size - 1
    NFQCodec.fuzzOne(UnsafeRawPointer(data + 1), count)

    let received = count
    let slotSize = mode & 4 == 0 ? count + rooms[Int(mode & 3)] : max(0, count - 1 - Int(mode >> 3))
    let slot = UnsafeMutableRawPointer.allocate(byteCount: max(slotSize, 1), alignment: 8)
    defer { slot.deallocate() }
    slot.initializeMemory(as: UInt8.self, repeating: 0xA5, count: max(slotSize, 1))
    let copied = min(received, slotSize)
    if copied > 0 { slot.copyMemory(from: data + 1, byteCount: copied) }
    if slotSize > copied { asanPoison(slot + copied, slotSize - copied) }
    let m = NFQCodec.parseMessage(slot, received: received, slotSize: slotSize)
    if slotSize > copied { asanUnpoison(slot + copied, slotSize - copied) }
    switch m {
    case .packet(let p):
        if let pl = p.payload {
            let off = pl - slot
            if off < NF.headerLength || off + p.length > copied { fail("payload [\(off), +\(p.length)) outside the \(copied) bytes received") }
            if p.capacity < p.length || off + p.capacity > slotSize { fail("capacity \(p.capacity) at \(off), length \(p.length), slot \(slotSize)") }
            if p.capacity > NF.maxPacket { fail("capacity \(p.capacity) over NFQNL_MAX_COPY_RANGE") }
        }
    case .malformedPacket, .netlinkError, .foreign:
        break
    }
    return 0
}
