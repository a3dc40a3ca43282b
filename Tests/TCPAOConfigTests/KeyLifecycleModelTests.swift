import Testing
import TCPAO
import TCPAOConfig
import TCPAOTestSupport

// The key-lifecycle model test (issue 9): two hosts, each behind its own engine, exchange TCP
// traffic while an operator reloads their configurations through random sequences of key
// changes: keys added (KeyIDs reused once both ends dropped them), removed, made preferred,
// lifetimes starting and ending, algorithms and MAC lengths mixed, master keys of any length,
// reloads applied to one end before the other, and reloads that fail and are rolled back.
// Configurations go through the real loader (YAML text, `ConfigLoader.parse` with `previous`,
// as SIGHUP does), so MKT serials are inherited exactly as in the daemon.
//
// After every segment it checks what RFC 5925 and the configuration allow:
//   * the sender signs it, or drops it because no key may be sent with now (`no-send-key`);
//   * it is signed with a key whose send lifetime holds now, with that key's MAC length;
//   * the receiver verifies it, or drops it because it has no key with that KeyID whose accept
//     lifetime holds now (`unknown-key-id`, `expired-key`); never `bad-mac` nor `bad-ao-length`;
//   * signed, it fits the MTU (1500) unless no key that fits the room reserved at the handshake
//     may be sent with (the host's path MTU then shrinks, as its kernel would make it);
//   * what the receiving host gets is, byte for byte, what the sending host sent (TCP-AO
//     stripped; only checksums, written in either form of zero, and a SYN's lowered MSS differ).
// At the end both ends get the same configuration with a common key, and both directions must
// flow again: key changes never break the session.
//
// Scenarios are seeded (SplitMix64); a failure names its seed and the steps that led there.
// TCPAOD_MODEL_SCENARIOS raises the number of scenarios (default 100 of 120 steps).

/// One key as the operator writes it (the same definition on both ends: keys are rolled as
/// pairs, SendID = RecvID).
struct ModelKey: Equatable {
    var id: UInt8
    var algorithm: String
    var secretHex: String
    var includeOptions: Bool
    var sendStart: Int64
    var sendEnd: Int64?
    var acceptStart: Int64
    var acceptEnd: Int64?

    func yaml(_ chainKeyID: Int) -> String {
        func life(_ s: Int64, _ e: Int64?) -> String {
            "{ start-date-time: \(RFC3339.format(s)), " + (e.map { "end-date-time: \(RFC3339.format($0))" } ?? "no-end-time: true") + " }"
        }
        return """
              - key-id: \(chainKeyID)
                send-id: \(id)
                recv-id: \(id)
                crypto-algorithm: \(algorithm)
                hexadecimal-string: "\(secretHex)"
                include-tcp-options: \(includeOptions)
                send-lifetime: \(life(sendStart, sendEnd))
                accept-lifetime: \(life(acceptStart, acceptEnd))

        """
    }
}

func modelConfigText(peer: String, keys: [ModelKey]) -> String {
    var t = "mode: host\nidle-timeout: 31536000\nkey-chains:\n  - name: k\n    keys:\n"
    for (i, k) in keys.enumerated() { t += k.yaml(i + 1) }
    if keys.isEmpty { t += "      []\n" }
    t += "peers:\n  - { name: p, prefix: \"\(peer)\", ports: [830], key-chain: k }\n"
    return t
}

struct ModelFailure: Error, CustomStringConvertible {
    var description: String
}

/// One scenario's world: the two engines, what each host knows of its TCP connection, and
/// the configuration each end runs.
struct KeyLifecycleModel: ~Copyable {
    enum Side: Int { case a = 0, b = 1 }
    static let mtu = 1500

    var rng: SplitMix64
    let seed: UInt64
    var hosts: TwoHosts
    let v6: Bool
    let addr: [String]
    /// The configuration each end runs now, and its key list as written.
    var configs: [Configuration]
    var applied: [[ModelKey]]
    /// The operator's intended key list, written to one end, then the other.
    var intent: [ModelKey]
    var trace: [String] = []
    // Each host's view of the connection.
    var isn: [UInt32]
    var sndNxt: [UInt32]
    var synDelivered = [false, false]
    var ackDelivered = false
    /// The MSS each host learnt from the other's SYN (after tcpaod lowered it).
    var peerMSS = [0, 0]
    /// Bytes the host's path MTU shrank by after an oversized segment ("fragmentation needed").
    var pmtuShrink = [0, 0]
    var stats: [String: Int] = [:]

    init(seed: UInt64) throws {
        self.seed = seed
        var r = SplitMix64(state: seed)
        rng = r
        v6 = r.chance(40)
        addr = v6 ? ["2001:db8::1", "2001:db8::2"] : ["192.0.2.1", "192.0.2.2"]
        let wall: Int64 = 1_790_000_000
        let first = [ModelKey(id: 1, algorithm: r.pick(KeyLifecycleModel.algorithms), secretHex: KeyLifecycleModel.secret(&r),
                              includeOptions: true, sendStart: wall - 86400, sendEnd: nil, acceptStart: wall - 86400, acceptEnd: nil)]
        let ca = try KeyLifecycleModel.load(peer: addr[1], first, now: wall, previous: nil)
        let cb = try KeyLifecycleModel.load(peer: addr[0], first, now: wall, previous: nil)
        configs = [ca, cb]
        applied = [first, first]
        intent = first
        hosts = TwoHosts(configA: ca.engineConfig(), configB: cb.engineConfig(), wall: wall)
        // ISNs anywhere, near the 2^32 wrap too (SNE).
        let i0 = r.chance(30) ? UInt32.max - UInt32(r.int(0...200_000)) : UInt32(truncatingIfNeeded: r.next())
        let i1 = r.chance(30) ? UInt32.max - UInt32(r.int(0...200_000)) : UInt32(truncatingIfNeeded: r.next())
        isn = [i0, i1]
        sndNxt = [i0, i1]
        rng = r
    }

    static let algorithms = ["hmac-sha-1-96", "aes-128-cmac-96", "hmac-sha-256-96", "hmac-sha-256-128"]

    /// Master keys of 1 to 40 bytes: routers' short keys included.
    static func secret(_ r: inout SplitMix64) -> String {
        let n = r.chance(20) ? r.int(1...7) : r.int(8...40)
        return (0..<n).map { _ in
            let b = UInt8(truncatingIfNeeded: r.next())
            let h = Array("0123456789abcdef")
            return String([h[Int(b >> 4)], h[Int(b & 15)]])
        }.joined()
    }

    static func load(peer: String, _ keys: [ModelKey], now: Int64, previous: Configuration?) throws -> Configuration {
        let (cfg, diags) = ConfigLoader.parse(modelConfigText(peer: peer, keys: keys), now: now, previous: previous)
        guard let cfg else { throw ModelFailure(description: "config refused: \(diags.errors.map(\.description))") }
        return cfg
    }

    var wall: Int64 { hosts.clock.wall }
    func chain(_ s: Side) -> KeyChain { configs[s.rawValue].keyChains[0] }

    mutating func note(_ s: String) {
        trace.append(s)
        if trace.count > 40 { trace.removeFirst() }
    }

    func fail(_ what: String) -> ModelFailure {
        ModelFailure(description: "seed \(seed): \(what)\n  last steps:\n    " + trace.joined(separator: "\n    "))
    }

    mutating func count(_ k: String) { stats[k, default: 0] += 1 }

    // MARK: operator actions

    /// Changes the intended key list: add (a KeyID neither end uses, so a reused KeyID never
    /// meets the old key's cached contexts by design, only by bug), remove, prefer, expire.
    mutating func editIntent() {
        let now = wall
        switch rng.int(0...9) {
        case 0...3:
            let inUse = Set((intent + applied[0] + applied[1]).map(\.id))
            let free = (UInt8(1)...UInt8(6)).filter { !inUse.contains($0) }
            guard !free.isEmpty else { return editIntentRemove() }
            let start = now + Int64(rng.pick([-600, 0, rng.int(1...3000)]))
            let end: Int64? = rng.chance(60) ? nil : start + Int64(rng.int(600...20000))
            let k = ModelKey(id: rng.pick(free), algorithm: rng.pick(KeyLifecycleModel.algorithms),
                             secretHex: KeyLifecycleModel.secret(&rng), includeOptions: rng.chance(85),
                             sendStart: start, sendEnd: end,
                             acceptStart: start - Int64(rng.int(0...600)), acceptEnd: end.map { $0 + Int64(rng.int(0...600)) })
            intent.append(k)
            note("intent: add KeyID \(k.id) \(k.algorithm) \(k.secretHex.count / 2)-byte key, send [\(k.sendStart - now), \(k.sendEnd.map { "\($0 - now)" } ?? "-")) from now")
        case 4...5:
            editIntentRemove()
        case 6...7:
            guard !intent.isEmpty else { return }
            let i = rng.int(0...(intent.count - 1))
            if let e = intent[i].sendEnd, e <= now { return }
            intent[i].sendStart = now
            intent[i].acceptStart = min(intent[i].acceptStart, now)
            note("intent: prefer KeyID \(intent[i].id)")
        default:
            guard !intent.isEmpty else { return }
            let i = rng.int(0...(intent.count - 1))
            let end = max(now + Int64(rng.int(0...200)), intent[i].sendStart + 1)
            intent[i].sendEnd = end
            intent[i].acceptEnd = end + Int64(rng.int(0...300))
            note("intent: KeyID \(intent[i].id) ends sending in \(end - now) s")
        }
    }

    mutating func editIntentRemove() {
        guard !intent.isEmpty else { return }
        let k = intent.remove(at: rng.int(0...(intent.count - 1)))
        note("intent: remove KeyID \(k.id)")
    }

    /// SIGHUP on one end: the loader reads the intended keys with the running configuration as
    /// `previous`; a configuration it refuses changes nothing (the daemon keeps running the old
    /// one). Sometimes the reload is applied and then rolled back (a later step of the reload
    /// failed).
    mutating func reload(_ s: Side) throws {
        let i = s.rawValue
        let (cfg, _) = ConfigLoader.parse(modelConfigText(peer: addr[1 - i], keys: intent), now: wall, previous: configs[i])
        guard let cfg else {
            count("reload refused")
            note("reload \(s): refused by the loader, still running the old configuration")
            return
        }
        let old = configs[i]
        apply(s, cfg)
        if rng.chance(15) {
            apply(s, old)
            count("reload rolled back")
            note("reload \(s): applied, then rolled back")
            return
        }
        applied[i] = intent
        count("reload")
        note("reload \(s): KeyIDs \(intent.map(\.id))")
    }

    mutating func apply(_ s: Side, _ c: Configuration) {
        configs[s.rawValue] = c
        if s == .a { _ = hosts.engineA.reconfigure(c.engineConfig()) } else { _ = hosts.engineB.reconfigure(c.engineConfig()) }
    }

    mutating func idle() {
        let d = rng.pick([1, 5, 60, rng.int(1...900), rng.int(900...7200)])
        hosts.clock.wall += Int64(d)
        hosts.clock.mono &+= UInt32(d)
        note("idle \(d) s")
    }

    // MARK: traffic

    /// The host of side `s` sends its next segment: the handshake first, then data of random
    /// size up to a full segment.
    mutating func traffic(_ s: Side) throws {
        let i = s.rawValue
        let pb = PacketBuilder(src: addr[i], dst: addr[1 - i], srcPort: s == .a ? 40000 : 830, dstPort: s == .a ? 830 : 40000)
        if !synDelivered[0] {
            // A's SYN (retransmitted with the same ISN until it gets through).
            let syn = pb.segment(seq: isn[0], flags: 0x02, options: PacketBuilder.synOptions(mss: 1460))
            if s == .a, let got = try transmit(from: .a, syn, what: "SYN") {
                synDelivered[0] = true
                peerMSS[1] = Int(mssOf(got))
            }
            return
        }
        if !synDelivered[1] {
            let synack = PacketBuilder(src: addr[1], dst: addr[0], srcPort: 830, dstPort: 40000)
                .segment(seq: isn[1], ack: isn[0] &+ 1, flags: 0x12, options: PacketBuilder.synOptions(mss: 1460))
            if s == .b, let got = try transmit(from: .b, synack, what: "SYN-ACK") {
                synDelivered[1] = true
                peerMSS[0] = Int(mssOf(got))
                sndNxt = [isn[0] &+ 1, isn[1] &+ 1]
            }
            return
        }
        if !ackDelivered {
            let ack = PacketBuilder(src: addr[0], dst: addr[1], srcPort: 40000, dstPort: 830)
                .segment(seq: sndNxt[0], ack: sndNxt[1], flags: 0x10, options: PacketBuilder.tsOptions())
            if s == .a, try transmit(from: .a, ack, what: "ACK") != nil { ackDelivered = true }
            return
        }
        // Linux sizes data by the peer's MSS less its own options (timestamps, 12 bytes).
        let full = peerMSS[i] - 12 - pmtuShrink[i]
        let size = rng.chance(50) ? full : rng.int(0...max(0, full))
        let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(sndNxt[i] & 0xFF)) }
        let seg = pb.segment(seq: sndNxt[i], ack: sndNxt[1 - i], flags: size > 0 ? 0x18 : 0x10,
                             options: PacketBuilder.tsOptions(), payload: payload)
        // The host's stack moves on whether or not the segment arrives (a retransmission would
        // carry other bytes at the same sequence number; the engines only need the numbers).
        sndNxt[i] &+= UInt32(size)
        _ = try transmit(from: s, seg, what: "\(size)-byte segment")
    }

    func mssOf(_ pkt: [UInt8]) -> UInt16 {
        let b = PacketBuffer(pkt)
        return (try? b.segment())?.mss(b.pointer) ?? 536
    }

    /// One segment through the sender's engine, the wire and the receiver's engine, checked
    /// against the model. Returns what the receiving host gets, nil when dropped (for a
    /// reason the configuration explains).
    mutating func transmit(from s: Side, _ pkt: [UInt8], what: String) throws -> [UInt8]? {
        let i = s.rawValue
        let r = 1 - i
        let clock = hosts.clock
        let out = PacketBuffer(pkt, capacity: 2048)
        let ev = s == .a
            ? hosts.engineA.process(out.pointer, length: out.length, capacity: out.capacity, hint: .egress, clock: clock)
            : hosts.engineB.process(out.pointer, length: out.length, capacity: out.capacity, hint: .egress, clock: clock)
        let sender = chain(s)
        switch ev {
        case .drop(.noSendKey):
            guard sender.preferredSendKey(at: clock.wall) == nil else {
                throw fail("\(s) dropped its \(what) for no-send-key although key \(sender.keys[sender.preferredSendKey(at: clock.wall)!].sendID) may send now")
            }
            count("no-send-key")
            note("\(s) \(what): no key may send now, dropped")
            return nil
        case .acceptModified(let n):
            out.setLength(n)
        default:
            throw fail("\(s) egress verdict for its \(what): \(ev)")
        }
        let wire = out.bytes
        let ws = try out.segment()
        guard ws.aoOffset >= 0 else { throw fail("\(s)'s \(what) left without TCP-AO") }
        let keyID = ws.aoKeyID(out.pointer)
        guard let k = sender.sendKey(sendID: keyID, at: clock.wall) else {
            throw fail("\(s) signed its \(what) with KeyID \(keyID), which may not send now")
        }
        guard ws.aoMACLength == sender.keys[k].algorithm.macLength else {
            throw fail("\(s) signed with KeyID \(keyID) (\(sender.keys[k].algorithm)) a \(ws.aoMACLength)-byte MAC")
        }
        if wire.count > KeyLifecycleModel.mtu {
            // Allowed only when no key that fits the reserved room may send.
            let st = s == .a ? hosts.engineA.flowState(flowKey(s)) : hosts.engineB.flowState(flowKey(s))
            let room = Int(st?.reservedOptionLength ?? 0)
            if room > 0, sender.preferredSendKey(at: clock.wall, fitting: room) != nil {
                throw fail("\(s)'s \(what) is \(wire.count) bytes once signed (KeyID \(keyID), \(sender.keys[k].algorithm)); a key fitting the \(room) bytes reserved may send")
            }
            // The host's kernel refuses it and answers "fragmentation needed": the path MTU shrinks.
            pmtuShrink[i] += wire.count - KeyLifecycleModel.mtu
            count("oversized, no fitting key")
            note("\(s) \(what): \(wire.count) bytes signed with the only key left (KeyID \(keyID)); PMTU shrinks")
            return nil
        }
        let inb = PacketBuffer(wire, capacity: 2048)
        let iv = s == .a
            ? hosts.engineB.process(inb.pointer, length: inb.length, capacity: inb.capacity, hint: .ingress, mtu: KeyLifecycleModel.mtu, clock: clock)
            : hosts.engineA.process(inb.pointer, length: inb.length, capacity: inb.capacity, hint: .ingress, mtu: KeyLifecycleModel.mtu, clock: clock)
        let receiver = chain(Side(rawValue: r)!)
        switch iv {
        case .acceptModified(let n):
            inb.setLength(n)
        case .drop(.unknownKeyID), .drop(.expiredKey):
            guard receiver.acceptKey(recvID: keyID, at: clock.wall) == nil else {
                throw fail("\(Side(rawValue: r)!) dropped KeyID \(keyID) (\(iv)) although its key with that RecvID accepts now")
            }
            count("no-accept-key")
            note("\(s) \(what) KeyID \(keyID): the receiver has no key to accept it now, dropped")
            return nil
        default:
            throw fail("\(Side(rawValue: r)!) ingress verdict for \(s)'s \(what) signed with KeyID \(keyID) (\(sender.keys[k].algorithm)): \(iv)")
        }
        let got = inb.bytes
        try compare(sent: pkt, got: got, what: what)
        count("delivered")
        return got
    }

    func flowKey(_ s: Side) -> FlowKey {
        let i = s.rawValue
        return FlowKey(local: IPAddress(addr[i])!, remote: IPAddress(addr[1 - i])!,
                       localPort: s == .a ? 40000 : 830, remotePort: s == .a ? 830 : 40000)
    }

    /// The receiving host gets what the sending host sent: equal bytes but for the IPv4 header
    /// and TCP checksums (verified on their own) and a SYN's MSS value (lowered by tcpaod).
    func compare(sent: [UInt8], got: [UInt8], what: String) throws {
        guard sent.count == got.count else { throw fail("\(what): \(sent.count) bytes sent, \(got.count) delivered") }
        let ipLen = v6 ? 40 : 20
        var skip: Set<Int> = [ipLen + 16, ipLen + 17]
        if !v6 { skip.formUnion([10, 11]) }
        let b = PacketBuffer(got)
        let seg = try b.segment()
        if seg.isSYN && seg.mssOffset >= 0 { skip.formUnion([seg.mssOffset + 2, seg.mssOffset + 3]) }
        for j in 0..<sent.count where !skip.contains(j) && sent[j] != got[j] {
            throw fail("\(what): byte \(j) changed (\(sent[j]) -> \(got[j]))")
        }
        guard seg.checksumIsValid(b.pointer) else { throw fail("\(what): delivered with a bad TCP checksum") }
    }

    // MARK: the scenario

    mutating func run(steps: Int) throws {
        for _ in 0..<steps {
            switch rng.int(0...19) {
            case 0...9: try traffic(rng.chance(50) ? .a : .b)
            case 10...11: idle()
            case 12...14: editIntent()
            case 15...16: try reload(.a)
            case 17...18: try reload(.b)
            default:
                try reload(.a)
                try reload(.b)
            }
        }
        // The operator settles on one key both ends accept now: the session must carry on.
        let now = wall
        intent.append(ModelKey(id: 7, algorithm: rng.pick(KeyLifecycleModel.algorithms), secretHex: KeyLifecycleModel.secret(&rng),
                               includeOptions: true, sendStart: now, sendEnd: nil, acceptStart: now - 1, acceptEnd: nil))
        intent = intent.filter { $0.id == 7 }
        note("settle on KeyID 7")
        let wasRefused = stats["reload refused"] ?? 0
        try reload(.a)
        try reload(.b)
        // (a rollback drawn here: apply it again)
        while applied[0] != intent { try reload(.a) }
        while applied[1] != intent { try reload(.b) }
        guard (stats["reload refused"] ?? 0) == wasRefused else { throw fail("the loader refused the settling configuration") }
        var delivered = [0, 0]
        for n in 0..<12 {
            let s: Side = n % 2 == 0 ? .a : .b
            let before = stats["delivered"] ?? 0
            try traffic(s)
            if (stats["delivered"] ?? 0) > before { delivered[s.rawValue] += 1 }
        }
        guard ackDelivered, delivered[0] >= 2, delivered[1] >= 2 else {
            throw fail("after both ends settled on KeyID 7 the connection does not carry data both ways (\(delivered))")
        }
    }
}

@Suite struct KeyLifecycleModelTests {
    @Test func randomKeyLifecyclesNeverBreakTheRules() throws {
        let scenarios = Int(getenvString("TCPAOD_MODEL_SCENARIOS") ?? "") ?? 100
        var totals: [String: Int] = [:]
        for n in 0..<scenarios {
            var m = try KeyLifecycleModel(seed: 0x7C9A_0000 &+ UInt64(n))
            do { try m.run(steps: 120) } catch {
                Issue.record("\(error)")
                return
            }
            for (k, v) in m.stats { totals[k, default: 0] += v }
        }
        // The model must actually exercise what it claims to: keys that cannot be used, reloads
        // refused and rolled back, PMTU cases are rarer but the rest must show up.
        for k in ["delivered", "reload", "reload rolled back", "no-accept-key", "no-send-key"] {
            #expect(totals[k, default: 0] > 0, "the model never produced `\(k)`: \(totals)")
        }
        print("key-lifecycle model: \(scenarios) scenarios: \(totals.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))")
    }
}

#if canImport(Glibc)
import Glibc
#endif
func getenvString(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
