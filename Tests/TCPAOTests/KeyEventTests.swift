import Testing
@testable import TCPAO
import TCPAOTestSupport

/// The per-connection key moves the engine records for the log (issue 12's "the peer moved to
/// RNextKeyID N"): a rotation by reload on both ends, seen from each side.
@Suite struct KeyEventTests {
    typealias L = KeyLifecycleTests

    @Test func aRotationRecordsEachConnectionsMoves() {
        let k1 = L.key(1, .hmacSHA1_96, "the first key!!", sendFrom: L.now - 1000)
        let k2 = L.key(2, .hmacSHA1_96, "the second key!", sendFrom: L.now - 10)
        let (ca, cb) = L.configs(KeyChain(name: "c", keys: [k1]))
        var h = TwoHosts(configA: ca, configB: cb, wall: L.now)
        let (c, s, sc, ss) = L.open(&h)
        _ = h.send(c.segment(seq: sc, ack: ss, flags: 0x10, options: PacketBuilder.tsOptions()), from: .a)
        // Opening a connection is no move.
        #expect(h.engineA.takeKeyEvents().events.isEmpty && h.engineB.takeKeyEvents().events.isEmpty)
        // Both ends get key 2 (preferred: its send lifetime began last), A first.
        let (na, nb) = L.configs(KeyChain(name: "c", keys: [k1, k2]))
        _ = h.engineA.reconfigure(na)
        // A advertises RNextKeyID 2 but keeps sending with 1 (B has not asked for 2).
        let d1 = h.send(c.segment(seq: sc, ack: ss, flags: 0x18, options: PacketBuilder.tsOptions(), payload: [1]), from: .a)
        #expect(L.keyID(d1.onWire) == 1 && d1.delivered != nil)
        let b1 = h.engineB.takeKeyEvents().events
        #expect(b1 == [FlowKeyEvent(kind: .peerAsks, key: FlowKey(local: IPAddress(L.b)!, remote: IPAddress(L.a)!, localPort: 830, remotePort: 50123),
                                    peer: 0, from: 1, to: 2)])
        _ = h.engineB.reconfigure(nb)
        // B has key 2 and A asked for it: B sends with 2 (following A's RNextKeyID).
        let d2 = h.send(s.segment(seq: ss, ack: sc &+ 1, flags: 0x18, options: PacketBuilder.tsOptions(), payload: [2]), from: .b)
        #expect(L.keyID(d2.onWire) == 2 && d2.delivered != nil)
        let b2 = h.engineB.takeKeyEvents().events
        #expect(b2.map(\.kind) == [.sending] && b2.first?.from == 1 && b2.first?.to == 2 && b2.first?.followsPeer == true)
        let a2 = h.engineA.takeKeyEvents().events.map { "\($0.kind) \($0.from)->\($0.to)" }.sorted()
        // A: B's segments now carry 2, B asks for 2, and A moves to it.
        #expect(a2 == ["peerAsks 1->2", "peerSending 1->2", "sending 1->2"])
        // Nothing more without a change.
        _ = h.send(c.segment(seq: sc &+ 1, ack: ss &+ 1, flags: 0x10, options: PacketBuilder.tsOptions()), from: .a)
        #expect(h.engineA.takeKeyEvents().events.isEmpty)
        #expect(h.engineB.takeKeyEvents().events.map(\.kind) == [.peerSending])
    }

    @Test func theBufferIsBoundedAndCountsWhatDidNotFit() {
        var b = FlowKeyEventBuffer()
        let k = FlowKey(local: IPAddress("192.0.2.1")!, remote: IPAddress("192.0.2.2")!, localPort: 1, remotePort: 2)
        for i in 0..<(FlowKeyEventBuffer.capacity + 5) { b.record(FlowKeyEvent(kind: .sending, key: k, peer: 0, from: 1, to: UInt8(i & 0xff))) }
        let (e, lost) = b.take()
        #expect(e.count == FlowKeyEventBuffer.capacity && lost == 5)
        #expect(b.take().events.isEmpty && b.events.capacity >= FlowKeyEventBuffer.capacity)
    }
}
