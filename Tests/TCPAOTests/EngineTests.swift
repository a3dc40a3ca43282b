import Testing
@testable import TCPAO
import TCPAOTestSupport

/// Two protected hosts back to back through their engines: handshakes, data, teardown, and
/// everything an attacker on the wire can try.
@Suite struct EngineTests {
    /// The four named algorithms, and HMAC-SHA-256 with 20- and 10-byte MACs (the latter needs
    /// NOP padding to a 32-bit boundary).
    static let algorithms: [AOAlgorithm] = [.hmacSHA1_96, .aes128CMAC_96, .hmacSHA256_96, .hmacSHA256_128,
                                            AOAlgorithm(kind: .hmacSHA256, macLength: 20), AOAlgorithm(kind: .hmacSHA256, macLength: 10)]

    struct Net: Sendable, CustomTestStringConvertible {
        let a: String, b: String, prefixA: String, prefixB: String
        var testDescription: String { a.contains(":") ? "IPv6" : "IPv4" }
    }
    static let nets = [
        Net(a: "192.0.2.10", b: "198.51.100.20", prefixA: "192.0.2.0/24", prefixB: "198.51.100.0/24"),
        Net(a: "2001:db8:a::10", b: "2001:db8:b::20", prefixA: "2001:db8:a::/48", prefixB: "2001:db8:b::/48"),
    ]

    static func hosts(_ n: Net, _ alg: AOAlgorithm = .hmacSHA1_96, chainA: KeyChain? = nil, chainB: KeyChain? = nil) -> TwoHosts {
        TwoHosts(configA: testConfig(peer: n.prefixB, chain: chainA ?? testChain(algorithm: alg)),
                 configB: testConfig(peer: n.prefixA, chain: chainB ?? testChain(algorithm: alg)))
    }

    /// [KeyID, RNextKeyID] of a signed packet.
    static func keyID(_ pkt: [UInt8]) -> [UInt8]? {
        pkt.withUnsafeBytes { b in
            guard let s = try? TCPSegment.parse(b.baseAddress!, count: b.count), s.hasAO else { return nil }
            return [s.aoKeyID(b.baseAddress!), s.aoRNextKeyID(b.baseAddress!)]
        }
    }

    /// The options of `PacketBuilder.synOptions(mss:)` as the receiving host gets them: the MSS
    /// lowered by the AO option its own tcpaod will add, and window scaling (with its NOP) left
    /// out when the sender's tcpaod had to make room for a long MAC.
    static func deliveredSYNOptions(_ alg: AOAlgorithm, mss: UInt16 = 1460) -> [UInt8] {
        let opts = PacketBuilder.synOptions(mss: mss - UInt16(alg.alignedOptionLength))
        return 20 + alg.alignedOptionLength > 40 ? Array(opts.prefix(16)) : opts
    }

    static func checksumOK(_ pkt: [UInt8]) -> Bool {
        pkt.withUnsafeBytes { b in (try? TCPSegment.parse(b.baseAddress!, count: b.count))?.checksumIsValid(b.baseAddress!) ?? false }
    }

    /// The whole life of a connection, each algorithm, IPv4 and IPv6: every segment is signed on
    /// the wire, verified, and handed to the other host exactly as it was sent (but the MSS).
    @Test(arguments: nets, algorithms)
    func connectionLifecycle(_ n: Net, _ alg: AOAlgorithm) throws {
        var h = Self.hosts(n, alg)
        let c = PacketBuilder(src: n.a, dst: n.b, srcPort: 50123, dstPort: 830)
        let s = c.reversed
        let isnC: UInt32 = 0x1000, isnS: UInt32 = 0x9000_0000
        let syn = c.segment(seq: isnC, flags: 0x02, options: PacketBuilder.synOptions(mss: 1460))
        let r1 = h.send(syn, from: .a)
        let wire1 = try #require(r1.onWire)
        // A 20-byte MAC does not fit beside the SYN's 20 bytes of options: window scaling
        // (with its NOP, 4 bytes) is left out, as Linux does.
        let trimmed = 20 + alg.alignedOptionLength > 40 ? 4 : 0
        #expect(wire1.count == syn.count + alg.alignedOptionLength - trimmed)
        #expect(Self.keyID(wire1)! == [1, 1])
        let got1 = try #require(r1.delivered)
        #expect(Self.checksumOK(wire1) && Self.checksumOK(got1))
        // Identical to what A sent, but the MSS, lowered by the AO option B's host will add.
        let mss = got1.withUnsafeBytes { b in try! TCPSegment.parse(b.baseAddress!, count: b.count).mss(b.baseAddress!) }
        #expect(mss == UInt16(1460 - alg.alignedOptionLength))
        #expect(got1.count == syn.count - trimmed)
        #expect(got1 == c.segment(seq: isnC, flags: 0x02, options: Self.deliveredSYNOptions(alg)))
        #expect(h.engineA.snapshot()["options-trimmed"] == (trimmed > 0 ? 1 : 0))

        let synack = s.segment(seq: isnS, ack: isnC + 1, flags: 0x12, options: PacketBuilder.synOptions(mss: 1460))
        let r2 = h.send(synack, from: .b)
        #expect(r2.egress == .acceptModified(length: synack.count + alg.alignedOptionLength - trimmed))
        #expect(r2.ingress == .acceptModified(length: synack.count - trimmed))
        #expect(r2.delivered == s.segment(seq: isnS, ack: isnC + 1, flags: 0x12, options: Self.deliveredSYNOptions(alg)))
        #expect(h.engineA.flowState(FlowKey(local: c.src, remote: c.dst, localPort: 50123, remotePort: 830))?.phase == .established)

        let ack = c.segment(seq: isnC + 1, ack: isnS + 1, flags: 0x10, options: PacketBuilder.tsOptions())
        #expect(h.send(ack, from: .a).delivered == ack)
        var seqC = isnC + 1, seqS = isnS + 1
        for i in 0..<20 {
            let data = [UInt8](repeating: UInt8(i), count: 1 + i * 70)
            let d = c.segment(seq: seqC, ack: seqS, flags: 0x18, options: PacketBuilder.tsOptions(), payload: data)
            let r = h.send(d, from: .a)
            #expect(r.delivered == d, "segment \(i) A->B")
            #expect(Self.checksumOK(r.onWire!))
            seqC &+= UInt32(data.count)
            let e = s.segment(seq: seqS, ack: seqC, flags: 0x18, options: PacketBuilder.tsOptions(), payload: data)
            #expect(h.send(e, from: .b).delivered == e, "segment \(i) B->A")
            seqS &+= UInt32(data.count)
        }
        // A pure ACK without options, then FIN in each direction and the last ACK.
        for (pkt, from) in [(c.segment(seq: seqC, ack: seqS, flags: 0x10), TwoHosts.Side.a),
                            (c.segment(seq: seqC, ack: seqS, flags: 0x11), .a),
                            (s.segment(seq: seqS, ack: seqC + 1, flags: 0x11), .b),
                            (c.segment(seq: seqC + 1, ack: seqS + 1, flags: 0x10), .a)] {
            let r = h.send(pkt, from: from)
            #expect(r.egress == .acceptModified(length: pkt.count + alg.alignedOptionLength))
            #expect(r.ingress == .acceptModified(length: pkt.count))
            #expect(r.delivered == pkt)
        }
        let key = FlowKey(local: c.src, remote: c.dst, localPort: 50123, remotePort: 830)
        #expect(h.engineA.flowState(key)?.phase == .finished)
        #expect(h.engineA.snapshot()["verified"] == 22 && h.engineB.snapshot()["verified"] == 25)
        #expect(h.engineA.snapshot().total.filter { $0.key.hasPrefix("dropped-") }.values.reduce(0, +) == 0)
        // Linger, then the flow is forgotten.
        h.engineA.expire(now: h.clock.mono + 119, budget: 1 << 20)
        #expect(h.engineA.flowCount == 1)
        h.engineA.expire(now: h.clock.mono + 121, budget: 1 << 20)
        #expect(h.engineA.flowCount == 0)
    }

    /// Establishes a connection and returns the builders and next sequence numbers.
    static func established(_ h: inout TwoHosts, _ n: Net, isnC: UInt32 = 0x1000, isnS: UInt32 = 0x7000) -> (PacketBuilder, PacketBuilder, UInt32, UInt32) {
        let c = PacketBuilder(src: n.a, dst: n.b, srcPort: 50123, dstPort: 830)
        let s = c.reversed
        _ = h.send(c.segment(seq: isnC, flags: 0x02, options: PacketBuilder.synOptions()), from: .a)
        _ = h.send(s.segment(seq: isnS, ack: isnC &+ 1, flags: 0x12, options: PacketBuilder.synOptions()), from: .b)
        _ = h.send(c.segment(seq: isnC &+ 1, ack: isnS &+ 1, flags: 0x10), from: .a)
        return (c, s, isnC &+ 1, isnS &+ 1)
    }

    @Test(arguments: nets)
    func tamperedSegmentsAreDropped(_ n: Net) {
        var h = Self.hosts(n)
        let (c, s, sc, ss) = Self.established(&h, n)
        let d = c.segment(seq: sc, ack: ss, flags: 0x18, payload: Array("get-config".utf8))
        // One bit of payload, of the header, of the option, of the MAC: each is caught.
        for at in [-1, 33 + (n.a.contains(":") ? 20 : 0), 40 + (n.a.contains(":") ? 20 : 0) + 2, 40 + (n.a.contains(":") ? 20 : 0) + 10] {
            let r = h.send(d, from: .a) { pkt in pkt[at < 0 ? pkt.count - 1 : at] ^= 0x04 }
            // Only the KeyID flip (1 -> 5) names a key nobody has; every other flip breaks the MAC.
            let keyIDAt = 40 + (n.a.contains(":") ? 20 : 0) + 2
            #expect(r.ingress == .drop(at == keyIDAt ? .unknownKeyID : .badMAC), "flip at \(at)")
            #expect(r.delivered == nil)
        }
        // Unharmed, it goes through.
        #expect(h.send(d, from: .a).delivered == d)
        // A reset without AO, in window: dropped; the connection lives on.
        let rst = s.segment(seq: ss, flags: 0x04)
        #expect(h.inject(rst, to: .a).0 == .drop(.missingAO))
        // A reset with a made-up AO option: dropped.
        let fakeAO = s.segment(seq: ss, flags: 0x14, options: [29, 16, 1, 1] + [UInt8](repeating: 0xAB, count: 12))
        #expect(h.inject(fakeAO, to: .a).0 == .drop(.badMAC))
        // With a KeyID nobody configured.
        let unknown = s.segment(seq: ss, flags: 0x14, options: [29, 16, 9, 9] + [UInt8](repeating: 0xAB, count: 12))
        #expect(h.inject(unknown, to: .a).0 == .drop(.unknownKeyID))
        // With the wrong AO length for the MKT.
        let short = s.segment(seq: ss, flags: 0x14, options: [29, 12, 1, 1] + [UInt8](repeating: 0xAB, count: 8))
        #expect(h.inject(short, to: .a).0 == .drop(.badAOLength))
        let e = s.segment(seq: ss, ack: sc &+ 10, flags: 0x18, payload: Array("<ok/>".utf8))
        #expect(h.send(e, from: .b).delivered == e)
        #expect(h.engineA.snapshot().peers["peer"]?["dropped-bad-mac"] == 1)
        #expect(h.engineA.snapshot().keys["peer"]?["1"]?["bad-mac"] == 1)
    }

    @Test(arguments: nets)
    func wrongKeyNeverConnects(_ n: Net) {
        var h = Self.hosts(n, chainA: testChain(secret: "one secret here"), chainB: testChain(secret: "another secret!"))
        let c = PacketBuilder(src: n.a, dst: n.b, srcPort: 50000, dstPort: 9339)
        for _ in 0..<3 {
            let r = h.send(c.segment(seq: 5, flags: 0x02, options: PacketBuilder.synOptions()), from: .a)
            #expect(r.ingress == .drop(.badMAC))
        }
        #expect(h.engineB.flowCount == 0) // bad SYNs leave no state
        #expect(h.engineB.snapshot()["dropped-bad-mac"] == 3)
    }

    @Test func segmentsWithoutStateCannotBeSigned() {
        let n = Self.nets[0]
        var h = Self.hosts(n)
        let c = PacketBuilder(src: n.a, dst: n.b, srcPort: 50000, dstPort: 830)
        #expect(h.send(c.segment(seq: 5, ack: 6, flags: 0x18, payload: [1]), from: .a).egress == .drop(.noState))
        #expect(h.send(c.segment(seq: 5, ack: 6, flags: 0x04), from: .a).egress == .drop(.noState))
        // A SYN-ACK that answers no SYN of ours, with a good MAC shape: refused before any KDF.
        let s = c.reversed
        let _ = h.send(c.segment(seq: 100, flags: 0x02, options: PacketBuilder.synOptions()), from: .a)
        let forged = s.segment(seq: 7, ack: 999, flags: 0x12, options: [29, 16, 1, 1] + [UInt8](repeating: 0, count: 12))
        #expect(h.inject(forged, to: .a).0 == .drop(.unexpectedSYNACK))
    }

    /// Other traffic (ports not listed, addresses of no peer) passes untouched.
    @Test func unmatchedTrafficPasses() {
        let n = Self.nets[0]
        var h = TwoHosts(configA: testConfig(peer: n.prefixB, chain: testChain(), ports: [830, 9339]),
                         configB: testConfig(peer: n.prefixA, chain: testChain(), ports: [830, 9339]))
        let web = PacketBuilder(src: n.a, dst: n.b, srcPort: 50000, dstPort: 443)
        let syn = web.segment(seq: 5, flags: 0x02, options: PacketBuilder.synOptions())
        let r = h.send(syn, from: .a)
        #expect(r.egress == .accept && r.onWire == syn && r.delivered == syn)
        let other = PacketBuilder(src: "203.0.113.5", dst: n.a, srcPort: 830, dstPort: 50000)
        #expect(h.inject(other.segment(seq: 1, flags: 0x02), to: .a).0 == .accept)
    }

    /// RFC 5925 6.1 / 7.5 step 2.e: a new key rolled in on both sides, one side after the other,
    /// moves the KeyID on the wire without losing a segment.
    @Test(arguments: nets)
    func hitlessRollover(_ n: Net) throws {
        let now: Int64 = 1_790_000_000
        let k1 = MKT(chainKeyID: 1, sendID: 1, recvID: 1, algorithm: .hmacSHA1_96, sendLifetime: Lifetime(start: now - 1000),
                     secret: Secret(Array("first secret key".utf8)))
        let k2 = MKT(chainKeyID: 2, sendID: 2, recvID: 2, algorithm: .aes128CMAC_96, sendLifetime: Lifetime(start: now - 10),
                     secret: Secret(Array("second secret key".utf8)))
        let old = KeyChain(name: "c", keys: [k1]), new = KeyChain(name: "c", keys: [k1, k2])
        var h = Self.hosts(n, chainA: old, chainB: old)
        var (c, s, sc, ss) = Self.established(&h, n)
        var lastFromA: (sent: [UInt8], onWire: [UInt8]) = ([], [])
        func exchange(_ h: inout TwoHosts) -> [[UInt8]] {
            let d = c.segment(seq: sc, ack: ss, flags: 0x18, payload: [1, 2, 3])
            let r = h.send(d, from: .a)
            #expect(r.delivered == d)
            lastFromA = (d, r.onWire ?? [])
            sc &+= 3
            let e = s.segment(seq: ss, ack: sc, flags: 0x18, payload: [4, 5])
            let q = h.send(e, from: .b)
            #expect(q.delivered == e)
            ss &+= 2
            return [Self.keyID(r.onWire!)!, Self.keyID(q.onWire!)!]
        }
        #expect(exchange(&h) == [[1, 1], [1, 1]])
        _ = h.engineB.reconfigure(testConfig(peer: n.prefixA, chain: new))
        // B now prefers key 2 and says so in RNextKeyID; A has no key 2 yet and keeps key 1.
        #expect(exchange(&h) == [[1, 1], [1, 2]])
        #expect(exchange(&h) == [[1, 1], [1, 2]])
        let signedWithKey1 = lastFromA
        _ = h.engineA.reconfigure(testConfig(peer: n.prefixB, chain: new))
        // B asked for key 2 earlier; now that A has it, A switches at once and advertises 2 too.
        #expect(exchange(&h) == [[2, 2], [2, 2]])
        #expect(exchange(&h) == [[2, 2], [2, 2]])
        // A late copy of a segment A signed with the old key before the switch (a retransmission
        // the network delayed) is still accepted: key 1's accept lifetime holds.
        #expect(Self.keyID(signedWithKey1.onWire) == [1, 1])
        let late = h.inject(signedWithKey1.onWire, to: .b)
        #expect(late.0 == .acceptModified(length: signedWithKey1.sent.count))
        #expect(late.1 == signedWithKey1.sent)
        _ = c; _ = s
    }

    /// A recorded SYN replayed into an established connection verifies (its MAC does not depend on
    /// the connection's state) but must not reset it: the host's challenge ACK is signed with the
    /// current keys and the connection goes on. A SYN-ACK acknowledging the new ISN (the host
    /// accepted a new connection) switches the flow to it.
    @Test func replayedSYNDoesNotKillTheConnection() {
        let n = Self.nets[0]
        var h = Self.hosts(n)
        let c = PacketBuilder(src: n.a, dst: n.b, srcPort: 50123, dstPort: 830)
        let s = c.reversed
        let syn = h.send(c.segment(seq: 0x1000, flags: 0x02, options: PacketBuilder.synOptions()), from: .a).onWire!
        _ = h.send(s.segment(seq: 0x7000, ack: 0x1001, flags: 0x12, options: PacketBuilder.synOptions()), from: .b)
        _ = h.send(c.segment(seq: 0x1001, ack: 0x7001, flags: 0x10), from: .a)
        // The replay verifies and is handed to B's host as A's host sent it (MSS lowered)...
        let synAsSent = c.segment(seq: 0x1000, flags: 0x02, options: Self.deliveredSYNOptions(.hmacSHA1_96))
        let replay = h.inject(syn, to: .b)
        #expect(replay.0 == .acceptModified(length: synAsSent.count))
        #expect(replay.1 == synAsSent)
        let challenge = s.segment(seq: 0x7001, ack: 0x1001, flags: 0x10)
        #expect(h.send(challenge, from: .b).delivered == challenge) // ...and the host's challenge ACK still goes out
        let d = c.segment(seq: 0x1001, ack: 0x7001, flags: 0x18, payload: [1, 2, 3])
        #expect(h.send(d, from: .a).delivered == d)
        let e = s.segment(seq: 0x7001, ack: 0x1004, flags: 0x18, payload: [4])
        #expect(h.send(e, from: .b).delivered == e)
        // The peer really starts over: new SYN, and B's host accepts it with a SYN-ACK.
        let newSYN = h.send(c.segment(seq: 0x5_0000, flags: 0x02, options: PacketBuilder.synOptions()), from: .a)
        #expect(newSYN.delivered == c.segment(seq: 0x5_0000, flags: 0x02, options: Self.deliveredSYNOptions(.hmacSHA1_96)))
        let sa = h.send(s.segment(seq: 0x9_0000, ack: 0x5_0001, flags: 0x12, options: PacketBuilder.synOptions()), from: .b)
        #expect(sa.delivered == s.segment(seq: 0x9_0000, ack: 0x5_0001, flags: 0x12, options: Self.deliveredSYNOptions(.hmacSHA1_96)))
        let first = c.segment(seq: 0x5_0001, ack: 0x9_0001, flags: 0x18, payload: [9])
        #expect(h.send(first, from: .a).delivered == first)
    }

    /// Gateway mode (no hook hint): only segments from a protected host toward a peer are
    /// signed; a forwarded segment from elsewhere is none of tcpaod's business.
    @Test func gatewaySignsOnlyForProtectedHosts() {
        let cfg = EngineConfig(peers: [PeerPolicy(name: "far", prefix: IPPrefix("192.0.2.0/24")!, keyChain: testChain())],
                               protectedPrefixes: [IPPrefix("198.51.100.0/24")!])
        var g = AOEngine(config: cfg)
        let clock = EngineClock(wall: 1_790_000_000, mono: 1)
        func run(_ src: String) -> Verdict {
            let b = PacketBuffer(PacketBuilder(src: src, dst: "192.0.2.7", srcPort: 4000, dstPort: 830).segment(seq: 1, flags: 0x02))
            return g.process(b.pointer, length: b.length, capacity: b.capacity, hint: nil, clock: clock)
        }
        #expect(run("198.51.100.10") == .acceptModified(length: 56))
        #expect(run("203.0.113.66") == .accept)
        #expect(g.snapshot()["signed"] == 1 && g.snapshot()["passed-unmatched"] == 1)
    }

    @Test func migrationDoesNotCoverConnectionsThatAlreadySign() {
        let n = Self.nets[0]
        var h = TwoHosts(configA: testConfig(peer: n.prefixB, chain: testChain(), acceptKeyMismatch: true),
                         configB: testConfig(peer: n.prefixA, chain: testChain()))
        let (_, s, _, ss) = Self.established(&h, n)
        #expect(h.inject(s.segment(seq: ss, flags: 0x04), to: .a).0 == .drop(.missingAO))
    }

    @Test func sequenceNumbersAcrossTheWrap() {
        let n = Self.nets[0]
        var h = Self.hosts(n, .aes128CMAC_96)
        var (c, s, sc, ss) = Self.established(&h, n, isnC: 0xFFFF_FFFF, isnS: 0xFFFF_F000)
        #expect(sc == 0) // ISN 0xFFFFFFFF: the first byte is at 0 with SNE 1
        for _ in 0..<8 {
            let data = [UInt8](repeating: 7, count: 1000)
            let e = s.segment(seq: ss, ack: sc, flags: 0x10, payload: data)
            #expect(h.send(e, from: .b).delivered == e)
            ss &+= 1000
            let ack = c.segment(seq: sc, ack: ss, flags: 0x10)
            #expect(h.send(ack, from: .a).delivered == ack)
        }
        #expect(ss < 0x1000) // B's sequence numbers wrapped too
        let key = FlowKey(local: c.src, remote: c.dst, localPort: 50123, remotePort: 830)
        #expect(h.engineA.flowState(key)?.recvSNE.sne == 1)
        #expect(h.engineA.flowState(key)?.sendSNE.sne == 1)
        _ = c; _ = s
    }

    @Test func icmpHardErrorsForSynchronizedFlows() {
        let n = Self.nets[0]
        var h = Self.hosts(n)
        let (c, _, sc, _) = Self.established(&h, n)
        func icmp(code: UInt8, quoting q: [UInt8]) -> [UInt8] {
            let body: [UInt8] = [3, code, 0, 0, 0, 0, 0, 0] + Array(q[0..<28])
            let total = 20 + body.count
            return [0x45, 0, UInt8(total >> 8), UInt8(total & 255), 0, 0, 0, 0, 64, 1, 0, 0]
                + IPAddress("203.0.113.1")!.bytes + c.src.bytes + body
        }
        let quoted = c.segment(seq: sc, flags: 0x10)
        #expect(h.inject(icmp(code: 3, quoting: quoted), to: .a).0 == .drop(.icmpHardError))
        #expect(h.inject(icmp(code: 4, quoting: quoted), to: .a).0 == .drop(.icmpHardError))
        #expect(h.inject(icmp(code: 1, quoting: quoted), to: .a).0 == .accept) // host unreachable: soft
        let other = PacketBuilder(src: n.a, dst: n.b, srcPort: 1111, dstPort: 830).segment(seq: 1, flags: 0x10)
        #expect(h.inject(icmp(code: 3, quoting: other), to: .a).0 == .accept) // no such connection
    }

    @Test func icmpReachingAnotherWorkerIsJudgedByTheSharedRegistry() {
        let n = Self.nets[0]
        let shared = SynchronizedFlows()
        var worker1 = AOEngine(config: testConfig(peer: n.prefixB, chain: testChain()), synchronized: shared)
        var peer = AOEngine(config: testConfig(peer: n.prefixA, chain: testChain()))
        var worker2 = AOEngine(config: testConfig(peer: n.prefixB, chain: testChain()), synchronized: shared)
        let clock = EngineClock(wall: 1_790_000_000, mono: 5)
        let c = PacketBuilder(src: n.a, dst: n.b, srcPort: 40000, dstPort: 830)
        func pass(_ e: inout AOEngine, _ pkt: [UInt8], _ d: Direction) -> [UInt8] {
            let b = PacketBuffer(pkt)
            if case .acceptModified(let l) = e.process(b.pointer, length: b.length, capacity: b.capacity, hint: d, clock: clock) { b.setLength(l) }
            return b.bytes
        }
        let syn = pass(&worker1, c.segment(seq: 1, flags: 0x02), .egress)
        _ = pass(&peer, syn, .ingress)
        let sa = pass(&peer, c.reversed.segment(seq: 50, ack: 2, flags: 0x12), .egress)
        _ = pass(&worker1, sa, .ingress)
        #expect(shared.count == 1)
        let body: [UInt8] = [3, 3, 0, 0, 0, 0, 0, 0] + Array(c.segment(seq: 2, flags: 0x10)[0..<28])
        let pkt = [0x45, 0, 0, UInt8(20 + body.count), 0, 0, 0, 0, 64, 1, 0, 0] + IPAddress("203.0.113.1")!.bytes + c.src.bytes + body
        let b = PacketBuffer(pkt)
        #expect(worker2.process(b.pointer, length: b.length, capacity: b.capacity, hint: .ingress, clock: clock) == .drop(.icmpHardError))
    }

    @Test func migrationLetsUnsignedSegmentsThroughAndCountsThem() {
        let n = Self.nets[0]
        var h = TwoHosts(configA: testConfig(peer: n.prefixB, chain: testChain(), acceptKeyMismatch: true),
                         configB: testConfig(peer: n.prefixA, chain: testChain()))
        let c = PacketBuilder(src: n.a, dst: n.b, srcPort: 40000, dstPort: 830)
        let s = c.reversed
        _ = h.send(c.segment(seq: 1, flags: 0x02), from: .a)
        // The peer is not protected yet: its SYN-ACK is unsigned.
        let sa = s.segment(seq: 90, ack: 2, flags: 0x12)
        #expect(h.inject(sa, to: .a).0 == .accept)
        // A still signs its own segments (40 bytes + 16 of AO).
        #expect(h.send(c.segment(seq: 2, ack: 91, flags: 0x10), from: .a).egress == .acceptModified(length: 56))
        #expect(h.engineA.snapshot()["passed-unsigned"] == 1)
    }

    @Test func lifetimes() {
        let n = Self.nets[0]
        let now: Int64 = 1_790_000_000
        let expiredSend = KeyChain(name: "x", keys: [MKT(chainKeyID: 1, sendID: 1, recvID: 1, algorithm: .hmacSHA1_96,
                                                      sendLifetime: Lifetime(end: now - 1), secret: Secret(Array("k".utf8)))])
        var h = Self.hosts(n, chainA: expiredSend)
        let c = PacketBuilder(src: n.a, dst: n.b, srcPort: 40000, dstPort: 830)
        #expect(h.send(c.segment(seq: 1, flags: 0x02), from: .a).egress == .drop(.noSendKey))
        let expiredAccept = KeyChain(name: "x", keys: [MKT(chainKeyID: 1, sendID: 1, recvID: 1, algorithm: .hmacSHA1_96,
                                                        acceptLifetime: Lifetime(end: now - 1), secret: Secret(Array("correct horse battery".utf8)))])
        var h2 = Self.hosts(n, chainB: expiredAccept)
        #expect(h2.send(c.segment(seq: 1, flags: 0x02), from: .a).ingress == .drop(.expiredKey))
    }

    @Test func sackBlocksMakeRoomAndFullOptionSpaceFailsClosed() throws {
        let n = Self.nets[0]
        var h = Self.hosts(n)
        let (c, _, sc, ss) = Self.established(&h, n)
        // Timestamps + 3 SACK blocks = 40 bytes: two blocks must go for AO to fit.
        let opts = PacketBuilder.tsOptions() + PacketBuilder.sackOption(blocks: 3)
        let d = c.segment(seq: sc, ack: ss, flags: 0x10, options: opts)
        let r = h.send(d, from: .a)
        let wire = try #require(r.onWire)
        let seg = wire.withUnsafeBytes { try! TCPSegment.parse($0.baseAddress!, count: $0.count) }
        #expect(seg.tcpHeaderLength == 60 && seg.hasAO)
        #expect(wire[seg.sackOffset + 1] == 10) // one block kept
        #expect(Self.checksumOK(wire))
        #expect(r.delivered == c.segment(seq: sc, ack: ss, flags: 0x10, options: PacketBuilder.tsOptions() + PacketBuilder.sackOption(blocks: 1)))
        #expect(h.engineA.snapshot()["options-trimmed"] == 1)
        // 40 bytes of options that are not SACK: no room, the segment does not leave.
        let full = c.segment(seq: sc, ack: ss, flags: 0x10, options: PacketBuilder.tsOptions() + [1, 1, 1, 1] + [254, 24] + [UInt8](repeating: 0, count: 22))
        #expect(h.send(full, from: .a).egress == .drop(.noOptionSpace))
    }

    /// The table holds at most max-flows: half-open and ended flows make room for new ones,
    /// established connections are never evicted.
    @Test func flowTableIsBounded() {
        let n = Self.nets[0]
        var h = TwoHosts(configA: testConfig(peer: n.prefixB, chain: testChain(), limits: FlowLimits(maxFlows: 4)),
                         configB: testConfig(peer: n.prefixA, chain: testChain()))
        for port in 0..<4 { // four established connections fill A's table
            let c = PacketBuilder(src: n.a, dst: n.b, srcPort: UInt16(40000 + port), dstPort: 830)
            _ = h.send(c.segment(seq: 1, flags: 0x02), from: .a)
            _ = h.send(c.reversed.segment(seq: 9, ack: 2, flags: 0x12), from: .b)
        }
        let extra = PacketBuilder(src: n.a, dst: n.b, srcPort: 41000, dstPort: 830)
        #expect(h.send(extra.segment(seq: 1, flags: 0x02), from: .a).egress == .drop(.flowTableFull))
        #expect(h.engineA.flowCount == 4)
        // One ends (RST): its place goes to the next new connection.
        let first = PacketBuilder(src: n.a, dst: n.b, srcPort: 40000, dstPort: 830)
        _ = h.send(first.segment(seq: 2, ack: 10, flags: 0x14), from: .a)
        #expect(h.send(extra.segment(seq: 1, flags: 0x02), from: .a).egress == .acceptModified(length: 56)) // signed: 40 + 16
        #expect(h.engineA.snapshot()["flows-evicted"] == 1)
        // Half-open flows make room for each other (a SYN flood cannot lock the table).
        for port in 0..<6 {
            let c = PacketBuilder(src: n.a, dst: n.b, srcPort: UInt16(42000 + port), dstPort: 830)
            #expect(h.send(c.segment(seq: 1, flags: 0x02), from: .a).egress == .acceptModified(length: 56))
        }
        #expect(h.engineA.flowCount == 4)
        h.engineA.expire(now: h.clock.mono + 76, budget: 1 << 20) // half-open flows time out
        #expect(h.engineA.flowCount == 3)
    }

    @Test func optionsExcludedFromTheMAC() {
        let n = Self.nets[1]
        var h = Self.hosts(n, chainA: testChain(includeOptions: false), chainB: testChain(includeOptions: false))
        let (c, _, sc, ss) = Self.established(&h, n)
        let d = c.segment(seq: sc, ack: ss, flags: 0x10, options: PacketBuilder.tsOptions(tsval: 1, tsecr: 2))
        // Changing the timestamp value on the wire goes unnoticed: options are not covered.
        let r = h.send(d, from: .a) { pkt in pkt[40 + 20 + 4] ^= 0xFF }
        #expect(r.ingress == .acceptModified(length: d.count))
        // Delivered with the changed TSval (and d's checksum, which the wire change did not fix).
        var changed = d
        changed[40 + 20 + 4] ^= 0xFF
        #expect(r.delivered == changed)
    }

    /// Once a connection is over (FINs both ways and the last ACK, or an RST) its flow lingers
    /// without keyed MAC contexts; a retransmitted FIN after that still verifies and its ACK is
    /// still signed (the traffic keys derived again), with every algorithm.
    @Test(arguments: [AOAlgorithm.hmacSHA1_96, .aes128CMAC_96])
    func aFinishedConnectionDropsItsKeysAndStillAnswersRetransmissions(_ alg: AOAlgorithm) {
        let chain = testChain(algorithm: alg)
        var h = TwoHosts(configA: testConfig(peer: "198.51.100.0/24", chain: chain), configB: testConfig(peer: "192.0.2.0/24", chain: chain))
        let c = PacketBuilder(src: "192.0.2.10", dst: "198.51.100.20", srcPort: 50200, dstPort: 830), s = c.reversed
        let segments: [([UInt8], TwoHosts.Side)] = [
            (c.segment(seq: 0x1000, flags: 0x02, options: PacketBuilder.synOptions()), .a),
            (s.segment(seq: 0x7000, ack: 0x1001, flags: 0x12, options: PacketBuilder.synOptions()), .b),
            (c.segment(seq: 0x1001, ack: 0x7001, flags: 0x10), .a),
            (c.segment(seq: 0x1001, ack: 0x7001, flags: 0x11), .a), // FIN
            (s.segment(seq: 0x7001, ack: 0x1002, flags: 0x11), .b), // FIN+ACK
            (c.segment(seq: 0x1002, ack: 0x7002, flags: 0x10), .a), // the last ACK
        ]
        for (n, (p, side)) in segments.enumerated() {
            #expect(h.send(p, from: side).delivered != nil, "segment \(n) dropped")
        }
        let ka = FlowKey(local: IPAddress("192.0.2.10")!, remote: IPAddress("198.51.100.20")!, localPort: 50200, remotePort: 830)
        let kb = FlowKey(local: ka.remote, remote: ka.local, localPort: 830, remotePort: 50200)
        for (name, e, k) in [("A", 0, ka), ("B", 1, kb)] {
            let i = e == 0 ? h.engineA.table.find(k, hash: h.engineA.table.hash(k)) : h.engineB.table.find(k, hash: h.engineB.table.hash(k))
            #expect(i != nil, "\(name) no longer holds the connection")
            guard let i else { continue }
            let held = e == 0 ? (h.engineA.table.entries[i].send != nil, h.engineA.table.entries[i].recv != nil)
                              : (h.engineB.table.entries[i].send != nil, h.engineB.table.entries[i].recv != nil)
            #expect(held == (false, false), "\(name) still holds keyed contexts (send, receive): \(held)")
        }
        // B did not see the last ACK (say): it retransmits its FIN; A verifies it and ACKs.
        #expect(h.send(s.segment(seq: 0x7001, ack: 0x1002, flags: 0x11), from: .b).delivered != nil, "retransmitted FIN dropped")
        #expect(h.send(c.segment(seq: 0x1002, ack: 0x7002, flags: 0x10), from: .a).delivered != nil, "ACK of the retransmission dropped")
    }
}
