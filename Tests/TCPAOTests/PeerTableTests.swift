import Testing
import TCPAO
import TCPAOTestSupport

/// `EngineConfig.peerIndex` is a longest-prefix match over a hash table per prefix length
/// (`PeerTable`); its answers must be those of the scan of the peers it replaced.
@Suite struct PeerTableTests {
    static let chain = testChain()

    static func config(_ peers: [(String, [UInt16])]) -> EngineConfig {
        EngineConfig(peers: peers.enumerated().map { i, p in
            PeerPolicy(name: "p\(i)", prefix: IPPrefix(p.0)!, ports: p.1, keyChain: chain)
        })
    }

    static func a(_ s: String) -> IPAddress { IPAddress(s)! }

    @Test func ipv4AndIPv6PrefixesOfSeveralLengths() {
        let c = Self.config([("192.0.2.0/24", []), ("198.51.100.7/32", []), ("203.0.113.0/25", [830]),
                             ("2001:db8:1::/48", []), ("2001:db8:2::5/128", []), ("2001:db8:3::/64", [179])])
        #expect(c.peerIndex(remote: Self.a("192.0.2.200"), ports: 1, 2) == 0)
        #expect(c.peerIndex(remote: Self.a("198.51.100.7"), ports: 1, 2) == 1)
        #expect(c.peerIndex(remote: Self.a("198.51.100.8"), ports: 1, 2) == nil) // /32: only that host
        #expect(c.peerIndex(remote: Self.a("203.0.113.127"), ports: 830, 50000) == 2)
        #expect(c.peerIndex(remote: Self.a("203.0.113.128"), ports: 830, 50000) == nil) // outside the /25
        #expect(c.peerIndex(remote: Self.a("2001:db8:1:ffff::1"), ports: 1, 2) == 3)
        #expect(c.peerIndex(remote: Self.a("2001:db8:2::5"), ports: 1, 2) == 4)
        #expect(c.peerIndex(remote: Self.a("2001:db8:2::6"), ports: 1, 2) == nil) // /128: only that host
        #expect(c.peerIndex(remote: Self.a("2001:db8:3::9"), ports: 50000, 179) == 5)
        // The families never mix: 192.0.2.1 is not ::c000:201.
        #expect(c.peerIndex(remote: IPAddress(v6hi: 0, lo: 0xC000_0201), ports: 1, 2) == nil)
    }

    @Test func portsMismatchIsNoPeer() {
        let c = Self.config([("192.0.2.0/24", [830, 9339]), ("2001:db8::/32", [179])])
        #expect(c.peerIndex(remote: Self.a("192.0.2.1"), ports: 50000, 9339) == 0)
        #expect(c.peerIndex(remote: Self.a("192.0.2.1"), ports: 50000, 22) == nil)
        #expect(c.peerIndex(remote: Self.a("2001:db8::1"), ports: 22, 80) == nil)
    }

    @Test func defaultRoutesMatchEverythingOfTheirFamily() {
        let c = Self.config([("0.0.0.0/0", [830]), ("::/0", [])])
        #expect(c.peerIndex(remote: Self.a("203.0.113.9"), ports: 830, 1) == 0)
        #expect(c.peerIndex(remote: Self.a("203.0.113.9"), ports: 22, 1) == nil)
        #expect(c.peerIndex(remote: Self.a("2001:db8::1"), ports: 22, 1) == 1)
        #expect(c.peerIndex(remote: Self.a("::"), ports: 22, 1) == 1)
    }

    @Test func lengthsInBetweenNeedNoEntries() {
        // Only /16 and /128 exist: an address under the /16 is found whatever lengths lie between.
        let c = Self.config([("2001:db8::/32", []), ("2001:db9::7/128", [])])
        #expect(c.peerIndex(remote: Self.a("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"), ports: 1, 2) == 0)
        #expect(c.peerIndex(remote: Self.a("2001:db9::7"), ports: 1, 2) == 1)
        #expect(c.peerIndex(remote: Self.a("2001:db9::8"), ports: 1, 2) == nil)
        #expect(Self.config([]).peerIndex(remote: Self.a("192.0.2.1"), ports: 1, 2) == nil)
    }

    @Test func overlappingPrefixesResolveAsTheScanDid() {
        // The loader refuses overlaps; an EngineConfig made directly still answers as the
        // scan: the first peer in order whose prefix holds the address, then its ports.
        let c = Self.config([("192.0.2.0/24", [830]), ("192.0.2.0/25", []), ("192.0.2.0/24", []), ("2001:db8:1::/64", []), ("2001:db8::/32", [])])
        #expect(c.peerIndex(remote: Self.a("192.0.2.1"), ports: 830, 1) == 0)
        #expect(c.peerIndex(remote: Self.a("192.0.2.1"), ports: 22, 1) == nil) // the first match decides
        #expect(c.peerIndex(remote: Self.a("2001:db8:1::1"), ports: 1, 2) == 3)
        #expect(c.peerIndex(remote: Self.a("2001:db8:2::1"), ports: 1, 2) == 4)
    }

    @Test func agreesWithTheScanOnRandomPrefixesAndAddresses() {
        var rng = SplitMix64(state: 5925)
        for round in 0..<20 {
            var peers: [(String, [UInt16])] = []
            for _ in 0..<(1 + Int(rng.next() % 60)) {
                let v6 = rng.next() % 2 == 0
                // Few distinct lengths and a narrow address space, so prefixes nest and collide.
                let len = v6 ? [0, 32, 48, 64, 120, 127, 128][Int(rng.next() % 7)] : [0, 8, 24, 25, 31, 32][Int(rng.next() % 6)]
                let raw = v6 ? IPAddress(v6hi: 0x2001_0db8_0000_0000 | (rng.next() & 3) << 16, lo: rng.next() & 0xF)
                             : IPAddress(v4: 0xC000_0200 | UInt32(rng.next() & 0x8F))
                let p = IPPrefix(address: raw, length: len)
                peers.append(("\(IPPrefix(address: p.masked(raw), length: len))", rng.next() % 3 == 0 ? [830] : []))
            }
            let c = Self.config(peers)
            for _ in 0..<300 {
                let a = rng.next() % 2 == 0 ? IPAddress(v6hi: 0x2001_0db8_0000_0000 | (rng.next() & 3) << 16, lo: rng.next() & 0x1F)
                                             : IPAddress(v4: 0xC000_0200 | UInt32(rng.next() & 0xFF))
                let port: UInt16 = rng.next() % 2 == 0 ? 830 : 22
                #expect(c.peerIndex(remote: a, ports: port, 50000) == c.peerIndexByScan(remote: a, ports: port, 50000),
                        "round \(round): \(a) among \(peers.map(\.0))")
            }
        }
    }

    @Test func fiftyThousandPeersEachFoundByItsAddress() {
        let peers = (0..<50_000).map { i in
            PeerPolicy(name: "dev\(i)", prefix: IPPrefix(address: IPAddress(v6hi: 0x2001_0db8_ffff_0000, lo: UInt64(i + 1)), length: 128), keyChain: Self.chain)
        } + [PeerPolicy(name: "v4", prefix: IPPrefix("192.0.2.0/24")!, keyChain: Self.chain)]
        let c = EngineConfig(peers: peers)
        for i in stride(from: 0, to: 50_000, by: 997) {
            #expect(c.peerIndex(remote: IPAddress(v6hi: 0x2001_0db8_ffff_0000, lo: UInt64(i + 1)), ports: 1, 2) == i)
        }
        #expect(c.peerIndex(remote: IPAddress(v6hi: 0x2001_0db8_ffff_0000, lo: 50_001), ports: 1, 2) == nil)
        #expect(c.peerIndex(remote: IPAddress("192.0.2.9")!, ports: 1, 2) == 50_000)
    }
}
