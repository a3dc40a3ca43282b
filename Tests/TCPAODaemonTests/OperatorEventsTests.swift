import Testing
import TCPAO
@testable import TCPAODaemon

/// What the daemon logs for operators, from the counters and the key chains: drops per peer and
/// reason (rate-limited, with counts), key events. Nothing on the packet path.
@Suite struct OperatorEventsTests {
    static func mkt(_ id: UInt64, send: Lifetime = .always, accept: Lifetime = .always) -> MKT {
        MKT(chainKeyID: id, sendID: UInt8(id), recvID: UInt8(id), algorithm: .hmacSHA1_96, sendLifetime: send, acceptLifetime: accept,
            secret: Secret(Array("operator events test secret".utf8)))
    }

    static func peer(_ keys: [MKT]) -> PeerPolicy {
        PeerPolicy(name: "nms", prefix: IPPrefix("192.0.2.0/24")!, ports: [830], keyChain: KeyChain(name: "c", keys: keys))
    }

    static func counters(_ drops: [String: UInt64] = [:], keys: [String: [String: UInt64]] = [:]) -> CounterSnapshot {
        CounterSnapshot(total: [:], peers: ["nms": drops.mapKeys { "dropped-" + $0 }], keys: ["nms": keys])
    }

    @Test func theFirstDropIsLoggedAtOnceThenAtMostEveryTenSecondsWithTheCount() {
        var ev = OperatorEvents()
        let p = [Self.peer([Self.mkt(1)])]
        #expect(ev.observe(Self.counters(), peers: p, now: 100).isEmpty)
        let first = ev.observe(Self.counters(["bad-mac": 1]), peers: p, now: 101)
        #expect(first.count == 1)
        #expect(first[0].level == .warning && first[0].metadata == ["peer": "nms", "reason": "bad-mac", "count": "1", "total": "1"])
        #expect(first[0].message == "dropped 1 segment(s) of peer nms: bad-mac (1 in all)")
        // More within 10 s: held back, nothing lost.
        #expect(ev.observe(Self.counters(["bad-mac": 5]), peers: p, now: 105).isEmpty)
        #expect(ev.observe(Self.counters(["bad-mac": 9]), peers: p, now: 110).isEmpty)
        let later = ev.observe(Self.counters(["bad-mac": 9]), peers: p, now: 111)
        #expect(later.map(\.message) == ["dropped 8 segment(s) of peer nms: bad-mac in the last 10 s (9 in all)"])
        // Another reason is independent.
        let other = ev.observe(Self.counters(["bad-mac": 9, "missing-ao": 2]), peers: p, now: 112)
        #expect(other.map { $0.metadata["reason"] } == ["missing-ao"])
        #expect(ev.observe(Self.counters(["bad-mac": 9, "missing-ao": 2]), peers: p, now: 200).isEmpty)
    }

    /// A new process's counters start at 0: drops and first uses seen at the first look (the
    /// first second after a start or restart, e.g. a wrong key) are reported; key preference and
    /// lifetimes are only learnt then.
    @Test func theFirstLookReportsCountersButOnlyLearnsKeyState() {
        var ev = OperatorEvents()
        let p = [Self.peer([Self.mkt(1)])]
        let e = ev.observe(Self.counters(["bad-mac": 7], keys: ["1": ["signed": 3, "verified": 3]]), peers: p, now: 100)
        #expect(e.map { $0.metadata["event"] ?? $0.metadata["reason"] ?? "" }.sorted() == ["bad-mac", "peer-signing", "signing"])
        #expect(ev.observe(Self.counters(["bad-mac": 7], keys: ["1": ["signed": 4, "verified": 4]]), peers: p, now: 120).isEmpty)
    }

    @Test func aKeyBecomingPreferredAndLifetimesEndingAreLogged() {
        var ev = OperatorEvents()
        let k1 = Self.mkt(1, send: Lifetime(start: 0, end: 1000), accept: Lifetime(start: 0, end: 1100))
        let k2 = Self.mkt(2, send: Lifetime(start: 1000), accept: Lifetime(start: 900))
        let p = [Self.peer([k1, k2])]
        #expect(ev.observe(Self.counters(), peers: p, now: 850).isEmpty)
        #expect(ev.observe(Self.counters(), peers: p, now: 950).map { $0.metadata["event"] } == ["accept-start"])
        let handOver = ev.observe(Self.counters(), peers: p, now: 1000)
        #expect(Set(handOver.compactMap { $0.metadata["event"] }) == ["preferred", "send-end", "send-start"])
        #expect(handOver.first { $0.metadata["event"] == "preferred" }?.metadata["key"] == "2")
        let end = ev.observe(Self.counters(), peers: p, now: 1100)
        #expect(end.map { $0.metadata["event"] } == ["accept-end"] && end[0].level == .warning)
    }

    /// Between lifetime boundaries a call looks only at the peers with counters (a fleet's idle
    /// peers cost nothing each second); a boundary, or new chains (a reload), brings the full
    /// look back, for idle peers too.
    @Test func idlePeersAreLookedAtAgainAtTheNextBoundaryOrReload() {
        var ev = OperatorEvents()
        func named(_ n: String, _ keys: [MKT]) -> PeerPolicy {
            PeerPolicy(name: n, prefix: IPPrefix("2001:db8::\(n.count)/128")!, ports: [830], keyChain: KeyChain(name: n, keys: keys))
        }
        let idle = named("idle-device", [Self.mkt(1, send: Lifetime(start: 0, end: 5000)), Self.mkt(2, send: Lifetime(start: 5000))])
        let busy = named("nms", [Self.mkt(1)])
        var peers = [busy, idle]
        let active = CounterSnapshot(total: [:], peers: ["nms": ["dropped-bad-mac": 1]], keys: [:])
        _ = ev.observe(active, peers: peers, now: 100, generation: 1)
        for t in 101..<200 { #expect(ev.observe(active, peers: peers, now: Int64(t), generation: 1).isEmpty) }
        // The idle peer's key 2 takes over at 5000: logged though it has no counters.
        let at = ev.observe(active, peers: peers, now: 5000, generation: 1)
        #expect(at.contains { $0.metadata["peer"] == "idle-device" && $0.metadata["event"] == "preferred" && $0.metadata["key"] == "2" })
        // The clock steps back: key 1 is the one again, logged at once.
        let back = ev.observe(active, peers: peers, now: 4000, generation: 1)
        #expect(back.contains { $0.metadata["peer"] == "idle-device" && $0.metadata["event"] == "preferred" && $0.metadata["key"] == "1" })
        _ = ev.observe(active, peers: peers, now: 5000, generation: 1)
        // A reload (a new generation) with a key that stopped sending at once.
        peers[1] = named("idle-device", [Self.mkt(1, send: Lifetime(start: 0, end: 5000))])
        let reloaded = ev.observe(active, peers: peers, now: 5001, generation: 2)
        #expect(reloaded.contains { $0.metadata["peer"] == "idle-device" && $0.metadata["event"] == "no-send-key" })
    }

    @Test func noKeyLeftToSendIsAnError() {
        var ev = OperatorEvents()
        let p = [Self.peer([Self.mkt(1, send: Lifetime(start: 0, end: 1000))])]
        _ = ev.observe(Self.counters(), peers: p, now: 999)
        let e = ev.observe(Self.counters(), peers: p, now: 1000)
        #expect(e.contains { $0.level == .error && $0.metadata["event"] == "no-send-key" })
    }

    @Test func theFirstSegmentsOnANewKeyAreLoggedOnce() {
        var ev = OperatorEvents()
        let p = [Self.peer([Self.mkt(1), Self.mkt(2)])]
        _ = ev.observe(Self.counters(keys: ["1": ["signed": 10, "verified": 10], "2": [:]]), peers: p, now: 100)
        let moved = ev.observe(Self.counters(keys: ["1": ["signed": 10, "verified": 12], "2": ["signed": 1, "verified": 0]]), peers: p, now: 101)
        #expect(moved.map { $0.metadata["event"] } == ["signing"] && moved[0].metadata["key"] == "2")
        let peerToo = ev.observe(Self.counters(keys: ["1": ["signed": 10, "verified": 12], "2": ["signed": 5, "verified": 3]]), peers: p, now: 102)
        #expect(peerToo.map { $0.metadata["event"] } == ["peer-signing"])
        #expect(ev.observe(Self.counters(keys: ["1": ["signed": 10, "verified": 12], "2": ["signed": 9, "verified": 9]]), peers: p, now: 103).isEmpty)
    }

    @Test func noEventCarriesASecret() {
        var ev = OperatorEvents()
        let k1 = Self.mkt(1, send: Lifetime(start: 0, end: 1000))
        let k2 = Self.mkt(2, send: Lifetime(start: 1000))
        let p = [Self.peer([k1, k2])]
        _ = ev.observe(Self.counters(), peers: p, now: 999)
        let all = ev.observe(Self.counters(["bad-mac": 1], keys: ["2": ["signed": 1, "verified": 1]]), peers: p, now: 1000)
        #expect(!all.isEmpty)
        for e in all {
            #expect(!e.message.contains("operator events test secret"))
            #expect(!e.metadata.values.contains { $0.contains("operator events test secret") })
        }
    }

    /// Per connection: one line per key move with the flow and KeyIDs; a rotation's crowd is
    /// summed per peer and KeyID after `keyMoveLines`; events lost by a full buffer counted.
    @Test func keyMovesOfConnectionsAreLoggedOneLineEachThenSummed() {
        var ev = OperatorEvents()
        ev.keyMoveLines = 2
        let p = [Self.peer([Self.mkt(1), Self.mkt(2)])]
        func flow(_ port: UInt16) -> FlowKey {
            FlowKey(local: IPAddress("198.51.100.10")!, remote: IPAddress("192.0.2.2")!, localPort: port, remotePort: 830)
        }
        let moves = [FlowKeyEvent(kind: .peerAsks, key: flow(40000), peer: 0, from: 1, to: 2),
                     FlowKeyEvent(kind: .sending, key: flow(40000), peer: 0, from: 1, to: 2, followsPeer: true)]
            + (40001...40004).map { FlowKeyEvent(kind: .sending, key: flow($0), peer: 0, from: 1, to: 2, followsPeer: true) }
        let lines = ev.keyMoves(moves, lost: 3, peers: p)
        #expect(lines.map(\.message) == [
            "connection 198.51.100.10:40000 <-> 192.0.2.2:830 of peer nms: the peer moved to RNextKeyID 2 (was 1): it asks for KeyID 2",
            "connection 198.51.100.10:40000 <-> 192.0.2.2:830 of peer nms: now sends with KeyID 2 (was 1): the peer's RNextKeyID (RFC 5925 7.5)",
            "and 4 more connection(s) of peer nms now send with KeyID 2",
            "3 more key move(s) of connections not logged (more than 256 per second per queue; `tcpaod flows` shows every connection's keys)",
        ])
        #expect(lines[1].metadata == ["peer": "nms", "flow": "198.51.100.10:40000 <-> 192.0.2.2:830", "key_id": "2", "previous": "1", "event": "send-key"])
        #expect(ev.keyMoves([], lost: 0, peers: p).isEmpty)
    }
}

extension Dictionary {
    fileprivate func mapKeys<K: Hashable>(_ f: (Key) -> K) -> [K: Value] {
        Dictionary<K, Value>(uniqueKeysWithValues: map { (f($0.key), $0.value) })
    }
}
