import Foundation
import Testing
@testable import TCPAOConfig
import TCPAO

@Suite struct ConfigTests {
    /// 2026-11-23T00:00:00Z
    static let now: Int64 = RFC3339.parse("2026-11-23T00:00:00Z")!

    /// The configuration shape of the daemon issue, verbatim: a contract other tools write.
    static let contract = """
    mode: host                    # host | gateway
    queue: 100                    # first NFQUEUE number; workers use queue .. queue+threads-1
    threads: 2
    key-chains:
      - name: nms
        keys:
          - key-id: 1             # unique in the chain
            send-id: 1            # TCP-AO KeyID we send with this MKT
            recv-id: 1            # TCP-AO KeyID we accept with this MKT
            crypto-algorithm: hmac-sha-1-96   # | aes-128-cmac-96 | hmac-sha-256-96 | hmac-sha-256-128
            key-string: "text secret"         # or hexadecimal-string: "00ff..." or key-file: PATH
            include-tcp-options: true         # default true
            send-lifetime:   { start-date-time: 2026-01-01T00:00:00Z, end-date-time: 2027-01-01T00:00:00Z }
            accept-lifetime: { start-date-time: 2026-01-01T00:00:00Z, no-end-time: true }
    peers:
      - name: nms
        prefix: 192.0.2.0/24      # the remote side; IPv4 or IPv6
        ports: [830, 9339]        # a segment matches when either of its ports is listed; omitted = all
        key-chain: nms
        accept-key-mismatch: false  # true lets unsigned segments through (migration)
    """

    func load(_ yaml: String, purpose: ConfigLoader.Purpose = .daemon) -> (Configuration?, [Diagnostic]) {
        ConfigLoader.parse(yaml, file: "t.yaml", purpose: purpose, now: Self.now)
    }

    func expectOne(_ yaml: String, contains text: String, line: Int? = nil, path: String? = nil,
                   sourceLocation: SourceLocation = #_sourceLocation) {
        let (cfg, d) = load(yaml)
        #expect(cfg == nil, "expected the configuration to be refused", sourceLocation: sourceLocation)
        let hit = d.errors.first { $0.message.contains(text) }
        #expect(hit != nil, "no error mentions \"\(text)\"; got:\n\(d.map(\.description).joined(separator: "\n"))", sourceLocation: sourceLocation)
        if let line, let hit { #expect(hit.line == line, "\(hit)", sourceLocation: sourceLocation) }
        if let path, let hit { #expect(hit.path == path, "\(hit)", sourceLocation: sourceLocation) }
        if let hit { #expect(!hit.fix.isEmpty, sourceLocation: sourceLocation) }
    }

    @Test func theContractShapeLoads() throws {
        let (cfg, d) = load(Self.contract)
        let c = try #require(cfg, "\(d)")
        #expect(c.mode == .host && c.queue == 100 && c.threads == 2 && c.queues == 100...101)
        #expect(c.keyChains.count == 1 && c.keyChains[0].keys.count == 1)
        let k = c.keyChains[0].keys[0]
        #expect(k.sendID == 1 && k.recvID == 1 && k.algorithm == .hmacSHA1_96 && k.includeOptions)
        #expect(k.sendLifetime.start == RFC3339.parse("2026-01-01T00:00:00Z") && k.acceptLifetime.end == .max)
        #expect(c.peers[0].prefix == IPPrefix("192.0.2.0/24") && c.peers[0].ports == [830, 9339] && !c.peers[0].acceptKeyMismatch)
        // "text secret" is 11 bytes: a warning, not an error. Warnings never show the secret.
        #expect(d.warnings.contains { $0.message.contains("11 bytes") })
        #expect(!d.contains { $0.description.contains("text secret") })
    }

    @Test func theShippedExampleIsValid() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../config/tcpaod.yaml")
        let (cfg, d) = ConfigLoader.parse(try String(contentsOf: url, encoding: .utf8), now: Self.now)
        #expect(cfg != nil, "\(d)")
        #expect(d.errors.isEmpty)
    }

    @Test func unknownKeysAreErrorsWithASuggestion() {
        expectOne(Self.contract.replacingOccurrences(of: "send-id: 1", with: "sendid: 1"), contains: "unknown key `sendid`", line: 8)
        let (_, d) = load(Self.contract.replacingOccurrences(of: "send-id: 1", with: "sendid: 1"))
        #expect(d.errors.first { $0.message.contains("sendid") }?.fix.contains("send-id") == true)
        expectOne(Self.contract.replacingOccurrences(of: "threads: 2", with: "threads: 2\nbogus: 1"), contains: "unknown key `bogus`", line: 4)
    }

    @Test func badValuesSayWhereAndHowToFix() {
        expectOne(Self.contract.replacingOccurrences(of: "send-id: 1 ", with: "send-id: 300 "), contains: "300 is out of range", line: 8,
                  path: "key-chains[0].keys[0].send-id")
        expectOne(Self.contract.replacingOccurrences(of: "hmac-sha-1-96 ", with: "hmac-md5 "), contains: "not a supported algorithm", line: 10)
        expectOne(Self.contract.replacingOccurrences(of: "mode: host", with: "mode: router"), contains: "not one of host, gateway", line: 1)
        expectOne(Self.contract.replacingOccurrences(of: "192.0.2.0/24", with: "192.0.2.1/24"), contains: "bits set beyond", line: 17)
        expectOne(Self.contract.replacingOccurrences(of: "[830, 9339]", with: "[830, 70000]"), contains: "out of range", line: 18)
        expectOne(Self.contract.replacingOccurrences(of: "key-chain: nms", with: "key-chain: nsm"), contains: "no key chain named `nsm`", line: 19)
        expectOne(Self.contract.replacingOccurrences(of: "2027-01-01T00:00:00Z", with: "2027-13-01"), contains: "not an RFC 3339 date-time", line: 13)
        expectOne(Self.contract.replacingOccurrences(of: "\"text secret\"", with: "\"\""), contains: "the secret is empty", line: 11)
        expectOne(Self.contract.replacingOccurrences(of: "key-string: \"text secret\"", with: "hexadecimal-string: \"0g\""), contains: "hexadecimal")
        expectOne(Self.contract.replacingOccurrences(of: "queue: 100", with: "queue: [1]"), contains: "whole number", line: 2)
        expectOne(Self.contract.replacingOccurrences(of: "include-tcp-options: true", with: "include-tcp-options: maybe"), contains: "true or false")
        expectOne("mode: host\n  bad: indentation\n", contains: "not valid YAML")
        expectOne(Self.contract.replacingOccurrences(of: "key-string: \"text secret\"", with: "key-string: \"text secret\"\n        hexadecimal-string: \"00112233445566778899\""),
                  contains: "more than one secret")
    }

    /// Routers and Linux (up to 80 bytes) accept short keys, and tcpaod must match the peer's
    /// key: a short key is a loud warning citing RFC 5925 5.3, never an error, for the daemon
    /// (`run`, `check`) and for verify-pcap alike. Only an empty key is refused.
    @Test func shortKeysLoadWithAWarning() throws {
        for (secret, bytes) in [("key-string: \"k\"", 1), ("key-string: \"7 bytes\"", 7), ("hexadecimal-string: \"ab\"", 1),
                                ("hexadecimal-string: \"00112233445566\"", 7), ("key-string: \"8 bytes!\"", 8)] {
            let y = Self.contract.replacingOccurrences(of: "key-string: \"text secret\"", with: secret)
            for purpose in [ConfigLoader.Purpose.daemon, .keyChainsOnly] {
                let (cfg, d) = load(y, purpose: purpose)
                let c = try #require(cfg, "\(secret) \(purpose): \(d)")
                #expect(d.errors.isEmpty)
                #expect(c.keyChains[0].keys[0].secret.count == bytes)
                let w = try #require(d.warnings.first { $0.path == "key-chains[0].keys[0].\(secret.prefix { $0 != ":" })" }, "\(d)")
                #expect(w.message.contains("RFC 5925 5.3") && w.message.contains("only \(bytes) byte") && w.line == 11 && !w.fix.isEmpty, "\(w)")
                #expect(bytes >= 8 || w.message.contains("far too short"), "\(w)")
            }
        }
        // The one length refused, whatever the source and the purpose: no key at all.
        for secret in ["key-string: \"\"", "hexadecimal-string: \"\""] {
            let y = Self.contract.replacingOccurrences(of: "key-string: \"text secret\"", with: secret)
            expectOne(y, contains: "the secret is empty", line: 11)
            #expect(load(y, purpose: .keyChainsOnly).0 == nil)
        }
        // Longer than Linux accepts: a warning that says so.
        let long = Self.contract.replacingOccurrences(of: "\"text secret\"", with: "\"\(String(repeating: "x", count: 81))\"")
        let (c, d) = load(long)
        #expect(c != nil && d.warnings.contains { $0.message.contains("81 bytes") && $0.message.contains("at most 80") }, "\(d)")
    }

    /// A peer whose prefix covers (nearly) everything, on every port, makes every TCP peer
    /// without TCP-AO unreachable: `check` says so, where, and how to narrow it.
    @Test func catchAllPeersAreWarnedAbout() throws {
        func peer(_ prefix: String, ports: Bool = false) -> String {
            Self.contract.replacingOccurrences(of: "192.0.2.0/24", with: "\"\(prefix)\"")
                .replacingOccurrences(of: "    ports: [830, 9339]", with: ports ? "    ports: [830, 9339]" : "    description: x")
        }
        for prefix in ["0.0.0.0/0", "::/0", "0.0.0.0/1", "10.0.0.0/7", "2000::/3", "2000::/15"] {
            let (cfg, d) = load(peer(prefix))
            #expect(cfg != nil, "\(d)")
            let w = try #require(d.warnings.first { $0.message.contains("becomes unreachable") }, "\(prefix): \(d)")
            #expect(w.path == "peers[0].prefix" && w.line == 17 && w.message.contains("peer `nms` covers every"), "\(w)")
            #expect(w.fix.contains("ports") && w.fix.contains("narrow the prefix"))
        }
        #expect(load(peer("0.0.0.0/0")).1.warnings.contains { $0.message.contains("covers every IPv4 address on every port") })
        #expect(load(peer("::/0")).1.warnings.contains { $0.message.contains("covers every IPv6 address on every port") })
        // Listed ports, or a prefix of /8 (IPv4) or /16 (IPv6) and longer: no warning.
        for (prefix, ports) in [("0.0.0.0/0", true), ("::/0", true), ("10.0.0.0/8", false), ("2001::/16", false), ("192.0.2.0/24", false)] {
            let (cfg, d) = load(peer(prefix, ports: ports))
            #expect(cfg != nil && !d.contains { $0.message.contains("becomes unreachable") }, "\(prefix): \(d)")
        }
    }

    @Test func protectLoopbackIsOffUnlessAsked() throws {
        #expect(try #require(load(Self.contract).0).protectLoopback == false)
        let on = Self.contract.replacingOccurrences(of: "threads: 2", with: "threads: 2\nprotect-loopback: true")
        #expect(try #require(load(on).0).protectLoopback)
        expectOne(Self.contract.replacingOccurrences(of: "threads: 2", with: "threads: 2\nprotect-loopback: yes please"), contains: "true or false")
        let gw = on.replacingOccurrences(of: "mode: host", with: "mode: gateway")
        #expect(load(gw).1.warnings.contains { $0.path == "protect-loopback" && $0.message.contains("host mode only") })
    }

    static let twoKeys = """
    key-chains:
      - name: c
        keys:
          - { key-id: 1, send-id: 5, recv-id: 5, crypto-algorithm: hmac-sha-1-96, key-string: "0123456789abcdef",
              send-lifetime: { start-date-time: 2026-01-01T00:00:00Z, end-date-time: 2027-01-01T00:00:00Z } }
          - { key-id: 2, send-id: SEND2, recv-id: 6, crypto-algorithm: aes-128-cmac-96, key-string: "fedcba9876543210",
              send-lifetime: { start-date-time: START2, no-end-time: true } }
    peers:
      - { name: a, prefix: 198.51.100.0/24, key-chain: c }
    """

    @Test func overlappingSendIDsInOneChain() {
        let y = Self.twoKeys.replacingOccurrences(of: "SEND2", with: "5").replacingOccurrences(of: "START2", with: "2026-12-01T00:00:00Z")
        expectOne(y, contains: "SendID 5 is also used", line: 6)
        // The same SendID with send lifetimes that do not overlap is fine.
        let ok = Self.twoKeys.replacingOccurrences(of: "SEND2", with: "5").replacingOccurrences(of: "START2", with: "2027-01-01T00:00:00Z")
            .replacingOccurrences(of: "recv-id: 6", with: "recv-id: 7")
        #expect(load(ok).0 != nil, "\(load(ok).1)")
    }

    @Test func lifetimesThatLeaveAGap() {
        let y = Self.twoKeys.replacingOccurrences(of: "SEND2", with: "6").replacingOccurrences(of: "START2", with: "2027-02-01T00:00:00Z")
        expectOne(y, contains: "no key may be used to send from 2027-01-01T00:00:00Z until 2027-02-01T00:00:00Z")
    }

    @Test func noKeyValidNow() {
        let y = Self.twoKeys.replacingOccurrences(of: "SEND2", with: "6").replacingOccurrences(of: "START2", with: "2027-01-01T00:00:00Z")
            .replacingOccurrences(of: "2026-01-01T00:00:00Z", with: "2026-12-01T00:00:00Z")
        expectOne(y, contains: "no key may be used to send now")
        // verify-pcap does not judge lifetimes against the clock.
        #expect(load(y, purpose: .keyChainsOnly).0 != nil)
    }

    @Test func overlappingPeerPrefixes() {
        let y = Self.contract + "\n  - { name: other, prefix: 192.0.2.128/25, key-chain: nms }\n"
        expectOne(y, contains: "overlaps 192.0.2.0/24 of peer `nms` (line 16)", line: 21)
    }

    @Test func keyFiles() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tcpaod-cfg-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let keyPath = dir.appendingPathComponent("k.key").path
        try "a-sixteen-byte-key!\n".write(toFile: keyPath, atomically: true, encoding: .utf8)
        let y = Self.contract.replacingOccurrences(of: "key-string: \"text secret\"", with: "key-file: \(keyPath)")
        chmod(keyPath, 0o644)
        expectOne(y, contains: "readable by every user")
        chmod(keyPath, 0o600)
        let (cfg, d) = load(y)
        let c = try #require(cfg, "\(d)")
        #expect(c.keyChains[0].keys[0].secret == Secret(Array("a-sixteen-byte-key!".utf8))) // newline dropped
        try "hex:00112233445566778899aabbccddeeff".write(toFile: keyPath, atomically: false, encoding: .utf8)
        #expect(load(y).0?.keyChains[0].keys[0].secret.count == 16)
        expectOne(Self.contract.replacingOccurrences(of: "key-string: \"text secret\"", with: "key-file: \(dir.path)/missing.key"), contains: "does not exist")
        // A configuration file with inline secrets must not be world-readable either.
        let cfgPath = dir.appendingPathComponent("c.yaml").path
        try Self.contract.write(toFile: cfgPath, atomically: true, encoding: .utf8)
        chmod(cfgPath, 0o644)
        let (c1, d1) = ConfigLoader.load(path: cfgPath, now: Self.now)
        #expect(c1 == nil && d1.errors.contains { $0.message.contains("readable by every user") && $0.fix.contains("chmod 600") })
        chmod(cfgPath, 0o600)
        #expect(ConfigLoader.load(path: cfgPath, now: Self.now).0 != nil)
        let (c2, d2) = ConfigLoader.load(path: dir.path + "/nope.yaml", now: Self.now)
        #expect(c2 == nil && d2.errors.first?.message.contains("does not exist") == true)
        // A relative key-file path is found next to the configuration file.
        let relPath = dir.appendingPathComponent("rel.yaml").path
        try Self.contract.replacingOccurrences(of: "key-string: \"text secret\"", with: "key-file: k.key")
            .write(toFile: relPath, atomically: true, encoding: .utf8)
        let (c3, d3) = ConfigLoader.load(path: relPath, now: Self.now)
        #expect(c3?.keyChains[0].keys[0].secret.count == 16, "\(d3)")
        // An empty key file: the one key length refused.
        try "\n".write(toFile: keyPath, atomically: false, encoding: .utf8)
        expectOne(y, contains: "the secret is empty")
    }

    @Test func serialsSurviveAReloadForUnchangedKeys() throws {
        let a = try #require(load(Self.contract).0)
        let changed = Self.contract.replacingOccurrences(of: "\"text secret\"", with: "\"other secret!!\"")
        let (b, _) = ConfigLoader.parse(Self.contract, now: Self.now, previous: a)
        let (c, _) = ConfigLoader.parse(changed, now: Self.now, previous: a)
        #expect(b?.keyChains[0].keys[0].serial == a.keyChains[0].keys[0].serial)
        #expect(c?.keyChains[0].keys[0].serial != a.keyChains[0].keys[0].serial)
    }

    /// Issue 9, defect 1: [K1] -> [K1,K2] -> [K1] -> [K1,K3] used to give K3 the serial K2 had,
    /// so a flow that cached K2's traffic key signed K3's KeyID with it. Serials are now unique
    /// for the life of the process; only an unchanged key inherits its serial.
    @Test func serialsAreNeverReusedAcrossReloads() throws {
        func chain(_ keys: [(Int, String, String)]) -> String {
            "key-chains:\n  - name: c\n    keys:\n"
                + keys.map { "      - { key-id: \($0.0), send-id: \($0.0), recv-id: \($0.0), crypto-algorithm: \($0.1), key-string: \"\($0.2)\" }\n" }.joined()
                + "peers:\n  - { name: a, prefix: 198.51.100.0/24, ports: [830], key-chain: c }\n"
        }
        let k1 = (1, "hmac-sha-1-96", "the first key!!"), k2 = (2, "hmac-sha-256-128", "the second key!")
        let k3 = (3, "hmac-sha-1-96", "the third key!!")
        var seen: [UInt64] = []
        var prev: Configuration? = nil
        for step in [[k1], [k1, k2], [k1], [k1, k3], [k1, k2]] {
            let (c, d) = ConfigLoader.parse(chain(step), now: Self.now, previous: prev)
            let cfg = try #require(c, "\(d)")
            let serials = cfg.keyChains[0].keys.map(\.serial)
            // K1 never changed: one serial throughout; every other key gets one never seen before.
            if let p = prev { #expect(serials[0] == p.keyChains[0].keys[0].serial) }
            for s in serials.dropFirst() {
                #expect(!seen.contains(s), "serial \(s) reused at step \(step.map(\.0))")
                seen.append(s)
            }
            if prev == nil { seen.append(serials[0]) }
            prev = cfg
        }
    }

    /// HMAC-SHA-256 with a configurable MAC length (Linux's maclen, vendors' options).
    @Test func macLength() throws {
        let y = Self.contract.replacingOccurrences(of: "hmac-sha-1-96 ", with: "hmac-sha-256-128\n        mac-length: 20 ")
        let (c, d) = load(y)
        let k = try #require(c, "\(d)").keyChains[0].keys[0]
        #expect(k.algorithm == AOAlgorithm(kind: .hmacSHA256, macLength: 20) && k.algorithm.alignedOptionLength == 24)
        #expect(k.algorithm.description == "hmac-sha-256-160")
        expectOne(Self.contract.replacingOccurrences(of: "hmac-sha-1-96 ", with: "aes-128-cmac-96\n        mac-length: 20 "), contains: "out of range")
        let (_, d2) = load(Self.contract.replacingOccurrences(of: "hmac-sha-1-96 ", with: "hmac-sha-1-96\n        mac-length: 10 "))
        #expect(d2.warnings.contains { $0.message.contains("not the RFC 5926 algorithm") })
    }

    @Test func gatewayProtectedPrefixes() throws {
        let gw = Self.contract.replacingOccurrences(of: "mode: host", with: "mode: gateway")
        #expect(load(gw).1.warnings.contains { $0.message.contains("without protected-prefixes") })
        let c = try #require(load(gw.replacingOccurrences(of: "threads: 2", with: "threads: 2\nprotected-prefixes: [198.51.100.0/24]")).0)
        #expect(c.protectedPrefixes == [IPPrefix("198.51.100.0/24")!])
        expectOne(gw.replacingOccurrences(of: "threads: 2", with: "threads: 2\nprotected-prefixes: [\"2001:db8:2::/64\"]"),
                  contains: "no protected prefix is")
    }

    @Test func rfc3339() {
        #expect(RFC3339.parse("1970-01-01T00:00:00Z") == 0)
        #expect(RFC3339.parse("2026-01-01T00:00:00Z") == 1_767_225_600)
        #expect(RFC3339.parse("2026-01-01T02:00:00+02:00") == 1_767_225_600)
        #expect(RFC3339.parse("2024-02-29T12:00:00.5Z") == 1_709_208_000)
        #expect(RFC3339.parse("2023-02-29T00:00:00Z") == nil)
        #expect(RFC3339.parse("2026-01-01") == nil)
        #expect(RFC3339.format(1_767_225_600) == "2026-01-01T00:00:00Z")
    }

    @Test func flowStateSettings() throws {
        let base = Self.contract
        let c = try #require(load(base).0)
        #expect(c.flowState == .conntrack && c.conntrackLabelOffset == 0 && c.conntrackLabelBitRange == 0..<123)
        let m = try #require(load("flow-state: memory\n" + base).0)
        #expect(m.flowState == .memory)
        let o = try #require(load("conntrack-label-offset: 5\n" + base).0)
        #expect(o.conntrackLabelOffset == 5 && o.conntrackLabelBitRange == 5..<128)
        expectOne("conntrack-label-offset: 6\n" + base, contains: "6 is out of range", line: 1, path: "conntrack-label-offset")
        expectOne("flow-state: kernel\n" + base, contains: "not one of conntrack, memory", line: 1, path: "flow-state")
        expectOne("flow-stat: memory\n" + base, contains: "unknown key `flow-stat`")
        let (w, d) = load("flow-state: memory\nconntrack-label-offset: 3\n" + base)
        #expect(w != nil && d.warnings.contains { $0.path == "conntrack-label-offset" && $0.message.contains("flow-state: conntrack only") })
    }
}
