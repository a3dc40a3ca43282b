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
            // (The counter-only connlabel rules of flow-state: conntrack queue nothing.)
            let rules = script.split(separator: "\n").filter { $0.hasPrefix("-A ") && !$0.contains("connlabel") }
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

    /// queue-spread: connection: the peers' rules jump to the spread chain; HMARK (addresses,
    /// ports, protocol; symmetric) picks the queue; packets with a mark are balanced by address.
    @Test func queueSpreadByConnectionUsesHMARK() throws {
        let c = try config("threads: 2\nqueue: 100\nqueue-spread: connection\npeers:\n  - { name: nms, prefix: 192.0.2.0/24, ports: [830], key-chain: k }")
        let v4 = try #require(RuleSet(c).v4)
        #expect(v4.hasPrefix("*mangle\n:TCPAOD-OUT - [0:0]\n:TCPAOD-IN - [0:0]\n:TCPAOD-QUEUE - [0:0]\n"))
        #expect(v4.contains("-A TCPAOD-OUT ! -o lo -d 192.0.2.0/24 -p tcp -m multiport --ports 830 -m comment --comment \"tcpaod peer nms\" -j TCPAOD-QUEUE\n"))
        #expect(v4.contains("-p icmp -m icmp --icmp-type 3/4 -m comment --comment \"tcpaod icmp hard error\" -j TCPAOD-QUEUE\n"))
        #expect(v4.hasSuffix("""
            -A TCPAOD-QUEUE -m mark ! --mark 0 -j NFQUEUE --queue-balance 100:101
            -A TCPAOD-QUEUE -j HMARK --hmark-tuple src,dst,sport,dport,proto --hmark-mod 2 --hmark-offset 1950416896 --hmark-rnd 1952673889
            -A TCPAOD-QUEUE -m mark --mark 1950416896 -j NFQUEUE --queue-num 100
            -A TCPAOD-QUEUE -m mark --mark 1950416897 -j NFQUEUE --queue-num 101
            -A TCPAOD-QUEUE -j NFQUEUE --queue-balance 100:101
            COMMIT

            """), "\(v4)")
        #expect(RuleSet.spreadMarks(c) == 0x7441_0000...0x7441_0001)
        // By address (the default) or with one queue: NFQUEUE alone.
        let peers = "peers:\n  - { name: p, prefix: 198.51.100.0/24, key-chain: k }"
        for body in ["threads: 2\n", "threads: 1\nqueue-spread: connection\n"] {
            let c = try config(body + peers)
            let v4 = try #require(RuleSet(c).v4)
            #expect(!v4.contains("TCPAOD-QUEUE") && !v4.contains("HMARK") && RuleSet.spreadMarks(c) == nil, "\(v4)")
        }
        // The spread chain is removed after the chains that jump to it.
        #expect(RuleSet.chainNames.last == RuleSet.spreadChain)
        let state = FirewallState(listing: "-N TCPAOD-OUT\n-N TCPAOD-QUEUE\n-A OUTPUT -m comment --comment tcpaod -j TCPAOD-OUT")
        let cl = try #require(RuleSet.cleanup(existing: state, keeping: []))
        #expect(cl.contains(":TCPAOD-OUT - [0:0]\n:TCPAOD-QUEUE - [0:0]\n-D OUTPUT") && cl.hasSuffix("-X TCPAOD-OUT\n-X TCPAOD-QUEUE\nCOMMIT\n"), "\(cl)")
    }

    @Test func moreThanFifteenPortsSplitAcrossRules() throws {
        let ports = (1...20).map(String.init).joined(separator: ", ")
        let r = RuleSet(try config("peers:\n  - { name: p, prefix: 198.51.100.0/24, ports: [\(ports)], key-chain: k }"))
        let lines = try #require(r.v4).split(separator: "\n").filter { $0.contains("multiport") }
        #expect(lines.count == 4) // 15 + 5 ports, egress and ingress
    }

    // MARK: conntrack-backed flow state (issue 10)

    /// flow-state: conntrack (the default) opens every tcpaod chain with a counter-only connlabel
    /// match: it reserves label space and turns conntrack on, and changes no packet's path.
    @Test func conntrackRulesReserveLabelsFirstInEveryChain() throws {
        let peers = "peers:\n  - { name: a, prefix: 192.0.2.0/24, key-chain: k }\n  - { name: b, prefix: \"2001:db8::/32\", key-chain: k }"
        let host = RuleSet(try config("mode: host\n" + peers))
        for script in [try #require(host.v4), try #require(host.v6)] {
            let rules = script.split(separator: "\n").filter { $0.hasPrefix("-A ") }.map(String.init)
            #expect(rules.prefix(2) == [
                "-A TCPAOD-OUT -p tcp -m connlabel --label 0 -m comment --comment \"tcpaod: reserve conntrack labels\"",
                "-A TCPAOD-IN -p tcp -m connlabel --label 0 -m comment --comment \"tcpaod: reserve conntrack labels\"",
            ], "\(script)")
            #expect(rules.filter { $0.contains("connlabel") }.allSatisfy { !$0.contains(" -j ") && !$0.contains("--set") })
            #expect(rules.dropFirst(2).allSatisfy { $0.contains("-j NFQUEUE") })
        }
        let gw = RuleSet(try config("mode: gateway\nconntrack-label-offset: 5\n" + peers))
        #expect(try #require(gw.v4).contains("*mangle\n:TCPAOD-FWD - [0:0]\n-I FORWARD 1 -m comment --comment tcpaod -j TCPAOD-FWD\n-A TCPAOD-FWD -p tcp -m connlabel --label 5 -m comment"))
        let memory = RuleSet(try config("flow-state: memory\n" + peers))
        let m4 = try #require(memory.v4), m6 = try #require(memory.v6)
        #expect(!m4.contains("connlabel") && !m6.contains("connlabel"))
        #expect(memory != host) // a change of flow-state changes the rules
    }

    // MARK: taking over an earlier run's rules (issue 10)

    static let listing = """
    -P PREROUTING ACCEPT
    -P INPUT ACCEPT
    -P FORWARD ACCEPT
    -P OUTPUT ACCEPT
    -P POSTROUTING ACCEPT
    -N TCPAOD-FWD
    -N TCPAOD-IN
    -N TCPAOD-OUT
    -N OTHER
    -A INPUT -m comment --comment tcpaod -j TCPAOD-IN
    -A INPUT -j OTHER
    -A FORWARD -m comment --comment tcpaod -j TCPAOD-FWD
    -A OUTPUT -m comment --comment tcpaod -j TCPAOD-OUT
    -A OUTPUT -m comment --comment tcpaod -j TCPAOD-OUT
    -A OUTPUT -m comment --comment "not ours" -j TCPAOD-OUT
    -A TCPAOD-OUT -d 192.0.2.0/24 ! -o lo -p tcp -m comment --comment "tcpaod peer nms" -j NFQUEUE --queue-num 100
    """

    @Test func firewallStateReadsTheListing() {
        let s = FirewallState(listing: Self.listing)
        #expect(s.chains == ["TCPAOD-FWD", "TCPAOD-IN", "TCPAOD-OUT"])
        #expect(s.jumps == ["TCPAOD-IN": 1, "TCPAOD-FWD": 1, "TCPAOD-OUT": 2]) // only tcpaod's own jumps
        #expect(!s.isEmpty)
        #expect(FirewallState(listing: "-P OUTPUT ACCEPT\n-N OTHER\n").isEmpty)
    }

    /// The takeover is one transaction that declares (flushes) and refills the chains and leaves
    /// exactly one jump per chain: existing jumps are kept, missing ones inserted, surplus ones
    /// deleted. Nothing is removed first.
    @Test func takeoverRefillsTheChainsInOneTransaction() throws {
        let script = try #require(RuleSet(try config("mode: host\npeers:\n  - { name: nms, prefix: 192.0.2.0/24, ports: [830], key-chain: k }")).v4)
        var existing = FirewallState(listing: Self.listing) // OUT: 2 jumps, IN: 1
        let t = RuleSet.takeover(script, existing: existing)
        let lines = t.split(separator: "\n").map(String.init)
        #expect(lines.first == "*mangle" && lines.last == "COMMIT")
        #expect(lines[1...2] == [":TCPAOD-OUT - [0:0]", ":TCPAOD-IN - [0:0]"])
        #expect(!t.contains("-I ")) // both jumps are there already
        #expect(lines.filter { $0.hasPrefix("-D ") } == ["-D OUTPUT -m comment --comment tcpaod -j TCPAOD-OUT"]) // 2 -> 1
        #expect(!t.contains("-X ") && !t.contains("-F ")) // nothing removed in this transaction
        #expect(lines.filter { $0.hasPrefix("-A ") } == script.split(separator: "\n").filter { $0.hasPrefix("-A ") }.map(String.init))
        // A chain that exists without its jump gets it back.
        existing.jumps["TCPAOD-IN"] = 0
        let t2 = RuleSet.takeover(script, existing: existing)
        #expect(t2.contains("-I INPUT 1 -m comment --comment tcpaod -j TCPAOD-IN\n") && !t2.contains("-I OUTPUT"))
        // Nothing there: the script as it is (install takes the fresh path anyway).
        #expect(RuleSet.takeover(script, existing: FirewallState()) == script)
    }

    /// Chains of the other mode (gateway left over, host now) go in a second transaction, only
    /// after the new rules are in; a family without peers now loses all of tcpaod's chains.
    @Test func leftoverChainsAreRemovedAfterwards() throws {
        let existing = FirewallState(listing: Self.listing)
        let host = RuleSet(try config("peers:\n  - { name: nms, prefix: 192.0.2.0/24, key-chain: k }"))
        let hostV4 = try #require(host.v4)
        let c = try #require(RuleSet.cleanup(existing: existing, keeping: RuleSet.chainNames(in: hostV4)))
        #expect(c == "*mangle\n:TCPAOD-FWD - [0:0]\n-D FORWARD -m comment --comment tcpaod -j TCPAOD-FWD\n-X TCPAOD-FWD\nCOMMIT\n")
        let all = try #require(RuleSet.cleanup(existing: existing, keeping: []))
        #expect(all.components(separatedBy: "-D OUTPUT ").count - 1 == 2 && all.contains("-X TCPAOD-OUT") && all.contains("-X TCPAOD-IN"))
        #expect(RuleSet.cleanup(existing: FirewallState(), keeping: []) == nil)
        #expect(RuleSet.cleanup(existing: FirewallState(listing: "-N TCPAOD-OUT\n-N TCPAOD-IN"), keeping: ["TCPAOD-OUT", "TCPAOD-IN"]) == nil)
    }

    // MARK: stop or restart (issue 10)

    @Test func rulesGoOnlyWhenTheUnitIsReallyStopped() {
        typealias J = StopPolicy.Job
        let table: [(ExitPolicy, String?, J, Bool)] = [
            (.removeRules, "success", .type("stop"), true),      // systemctl stop, shutdown
            (.removeRules, "signal", .type("stop"), true),       // stopped while failing: still a stop
            (.removeRules, "success", .type("restart"), false),  // systemctl restart
            (.removeRules, "success", .type("try-restart"), false),
            (.removeRules, "success", .type("start"), false),    // a start is queued
            (.removeRules, "signal", .none, false),              // kill -9: Restart=on-failure follows
            (.removeRules, "exit-code", .none, false),
            (.removeRules, "core-dump", .unknown, false),
            (.removeRules, "success", .none, false),             // exited by itself: cannot tell, keep
            (.removeRules, nil, .none, false),                   // not under systemd
            (.removeRules, nil, .unknown, false),
            (.removeRules, "", .unknown, false),
            (.keepRules, "success", .type("stop"), false),       // on-exit: keep-rules wins
        ]
        for (policy, result, job, remove) in table {
            let d = StopPolicy.decide(onExit: policy, serviceResult: result, job: job)
            #expect(d.removeRules == remove, "\(policy) \(result ?? "nil") \(job): \(d.reason)")
            #expect(!d.reason.isEmpty)
        }
    }

    @Test func theUnitsJobFromSystemctlListJobs() {
        let out = """
        1234 tcpaod.service                 restart running
        1240 network-online.target          start   waiting
        """
        #expect(StopPolicy.job(of: "tcpaod.service", listJobs: out) == .type("restart"))
        #expect(StopPolicy.job(of: "network-online.target", listJobs: out) == .type("start"))
        #expect(StopPolicy.job(of: "other.service", listJobs: out) == .none)
        #expect(StopPolicy.job(of: "tcpaod.service", listJobs: "") == .none)
        #expect(StopPolicy.job(of: "tcpaod.service", listJobs: "99 tcpaod.service stop running") == .type("stop"))
    }
}
