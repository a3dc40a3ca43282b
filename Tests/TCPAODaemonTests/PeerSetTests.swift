import Testing
import TCPAO
import TCPAOConfig
@testable import TCPAODaemon

/// Large groups of peers sharing their ports are matched by an ipset; small configurations keep
/// their rule pair per peer, unchanged.
@Suite struct PeerSetTests {
    func config(_ head: String, peers n: Int, ports: String = "", extra: String = "") throws -> Configuration {
        var y = head + "\nkey-chains:\n  - name: k\n    keys: [ { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: hmac-sha-1-96, key-string: \"a long enough secret\" } ]\npeers:\n"
        for i in 0..<n { y += "  - { name: dev\(i), prefix: \"2001:db8:ffff::\(String(i + 1, radix: 16))/128\", key-chain: k\(ports) }\n" }
        y += extra
        let (c, d) = ConfigLoader.parse(y, now: 1_790_000_000)
        return try #require(c, "\(d.errors)")
    }

    @Test func upToTheThresholdEachPeerKeepsItsRules() throws {
        let r = RuleSet(try config("mode: host", peers: RuleSet.setThreshold))
        #expect(r.sets.isEmpty)
        let v6 = try #require(r.v6)
        #expect(!v6.contains("--match-set"))
        #expect(v6.contains("-A TCPAOD-OUT ! -o lo -d 2001:db8:ffff::10/128 -p tcp -m comment --comment \"tcpaod peer dev15\" -j NFQUEUE"))
    }

    @Test func aLargeGroupIsOneSetAndTwoRules() throws {
        let r = RuleSet(try config("mode: host\nthreads: 1", peers: 1000, ports: ", ports: [830, 179]",
                                   extra: "  - { name: nms, prefix: 192.0.2.0/24, key-chain: k }\n"))
        #expect(r.sets.count == 1)
        let s = try #require(r.sets.first)
        #expect(s.v6 && s.members.count == 1000 && s.ports == [830, 179])
        #expect(s.members.first == "2001:db8:ffff::1/128")
        #expect(s.name == PeerSet.name(instance: "", v6: true, ports: [830, 179]) && s.name.count <= 29)
        let v6 = try #require(r.v6)
        #expect(v6.contains("-A TCPAOD-OUT ! -o lo -m set --match-set \(s.name) dst -p tcp -m multiport --ports 830,179 -m comment --comment \"tcpaod peers in set \(s.name)\" -j NFQUEUE --queue-num 100\n"))
        #expect(v6.contains("-A TCPAOD-IN ! -i lo -m set --match-set \(s.name) src -p tcp -m multiport --ports 830,179"))
        #expect(v6.split(separator: "\n").filter { $0.hasPrefix("-A TCPAOD-") && $0.contains("-p tcp -m") && !$0.contains("connlabel") }.count == 2)
        // The IPv4 peer alone: its own rules, as before.
        #expect(try #require(r.v4).contains("-d 192.0.2.0/24 -p tcp -m comment --comment \"tcpaod peer nms\""))
        #expect(s.fill(s.name).first == "create \(s.name) hash:net family inet6 hashsize 1024 maxelem 65536")
        #expect(s.fill(s.name).count == 1001)
        #expect(s.summary == "1000 IPv6 peers share ports [830, 179]")
        #expect(s.missingToolMessage.contains("install the ipset package"))
    }

    @Test func gatewaySetsKeepTheProtectedPrefixes() throws {
        let r = RuleSet(try config("mode: gateway\nthreads: 1\nprotected-prefixes: [\"2001:db8:2::/64\", \"2001:db8:3::/64\"]", peers: 40))
        let s = try #require(r.sets.first)
        let v6 = try #require(r.v6)
        #expect(v6.contains("-A TCPAOD-FWD -s 2001:db8:2::/64 -m set --match-set \(s.name) dst -p tcp"))
        #expect(v6.contains("-A TCPAOD-FWD -m set --match-set \(s.name) src -d 2001:db8:3::/64 -p tcp"))
    }

    @Test func membersAreValueAndNamesAreStable() throws {
        let a = RuleSet(try config("mode: host", peers: 100)), b = RuleSet(try config("mode: host", peers: 101))
        #expect(a.v6 == b.v6)         // the same rules...
        #expect(a != b)               // ...but other members: a reload must update the set
        #expect(a.sets[0].name == b.sets[0].name)
    }

    @Test func setNamesBelongToTheirInstanceOnly() {
        let mine = PeerSet.name(instance: "site-a", v6: false, ports: [])
        #expect(mine.hasPrefix("tcpaod-site-a-4-"))
        #expect(PeerSet.belongs(mine, to: "site-a") && PeerSet.belongs(mine + "-n", to: "site-a"))
        #expect(!PeerSet.belongs(mine, to: "") && !PeerSet.belongs(mine, to: "site"))
        let dflt = PeerSet.name(instance: "", v6: true, ports: [830])
        #expect(PeerSet.belongs(dflt, to: "") && !PeerSet.belongs(dflt, to: "site-a"))
        #expect(!PeerSet.belongs("tcpaod-other", to: "") && !PeerSet.belongs("mysets", to: ""))
        // ipset allows 31 characters; the swap twin adds 2.
        let long = PeerSet.name(instance: "a-very-long-instance-name", v6: true, ports: [1, 2, 3])
        #expect(long.count <= 29 && PeerSet.belongs(long, to: "a-very-long-instance-name"))
        #expect(PeerSet.name(instance: "", v6: true, ports: [830]) != PeerSet.name(instance: "", v6: true, ports: [179]))
    }
}
