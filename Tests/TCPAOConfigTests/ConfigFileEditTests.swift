import Foundation
import Testing
import TCPAO
@testable import TCPAOConfig

/// Write-back of runtime key changes (`ConfigFileEdit`): loading the edited text gives the
/// chains `Configuration.applying` gives, and every line not part of the change is unchanged.
@Suite struct ConfigFileEditTests {
    static let now: Int64 = RFC3339.parse("2026-11-23T00:00:00Z")!
    static let secretA = "00112233445566778899aabbccddeeff"

    // MARK: helpers

    static func load(_ text: String, now: Int64, sourceLocation: SourceLocation = #_sourceLocation) throws -> Configuration {
        let (c, d) = ConfigLoader.parse(text, now: now)
        return try #require(c, "\(d.errors.map(\.description).joined(separator: "\n"))\n---\n\(text)", sourceLocation: sourceLocation)
    }

    static func key(_ id: UInt64, send: UInt8? = nil, recv: UInt8? = nil, byte: UInt8 = 0x42, alg: AOAlgorithm = .hmacSHA256_128,
                    options: Bool = true, sendLife: Lifetime = .always, acceptLife: Lifetime = .always) -> NewKey {
        NewKey(keyID: id, sendID: send ?? UInt8(id), recvID: recv ?? UInt8(id), algorithm: alg, includeOptions: options,
               sendLifetime: sendLife, acceptLifetime: acceptLife, secret: Secret([UInt8](repeating: byte, count: 16)))
    }

    /// A key file holding `byte` x 16 (mode 600), for `.keyFile`.
    static func keyFile(_ byte: UInt8) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cfe-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let path = dir.appendingPathComponent("key-\(byte).hex").path
        let ok = FileManager.default.createFile(atPath: path, contents: Data("hex:\(String(repeating: String(format: "%02x", byte), count: 16))\n".utf8),
                                                attributes: [.posixPermissions: 0o600])
        #expect(ok)
        return path
    }

    /// Whether `b` is `a` with one block of at most `maxOut` lines taken out and one block of
    /// at most `maxIn` lines put in at the same place or later (a change, or a move of the
    /// changed entry): every other line is unchanged and in order.
    static func oneBlockChanged(_ a: [Substring], _ b: [Substring], maxOut: Int, maxIn: Int) -> Bool {
        func lcp(_ x: ArraySlice<Substring>, _ y: ArraySlice<Substring>) -> Int { zip(x, y).prefix { $0 == $1 }.count }
        func lcs(_ x: ArraySlice<Substring>, _ y: ArraySlice<Substring>) -> Int { zip(x.reversed(), y.reversed()).prefix { $0 == $1 }.count }
        for p in 0...lcp(a[...], b[...]) {
            for r in 0...min(maxOut, a.count - p) {
                let ins = b.count - a.count + r
                guard ins >= 0 && ins <= maxIn else { continue }
                let qs = a[(p + r)...], nb = b[p...]
                if qs.count - lcs(qs, nb) <= min(lcp(qs, nb), qs.count) { return true }
            }
        }
        return false
    }

    /// The guarantee: the edit loads as `applying` says, and the rest of the text is unchanged
    /// (one block of lines taken out, one put in). Returns the new text.
    @discardableResult
    static func check(_ op: KeyOperation, _ text: String, now: Int64 = now, source: SecretSource? = nil,
                      sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        let before = try load(text, now: now, sourceLocation: sourceLocation)
        let expected: KeyOperationResult
        switch before.applying(op, now: now) {
        case .success(let r): expected = r
        case .failure(let e): Issue.record("applying refused \(op.summary): \(e)", sourceLocation: sourceLocation); throw e
        }
        let new: String
        switch ConfigFileEdit.apply(op, to: text, now: now, secretSource: source) {
        case .success(let t): new = t
        case .failure(let e): Issue.record("edit refused \(op.summary): \(e)", sourceLocation: sourceLocation); throw e
        }
        if !expected.changed { #expect(new == text, sourceLocation: sourceLocation); return new }
        let after = try load(new, now: now, sourceLocation: sourceLocation)
        let d = ConfigFileEdit.keyChainDifferences(after, expected.config)
        #expect(d.isEmpty, "\(op.summary): \(d)\n\(new)", sourceLocation: sourceLocation)
        #expect(after.peers.map(\.name) == before.peers.map(\.name), sourceLocation: sourceLocation)
        let a = text.split(separator: "\n", omittingEmptySubsequences: false), b = new.split(separator: "\n", omittingEmptySubsequences: false)
        let (out, ins) = switch op { case .add: (0, 10); case .remove: (12, 0); case .prefer: (12, 13) }
        #expect(oneBlockChanged(a, b, maxOut: out, maxIn: ins), "\(op.summary): more than one block changed\n\(new)", sourceLocation: sourceLocation)
        #expect(text.hasSuffix("\n") == new.hasSuffix("\n"), sourceLocation: sourceLocation)
        return new
    }

    static func refused(_ op: KeyOperation, _ text: String, _ what: String, kind: ConfigFileEditError.Kind, source: SecretSource? = .hexadecimalString,
                        sourceLocation: SourceLocation = #_sourceLocation) {
        switch ConfigFileEdit.apply(op, to: text, now: now, secretSource: source) {
        case .success(let t): Issue.record("expected a refusal, got\n\(t)", sourceLocation: sourceLocation)
        case .failure(let e):
            #expect(e.kind == kind, "\(e)", sourceLocation: sourceLocation)
            #expect(e.description.contains(what), "\(e)", sourceLocation: sourceLocation)
            #expect(!e.fix.isEmpty, sourceLocation: sourceLocation)
        }
    }

    // MARK: hand-written files, exact results

    static let commented = """
    # top comment
    mode: host   # trailing
    key-chains:
      - name: k
        description: "a chain"
        keys:
          # About this list (detached: a blank line follows).

          # key 1: the current key
          - key-id: 1
            send-id: 1
            recv-id: 1
            crypto-algorithm: hmac-sha-256-128
            hexadecimal-string: "\(secretA)"
            # inside key 1
            send-lifetime:   { start-date-time: 2026-11-01T00:00:00Z, no-end-time: true }
            accept-lifetime: { start-date-time: 2026-10-31T12:00:00Z, no-end-time: true }

          # key 2: the older one
          - key-id: 2
            send-id: 2
            recv-id: 2
            crypto-algorithm: hmac-sha-256-128
            key-string: "another secret!!"
            send-lifetime:
              start-date-time: "2026-10-01T00:00:00Z"
              end-date-time: 2027-01-01T00:00:00Z
          # between the keys and the peers
    peers:
      - { name: b, prefix: 192.0.2.2/32, key-chain: k }   # the peer
    """

    @Test func addPutsTheKeyFirstInTheStyleOfTheEntries() throws {
        let op = KeyOperation.add(chain: "k", key: Self.key(3, sendLife: Lifetime(start: RFC3339.parse("2027-01-01T00:00:00Z")!),
                                                            acceptLife: Lifetime(start: RFC3339.parse("2026-12-31T12:00:00Z")!)), prefer: false)
        let new = try Self.check(op, Self.commented, source: .hexadecimalString)
        let expected = Self.commented.replacingOccurrences(of: "\n\n      # key 1: the current key\n", with: """


              - key-id: 3
                send-id: 3
                recv-id: 3
                crypto-algorithm: hmac-sha-256-128
                hexadecimal-string: "\(String(repeating: "42", count: 16))"
                send-lifetime:   { start-date-time: 2027-01-01T00:00:00Z, no-end-time: true }
                accept-lifetime: { start-date-time: 2026-12-31T12:00:00Z, no-end-time: true }
              # key 1: the current key

        """)
        #expect(new == expected, "\(new)")
    }

    @Test func addWithPreferPutsTheKeyLastStartingNow() throws {
        let file = try Self.keyFile(0x42)
        let op = KeyOperation.add(chain: "k", key: Self.key(3, alg: AOAlgorithm(kind: .hmacSHA256, macLength: 14), options: false), prefer: true)
        let new = try Self.check(op, Self.commented, source: .keyFile(file))
        let expected = Self.commented.replacingOccurrences(of: "          end-date-time: 2027-01-01T00:00:00Z\n", with: """
                  end-date-time: 2027-01-01T00:00:00Z
              - key-id: 3
                send-id: 3
                recv-id: 3
                crypto-algorithm: hmac-sha-256-128
                mac-length: 14
                include-tcp-options: false
                key-file: \(file)
                send-lifetime: { start-date-time: 2026-11-23T00:00:00Z, no-end-time: true }

        """)
        #expect(new == expected, "\(new)")
    }

    @Test func removeTakesTheEntryAndItsAttachedComments() throws {
        let new = try Self.check(.remove(chain: "k", keyID: 1), Self.commented)
        let lines = Self.commented.split(separator: "\n", omittingEmptySubsequences: false)
        // Lines 8 ("# key 1") to 16 (its accept-lifetime), 0-based.
        let expected = (lines[..<8] + lines[17...]).joined(separator: "\n")
        #expect(new == expected, "\(new)")
        let new2 = try Self.check(.remove(chain: "k", keyID: 2), Self.commented)
        #expect(new2 == (lines[..<18] + lines[27...]).joined(separator: "\n"), "\(new2)")
        #expect(new2.contains("# between the keys and the peers"))
    }

    @Test func preferMovesTheEntryLastAndStartsItNow() throws {
        let new = try Self.check(.prefer(chain: "k", keyID: 2), Self.commented)
        // Key 2 is last already: only its start changes (quotes kept).
        #expect(new == Self.commented.replacingOccurrences(of: "\"2026-10-01T00:00:00Z\"", with: "\"2026-11-23T00:00:00Z\""), "\(new)")
        // Then key 1, an entry with its comments, moves after key 2.
        let later = Self.now + 60
        let new2 = try Self.check(.prefer(chain: "k", keyID: 1), new, now: later)
        let lines = new.split(separator: "\n", omittingEmptySubsequences: false)
        let key1 = lines[8...16].joined(separator: "\n").replacingOccurrences(of: "2026-11-01T00:00:00Z", with: "2026-11-23T00:01:00Z")
        let expected = (lines[..<8] + lines[17...26]).joined(separator: "\n") + "\n" + key1 + "\n" + lines[27...].joined(separator: "\n")
        #expect(new2 == expected, "\(new2)")
        // Preferring the preferred key changes nothing.
        #expect(try Self.check(.prefer(chain: "k", keyID: 1), new2, now: later) == new2)
    }

    static let flowEntries = """
    key-chains:
      - name: k
        keys:
          - { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: hmac-sha-256-128, hexadecimal-string: "\(secretA)", send-lifetime: { start-date-time: 2026-11-01T00:00:00Z } }
          - { key-id: 2, send-id: 2, recv-id: 2, crypto-algorithm: hmac-sha-1-96, key-string: 'a secret of 16 b' }   # no lifetimes
      - name: other
        keys:
          - { key-id: 7, send-id: 7, recv-id: 7, crypto-algorithm: hmac-sha-1-96, hexadecimal-string: "\(secretA)" }
    peers:
      - { name: b, prefix: 192.0.2.2/32, key-chain: k }
      - { name: c, prefix: 192.0.2.3/32, key-chain: other }
    """

    @Test func flowEntriesStayFlowEntries() throws {
        let new = try Self.check(.add(chain: "k", key: Self.key(3, acceptLife: Lifetime(start: Self.now - 3600, end: Self.now + 86400 * 40)), prefer: false),
                                 Self.flowEntries, source: .hexadecimalString)
        #expect(new.contains("""
              - { key-id: 3, send-id: 3, recv-id: 3, crypto-algorithm: hmac-sha-256-128, hexadecimal-string: "\(String(repeating: "42", count: 16))", accept-lifetime: { start-date-time: 2026-11-22T23:00:00Z, end-date-time: 2027-01-02T00:00:00Z } }
              - { key-id: 1,
        """), "\(new)")
        // Key 2 has no send lifetime: one is added before the closing brace, the comment stays.
        let p = try Self.check(.prefer(chain: "k", keyID: 2), Self.flowEntries)
        #expect(p.contains("key-string: 'a secret of 16 b', send-lifetime: { start-date-time: 2026-11-23T00:00:00Z, no-end-time: true } }   # no lifetimes"), "\(p)")
        try Self.check(.remove(chain: "k", keyID: 2), Self.flowEntries)
        try Self.check(.add(chain: "other", key: Self.key(8), prefer: true), Self.flowEntries, source: .hexadecimalString)
    }

    @Test func aFileWithoutTheLastNewlineKeepsIt() throws {
        let text = Self.flowEntries.replacingOccurrences(of: "\npeers:\n  - { name: b, prefix: 192.0.2.2/32, key-chain: k }\n  - { name: c, prefix: 192.0.2.3/32, key-chain: other }", with: "")
            .replacingOccurrences(of: "key-chains:", with: "peers: [{ name: b, prefix: 192.0.2.2/32, key-chain: k }, { name: c, prefix: 192.0.2.3/32, key-chain: other }]\nkey-chains:")
        #expect(!text.hasSuffix("\n"))
        try Self.check(.add(chain: "other", key: Self.key(8), prefer: true), text, source: .hexadecimalString)
        try Self.check(.add(chain: "other", key: Self.key(8), prefer: false), text, source: .hexadecimalString)
        try Self.check(.prefer(chain: "k", keyID: 2), text)
        try Self.check(.remove(chain: "k", keyID: 2), text)
    }

    // MARK: every way of writing a send lifetime, block and flow entries

    /// Key 2's send lifetime as written (each contains now and started before key 1's, so key 1
    /// is preferred and key 2 can be).
    static let sendLifetimes: [(block: String, flow: String)] = [
        ("", ""),
        ("send-lifetime: { always: true }", ", send-lifetime: { always: true }"),
        ("send-lifetime: { start-date-time: 2026-10-01T00:00:00Z, no-end-time: true }", ", send-lifetime: { start-date-time: 2026-10-01T00:00:00Z, no-end-time: true }"),
        ("send-lifetime: { start-date-time: '2026-10-01T00:00:00+02:00', end-date-time: 2027-06-01T00:00:00Z }", ", send-lifetime: {start-date-time: '2026-10-01T00:00:00+02:00',end-date-time: 2027-06-01T00:00:00Z}"),
        ("send-lifetime: { start-date-time: 2026-10-01T00:00:00Z, duration: 8640000 }", ", send-lifetime: { start-date-time: 2026-10-01T00:00:00Z, duration: 8640000 }"),
        ("send-lifetime: { end-date-time: 2027-06-01T00:00:00Z }", ", send-lifetime: { end-date-time: 2027-06-01T00:00:00Z }"),
        ("send-lifetime: { no-end-time: true }", ", send-lifetime: { no-end-time: true }"),
        ("send-lifetime: {}", ", send-lifetime: {}"),
        ("send-lifetime:\n      always: true", ", send-lifetime: { always: true }"),
        ("send-lifetime:\n      end-date-time: \"2027-06-01T00:00:00Z\"   # comment", ", \"send-lifetime\": { \"end-date-time\": \"2027-06-01T00:00:00Z\" }"),
        ("send-lifetime:\n      start-date-time: 2026-10-01T00:00:00Z\n      duration: 8640000\n    # comment inside key 2", ", send-lifetime: { start-date-time: 2026-10-01T00:00:00Z, duration: 8640000 }"),
        ("send-accept-lifetime: { start-date-time: 2026-10-01T00:00:00Z, end-date-time: 2027-06-01T00:00:00Z }",
         ", send-accept-lifetime: { start-date-time: 2026-10-01T00:00:00Z, end-date-time: 2027-06-01T00:00:00Z }"),
        ("send-accept-lifetime:\n      start-date-time: 2026-10-01T00:00:00Z\n      duration: 86400000", ", send-accept-lifetime: { start-date-time: 2026-10-01T00:00:00Z, duration: 86400000 }"),
        ("accept-lifetime: { start-date-time: 2026-10-01T00:00:00Z }", ", accept-lifetime: { start-date-time: 2026-10-01T00:00:00Z }"),
    ]

    static func twoKeys(_ i: Int, flow: Bool, key2First: Bool) -> String {
        let (b, f) = sendLifetimes[i]
        let k1 = flow
            ? "  - { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: aes-128-cmac-96, hexadecimal-string: \"\(secretA)\", send-lifetime: { start-date-time: 2026-11-01T00:00:00Z, no-end-time: true } }\n"
            : "  - key-id: 1\n    send-id: 1\n    recv-id: 1\n    crypto-algorithm: aes-128-cmac-96\n    hexadecimal-string: \"\(secretA)\"\n    send-lifetime: { start-date-time: 2026-11-01T00:00:00Z, no-end-time: true }\n"
        let k2 = flow
            ? "  - { key-id: 2, send-id: 2, recv-id: 2, crypto-algorithm: aes-128-cmac-96, key-string: \"sixteen bytes!!!\"\(f) }\n"
            : "  # key 2\n  - key-id: 2\n    send-id: 2\n    recv-id: 2\n    crypto-algorithm: aes-128-cmac-96\n    key-string: \"sixteen bytes!!!\"\n" + (b.isEmpty ? "" : "    \(b)\n")
        return "key-chains:\n- name: k\n  keys:\n" + (key2First ? k2 + k1 : k1 + k2) + "\npeers:\n  - { name: b, prefix: 192.0.2.2/32, key-chain: k }\n"
    }

    @Test(arguments: sendLifetimes.indices) func everyLifetimeStyle(_ i: Int) throws {
        for flow in [false, true] {
            for key2First in [false, true] {
                let text = Self.twoKeys(i, flow: flow, key2First: key2First)
                let c = try Self.load(text, now: Self.now)
                #expect(c.keyChains[0].preferredSendKey(at: Self.now).map { c.keyChains[0].keys[$0].chainKeyID } == 1, "\(text)")
                let p = try Self.check(.prefer(chain: "k", keyID: 2), text)
                // And back, a minute later; then remove the one not preferred.
                let q = try Self.check(.prefer(chain: "k", keyID: 1), p, now: Self.now + 60)
                try Self.check(.remove(chain: "k", keyID: 2), q, now: Self.now + 60)
                try Self.check(.remove(chain: "k", keyID: 1), text)
                try Self.check(.remove(chain: "k", keyID: 2), text)
                try Self.check(.add(chain: "k", key: Self.key(3), prefer: false), text, source: .hexadecimalString)
                try Self.check(.add(chain: "k", key: Self.key(3, sendLife: Lifetime(end: Self.now + 86400)), prefer: true), p, source: .hexadecimalString)
            }
        }
    }

    // MARK: the examples

    static func example(_ name: String) throws -> String {
        let path = ExampleConfigTests.examples.appendingPathComponent(name).path
        return try String(contentsOfFile: path, encoding: .utf8)
            .replacingOccurrences(of: "key-string: \"REPLACE ME: ", with: "key-string: \"secret of our own for ")
    }

    @Test(arguments: ["nms.yaml", "device.yaml", "device-gateway.yaml"]) func theExamplesRotate(_ name: String) throws {
        let text = try Self.example(name)
        let chains = try Self.load(text, now: ExampleConfigTests.times[0]).keyChains.map(\.name)
        let t0 = ExampleConfigTests.times[0], t2 = ExampleConfigTests.times[2]
        let file = try Self.keyFile(0x33)
        for chain in chains {
            // nms.yaml's next rotation: key 3 accepted from 2026-12-31T12:00, sending from 2027-01-01.
            let k3 = Self.key(3, byte: 0x33, alg: .aes128CMAC_96, sendLife: Lifetime(start: RFC3339.parse("2027-01-01T00:00:00Z")!),
                              acceptLife: Lifetime(start: RFC3339.parse("2026-12-31T12:00:00Z")!))
            let a = try Self.check(.add(chain: chain, key: k3, prefer: false), text, now: t2, source: .keyFile(file))
            #expect(a.contains("      - key-id: 3\n        send-id: 3\n"), "\(a)")
            try Self.check(.add(chain: chain, key: k3, prefer: false), text, now: t2, source: .hexadecimalString)
            // An emergency key, preferred now; then back to key 1, then key 1 removed.
            let e = try Self.check(.add(chain: chain, key: Self.key(9, byte: 0x33, alg: .aes128CMAC_96), prefer: true), text, now: t0, source: .keyFile(file))
            let b = try Self.check(.prefer(chain: chain, keyID: 1), e, now: t0 + 60)
            try Self.check(.prefer(chain: chain, keyID: 9), b, now: t0 + 120)
            try Self.check(.remove(chain: chain, keyID: 2), b, now: t0 + 60)
            try Self.check(.remove(chain: chain, keyID: 1), text, now: t2)
            // The preferred key, preferred: nothing to write.
            #expect(try Self.check(.prefer(chain: chain, keyID: 2), text, now: t2) == text)
        }
    }

    // MARK: refusals

    @Test func whatTheEditorRefuses() throws {
        let t = Self.commented
        Self.refused(.add(chain: "nope", key: Self.key(3), prefer: false), t, "no key chain `nope`", kind: .unknownChain)
        Self.refused(.remove(chain: "k", keyID: 9), t, "has no key 9", kind: .unknownKey)
        Self.refused(.prefer(chain: "k", keyID: 9), t, "name one of its keys: 1, 2", kind: .unknownKey)
        Self.refused(.add(chain: "k", key: Self.key(2, send: 5, recv: 5), prefer: false), t, "already has a key 2", kind: .invalid)
        Self.refused(.add(chain: "k", key: Self.key(3), prefer: false), t, "no source", kind: .invalid, source: nil)
        Self.refused(.add(chain: "k", key: Self.key(3), prefer: false), t, "is relative", kind: .invalid, source: .keyFile("keys/k3"))
        Self.refused(.add(chain: "k", key: Self.key(3, sendLife: Lifetime(end: Self.now)), prefer: true), t, "cannot be preferred", kind: .invalid)
        let one = Self.flowEntries
        Self.refused(.remove(chain: "other", keyID: 7), one, "last key", kind: .invalid)
        let later = t.replacingOccurrences(of: "\"2026-10-01T00:00:00Z\"", with: "\"2026-12-01T00:00:00Z\"")
        Self.refused(.prefer(chain: "k", keyID: 2), later, "may not send now", kind: .invalid)

        // Layouts it does not rewrite: each says so and how to proceed.
        let anchors = t.replacingOccurrences(of: "crypto-algorithm: hmac-sha-256-128\n        hexadecimal", with: "crypto-algorithm: &alg hmac-sha-256-128\n        hexadecimal")
            .replacingOccurrences(of: "crypto-algorithm: hmac-sha-256-128\n        key-string", with: "crypto-algorithm: *alg\n        key-string")
        _ = try Self.load(anchors, now: Self.now)
        Self.refused(.remove(chain: "k", keyID: 2), anchors, "anchors and aliases", kind: .unsupported)
        #expect(ConfigFileEdit.apply(.remove(chain: "k", keyID: 2), to: anchors, now: Self.now).failureDescription?.contains("--runtime") == true)
        let flowKeys = """
        key-chains:
          - name: k
            keys: [ { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: hmac-sha-1-96, hexadecimal-string: "\(Self.secretA)" },
                    { key-id: 2, send-id: 2, recv-id: 2, crypto-algorithm: hmac-sha-1-96, hexadecimal-string: "\(Self.secretA)" } ]
        peers: [ { name: b, prefix: 192.0.2.2/32, key-chain: k } ]
        """
        _ = try Self.load(flowKeys, now: Self.now)
        Self.refused(.remove(chain: "k", keyID: 2), flowKeys, "keys: [ ... ]", kind: .unsupported)
        let flowChain = """
        key-chains:
          - { name: k, keys: [ { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: hmac-sha-1-96, hexadecimal-string: "\(Self.secretA)" } ] }
        peers: [ { name: b, prefix: 192.0.2.2/32, key-chain: k } ]
        """
        Self.refused(.add(chain: "k", key: Self.key(3), prefer: false), flowChain, "flow mapping", kind: .unsupported)
        let flowChains = "key-chains: [ { name: k, keys: [ { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: hmac-sha-1-96, hexadecimal-string: \"\(Self.secretA)\" } ] } ]\npeers: []\n"
        Self.refused(.add(chain: "k", key: Self.key(3), prefer: false), flowChains, "flow style", kind: .unsupported)
        Self.refused(.remove(chain: "k", keyID: 2), t.replacingOccurrences(of: "\n", with: "\r\n"), "CR", kind: .unsupported)
        let dashAlone = t.replacingOccurrences(of: "      - key-id: 2\n", with: "      -\n        key-id: 2\n")
        _ = try Self.load(dashAlone, now: Self.now)
        Self.refused(.remove(chain: "k", keyID: 2), dashAlone, "is not the first thing", kind: .unsupported)
        let multiLine = t.replacingOccurrences(of: "start-date-time: \"2026-10-01T00:00:00Z\"", with: "start-date-time: !!str 2026-10-01T00:00:00Z")
        _ = try Self.load(multiLine, now: Self.now)
        Self.refused(.prefer(chain: "k", keyID: 2), multiLine, "does not rewrite", kind: .unsupported)
        Self.refused(.remove(chain: "k", keyID: 2), "key-chains: [\n", "not valid YAML", kind: .invalid)
    }

    /// The self-check: a text that does not read back as the operation says is refused, and
    /// the tests' diff rule is not vacuous.
    @Test func aWrongResultDoesNotVerify() throws {
        let t = Self.commented
        let doc = try Doc(t, chain: "k")
        let entries = try doc.entries()
        let wrong = try #require(try? ConfigFileEdit.apply(.remove(chain: "k", keyID: 1), to: t, now: Self.now).get())
        #expect(throws: ConfigFileEditError.self) {
            try ConfigFileEdit.verify(.remove(chain: "k", keyID: 2), old: doc, entries: entries, newText: wrong, now: Self.now, source: nil)
        }
        let touched = t.replacingOccurrences(of: "mode: host", with: "mode: gateway")
            .replacingOccurrences(of: "      # key 2: the older one\n", with: "")
        #expect(throws: ConfigFileEditError.self) {
            try ConfigFileEdit.verify(.remove(chain: "k", keyID: 2), old: doc, entries: entries, newText: touched, now: Self.now, source: nil)
        }
        let a = t.split(separator: "\n", omittingEmptySubsequences: false)
        let b = touched.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(!Self.oneBlockChanged(a, b, maxOut: 12, maxIn: 13))
        #expect(Self.oneBlockChanged(a, Array(a[..<3] + a[4...]), maxOut: 1, maxIn: 0))
    }

    @Test func theSecretIsNeverInAnError() {
        let t = Self.commented
        for source in [SecretSource.hexadecimalString, .keyFile("rel")] {
            if case .failure(let e) = ConfigFileEdit.apply(.add(chain: "k", key: Self.key(2), prefer: false), to: t, now: Self.now, secretSource: source) {
                #expect(!e.description.contains("4242"))
            }
        }
    }
}

extension Result where Failure == ConfigFileEditError {
    var failureDescription: String? {
        if case .failure(let e) = self { return e.description }
        return nil
    }
}
