import Testing
import PropertyBased
@testable import TCPAO
import TCPAOTestSupport

/// The flow table against a reference dictionary: random inserts, lookups and removals
/// (backward-shift deletion must never lose an entry behind a hole).
@Suite struct FlowTableTests {
    static func key(_ n: UInt32) -> FlowKey {
        FlowKey(local: IPAddress(v4: 0xC000_0201), remote: IPAddress(v4: 0xC633_6400 | (n & 0xFF)),
                localPort: UInt16(truncatingIfNeeded: n >> 8), remotePort: 830)
    }

    @Test func randomOperationsMatchADictionary() async {
        await propertyCheck(count: 200, input: Gen.uint32(in: 0...400).array(of: 1...600), Gen.bool.array(of: 600)) { ops, removes in
            var t = FlowTable(limit: 256)
            var ref: [FlowKey: Int] = [:]
            for (i, n) in ops.enumerated() {
                let k = Self.key(n)
                let h = FlowTable.hash(k)
                if let e = t.find(k, hash: h) {
                    #expect(ref[k] == e)
                    if removes[i % removes.count] { t.remove(at: e); ref[k] = nil }
                } else {
                    #expect(ref[k] == nil)
                    if let e = t.insert(FlowEntry(key: k, hash: h, peer: 0, state: FlowState(phase: .synSent, now: 0))) {
                        ref[k] = e
                    } else {
                        #expect(ref.count == 256) // full only at the limit
                    }
                }
                #expect(t.count == ref.count)
            }
            for (k, e) in ref { #expect(t.find(k, hash: FlowTable.hash(k)) == e) }
            #expect(t.highWater <= 256)
        }
    }

    /// Two workers' engines sharing one budget: with both places taken by established
    /// connections, a third is refused wherever it lands.
    @Test func sharedBudgetBoundsSeveralEngines() {
        let budget = FlowBudget(limit: 2)
        let cfgA = testConfig(peer: "198.51.100.0/24", chain: testChain(), limits: FlowLimits(maxFlows: 10))
        let cfgB = testConfig(peer: "192.0.2.0/24", chain: testChain())
        var w1 = AOEngine(config: cfgA, budget: budget), w2 = AOEngine(config: cfgA, budget: budget)
        var peer = AOEngine(config: cfgB)
        let clock = EngineClock(wall: 1_790_000_000, mono: 10)
        func pass(_ e: inout AOEngine, _ pkt: [UInt8], _ d: Direction) -> (Verdict, [UInt8]) {
            let b = PacketBuffer(pkt)
            let v = e.process(b.pointer, length: b.length, capacity: b.capacity, hint: d, clock: clock)
            if case .acceptModified(let l) = v { b.setLength(l) }
            return (v, b.bytes)
        }
        func connect(_ e: inout AOEngine, _ port: UInt16) -> Verdict {
            let c = PacketBuilder(src: "192.0.2.1", dst: "198.51.100.9", srcPort: port, dstPort: 830)
            let (v, syn) = pass(&e, c.segment(seq: 1, flags: 0x02), .egress)
            if case .drop = v { return v }
            _ = pass(&peer, syn, .ingress)
            let (_, sa) = pass(&peer, c.reversed.segment(seq: 7, ack: 2, flags: 0x12), .egress)
            return pass(&e, sa, .ingress).0
        }
        #expect(connect(&w1, 1000) == .acceptModified(length: 40))
        #expect(connect(&w2, 1001) == .acceptModified(length: 40))
        #expect(budget.count == 2)
        #expect(connect(&w2, 1002) == .drop(.flowTableFull))
        #expect(connect(&w1, 1003) == .drop(.flowTableFull))
    }
}
