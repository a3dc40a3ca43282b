import Testing
import TCPAO
import TCPAOConfig
@testable import TCPAODaemon

@Suite struct RuleSetTests {
    func config(_ body: String) throws -> Configuration {
        let yaml = """
        \(body)
        key-chains:
          - name: k
            keys: [ { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: hmac-sha-1-96, key-string: "a long enough secret" } ]
        """
        let (c, d) = ConfigLoader.parse(yaml, now: 1_790_000_000)
        return try #require(c, "\(d)")
    }

    @Test func hostModeQueuesBothDirectionsOfEachPeer() throws {
        let r = RuleSet(try config("""
        mode: host
        queue: 100
        threads: 2
        peers:
          - { name: nms, prefix: 192.0.2.0/24, ports: [830, 9339], key-chain: k }
        """))
        let v4 = try #require(r.v4)
        #expect(r.v6 == nil) // no IPv6 peer: ip6tables untouched
        #expect(v4.hasPrefix("*mangle\n:TCPAOD-OUT - [0:0]\n:TCPAOD-IN - [0:0]\n"))
        #expect(v4.contains("-I OUTPUT 1 -m comment --comment tcpaod -j TCPAOD-OUT"))
        #expect(v4.contains("-A TCPAOD-OUT ! -o lo -d 192.0.2.0/24 -p tcp -m multiport --ports 830,9339 -m comment --comment \"tcpaod peer nms\" -j NFQUEUE --queue-balance 100:101\n"))
        #expect(v4.contains("-A TCPAOD-IN ! -i lo -s 192.0.2.0/24 -p tcp -m multiport --ports 830,9339"))
        #expect(v4.contains("-p icmp -m icmp --icmp-type 3/4"))
        #expect(!v4.contains("queue-bypass")) // fail closed unless asked
        #expect(v4.hasSuffix("COMMIT\n"))
    }

    @Test func gatewayModeUsesForwardAndIPv6() throws {
        let r = RuleSet(try config("""
        mode: gateway
        queue: 7
        threads: 1
        queue-bypass: true
        peers:
          - { name: "far side", prefix: "2001:db8::/32", key-chain: k, icmp-hard-errors: accept }
        """))
        #expect(r.v4 == nil)
        let v6 = try #require(r.v6)
        #expect(v6.contains("-I FORWARD 1 -m comment --comment tcpaod -j TCPAOD-FWD"))
        #expect(v6.contains("-A TCPAOD-FWD -d 2001:db8::/32 -p tcp -m comment --comment \"tcpaod peer far_side\" -j NFQUEUE --queue-num 7 --queue-bypass"))
        #expect(v6.contains("-A TCPAOD-FWD -s 2001:db8::/32 -p tcp"))
        #expect(!v6.contains("icmp")) // the peer accepts ICMP hard errors: nothing to queue
    }

    @Test func gatewayRulesLimitedToTheProtectedHosts() throws {
        let r = RuleSet(try config("""
        mode: gateway
        threads: 1
        protected-prefixes: [198.51.100.0/24, "2001:db8:2::/64"]
        peers:
          - { name: far, prefix: 192.0.2.0/24, ports: [830], key-chain: k }
        """))
        let v4 = try #require(r.v4)
        #expect(v4.contains("-A TCPAOD-FWD -s 198.51.100.0/24 -d 192.0.2.0/24 -p tcp -m multiport --ports 830"))
        #expect(v4.contains("-A TCPAOD-FWD -s 192.0.2.0/24 -d 198.51.100.0/24 -p tcp -m multiport --ports 830"))
        #expect(!v4.contains("2001:db8"))
    }

    /// A catch-all peer must not capture the host's own loopback traffic: host mode matches
    /// `! -o lo` on OUTPUT and `! -i lo` on INPUT unless protect-loopback asks for lo too.
    @Test func loopbackIsLeftAloneUnlessAsked() throws {
        let body = """
        mode: host
        peers:
          - { name: all4, prefix: 0.0.0.0/0, key-chain: k }
          - { name: all6, prefix: "::/0", key-chain: k }
        """
        let r = RuleSet(try config(body))
        for script in [try #require(r.v4), try #require(r.v6)] {
            let rules = script.split(separator: "\n").filter { $0.hasPrefix("-A ") }
            #expect(rules.count == 2 + (script == r.v4 ? 3 : 2)) // egress, ingress, ICMP hard errors
            #expect(rules.allSatisfy { $0.hasPrefix("-A TCPAOD-OUT ! -o lo ") || $0.hasPrefix("-A TCPAOD-IN ! -i lo ") }, "\(script)")
            // The jumps stay as they are, so `rules --remove` and reloads find them.
            #expect(script.contains("-I OUTPUT 1 -m comment --comment tcpaod -j TCPAOD-OUT\n"))
        }
        #expect(try #require(r.v4).contains("-A TCPAOD-OUT ! -o lo -d 0.0.0.0/0 -p tcp -m comment --comment \"tcpaod peer all4\" -j NFQUEUE"))
        let opted = RuleSet(try config("protect-loopback: true\n" + body))
        #expect(opted != r) // a reload that flips it replaces the rules
        for script in [try #require(opted.v4), try #require(opted.v6)] {
            #expect(!script.contains(" lo "), "\(script)")
        }
        #expect(try #require(opted.v4).contains("-A TCPAOD-OUT -d 0.0.0.0/0 -p tcp"))
        // Gateway mode: FORWARD never sees lo; no interface match either way.
        let gw = RuleSet(try config("mode: gateway\npeers:\n  - { name: far, prefix: 192.0.2.0/24, key-chain: k }"))
        #expect(!(try #require(gw.v4)).contains(" lo "))
    }

    @Test func moreThanFifteenPortsSplitAcrossRules() throws {
        let ports = (1...20).map(String.init).joined(separator: ", ")
        let r = RuleSet(try config("peers:\n  - { name: p, prefix: 198.51.100.0/24, ports: [\(ports)], key-chain: k }"))
        let lines = try #require(r.v4).split(separator: "\n").filter { $0.contains("multiport") }
        #expect(lines.count == 4) // 15 + 5 ports, egress and ingress
    }
}
