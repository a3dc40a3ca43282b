import Foundation
import Testing
@testable import TCPAOConfig
import TCPAO

/// A fleet configuration: one peer per device, each with its own key chain (one MKT per peer
/// pair). Loading must be linear in the peers (names and chains by hash, overlaps by sorting),
/// with the same diagnostics, in the same order, as the pairwise checks it replaced.
@Suite struct FleetScaleTests {
    static let now: Int64 = RFC3339.parse("2026-11-23T00:00:00Z")!

    static func fleet(_ n: Int, extraPeers: String = "") -> String {
        var y = "mode: host\nkey-chains:\n"
        for i in 0..<n {
            y += "  - name: k\(i)\n    keys:\n      - { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: hmac-sha-1-96, key-string: \"peer \(i) key one\" }\n"
            if i % 2 == 1 {
                y += "      - { key-id: 2, send-id: 2, recv-id: 2, crypto-algorithm: aes-128-cmac-96, key-string: \"peer \(i) key two\" }\n"
            }
        }
        y += "peers:\n"
        for i in 0..<n {
            y += "  - { name: dev\(i), prefix: \"2001:db8:ffff::\(String(i + 1, radix: 16))/128\", key-chain: k\(i) }\n"
        }
        return y + extraPeers
    }

    @Test func fiveThousandPeersLoadWithTheirOwnChains() throws {
        let t0 = Date()
        let (cfg, d) = ConfigLoader.parse(Self.fleet(5000), now: Self.now)
        let c = try #require(cfg, "\(d.errors.prefix(3))")
        #expect(d.errors.isEmpty)
        #expect(c.peers.count == 5000 && c.keyChains.count == 5000)
        #expect(c.peers[4321].keyChain.name == "k4321" && c.peers[4321].keyChain.keys.count == 2)
        #expect(c.peers[4321].prefix == IPPrefix("2001:db8:ffff::10e2/128")!)
        // Debug build, shared machine: a generous bound (the pairwise checks took minutes at 50,000).
        #expect(Date().timeIntervalSince(t0) < 30)
        // A reload keeps every unchanged key's serial (found by hash, not by a scan).
        let (again, _) = ConfigLoader.parse(Self.fleet(5000), now: Self.now, previous: c)
        let r = try #require(again)
        #expect(zip(r.allKeys, c.allKeys).allSatisfy { $0.serial == $1.serial })
    }

    @Test func fleetProblemsAreStillReportedOneByOne() {
        let extra = """
          - { name: dev7, prefix: "2001:db8:eeee::1/128", key-chain: k1 }
          - { name: late, prefix: "2001:db8:ffff::/120", key-chain: k2 }
          - { name: ghost, prefix: "2001:db8:dddd::1/128", key-chain: nope }
        """
        let (cfg, d) = ConfigLoader.parse(Self.fleet(300, extraPeers: extra + "\n"), now: Self.now)
        #expect(cfg == nil)
        let e = d.errors
        #expect(e.contains { $0.message == "a peer named `dev7` is defined twice" && $0.path == "peers[300].name" })
        // The /120 holds dev0 ... dev254 (::1 - ::ff): one report each, in the peers' order.
        let overlaps = e.filter { $0.path == "peers[301].prefix" }
        #expect(overlaps.count == 255)
        #expect(overlaps.first?.message.hasPrefix("2001:db8:ffff::/120 overlaps 2001:db8:ffff::1/128 of peer `dev0` (line ") == true)
        #expect(overlaps.last?.message.hasPrefix("2001:db8:ffff::/120 overlaps 2001:db8:ffff::ff/128 of peer `dev254` (line ") == true)
        #expect(e.contains { $0.message == "no key chain named `nope`" && $0.path == "peers[302].key-chain" })
    }

    /// The order and text of the diagnostics are those of the pairwise checks: each peer's own
    /// problems, then its name clash, then its overlaps with the peers before it, in their order.
    @Test func overlapAndNameDiagnosticsKeepTheirOrder() {
        let y = """
        key-chains:
          - name: k
            keys: [ { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: hmac-sha-1-96, key-string: "a long enough secret" } ]
        peers:
          - { name: a, prefix: 192.0.2.0/25, key-chain: k }
          - { name: b, prefix: 192.0.2.128/25, key-chain: k }
          - { name: a, prefix: 192.0.2.0/24, key-chain: k, icmp-hard-errors: maybe }
          - { name: c, prefix: 192.0.2.64/26, key-chain: k }
          - { name: d, prefix: "2001:db8::/32", key-chain: k }
          - { name: e, prefix: "2001:db8::/32", key-chain: k }
        """
        let (cfg, d) = ConfigLoader.parse(y, now: Self.now)
        #expect(cfg == nil)
        #expect(d.errors.map { "\($0.line) \($0.path): \($0.message)" } == [
            "7 peers[2].icmp-hard-errors: `maybe` is not drop or accept",
            "7 peers[2].name: a peer named `a` is defined twice",
            "7 peers[2].prefix: 192.0.2.0/24 overlaps 192.0.2.0/25 of peer `a` (line 5)",
            "7 peers[2].prefix: 192.0.2.0/24 overlaps 192.0.2.128/25 of peer `b` (line 6)",
            "8 peers[3].prefix: 192.0.2.64/26 overlaps 192.0.2.0/25 of peer `a` (line 5)",
            "8 peers[3].prefix: 192.0.2.64/26 overlaps 192.0.2.0/24 of peer `a` (line 7)",
            "10 peers[5].prefix: 2001:db8::/32 overlaps 2001:db8::/32 of peer `d` (line 9)",
        ])
    }

    @Test func earlierOverlapsMatchesThePairwiseCheck() {
        var state: UInt64 = 9
        func next() -> UInt64 { state = state &* 6364136223846793005 &+ 1442695040888963407; return state >> 33 }
        for _ in 0..<30 {
            let prefixes: [IPPrefix] = (0..<(2 + Int(next() % 40))).map { _ in
                let v6 = next() % 3 == 0
                let len = v6 ? [0, 64, 126, 128][Int(next() % 4)] : [0, 24, 28, 30, 32][Int(next() % 5)]
                let a = v6 ? IPAddress(v6hi: 0x2001_0db8 << 32, lo: next() % 8) : IPAddress(v4: 0xC000_0200 | UInt32(next() % 32))
                return IPPrefix(address: IPPrefix(address: a, length: len).masked(a), length: len)
            }
            var pairwise: [Int: [Int]] = [:]
            for k in prefixes.indices {
                let earlier = (0..<k).filter { prefixes[$0].overlaps(prefixes[k]) }
                if !earlier.isEmpty { pairwise[k] = earlier }
            }
            #expect(ConfigLoader.earlierOverlaps(prefixes) == pairwise, "\(prefixes)")
        }
    }

    /// Long lists are read on all cores: the same configuration and the same diagnostics, in
    /// the same order, as reading them one after the other, with problems scattered through
    /// the chains and the peers (each piece's diagnostics must land at its items' places).
    @Test func readingOnAllCoresGivesTheSameResult() throws {
        var y = Self.fleet(3000)
        // Bad keys and chains here and there, and peers with problems between good ones.
        y = y.replacingOccurrences(of: "key-string: \"peer 17 key one\"", with: "key-string: \"peer 17 key one\", mac-length: 3")
        y = y.replacingOccurrences(of: "  - name: k1500\n", with: "  - name: k1499\n")
        y = y.replacingOccurrences(of: "recv-id: 2, crypto-algorithm: aes-128-cmac-96, key-string: \"peer 2999 key two\"", with: "recv-id: 2, crypto-algorithm: aes-999, key-string: \"peer 2999 key two\"")
        y = y.replacingOccurrences(of: "name: dev40, prefix: \"2001:db8:ffff::29/128\"", with: "name: dev40, prefix: \"2001:db8:ffff::29/129\"")
        y = y.replacingOccurrences(of: "name: dev2200,", with: "name: dev1,")
        y += "  - { name: wide, prefix: \"2001:db8:ffff::/112\", key-chain: k5, ports: [830, 0] }\n"
        let (one, d1) = ConfigLoader.parse(y, now: Self.now, threadsFrom: .max)
        let (all, dAll) = ConfigLoader.parse(y, now: Self.now, threadsFrom: 2)
        #expect(one == nil && all == nil)
        #expect(d1.count > 10)
        #expect(d1 == dAll)
        for path in ["key-chains[17].keys[0].mac-length", "key-chains[1500].name", "key-chains[2999].keys[1].crypto-algorithm",
                     "peers[40].prefix", "peers[2200].name", "peers[3000].ports[1]", "peers[3000].prefix"] {
            #expect(dAll.contains { $0.path == path }, "\(path)")
        }
        // And a good fleet: the same chains, keys and peers.
        let good = Self.fleet(3000)
        let a = try #require(ConfigLoader.parse(good, now: Self.now, threadsFrom: .max).0)
        let b = try #require(ConfigLoader.parse(good, now: Self.now, threadsFrom: 2).0)
        #expect(a.keyChains.map(\.name) == b.keyChains.map(\.name))
        #expect(a.peers.map(\.name) == b.peers.map(\.name) && a.peers.map(\.prefix) == b.peers.map(\.prefix))
        // Serials come from one process-wide counter: unique, whichever thread made the key.
        #expect(Set(b.allKeys.map(\.serial)).count == b.allKeys.count)
        #expect(zip(a.allKeys, b.allKeys).allSatisfy { $0.secret == $1.secret && $0.sendID == $1.sendID && $0.chainKeyID == $1.chainKeyID })
    }
}
