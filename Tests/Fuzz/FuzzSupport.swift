// Shared by the libFuzzer targets (scripts/fuzz builds it into each of them): a packet builder,
// the two engines the engine targets drive, the invariants they check, and seed dumping.
// Built with swiftc directly against the TCPAO core compiled with -enable-testing.
@testable import TCPAO
#if canImport(Glibc)
import Glibc
#endif

// MARK: invariants

/// Reports a broken invariant and aborts, so libFuzzer records the input as a crash.
func fuzzFail(_ message: @autoclosure () -> String, file: StaticString = #file, line: UInt = #line) -> Never {
    fputs("FUZZ INVARIANT VIOLATED (\(file):\(line)): \(message())\n", stderr)
    abort()
}

@inline(__always)
func fuzzCheck(_ cond: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
               file: StaticString = #file, line: UInt = #line) {
    if !cond() { fuzzFail(message(), file: file, line: line) }
}

/// The ones'-complement checksum has two zeros (0x0000 and 0xFFFF): an incremental update may
/// turn one into the other (tcpaod writes a computed zero as 0xFFFF on purpose).
@inline(__always)
func sameChecksum(_ a: UInt16, _ b: UInt16) -> Bool {
    a == b || (a == 0 && b == 0xFFFF) || (a == 0xFFFF && b == 0)
}

func be16(_ p: UnsafeRawPointer, _ o: Int) -> UInt16 {
    UInt16(p.load(fromByteOffset: o, as: UInt8.self)) << 8 | UInt16(p.load(fromByteOffset: o + 1, as: UInt8.self))
}

/// True when `a[0..<n]` and `b[0..<n]` are equal except for the TCP checksum and the IPv4 header
/// checksum: the TCP checksums must be equal up to the two forms of zero; the IPv4 header checksum
/// is recomputed from scratch by every edit (the kernel checked it before netfilter), so it is
/// compared only when it was right in the original `b`.
func equalModuloChecksums(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, count n: Int, _ seg: TCPSegment) -> Bool {
    let tcpCk = seg.tcpOffset + 16
    for i in 0..<n {
        if i == tcpCk || i == tcpCk + 1 { continue }
        if !seg.isV6 && (i == 10 || i == 11) { continue }
        if a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self) { return false }
    }
    if !sameChecksum(be16(a, tcpCk), be16(b, tcpCk)) { return false }
    if !seg.isV6 && ipv4HeaderChecksumIsValid(b) && !sameChecksum(be16(a, 10), be16(b, 10)) { return false }
    return true
}

func ipv4HeaderChecksumIsValid(_ p: UnsafeRawPointer) -> Bool {
    let ihl = Int(p.load(as: UInt8.self) & 15) * 4
    return InternetChecksum.finish(InternetChecksum.sum(p, ihl)) == 0
}

/// Whether the TCP header at `seg` has an option of `kind` (before any EOL).
func hasOption(_ p: UnsafeRawPointer, _ seg: TCPSegment, kind: UInt8) -> Bool {
    var i = seg.optionsOffset
    while i < seg.optionsEnd {
        let k = p.load(fromByteOffset: i, as: UInt8.self)
        if k == 0 { return false }
        if k == 1 { i += 1; continue }
        if k == kind { return true }
        guard i + 1 < seg.optionsEnd else { return false }
        i += max(2, Int(p.load(fromByteOffset: i + 1, as: UInt8.self)))
    }
    return false
}

/// Checks what an engine left in a buffer after `.acceptModified`: within the capacity, still a
/// well-formed packet whose IP length is the verdict's length.
func checkModified(_ p: UnsafeMutableRawPointer, length n: Int, capacity: Int, what: String) -> TCPSegment {
    fuzzCheck(n > 0 && n <= capacity, "\(what): verdict length \(n) outside capacity \(capacity)")
    let s: TCPSegment
    do { s = try TCPSegment.parse(p, count: n) } catch {
        fuzzFail("\(what): the edited packet does not parse (\(error.name))")
    }
    fuzzCheck(s.length == n, "\(what): verdict length \(n) but IP length \(s.length)")
    return s
}

// MARK: a buffer with room to grow

/// Exactly `capacity` bytes from malloc, so AddressSanitizer catches any access past it.
final class FuzzBuffer {
    let capacity: Int
    let p: UnsafeMutableRawPointer
    var length: Int

    init(_ src: UnsafeRawPointer?, count: Int, capacity: Int) {
        self.capacity = max(capacity, count, 1)
        p = UnsafeMutableRawPointer.allocate(byteCount: self.capacity, alignment: 1)
        // Spare room is filled with a marker rather than left uninitialized.
        p.initializeMemory(as: UInt8.self, repeating: 0xA5, count: self.capacity)
        if let s = src, count > 0 { p.copyMemory(from: s, byteCount: count) }
        length = count
    }

    convenience init(_ bytes: [UInt8], capacity: Int? = nil) {
        let cap = capacity ?? bytes.count
        self.init(nil, count: 0, capacity: cap)
        bytes.withUnsafeBytes { if $0.count > 0 { p.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
        length = bytes.count
    }

    deinit { p.deallocate() }

    var bytes: [UInt8] { Array(UnsafeRawBufferPointer(start: p, count: length)) }
}

// MARK: packets

/// Builds IPv4/IPv6 TCP packets with correct checksums (a copy of TCPAOTestSupport's builder,
/// which lives in another module).
struct FuzzPacket {
    var src: IPAddress
    var dst: IPAddress
    var srcPort: UInt16
    var dstPort: UInt16

    init(_ src: String, _ dst: String, _ srcPort: UInt16, _ dstPort: UInt16) {
        self.src = IPAddress(src)!
        self.dst = IPAddress(dst)!
        self.srcPort = srcPort
        self.dstPort = dstPort
    }

    var reversed: FuzzPacket { FuzzPacket(dst.description, src.description, dstPort, srcPort) }

    static func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 255), UInt8(v >> 8 & 255), UInt8(v & 255)] }

    /// Linux-like SYN options: MSS, SACK-permitted, timestamps, window scale (20 bytes).
    static func synOptions(mss: UInt16 = 1460, tsval: UInt32 = 1000) -> [UInt8] {
        [2, 4, UInt8(mss >> 8), UInt8(mss & 0xFF), 4, 2, 8, 10] + be32(tsval) + be32(0) + [1, 3, 3, 7]
    }
    static func tsOptions(tsval: UInt32 = 1001, tsecr: UInt32 = 1000) -> [UInt8] {
        [1, 1, 8, 10] + be32(tsval) + be32(tsecr)
    }
    static func sackOption(blocks: Int) -> [UInt8] {
        var o: [UInt8] = [1, 1, 5, UInt8(2 + 8 * blocks)]
        for b in 0..<blocks { o += be32(UInt32(1000 * b + 5000)) + be32(UInt32(1000 * b + 5500)) }
        return o
    }

    func segment(seq: UInt32, ack: UInt32 = 0, flags: UInt8, window: UInt16 = 64240,
                 options: [UInt8] = [], payload: [UInt8] = []) -> [UInt8] {
        var tcp = [UInt8](repeating: 0, count: 20)
        tcp[0] = UInt8(srcPort >> 8); tcp[1] = UInt8(srcPort & 255)
        tcp[2] = UInt8(dstPort >> 8); tcp[3] = UInt8(dstPort & 255)
        tcp.replaceSubrange(4..<8, with: FuzzPacket.be32(seq))
        tcp.replaceSubrange(8..<12, with: FuzzPacket.be32(ack))
        tcp[12] = UInt8((20 + options.count) / 4) << 4
        tcp[13] = flags
        tcp[14] = UInt8(window >> 8); tcp[15] = UInt8(window & 255)
        tcp += options + payload
        var ip: [UInt8]
        if src.isV6 {
            ip = [0x60, 0, 0, 0, UInt8(tcp.count >> 8), UInt8(tcp.count & 255), Spec.ipProtoTCP, 64] + src.bytes + dst.bytes
        } else {
            let total = 20 + tcp.count
            ip = [0x45, 0, UInt8(total >> 8), UInt8(total & 255), 0x12, 0x34, 0x40, 0, 64, Spec.ipProtoTCP, 0, 0] + src.bytes + dst.bytes
            let c = ip.withUnsafeBytes { InternetChecksum.finish(InternetChecksum.sum($0.baseAddress!, 20)) }
            ip[10] = UInt8(c >> 8); ip[11] = UInt8(c & 255)
        }
        var pseudo = src.bytes + dst.bytes
        pseudo += src.isV6 ? FuzzPacket.be32(UInt32(tcp.count)) + [0, 0, 0, Spec.ipProtoTCP]
                           : [0, Spec.ipProtoTCP, UInt8(tcp.count >> 8), UInt8(tcp.count & 255)]
        let all = pseudo + tcp
        let c = all.withUnsafeBytes { InternetChecksum.finish(InternetChecksum.sum($0.baseAddress!, $0.count)) }
        tcp[16] = UInt8(c >> 8); tcp[17] = UInt8(c & 255)
        return ip + tcp
    }
}

// MARK: the engines

let fuzzWall: Int64 = 1_790_000_000

/// Key chains of the two peers (A's view; B mirrors SendID and RecvID). The IPv4 peer's chain:
/// HMAC-SHA-1-96 (preferred), HMAC-SHA-256-128, an expired AES-128-CMAC-96 and a key not yet
/// valid. The IPv6 peer's: AES-128-CMAC-96 without options (preferred), HMAC-SHA-256 with a
/// 14-byte MAC (a padded option) and asymmetric IDs, HMAC-SHA-256-96.
func fuzzChains(mirrored: Bool) -> (v4: KeyChain, v6: KeyChain) {
    let w = fuzzWall
    func key(_ id: UInt64, _ send: UInt8, _ recv: UInt8, _ alg: AOAlgorithm, options: Bool = true,
             send sl: Lifetime = .always, accept al: Lifetime = .always, _ secret: String) -> MKT {
        MKT(chainKeyID: id, sendID: mirrored ? recv : send, recvID: mirrored ? send : recv, algorithm: alg, includeOptions: options,
            sendLifetime: sl, acceptLifetime: al, secret: Secret(Array(secret.utf8)))
    }
    let v4 = KeyChain(name: "fuzz-v4", keys: [
        key(1, 1, 1, .hmacSHA1_96, send: Lifetime(start: w - 1000), "fuzz key one"),
        key(2, 2, 2, .hmacSHA256_128, send: Lifetime(start: w - 5000), "fuzz key two, a longer secret than the others"),
        key(3, 3, 3, .aes128CMAC_96, send: Lifetime(start: w - 9000, end: w - 10), accept: Lifetime(start: w - 9000, end: w - 10), "expired"),
        key(4, 4, 4, .hmacSHA1_96, send: Lifetime(start: w + 1000), accept: Lifetime(start: w + 1000), "not yet"),
    ])
    let v6 = KeyChain(name: "fuzz-v6", keys: [
        key(11, 7, 7, .aes128CMAC_96, options: false, send: Lifetime(start: w - 1000), "six"),
        key(12, 8, 9, AOAlgorithm(kind: .hmacSHA256, macLength: 14), send: Lifetime(start: w - 2000), "six, padded"),
        key(13, 10, 10, .hmacSHA256_96, send: Lifetime(start: w - 3000), "six, 96"),
    ])
    return (v4, v6)
}

/// Every IPv4 and every IPv6 address is a peer, so that any input reaches the TCP-AO code.
func fuzzConfig(mirrored: Bool) -> EngineConfig {
    let c = fuzzChains(mirrored: mirrored)
    return EngineConfig(peers: [
        PeerPolicy(name: "v4", prefix: IPPrefix("0.0.0.0/0")!, keyChain: c.v4),
        PeerPolicy(name: "v6", prefix: IPPrefix("::/0")!, keyChain: c.v6, acceptKeyMismatch: !mirrored),
    ], limits: FlowLimits(maxFlows: 48, idleTimeout: 600, handshakeTimeout: 30, linger: 60))
}

/// Host A (the engine under test, protecting 10.0.0.1 and 2001:db8::1) and its peer B (192.0.2.2,
/// 192.0.2.3, 2001:db8::2), with a few connections set up by `World.init`.
final class World {
    var a: AOEngine
    var b: AOEngine
    var clock = EngineClock(wall: fuzzWall, mono: 1000)
    var inputs = 0
    /// Packets seen during setup, for the seed corpus: (name, A's unsigned packet or B's,
    /// signed by whom, bytes on the wire).
    var trace: [(name: String, fromA: Bool, plain: [UInt8], wire: [UInt8]?)] = []

    static let flowV4 = FuzzPacket("10.0.0.1", "192.0.2.2", 40000, 830)
    static let flowV6 = FuzzPacket("2001:db8::1", "2001:db8::2", 40001, 9339)
    static let flowWrap = FuzzPacket("10.0.0.1", "192.0.2.3", 40002, 830)
    static let flowIn = FuzzPacket("192.0.2.2", "10.0.0.1", 50000, 22)

    init() {
        let sync = SynchronizedFlows()
        a = AOEngine(config: fuzzConfig(mirrored: false), synchronized: sync, budget: FlowBudget(limit: 40))
        b = AOEngine(config: fuzzConfig(mirrored: true))
        setUp()
    }

    /// Sends through one engine's egress and the other's ingress, as on a wire.
    @discardableResult
    func send(_ name: String, _ pkt: [UInt8], fromA: Bool) -> [UInt8]? {
        let e = FuzzBuffer(pkt, capacity: pkt.count + 64)
        let ev = fromA ? a.process(e.p, length: e.length, capacity: e.capacity, hint: .egress, clock: clock)
                       : b.process(e.p, length: e.length, capacity: e.capacity, hint: .egress, clock: clock)
        switch ev {
        case .drop: trace.append((name, fromA, pkt, nil)); return nil
        case .acceptModified(let n): e.length = n
        case .accept: break
        }
        let wire = e.bytes
        trace.append((name, fromA, pkt, wire))
        let r = FuzzBuffer(wire)
        let iv = fromA ? b.process(r.p, length: r.length, capacity: r.capacity, hint: .ingress, clock: clock)
                       : a.process(r.p, length: r.length, capacity: r.capacity, hint: .ingress, clock: clock)
        switch iv {
        case .drop: return nil
        case .acceptModified(let n): r.length = n
        case .accept: break
        }
        return r.bytes
    }

    func setUp() {
        func ts(tsval: UInt32 = 1001, tsecr: UInt32 = 1000) -> [UInt8] { FuzzPacket.tsOptions(tsval: tsval, tsecr: tsecr) }
        // IPv4, A connects to B: handshake, data both ways, a SACK, a FIN.
        do {
            let c = World.flowV4, s = c.reversed
            send("v4-syn", c.segment(seq: 1000, flags: 0x02, options: FuzzPacket.synOptions()), fromA: true)
            send("v4-synack", s.segment(seq: 5000, ack: 1001, flags: 0x12, options: FuzzPacket.synOptions(mss: 1400, tsval: 77)), fromA: false)
            send("v4-ack", c.segment(seq: 1001, ack: 5001, flags: 0x10, options: ts()), fromA: true)
            send("v4-data", c.segment(seq: 1001, ack: 5001, flags: 0x18, options: ts(), payload: Array("hello, router".utf8)), fromA: true)
            send("v4-reply", s.segment(seq: 5001, ack: 1014, flags: 0x18, options: ts(tsval: 78, tsecr: 1001), payload: Array(repeating: 0x41, count: 200)), fromA: false)
            send("v4-sack", c.segment(seq: 1014, ack: 5001, flags: 0x10, options: ts() + FuzzPacket.sackOption(blocks: 2)), fromA: true)
            send("v4-sack3", s.segment(seq: 5201, ack: 1014, flags: 0x10, options: ts() + FuzzPacket.sackOption(blocks: 3)), fromA: false)
        }
        // IPv6, A connects to B (the AES-CMAC / padded-option chain).
        do {
            let c = World.flowV6, s = c.reversed
            send("v6-syn", c.segment(seq: 0x7000_0000, flags: 0x02, options: FuzzPacket.synOptions()), fromA: true)
            send("v6-synack", s.segment(seq: 0x1234_5678, ack: 0x7000_0001, flags: 0x12, options: FuzzPacket.synOptions(mss: 1440)), fromA: false)
            send("v6-ack", c.segment(seq: 0x7000_0001, ack: 0x1234_5679, flags: 0x10, options: ts()), fromA: true)
            send("v6-reply", s.segment(seq: 0x1234_5679, ack: 0x7000_0001, flags: 0x18, options: ts(), payload: Array("gnmi".utf8)), fromA: false)
            send("v6-fin", s.segment(seq: 0x1234_567D, ack: 0x7000_0001, flags: 0x11, options: ts()), fromA: false)
        }
        // IPv4 near the sequence wrap: the data crosses 2^32, so the SNE moves.
        do {
            let c = World.flowWrap, s = c.reversed
            send("wrap-syn", c.segment(seq: 0xFFFF_FF00, flags: 0x02, options: FuzzPacket.synOptions()), fromA: true)
            send("wrap-synack", s.segment(seq: 0xFFFF_FFF0, ack: 0xFFFF_FF01, flags: 0x12, options: FuzzPacket.synOptions()), fromA: false)
            send("wrap-ack", c.segment(seq: 0xFFFF_FF01, ack: 0xFFFF_FFF1, flags: 0x10), fromA: true)
            send("wrap-data", s.segment(seq: 0xFFFF_FFF1, ack: 0xFFFF_FF01, flags: 0x18, payload: Array(repeating: 7, count: 100)), fromA: false)
            send("wrap-data2", s.segment(seq: 0x55, ack: 0xFFFF_FF01, flags: 0x18, payload: Array(repeating: 8, count: 100)), fromA: false)
            send("wrap-rst", c.segment(seq: 0xFFFF_FF01, ack: 0xB9, flags: 0x14), fromA: true)
        }
        // IPv4, B connects to A (A sees the SYN first at ingress).
        do {
            let c = World.flowIn, s = c.reversed
            send("in-syn", c.segment(seq: 9000, flags: 0x02, options: FuzzPacket.synOptions(mss: 9000)), fromA: false)
            send("in-synack", s.segment(seq: 3000, ack: 9001, flags: 0x12, options: FuzzPacket.synOptions()), fromA: true)
            send("in-ack", c.segment(seq: 9001, ack: 3001, flags: 0x10, options: ts()), fromA: false)
        }
    }

    /// Called once per input: a new world every `resetEvery` inputs (bounds memory and keeps
    /// runs reproducible over short sequences), the monotonic clock moving on slowly.
    static let resetEvery: Int = {
        if let s = getenv("FUZZ_RESET_EVERY"), let n = Int(String(cString: s)), n > 0 { return n }
        return 500
    }()

    nonisolated(unsafe) static var current: World? = nil

    static func next() -> World {
        if let w = current, w.inputs < resetEvery {
            w.inputs += 1
            if w.inputs % 64 == 0 {
                w.clock.mono &+= 7
                w.a.expire(now: w.clock.mono, budget: 16)
            }
            return w
        }
        if let old = current, getenv("FUZZ_DEBUG") != nil {
            // What the last world's inputs reached, per counter (FUZZ_DEBUG=1).
            let t = old.a.snapshot().total.filter { $0.value > 0 }.sorted { $0.key < $1.key }
            fputs("fuzz world: " + t.map { "\($0.key)=\($0.value)" }.joined(separator: " ") + "\n", stderr)
        }
        let w = World()
        w.trace = []
        w.inputs = 1
        current = w
        return w
    }
}

// MARK: seeds

/// FUZZ_DUMP_SEEDS=dir: the target writes its generated seeds into dir and exits (used to make
/// the committed corpus; see Tests/Fuzz/README.md).
func dumpSeedsIfAsked(_ make: () -> [(String, [UInt8])]) {
    guard let d = getenv("FUZZ_DUMP_SEEDS") else { return }
    let dir = String(cString: d)
    mkdir(dir, 0o755)
    for (name, bytes) in make() {
        let path = dir + "/" + name
        guard let f = fopen(path, "wb") else { fuzzFail("cannot write \(path)") }
        _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
        fclose(f)
    }
    exit(0)
}
