import Testing
@testable import TCPAO
import TCPAOTestSupport

/// Per-connection MKTs (issue 13): installed on both ends of one connection, the connection
/// moves to it by RNextKeyID (RFC 5925 7.5), then the configured keys are no longer accepted on
/// it; other connections keep the chain.
@Suite struct ConnectionKeyTests {
    typealias L = KeyLifecycleTests

    static func own(_ id: UInt8 = 100, _ alg: AOAlgorithm = .hmacSHA1_96) -> MKT {
        MKT(chainKeyID: 0, sendID: id, recvID: id, algorithm: alg, secret: Secret(Array("exported from the TLS handshake".utf8)))
    }

    static let flowA = FlowKey(local: IPAddress(L.a)!, remote: IPAddress(L.b)!, localPort: 50123, remotePort: 830)
    static let flowB = FlowKey(local: IPAddress(L.b)!, remote: IPAddress(L.a)!, localPort: 830, remotePort: 50123)

    @Test func theConnectionMovesToItsOwnMKTAndLeavesTheChainsKeys() {
        let (ca, cb) = L.configs(KeyChain(name: "c", keys: [L.key(1, .hmacSHA1_96, "the default key")]))
        var h = TwoHosts(configA: ca, configB: cb, wall: L.now)
        let (c, s, sc, ss) = L.open(&h)
        let old = h.send(c.segment(seq: sc, ack: ss, flags: 0x18, options: PacketBuilder.tsOptions(), payload: [1]), from: .a)
        #expect(L.keyID(old.onWire) == 1 && old.delivered != nil)
        #expect(h.engineA.installConnectionKey(Self.flowA, Self.own(), wall: L.now) == .installed)
        #expect(h.engineB.installConnectionKey(Self.flowB, Self.own(), wall: L.now) == .installed)
        // A keeps sending with key 1 (B has not asked for 100 yet) but advertises 100.
        let d1 = h.send(c.segment(seq: sc &+ 1, ack: ss, flags: 0x18, options: PacketBuilder.tsOptions(), payload: [2]), from: .a)
        #expect(L.keyID(d1.onWire) == 1 && d1.delivered != nil)
        // B was asked for 100 and has it: B sends with 100; A verifies it with its own MKT.
        let d2 = h.send(s.segment(seq: ss, ack: sc &+ 2, flags: 0x18, options: PacketBuilder.tsOptions(), payload: [3]), from: .b)
        #expect(L.keyID(d2.onWire) == 100 && d2.delivered != nil)
        let d3 = h.send(c.segment(seq: sc &+ 2, ack: ss &+ 1, flags: 0x18, options: PacketBuilder.tsOptions(), payload: [4]), from: .a)
        #expect(L.keyID(d3.onWire) == 100 && d3.delivered != nil)
        // Both ends now refuse the configured key on this connection: a segment signed with it
        // (the earlier one, replayed) is dropped.
        let (v, _) = h.inject(old.onWire!, to: .b)
        #expect(v == .drop(.expiredKey))
        var flows: [FlowInfo] = []
        _ = h.engineB.copyFlows(from: 0, slots: 16, into: &flows)
        #expect(flows.first?.connectionKey == ConnectionKeyInfo(sendID: 100, recvID: 100, algorithm: .hmacSHA1_96, exclusive: true))
        // Another connection of the same peers keeps the chain's key.
        let (c2, _, _, _) = L.open(&h, port: 50124)
        let e = h.send(c2.segment(seq: 0x1001, ack: 0x7001, flags: 0x18, options: PacketBuilder.tsOptions(), payload: [5]), from: .a)
        #expect(L.keyID(e.onWire) == 1 && e.delivered != nil)
    }

    @Test func refusalsSayWhy() {
        let chain = KeyChain(name: "c", keys: [L.key(1, .hmacSHA1_96, "the default key")])
        let (ca, cb) = L.configs(chain)
        var h = TwoHosts(configA: ca, configB: cb, wall: L.now)
        let absent = FlowKey(local: IPAddress(L.a)!, remote: IPAddress(L.b)!, localPort: 1, remotePort: 2)
        #expect(h.engineA.installConnectionKey(absent, Self.own(), wall: L.now) == .notFound)
        _ = L.open(&h)
        guard case .refused(let why) = h.engineA.installConnectionKey(Self.flowA, Self.own(1), wall: L.now) else { Issue.record("KeyID 1 taken"); return }
        #expect(why.contains("SendID 1 is also key 1's of chain c"))
        // The MSS was lowered for a 16-byte option: a 20-byte one does not fit.
        guard case .refused(let why2) = h.engineA.installConnectionKey(Self.flowA, Self.own(100, .hmacSHA256_128), wall: L.now) else { Issue.record("long MAC"); return }
        #expect(why2.contains("reserved 16 bytes"))
        #expect(h.engineA.installConnectionKey(Self.flowA, Self.own(), wall: L.now) == .installed)
        guard case .refused(let why3) = h.engineA.installConnectionKey(Self.flowA, Self.own(101), wall: L.now) else { Issue.record("second"); return }
        #expect(why3.contains("has its own MKT already"))
    }
}

/// Review findings: a connection's own MKT never leaks to a new connection on its 4-tuple, nor
/// is a connection that had moved to it restored with the chain's keys.
@Suite struct ConnectionKeyBoundaryTests {
    typealias L = KeyLifecycleTests
    typealias C = ConnectionKeyTests

    @Test func aNewConnectionOnTheSameFourTupleStartsWithTheChain() {
        let (ca, cb) = L.configs(KeyChain(name: "c", keys: [L.key(1, .hmacSHA1_96, "the default key")]))
        var h = TwoHosts(configA: ca, configB: cb, wall: L.now)
        let (c, s, sc, ss) = L.open(&h)
        #expect(h.engineA.installConnectionKey(C.flowA, C.own(), wall: L.now) == .installed)
        #expect(h.engineB.installConnectionKey(C.flowB, C.own(), wall: L.now) == .installed)
        _ = h.send(c.segment(seq: sc, ack: ss, flags: 0x18, options: PacketBuilder.tsOptions(), payload: [1]), from: .a)
        _ = h.send(s.segment(seq: ss, ack: sc &+ 1, flags: 0x18, options: PacketBuilder.tsOptions(), payload: [2]), from: .b)
        let x = h.send(c.segment(seq: sc &+ 1, ack: ss &+ 1, flags: 0x18, options: PacketBuilder.tsOptions(), payload: [3]), from: .a)
        #expect(L.keyID(x.onWire) == 100)
        // Both ends reset the connection (RST with the MKT), then the 4-tuple is reused at once.
        let r = h.send(c.segment(seq: sc &+ 2, ack: ss &+ 1, flags: 0x14, options: PacketBuilder.tsOptions()), from: .a)
        #expect(L.keyID(r.onWire) == 100 && r.delivered != nil)
        let syn = h.send(c.segment(seq: 0x9000, flags: 0x02, options: PacketBuilder.synOptions()), from: .a)
        #expect(L.keyID(syn.onWire) == 1 && syn.delivered != nil, "the new SYN: \(String(describing: syn.ingress))")
        let synAck = h.send(s.segment(seq: 0xA000, ack: 0x9001, flags: 0x12, options: PacketBuilder.synOptions()), from: .b)
        #expect(L.keyID(synAck.onWire) == 1 && synAck.delivered != nil, "the new SYN-ACK: \(String(describing: synAck.ingress))")
    }

    @Test func aLabelNamingAKeyIDTheChainLacksIsNotRestored() {
        let chain = KeyChain(name: "c", keys: [L.key(1, .hmacSHA1_96, "the default key")])
        let label = FlowLabel(localISN: 1, remoteISN: 2, sendSNE: 0, recvSNE: 0, sendQuarter: 0, recvQuarter: 0,
                              currentSendID: 1, peerRNextKeyID: 1, reservedOptionWords: 4)
        #expect(label.usesOnlyKeysOf(chain))
        var moved = label
        moved.currentSendID = 100
        #expect(!moved.usesOnlyKeysOf(chain))
        var asked = label
        asked.peerRNextKeyID = 100
        #expect(!asked.usesOnlyKeysOf(chain))
    }
}
