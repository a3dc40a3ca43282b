import Testing
@testable import TCPAO
import TCPAOTestSupport

/// Issue 9's key-lifecycle defects, each as the engine meets it. (The random model of the
/// whole lifecycle, through the configuration loader, is TCPAOConfigTests' KeyLifecycleModelTests.)
@Suite struct KeyLifecycleTests {
    static let now: Int64 = 1_790_000_000
    static let a = "192.0.2.10", b = "198.51.100.20"

    static func key(_ id: UInt8, _ alg: AOAlgorithm, _ secret: String, sendFrom: Int64 = now - 1000) -> MKT {
        MKT(chainKeyID: UInt64(id), sendID: id, recvID: id, algorithm: alg, sendLifetime: Lifetime(start: sendFrom),
            secret: Secret(Array(secret.utf8)))
    }

    static func configs(_ chain: KeyChain) -> (EngineConfig, EngineConfig) {
        (testConfig(peer: "198.51.100.0/24", chain: chain), testConfig(peer: "192.0.2.0/24", chain: chain))
    }

    /// SYN, SYN-ACK, ACK; returns the builders and the next sequence numbers.
    static func open(_ h: inout TwoHosts, port: UInt16 = 50123) -> (PacketBuilder, PacketBuilder, UInt32, UInt32) {
        let c = PacketBuilder(src: a, dst: b, srcPort: port, dstPort: 830), s = c.reversed
        let r1 = h.send(c.segment(seq: 0x1000, flags: 0x02, options: PacketBuilder.synOptions()), from: .a)
        let r2 = h.send(s.segment(seq: 0x7000, ack: 0x1001, flags: 0x12, options: PacketBuilder.synOptions()), from: .b)
        let r3 = h.send(c.segment(seq: 0x1001, ack: 0x7001, flags: 0x10, options: PacketBuilder.tsOptions()), from: .a)
        #expect(r1.delivered != nil && r2.delivered != nil && r3.delivered != nil)
        return (c, s, 0x1001, 0x7001)
    }

    static func keyID(_ pkt: [UInt8]?) -> UInt8? {
        guard let pkt else { return nil }
        return pkt.withUnsafeBytes { b in
            guard let s = try? TCPSegment.parse(b.baseAddress!, count: b.count), s.hasAO else { return nil }
            return s.aoKeyID(b.baseAddress!)
        }
    }

    /// Defect 1: a flow caches its traffic-key contexts by MKT serial. Two MKTs that share a
    /// serial (as the old per-reload numbering produced) must still not share a context when
    /// their algorithms differ; and `MKT` itself never hands out a serial twice.
    @Test func aCachedContextIsReusedOnlyForItsOwnKeyAndAlgorithm() {
        let k1 = Self.key(1, .hmacSHA1_96, "the first key!!")
        let k2 = Self.key(2, .hmacSHA256_128, "the second key!", sendFrom: Self.now - 10)
        var k3 = Self.key(3, .hmacSHA1_96, "the third key!!", sendFrom: Self.now - 5)
        #expect(Set([k1.serial, k2.serial, k3.serial]).count == 3)
        k3.serial = k2.serial // the collision the old numbering made
        let (ca, cb) = Self.configs(KeyChain(name: "c", keys: [k1, k2]))
        var h = TwoHosts(configA: ca, configB: cb, wall: Self.now)
        let (c, s, sc, ss) = Self.open(&h)
        // Both sides send with key 2 (preferred), so both cache key 2's contexts.
        let d1 = h.send(c.segment(seq: sc, ack: ss, flags: 0x18, options: PacketBuilder.tsOptions(), payload: [1, 2, 3]), from: .a)
        #expect(Self.keyID(d1.onWire) == 2 && d1.ingress == .acceptModified(length: d1.delivered?.count ?? -1))
        // Reload to [K1, K3]: K3 is preferred and carries K2's serial.
        let (na, nb) = Self.configs(KeyChain(name: "c", keys: [k1, k3]))
        _ = h.engineA.reconfigure(na)
        _ = h.engineB.reconfigure(nb)
        for n in 0..<3 {
            let d = h.send(c.segment(seq: sc &+ 3 &+ UInt32(n), ack: ss, flags: 0x18, options: PacketBuilder.tsOptions(), payload: [4]), from: .a)
            #expect(Self.keyID(d.onWire) == 3, "segment \(n) left with KeyID \(String(describing: Self.keyID(d.onWire)))")
            #expect(d.delivered != nil, "segment \(n) with K3 was dropped: \(String(describing: d.ingress))")
            let e = h.send(s.segment(seq: ss &+ UInt32(n), ack: sc, flags: 0x18, options: PacketBuilder.tsOptions(), payload: [5]), from: .b)
            #expect(e.delivered != nil, "B's segment \(n) was dropped: \(String(describing: e.ingress))")
        }
    }

    /// Defect 6: a connection opened under a chain of 12-byte MACs (16-byte option) had its MSS
    /// lowered by 16. A reload then makes HMAC-SHA-256-128 (20-byte option) preferred: full-size
    /// segments of that connection stay on a key that fits, so they never exceed the MTU; a
    /// new connection reserves 20 bytes and uses the new key.
    @Test func aLongerKeyRolledInMidConnectionIsLeftToNewConnections() throws {
        let k1 = Self.key(1, .hmacSHA1_96, "the first key!!")
        let k2 = Self.key(2, .hmacSHA256_128, "the longer key!", sendFrom: Self.now - 10)
        let (ca, cb) = Self.configs(KeyChain(name: "c", keys: [k1]))
        var h = TwoHosts(configA: ca, configB: cb, wall: Self.now)
        let (c, s, sc, ss) = Self.open(&h)
        let (na, nb) = Self.configs(KeyChain(name: "c", keys: [k1, k2]))
        _ = h.engineA.reconfigure(na)
        _ = h.engineB.reconfigure(nb)
        // The hosts' MSS was lowered to 1460 - 16; with timestamps a full segment carries 1432.
        let full = [UInt8](repeating: 7, count: 1460 - 16 - 12)
        for n in 0..<3 {
            let d = h.send(c.segment(seq: sc &+ UInt32(n * full.count), ack: ss, flags: 0x18, options: PacketBuilder.tsOptions(), payload: full), from: .a)
            #expect(Self.keyID(d.onWire) == 1)
            #expect((d.onWire?.count ?? 0) == 1500, "\(d.onWire?.count ?? 0) bytes on the wire")
            #expect(d.delivered != nil)
            let e = h.send(s.segment(seq: ss &+ UInt32(n * full.count), ack: sc, flags: 0x18, options: PacketBuilder.tsOptions(), payload: full), from: .b)
            #expect(Self.keyID(e.onWire) == 1 && (e.onWire?.count ?? 0) == 1500 && e.delivered != nil)
        }
        #expect(h.engineA.flowState(FlowKey(local: IPAddress(Self.a)!, remote: IPAddress(Self.b)!, localPort: 50123, remotePort: 830))?.reservedOptionLength == 16)
        // A new connection: the MSS is lowered by 20 and the preferred key 2 is used.
        let c2 = PacketBuilder(src: Self.a, dst: Self.b, srcPort: 50124, dstPort: 830)
        let syn = h.send(c2.segment(seq: 0x2000, flags: 0x02, options: PacketBuilder.synOptions()), from: .a)
        #expect(Self.keyID(syn.onWire) == 2)
        let got = PacketBuffer(try #require(syn.delivered))
        #expect(try got.segment().mss(got.pointer) == 1460 - 20)
    }

    /// Defect 6, second half: the host's own "fragmentation needed" (it arrives on the loopback
    /// interface) is not an off-path attack; the same ICMP from the network still is (7.8).
    @Test func theHostsOwnICMPErrorsPass() {
        let (ca, cb) = Self.configs(KeyChain(name: "c", keys: [Self.key(1, .hmacSHA1_96, "the first key!!")]))
        var h = TwoHosts(configA: ca, configB: cb, wall: Self.now)
        let (c, _, sc, _) = Self.open(&h)
        let quoted = c.segment(seq: sc, flags: 0x10)
        let body: [UInt8] = [3, 4, 0, 0, 0, 0, 0x05, 0xDC] + Array(quoted[0..<28])
        let total = 20 + body.count
        let icmp: [UInt8] = [0x45, 0, UInt8(total >> 8), UInt8(total & 255), 0, 0, 0, 0, 64, 1, 0, 0]
            + IPAddress(Self.a)!.bytes + IPAddress(Self.a)!.bytes + body
        func run(_ loopback: Bool) -> Verdict {
            let p = PacketBuffer(icmp)
            return h.engineA.process(p.pointer, length: p.length, capacity: p.capacity, hint: .ingress, fromLoopback: loopback, clock: h.clock)
        }
        #expect(run(true) == .accept)
        #expect(run(false) == .drop(.icmpHardError))
    }
}
