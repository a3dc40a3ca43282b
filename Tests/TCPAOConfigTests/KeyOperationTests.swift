import Foundation
import Testing
import TCPAO
@testable import TCPAOConfig

/// Runtime key changes (`Configuration.applying`): the loader's rules, nothing changed when
/// refused, preference as `preferredSendKey` defines it.
@Suite struct KeyOperationTests {
    static let now: Int64 = RFC3339.parse("2026-11-23T00:00:00Z")!

    static let yaml = """
    key-chains:
      - name: k
        keys:
          - { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: hmac-sha-256-128, hexadecimal-string: "00112233445566778899aabbccddeeff" }
      - name: other
        keys:
          - { key-id: 7, send-id: 7, recv-id: 7, crypto-algorithm: hmac-sha-1-96, hexadecimal-string: "00112233445566778899aabbccddeeff" }
    peers:
      - { name: b, prefix: 192.0.2.2/32, key-chain: k }
      - { name: c, prefix: 192.0.2.3/32, key-chain: other }
    """

    func base() throws -> Configuration {
        let (c, d) = ConfigLoader.parse(Self.yaml, now: Self.now)
        return try #require(c, "\(d)")
    }

    static func key(_ id: UInt64, send: UInt8? = nil, recv: UInt8? = nil, bytes: Int = 16,
                    alg: AOAlgorithm = .hmacSHA256_128, sendLife: Lifetime = .always, acceptLife: Lifetime = .always) -> NewKey {
        NewKey(keyID: id, sendID: send ?? UInt8(id), recvID: recv ?? UInt8(id), algorithm: alg, sendLifetime: sendLife,
               acceptLifetime: acceptLife, secret: Secret([UInt8](repeating: 0x42, count: bytes)))
    }

    func apply(_ c: Configuration, _ op: KeyOperation, at t: Int64 = now) throws -> Configuration {
        switch c.applying(op, now: t) {
        case .success(let r): return r.config
        case .failure(let e): Issue.record("refused: \(e)"); throw e
        }
    }

    func refused(_ c: Configuration, _ op: KeyOperation, _ text: String, kind: KeyOperationError.Kind = .invalid,
                 sourceLocation: SourceLocation = #_sourceLocation) {
        guard case .failure(let e) = c.applying(op, now: Self.now) else {
            Issue.record("expected \(op.summary) to be refused", sourceLocation: sourceLocation); return
        }
        #expect(e.kind == kind, "\(e)", sourceLocation: sourceLocation)
        #expect(e.description.contains(text), "\(e)", sourceLocation: sourceLocation)
        #expect(e.diagnostics.allSatisfy { !$0.fix.isEmpty }, sourceLocation: sourceLocation)
    }

    func ids(_ c: Configuration, _ chain: String = "k") -> [UInt64] {
        c.keyChains.first { $0.name == chain }!.keys.map(\.chainKeyID)
    }

    func preferred(_ c: Configuration, at t: Int64 = now) -> UInt64? {
        let ch = c.keyChains.first { $0.name == "k" }!
        return ch.preferredSendKey(at: t).map { ch.keys[$0].chainKeyID }
    }

    @Test func addWithoutPreferAcceptsTheKeyButKeepsSendingWithTheOld() throws {
        let c0 = try base()
        let c = try apply(c0, .add(chain: "k", key: Self.key(2), prefer: false))
        #expect(Set(ids(c)) == [1, 2])
        #expect(preferred(c) == 1)
        let ch = c.keyChains[0]
        #expect(ch.acceptKey(recvID: 2, at: Self.now) != nil)
        // The peers of the chain see the new chain; the other chain and its peers are untouched.
        #expect(c.peers[0].keyChain === ch)
        #expect(c.peers[1].keyChain === c0.peers[1].keyChain)
        // The unchanged key keeps its serial (cached traffic keys), the new one has its own.
        let old = c0.keyChains[0].keys[0]
        #expect(ch.keys.first { $0.chainKeyID == 1 }!.serial == old.serial)
        #expect(ch.keys.first { $0.chainKeyID == 2 }!.serial != old.serial)
        // The original configuration is unchanged (a value).
        #expect(ids(c0) == [1])
    }

    @Test func addWithPreferAndPreferMoveTheSendingKey() throws {
        let c0 = try base()
        let c1 = try apply(c0, .add(chain: "k", key: Self.key(2), prefer: true))
        #expect(preferred(c1) == 2)
        #expect(c1.keyChains[0].rnextKeyID(at: Self.now) == 2)
        let c2 = try apply(c0, .add(chain: "k", key: Self.key(2), prefer: false))
        let c3 = try apply(c2, .prefer(chain: "k", keyID: 2), at: Self.now + 5)
        #expect(preferred(c3, at: Self.now + 5) == 2)
        // Back to key 1, later; the old key was never changed, only the preferred one's start.
        let c4 = try apply(c3, .prefer(chain: "k", keyID: 1), at: Self.now + 10)
        #expect(preferred(c4, at: Self.now + 10) == 1)
        #expect(c4.keyChains[0].keys.first { $0.chainKeyID == 2 }!.sendLifetime.start == Self.now + 5)
        // Preferring the preferred key changes nothing.
        guard case .success(let r) = c4.applying(.prefer(chain: "k", keyID: 1), now: Self.now + 10) else { Issue.record("refused"); return }
        #expect(!r.changed)
        // Same second, twice: the last preferred wins (ties go to the key listed last).
        let c5 = try apply(c2, .prefer(chain: "k", keyID: 2))
        let c6 = try apply(c5, .prefer(chain: "k", keyID: 1))
        #expect(preferred(c6) == 1)
    }

    @Test func removeTakesTheKeyOut() throws {
        let c = try apply(try apply(try base(), .add(chain: "k", key: Self.key(2), prefer: true)), .remove(chain: "k", keyID: 1))
        #expect(ids(c) == [2])
        #expect(preferred(c) == 2)
        #expect(c.peers[0].keyChain.keys.map(\.chainKeyID) == [2])
    }

    @Test func badRequestsAreRefusedWithTheReason() throws {
        let c = try base()
        refused(c, .add(chain: "nope", key: Self.key(2), prefer: false), "no key chain `nope`", kind: .unknownChain)
        refused(c, .remove(chain: "k", keyID: 9), "has no key 9", kind: .unknownKey)
        refused(c, .prefer(chain: "k", keyID: 9), "has no key 9", kind: .unknownKey)
        refused(c, .remove(chain: "k", keyID: 1), "last key of chain `k`")
        refused(c, .add(chain: "k", key: Self.key(1, send: 5, recv: 5), prefer: false), "key-id 1 is used twice")
        refused(c, .add(chain: "k", key: Self.key(2, send: 1, recv: 2), prefer: false), "keys[new key-id 2].send-id: SendID 1 is also used")
        refused(c, .add(chain: "k", key: Self.key(2, send: 2, recv: 1), prefer: false), "RecvID 1 is also used")
        refused(c, .add(chain: "k", key: Self.key(2, bytes: 0), prefer: false), "the secret is empty")
        refused(c, .add(chain: "k", key: Self.key(2, bytes: 4), prefer: false), "only 4 bytes: a key added at runtime needs at least 8")
        let past = Lifetime(start: Self.now - 100, end: Self.now - 10)
        refused(c, .add(chain: "k", key: Self.key(2, sendLife: past), prefer: true), "cannot be preferred")
        refused(c, .add(chain: "k", key: Self.key(2, sendLife: Lifetime(start: 10, end: 5)), prefer: false), "ends before it starts")
        refused(c, .add(chain: "k", key: Self.key(2, send: 2), prefer: false).withKeyID(UInt64(Int32.max) + 1), "out of range")
        // A key that may not send now cannot be preferred.
        let later = try apply(c, .add(chain: "k", key: Self.key(3, sendLife: Lifetime(start: Self.now + 3600)), prefer: false))
        refused(later, .prefer(chain: "k", keyID: 3), "may not send now")
        // A removal that leaves no key to accept with now: the loader's coverage rule.
        let sendOnly = try apply(c, .add(chain: "k", key: Self.key(4, acceptLife: Lifetime(start: Self.now + 3600)), prefer: true))
        refused(sendOnly, .remove(chain: "k", keyID: 1), "no key may be used to accept now")
    }

    @Test func warningsAreTheLoadersAndNeverShowTheSecret() throws {
        guard case .success(let r) = try base().applying(.add(chain: "k", key: Self.key(2, bytes: 10, alg: .hmacSHA1_96), prefer: false), now: Self.now) else {
            Issue.record("refused"); return
        }
        #expect(r.warnings.contains { $0.message.contains("only 10 bytes") })
        #expect(r.warnings.contains { $0.message.contains("TCP-AO options of") })
        #expect(!r.warnings.contains { $0.description.contains("BBBB") })
    }

    @Test func keyFilesFollowTheLoadersRules() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("keyfile-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let f = dir + "/k"
        FileManager.default.createFile(atPath: f, contents: Data("hex:0a0b0c\n".utf8), attributes: [.posixPermissions: 0o600])
        guard case .success(let r) = KeyFile.read(f) else { Issue.record("refused"); return }
        #expect(r.bytes == [10, 11, 12] && r.warning == nil)
        chmod(f, 0o640)
        guard case .success(let g) = KeyFile.read(f) else { Issue.record("refused"); return }
        #expect(g.warning?.message.contains("readable by its group") == true)
        chmod(f, 0o644)
        guard case .failure(let p) = KeyFile.read(f) else { Issue.record("accepted a world-readable key file"); return }
        #expect(p.message.contains("readable by every user"))
    }
}

extension KeyOperation {
    func withKeyID(_ id: UInt64) -> KeyOperation {
        guard case .add(let c, var k, let p) = self else { return self }
        k.keyID = id
        return .add(chain: c, key: k, prefer: p)
    }
}
