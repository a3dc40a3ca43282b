import Testing
@testable import TCPAO
import TCPAOTestSupport

/// A label store in memory, standing in for conntrack: what a restarted engine finds.
final class MemoryLabelStore: FlowStateStore {
    var labels: [FlowKey: [UInt8]] = [:]
    let offset: Int
    var saves = 0
    var loads = 0
    /// Saves fail while set (a ctnetlink timeout, no label space).
    var failing = false

    init(offset: Int = 0) { self.offset = offset }

    func load(_ key: FlowKey) -> FlowLabel? {
        loads += 1
        guard let b = labels[key] else { return nil }
        return b.withUnsafeBytes { FlowLabel.decode($0.baseAddress!, offset: offset) }
    }

    func save(_ key: FlowKey, _ label: FlowLabel) -> Bool {
        saves += 1
        if failing { return false }
        var b = labels[key] ?? [UInt8](repeating: 0, count: 16)
        b.withUnsafeMutableBytes { label.encode(offset: offset, into: $0.baseAddress!) }
        labels[key] = b
        return true
    }
}

/// Issue 10: flow state kept in the connection's conntrack label -- its encoding, and what a
/// restarted engine does with it.
@Suite struct FlowLabelTests {
    static func random(_ r: inout SplitMix64) -> FlowLabel {
        FlowLabel(localISN: UInt32(truncatingIfNeeded: r.next()), remoteISN: UInt32(truncatingIfNeeded: r.next()),
                  sendSNE: UInt16(truncatingIfNeeded: r.next()), recvSNE: UInt16(truncatingIfNeeded: r.next()),
                  sendQuarter: UInt8(r.next() & 3), recvQuarter: UInt8(r.next() & 3), currentSendID: UInt8(truncatingIfNeeded: r.next()),
                  peerRNextKeyID: r.next() & 1 == 0 ? nil : UInt8(truncatingIfNeeded: r.next()),
                  reservedOptionWords: UInt8(r.next() % 11))
    }

    /// Every label survives the 128-bit form at every offset, and writes only its own bits:
    /// the other users' bits (nft rules, OVS) are left as they were.
    @Test func roundTripAtEveryOffsetLeavesOtherBitsAlone() {
        var r = SplitMix64(state: 42)
        for offset in 0...FlowLabel.maxOffset {
            for _ in 0..<200 {
                let l = Self.random(&r)
                var bits = (0..<16).map { _ in UInt8(truncatingIfNeeded: r.next()) }
                let before = bits
                var mask = [UInt8](repeating: 0, count: 16)
                mask.withUnsafeMutableBytes { FlowLabel.mask(offset: offset, into: $0.baseAddress!) }
                bits.withUnsafeMutableBytes { l.encode(offset: offset, into: $0.baseAddress!) }
                let back = bits.withUnsafeBytes { FlowLabel.decode($0.baseAddress!, offset: offset) }
                #expect(back == l)
                for i in 0..<16 {
                    #expect(bits[i] & ~mask[i] == before[i] & ~mask[i], "offset \(offset): byte \(i) outside the mask changed")
                }
            }
            // The mask covers exactly bitCount bits from the offset.
            var mask = [UInt8](repeating: 0, count: 16)
            mask.withUnsafeMutableBytes { FlowLabel.mask(offset: offset, into: $0.baseAddress!) }
            #expect(mask.reduce(0) { $0 + $1.nonzeroBitCount } == FlowLabel.bitCount)
            #expect(mask[offset / 8] & UInt8(1 << (offset % 8)) != 0)
        }
    }

    @Test func emptyOrForeignBitsAreNoLabel() {
        let zero = [UInt8](repeating: 0, count: 16)
        #expect(zero.withUnsafeBytes { FlowLabel.decode($0.baseAddress!, offset: 0) } == nil)
        var other = zero
        other[0] = 0x02 // version 2
        #expect(other.withUnsafeBytes { FlowLabel.decode($0.baseAddress!, offset: 0) } == nil)
    }

    static let a = "192.0.2.10", b = "198.51.100.20"

    static func hosts(store: MemoryLabelStore?) -> TwoHosts {
        let chain = testChain(algorithm: .hmacSHA1_96)
        var h = TwoHosts(configA: testConfig(peer: "198.51.100.0/24", chain: chain), configB: testConfig(peer: "192.0.2.0/24", chain: chain))
        h.engineA.stateStore = store
        return h
    }

    static func open(_ h: inout TwoHosts, isnC: UInt32 = 0x1000, isnS: UInt32 = 0x7000) -> (PacketBuilder, PacketBuilder) {
        let c = PacketBuilder(src: a, dst: b, srcPort: 50123, dstPort: 830), s = c.reversed
        #expect(h.send(c.segment(seq: isnC, flags: 0x02, options: PacketBuilder.synOptions()), from: .a).delivered != nil)
        #expect(h.send(s.segment(seq: isnS, ack: isnC &+ 1, flags: 0x12, options: PacketBuilder.synOptions()), from: .b).delivered != nil)
        #expect(h.send(c.segment(seq: isnC &+ 1, ack: isnS &+ 1, flags: 0x10), from: .a).delivered != nil)
        return (c, s)
    }

    /// With deferred saves (the daemon's workers), a changed label is written when the shell
    /// says the batch's verdicts are out, once per connection however many of its segments were
    /// in the batch; a restarted engine carries on from it as from one written at once.
    @Test func deferredSavesWaitForTheBatchAndWriteOnce() {
        let store = MemoryLabelStore(offset: 5)
        var h = Self.hosts(store: store)
        h.engineA.deferStateSaves = true
        let (c, s) = Self.open(&h)
        #expect(store.saves == 0, "written before the batch ended")
        // More segments of the same connection in the same batch: still one write.
        _ = h.send(c.segment(seq: 0x1001, ack: 0x7001, flags: 0x18, payload: [1, 2, 3]), from: .a)
        _ = h.send(s.segment(seq: 0x7001, ack: 0x1004, flags: 0x18, payload: [4, 5]), from: .b)
        h.engineA.savePendingStates(now: 1)
        #expect(store.saves == 1, "\(store.saves) writes for one connection's label")
        h.engineA.savePendingStates(now: 1)
        #expect(store.saves == 1, "written again with nothing changed")
        // Restart A from the store: the connection carries on.
        h.engineA = AOEngine(config: h.engineA.config)
        h.engineA.stateStore = store
        let d = h.send(c.segment(seq: 0x1004, ack: 0x7003, flags: 0x10), from: .a)
        #expect(d.delivered != nil, "restored egress failed: \(d.egress)")
        // A store that fails is asked once for the batch, not once per segment of the flow,
        // and not again within the second.
        let failing = MemoryLabelStore(offset: 5)
        failing.failing = true
        var h3 = Self.hosts(store: failing)
        h3.engineA.deferStateSaves = true
        let (c3, s3) = Self.open(&h3)
        _ = h3.send(c3.segment(seq: 0x1001, ack: 0x7001, flags: 0x18, payload: [1, 2, 3]), from: .a)
        _ = h3.send(s3.segment(seq: 0x7001, ack: 0x1004, flags: 0x18, payload: [4, 5]), from: .b)
        h3.engineA.savePendingStates(now: 1)
        #expect(failing.saves == 1, "\(failing.saves) attempts with a failing store in one batch")
        _ = h3.send(c3.segment(seq: 0x1004, ack: 0x7003, flags: 0x10), from: .a)
        h3.engineA.savePendingStates(now: 1)
        #expect(failing.saves == 1, "asked again within the second")
    }

    /// A half-open flow evicted (its engine's table full) before the end of the batch that
    /// changed its label still has the label written: the client's ACK restores it from there.
    @Test func anEvictedHalfOpenFlowKeepsItsDeferredLabel() {
        let store = MemoryLabelStore(offset: 5)
        let chain = testChain(algorithm: .hmacSHA1_96)
        var h = TwoHosts(configA: testConfig(peer: "198.51.100.0/24", chain: chain),
                         configB: testConfig(peer: "192.0.2.0/24", chain: chain, limits: FlowLimits(maxFlows: 2)))
        h.engineB.stateStore = store
        h.engineB.deferStateSaves = true
        let c = PacketBuilder(src: Self.a, dst: Self.b, srcPort: 50123, dstPort: 830), s = c.reversed
        #expect(h.send(c.segment(seq: 0x1000, flags: 0x02, options: PacketBuilder.synOptions()), from: .a).delivered != nil)
        #expect(h.send(s.segment(seq: 0x7000, ack: 0x1001, flags: 0x12, options: PacketBuilder.synOptions()), from: .b).delivered != nil)
        #expect(store.saves == 0)
        // Two more connections' SYNs in the same batch: the second evicts the first flow.
        for (port, isn) in [(UInt16(50124), UInt32(0x2000)), (50125, 0x3000)] {
            let o = PacketBuilder(src: Self.a, dst: Self.b, srcPort: port, dstPort: 830)
            #expect(h.send(o.segment(seq: isn, flags: 0x02, options: PacketBuilder.synOptions()), from: .a).delivered != nil)
        }
        let key = FlowKey(local: IPAddress(Self.b)!, remote: IPAddress(Self.a)!, localPort: 830, remotePort: 50123)
        #expect(h.engineB.flowState(key) == nil, "not evicted: the test does not test eviction")
        #expect(store.labels[key] != nil, "the evicted flow's label was never written")
        h.engineB.savePendingStates(now: 1)
        let d = h.send(c.segment(seq: 0x1001, ack: 0x7001, flags: 0x10), from: .a)
        #expect(d.delivered != nil, "the ACK of the evicted connection was dropped: \(String(describing: d.ingress))")
    }

    /// A's engine is replaced by a new one (a restart) that has only the store: the connection
    /// carries on in both directions, across the 2^32 wrap of both sequence spaces, with the
    /// label written only when the state changed.
    @Test(arguments: [(UInt32(0x1000), UInt32(0x7000)), (UInt32(0xFFFF_F000), UInt32(0x7FFF_FF00)), (UInt32(0x7FFF_0000), UInt32(0xFFFF_0000))])
    func aRestartedEngineCarriesOnFromTheLabel(_ isns: (UInt32, UInt32)) {
        let store = MemoryLabelStore(offset: 3)
        var h = Self.hosts(store: store)
        let (c, s) = Self.open(&h, isnC: isns.0, isnS: isns.1)
        var sc = isns.0 &+ 1, ss = isns.1 &+ 1
        #expect(store.saves == 1, "the label is written once both ISNs are known, not per segment (\(store.saves))")
        let chunk = [UInt8](repeating: 0x5A, count: 1000)
        // Several restarts, each after the connection moved on by 1.2 GB in each direction: the
        // sequence numbers wrap, and the label follows the SNE and half-space changes.
        for round in 0..<8 {
            let savesBefore = store.saves
            for _ in 0..<4 {
                let d = h.send(c.segment(seq: sc, ack: ss, flags: 0x18, payload: chunk), from: .a)
                #expect(d.delivered != nil, "round \(round): A's segment \(sc) was dropped: \(String(describing: d.ingress)) \(d.egress)")
                if d.delivered == nil { return }
                let e = h.send(s.segment(seq: ss, ack: sc, flags: 0x18, payload: chunk), from: .b)
                #expect(e.delivered != nil, "round \(round): B's segment \(ss) was dropped: \(String(describing: e.ingress))")
                sc &+= 300_000_000
                ss &+= 300_000_000
            }
            #expect(store.saves - savesBefore <= 4, "round \(round): \(store.saves - savesBefore) label writes for 8 segments")
            // Restart A: a new engine with the same configuration and store.
            h.engineA = AOEngine(config: h.engineA.config)
            h.engineA.stateStore = store
            // Alternate which side speaks first after the restart.
            if round % 2 == 0 {
                let d = h.send(c.segment(seq: sc, ack: ss, flags: 0x10), from: .a)
                #expect(d.delivered != nil && d.egress == .acceptModified(length: d.onWire?.count ?? -1), "round \(round): restored egress failed")
            } else {
                let e = h.send(s.segment(seq: ss, ack: sc, flags: 0x10), from: .b)
                #expect(e.delivered != nil, "round \(round): restored ingress failed: \(String(describing: e.ingress))")
            }
            #expect(h.engineA.snapshot()["flows-restored"] == 1)
        }
    }

    /// The label is a claim: a wrong ISN in it gets the segment dropped (bad MAC, counted as a
    /// failed restore) and creates no flow; the right label still works afterwards. No label:
    /// `no-state`, as before.
    @Test func aForgedLabelDeniesButNeverAdmits() {
        let store = MemoryLabelStore()
        var h = Self.hosts(store: store)
        let (c, s) = Self.open(&h)
        let key = FlowKey(local: IPAddress(Self.a)!, remote: IPAddress(Self.b)!, localPort: 50123, remotePort: 830)
        let good = store.labels[key]!
        var forged = store.load(key)!
        forged.remoteISN &+= 1
        _ = store.save(key, forged)
        h.engineA = AOEngine(config: h.engineA.config)
        h.engineA.stateStore = store
        let e = h.send(s.segment(seq: 0x7001, ack: 0x1001, flags: 0x18, payload: [1, 2, 3]), from: .b)
        #expect(e.ingress == .drop(.badMAC))
        #expect(h.engineA.snapshot()["restore-failed"] == 1 && h.engineA.flowCount == 0)
        store.labels[key] = good
        let e2 = h.send(s.segment(seq: 0x7001, ack: 0x1001, flags: 0x18, payload: [1, 2, 3]), from: .b)
        #expect(e2.delivered != nil)
        // Without any label (the conntrack entry expired): no-state.
        store.labels = [:]
        h.engineA = AOEngine(config: h.engineA.config)
        h.engineA.stateStore = store
        #expect(h.send(s.segment(seq: 0x7004, ack: 0x1001, flags: 0x10), from: .b).ingress == .drop(.noState))
        #expect(h.send(c.segment(seq: 0x1001, ack: 0x7004, flags: 0x10), from: .a).egress == .drop(.noState))
    }

    /// A label that could not be written is written at a later segment (not marked as saved),
    /// at most once a second while the store keeps failing.
    @Test func aFailedLabelWriteIsRetried() {
        let store = MemoryLabelStore()
        store.failing = true
        var h = Self.hosts(store: store)
        let (c, s) = Self.open(&h)
        #expect(h.engineA.snapshot()["state-save-failed"] >= 1 && store.labels.isEmpty)
        let tries = store.saves
        _ = h.send(c.segment(seq: 0x1001, ack: 0x7001, flags: 0x10), from: .a)
        #expect(store.saves == tries, "retried within the same second")
        store.failing = false
        h.clock.mono &+= 1
        _ = h.send(s.segment(seq: 0x7001, ack: 0x1001, flags: 0x10), from: .b)
        #expect(store.labels.count == 1 && h.engineA.snapshot()["states-saved"] == 1)
    }

    /// A peer in migration (accept-key-mismatch) that signed before the restart: its unsigned
    /// segments stay dropped after the restart too (the label says it signs).
    @Test func migrationDoesNotReopenAfterARestart() {
        let store = MemoryLabelStore()
        let chain = testChain(algorithm: .hmacSHA1_96)
        var h = TwoHosts(configA: testConfig(peer: "198.51.100.0/24", chain: chain, acceptKeyMismatch: true),
                         configB: testConfig(peer: "192.0.2.0/24", chain: chain))
        h.engineA.stateStore = store
        let (_, s) = Self.open(&h)
        h.engineA = AOEngine(config: h.engineA.config)
        h.engineA.stateStore = store
        let unsigned = s.segment(seq: 0x7001, ack: 0x1001, flags: 0x18, payload: [1])
        #expect(h.inject(unsigned, to: .a).0 == .drop(.missingAO))
        // Restored through a signed segment, the flow still refuses unsigned ones.
        #expect(h.send(s.segment(seq: 0x7001, ack: 0x1001, flags: 0x10), from: .b).delivered != nil)
        #expect(h.inject(unsigned, to: .a).0 == .drop(.missingAO))
    }

    /// Without a store (flow-state: memory) nothing changes: a restart loses the connection.
    @Test func memoryOnlyBehavesAsBefore() {
        var h = Self.hosts(store: nil)
        let (_, s) = Self.open(&h)
        h.engineA = AOEngine(config: h.engineA.config)
        #expect(h.send(s.segment(seq: 0x7001, ack: 0x1001, flags: 0x10), from: .b).ingress == .drop(.noState))
    }
}
