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

    /// Two workers' engines sharing one budget: the third connection is refused wherever it
    /// lands, and a removed flow frees its place.
    @Test func sharedBudgetBoundsSeveralEngines() {
        let budget = FlowBudget(limit: 2)
        let cfg = testConfig(peer: "198.51.100.0/24", chain: testChain(), limits: FlowLimits(maxFlows: 10, handshakeTimeout: 5))
        var w1 = AOEngine(config: cfg, budget: budget), w2 = AOEngine(config: cfg, budget: budget)
        let clock = EngineClock(wall: 1_790_000_000, mono: 10)
        func syn(_ e: inout AOEngine, _ port: UInt16) -> Verdict {
            let b = PacketBuffer(PacketBuilder(src: "192.0.2.1", dst: "198.51.100.9", srcPort: port, dstPort: 830).segment(seq: 1, flags: 0x02))
            return e.process(b.pointer, length: b.length, capacity: b.capacity, hint: .egress, clock: clock)
        }
        #expect(syn(&w1, 1000) != .drop(.flowTableFull))
        #expect(syn(&w2, 1001) != .drop(.flowTableFull))
        #expect(syn(&w2, 1002) == .drop(.flowTableFull))
        #expect(syn(&w1, 1003) == .drop(.flowTableFull))
        w1.expire(now: 20, budget: 100) // the half-open flow times out and frees its place
        #expect(budget.count == 1)
        #expect(syn(&w2, 1004) != .drop(.flowTableFull))
    }
}
