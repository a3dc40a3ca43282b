import Testing
@testable import TCPAOConfig
import TCPAO

/// `RotationSchedule` (what `tcpaod check` prints) and the loader's rotation warnings.
@Suite struct RotationScheduleTests {
    static let now = t("2026-11-23T00:00:00Z")
    static func t(_ s: String) -> Int64 { RFC3339.parse(s)! }

    /// One key: its send and accept lifetimes as (start, end) with nil for "none" (no
    /// start-date-time, or no-end-time).
    struct Key {
        var id: Int
        var send: (String?, String?)
        var accept: (String?, String?)
        init(_ id: Int, send: (String?, String?), accept: (String?, String?)? = nil) {
            self.id = id
            self.send = send
            self.accept = accept ?? send
        }
    }

    static func lifetime(_ l: (String?, String?)) -> String {
        var f: [String] = []
        if let s = l.0 { f.append("start-date-time: \(s)") }
        f.append(l.1.map { "end-date-time: \($0)" } ?? "no-end-time: true")
        return "{ \(f.joined(separator: ", ")) }"
    }

    /// A chain `c` of these keys, keys[i] on line 4 + i.
    static func yaml(_ keys: [Key]) -> String {
        let lines = keys.map { k in
            "      - { key-id: \(k.id), send-id: \(k.id), recv-id: \(k.id), crypto-algorithm: aes-128-cmac-96, key-string: \"a sixteen byte key \(k.id)\", "
                + "send-lifetime: \(lifetime(k.send)), accept-lifetime: \(lifetime(k.accept)) }"
        }
        return """
        key-chains:
          - name: c
            keys:
        \(lines.joined(separator: "\n"))
        peers:
          - { name: p, prefix: 192.0.2.0/24, ports: [830, 9339], key-chain: c }
        """
    }

    func load(_ keys: [Key], now: Int64 = now) -> (Configuration?, [Diagnostic]) {
        ConfigLoader.parse(Self.yaml(keys), file: "r.yaml", now: now)
    }

    func schedule(_ keys: [Key], now: Int64 = now, sourceLocation: SourceLocation = #_sourceLocation) throws -> (RotationSchedule, [Diagnostic]) {
        let (cfg, d) = load(keys, now: now)
        let c = try #require(cfg, "\(d)", sourceLocation: sourceLocation)
        return (RotationSchedule(chain: c.keyChains[0], now: now), d)
    }

    /// Monthly keys the applicability draft's way: key i sends from `sends[i]` to `sends[i+1]`
    /// (the last with no end), accepted from 12 h before until 12 h after.
    static func monthly(_ sends: [String], lead: Int64 = 43200, tail: Int64 = 43200) -> [Key] {
        sends.indices.map { i in
            let end = i + 1 < sends.count ? sends[i + 1] : nil
            return Key(i + 1, send: (sends[i], end),
                       accept: (RFC3339.format(t(sends[i]) - lead), end.map { RFC3339.format(t($0) + tail) }))
        }
    }

    // MARK: schedules

    @Test func oneKeyAlways() throws {
        let (s, d) = try schedule([Key(1, send: (nil, nil))])
        #expect(s.current == 0 && s.handOvers.isEmpty && s.sendEnd == .max && s.acceptEnd == .max)
        #expect(d.isEmpty, "\(d)")
    }

    @Test func twoKeysWithTheDraftsTwentyFourHourOverlap() throws {
        let (s, d) = try schedule(Self.monthly(["2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"]))
        #expect(d.isEmpty, "\(d)")
        #expect(s.current == 0 && s.sendEnd == .max && s.acceptEnd == .max)
        let h = try #require(s.handOvers.first)
        #expect(s.handOvers.count == 1)
        #expect(h.from == 0 && h.to == 1 && h.at == Self.t("2026-12-01T00:00:00Z") && h.resumes == nil)
        #expect(h.bothAccepted == Lifetime(start: Self.t("2026-11-30T12:00:00Z"), end: Self.t("2026-12-01T12:00:00Z")))
        #expect(h.overlap == 86400 && h.lead == 43200 && h.tail == 43200 && h.isHitless)
        #expect(s.relative(h.at) == "in 8 d" && RotationSchedule.span(h.overlap) == "24 h")
        #expect(RotationSchedule.shortDate(h.bothAccepted!.start) == "2026-11-30T12:00Z")
    }

    @Test func threeKeys() throws {
        let (s, d) = try schedule(Self.monthly(["2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"]))
        #expect(d.isEmpty, "\(d)")
        #expect(s.handOvers.map(\.from) == [0, 1] && s.handOvers.map(\.to) == [1, 2])
        #expect(s.handOvers.map(\.at) == [Self.t("2026-12-01T00:00:00Z"), Self.t("2027-01-01T00:00:00Z")])
        #expect(s.handOvers.allSatisfy { $0.overlap == 86400 && $0.isHitless } && s.sendEnd == .max)
        // Later, the first hand-over is history: only the second is listed.
        let (later, d2) = try schedule(Self.monthly(["2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"]),
                                       now: Self.t("2026-12-15T00:00:00Z"))
        #expect(d2.isEmpty, "\(d2)")
        #expect(later.current == 1 && later.handOvers.map(\.to) == [2])
    }

    @Test func manyKeys() throws {
        let months = (1...12).map { "2027-\($0 < 10 ? "0" : "")\($0)-01T00:00:00Z" }
        let (s, d) = try schedule(Self.monthly(["2026-11-01T00:00:00Z"] + months))
        #expect(d.isEmpty, "\(d)")
        #expect(s.handOvers.count == 12 && s.handOvers.allSatisfy(\.isHitless) && s.handOvers.last?.to == 12)
    }

    @Test func keysWithNoEndTime() throws {
        // Both send with no end: the one that started last is preferred from its start on.
        let (s, d) = try schedule([Key(1, send: ("2026-01-01T00:00:00Z", nil)),
                                   Key(2, send: ("2026-12-01T00:00:00Z", nil), accept: ("2026-11-01T00:00:00Z", nil))])
        #expect(d.warnings.isEmpty, "\(d)")
        let h = try #require(s.handOvers.first)
        #expect(s.handOvers.count == 1 && h.to == 1 && h.at == Self.t("2026-12-01T00:00:00Z"))
        #expect(h.overlap == .max && h.lead == 30 * 86400 && h.tail == .max && h.isHitless && s.sendEnd == .max)
    }

    @Test func allKeysExpired() {
        let keys = [Key(1, send: ("2025-01-01T00:00:00Z", "2025-06-01T00:00:00Z")),
                    Key(2, send: ("2025-06-01T00:00:00Z", "2026-01-01T00:00:00Z"))]
        // The loader refuses it (no key now); the schedule says so, and warns of nothing more.
        let (cfg, d) = load(keys)
        #expect(cfg == nil && d.errors.contains { $0.message.contains("no key may be used to send now") })
        #expect(!d.contains { $0.message.contains("last key that may send") || $0.message.contains("hitless") })
        let chain = KeyChain(name: "c", keys: [1, 2].map {
            MKT(chainKeyID: UInt64($0), sendID: UInt8($0), recvID: UInt8($0), algorithm: .aes128CMAC_96,
                sendLifetime: Lifetime(start: Self.t("2025-01-01T00:00:00Z"), end: Self.t($0 == 1 ? "2025-06-01T00:00:00Z" : "2026-01-01T00:00:00Z")),
                acceptLifetime: Lifetime(start: Self.t("2025-01-01T00:00:00Z"), end: Self.t("2026-01-01T00:00:00Z")),
                secret: Secret(Array("a sixteen byte key".utf8)))
        })
        let s = RotationSchedule(chain: chain, now: Self.now)
        #expect(s.current == nil && s.handOvers.isEmpty && s.sendEnd == Self.now && s.acceptEnd == Self.t("2026-01-01T00:00:00Z"))
    }

    // MARK: warnings

    @Test func thirtyMinutesOfOverlapWarnsOnBothKeys() throws {
        let keys = Self.monthly(["2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"], lead: 900, tail: 900)
        let (s, d) = try schedule(keys)
        let h = try #require(s.handOvers.first)
        #expect(h.overlap == 1800 && !h.isHitless && s.shortOverlaps.count == 1)
        let w = d.warnings.filter { $0.message.contains("not hitless") }
        #expect(w.count == 2, "\(d)")
        // The new key: accepted too late; the old key: accepted too briefly after. Each on its key.
        let new = try #require(w.first { $0.path == "key-chains[c].keys[1].accept-lifetime" }, "\(w)")
        #expect(new.line == 5 && new.message.contains("both are accepted for 30 min") && new.message.contains("15 min before it starts sending"))
        #expect(new.message.contains("2026-12-01T00:00:00Z (in 8 d)") && new.fix.contains("at least 1 h before"))
        let old = try #require(w.first { $0.path == "key-chains[c].keys[0].accept-lifetime" }, "\(w)")
        #expect(old.line == 4 && old.message.contains("15 min after it stops sending") && old.fix.contains("at least 1 h after 2026-12-01T00:00:00Z"))
        #expect(w.allSatisfy { $0.severity == .warning && !$0.fix.isEmpty })
    }

    @Test func anHourEachSideIsEnough() throws {
        let (_, d) = try schedule(Self.monthly(["2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"], lead: 3600, tail: 3600))
        #expect(d.isEmpty, "\(d)")
        let (_, d2) = try schedule(Self.monthly(["2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"], lead: 3599, tail: 3600))
        #expect(d2.warnings.count == 1 && d2.warnings[0].path == "key-chains[c].keys[1].accept-lifetime", "\(d2)")
    }

    /// 24 h of overlap, all of it before the hand-over: the old key stops being accepted the
    /// moment the new one sends, so a peer whose clock is behind is refused. Not hitless.
    @Test func anOverlapAllBeforeTheHandOverWarns() throws {
        let (s, d) = try schedule(Self.monthly(["2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"], lead: 86400, tail: 0))
        #expect(s.handOvers[0].overlap == 86400 && s.handOvers[0].tail == 0)
        #expect(d.warnings.count == 1 && d.warnings[0].path == "key-chains[c].keys[0].accept-lifetime", "\(d)")
    }

    @Test func aNewKeyAcceptedOnlyAfterItSendsWarns() throws {
        let (s, d) = try schedule(Self.monthly(["2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"], lead: -7200))
        #expect(s.handOvers[0].lead == -7200)
        #expect(d.warnings.contains { $0.message.contains("accepted only from 2026-12-01T02:00:00Z, 2 h after it starts sending") }, "\(d)")
    }

    /// The old key keeps its send lifetime (no end) but stops being accepted: a connection idle
    /// across the hand-over still sends with it then.
    @Test func anOldKeySentWithNoEndButAcceptedUntilADateWarns() throws {
        let (s, d) = try schedule([Key(1, send: ("2026-11-01T00:00:00Z", nil), accept: ("2026-11-01T00:00:00Z", "2026-12-02T00:00:00Z")),
                                   Key(2, send: ("2026-12-01T00:00:00Z", nil), accept: ("2026-11-30T00:00:00Z", nil))])
        #expect(s.handOvers.count == 1 && s.handOvers[0].tail == .min)
        let w = try #require(d.warnings.first { $0.path == "key-chains[c].keys[0].accept-lifetime" }, "\(d)")
        #expect(w.message.contains("may be sent with no end") && w.fix.contains("end key 1's send-lifetime at 2026-12-01T00:00:00Z"))
    }

    @Test func aKeyWithNoSuccessorWarnsWithTheDate() throws {
        let (s, d) = try schedule([Key(1, send: ("2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"), accept: ("2026-01-01T00:00:00Z", nil))])
        let h = try #require(s.lastSend)
        #expect(h.from == 0 && h.to == nil && h.at == Self.t("2027-01-01T00:00:00Z") && s.sendEnd == h.at)
        let w = try #require(d.warnings.first { $0.path == "key-chains[c].keys[0].send-lifetime" }, "\(d)")
        #expect(w.line == 4 && w.message.contains("key 1 is the last key that may send") && w.message.contains("2027-01-01T00:00:00Z (in 39 d)"))
        #expect(w.fix.contains("no-end-time"))
        // Said once, on the key (not also as the chain's "every key's send-lifetime ends").
        #expect(d.warnings.count == 1, "\(d)")
        // The last of three keys.
        var keys = Self.monthly(["2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"])
        keys[2].send.1 = "2027-02-01T00:00:00Z"
        let (s3, d3) = try schedule(keys)
        #expect(s3.handOvers.map(\.to) == [1, 2, nil] && s3.lastSend?.from == 2)
        #expect(d3.warnings.map(\.path) == ["key-chains[c].keys[2].send-lifetime"], "\(d3)")
        #expect(d3.warnings[0].message.contains("key 3 is the last key that may send: its send-lifetime ends 2027-02-01T00:00:00Z (in 70 d)"))
    }

    @Test func aGapIsAnErrorNotANoSuccessorWarning() {
        let (cfg, d) = load([Key(1, send: ("2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"), accept: ("2026-01-01T00:00:00Z", nil)),
                             Key(2, send: ("2027-02-01T00:00:00Z", nil), accept: ("2026-12-01T00:00:00Z", nil))])
        #expect(cfg == nil && d.errors.contains { $0.message.contains("no key may be used to send from 2027-01-01T00:00:00Z until 2027-02-01T00:00:00Z") })
        #expect(!d.contains { $0.message.contains("last key that may send") }, "\(d)")
        let chain = KeyChain(name: "c", keys: [
            MKT(chainKeyID: 1, sendID: 1, recvID: 1, algorithm: .aes128CMAC_96,
                sendLifetime: Lifetime(start: Self.t("2026-01-01T00:00:00Z"), end: Self.t("2027-01-01T00:00:00Z")), secret: Secret([1, 2, 3])),
            MKT(chainKeyID: 2, sendID: 2, recvID: 2, algorithm: .aes128CMAC_96,
                sendLifetime: Lifetime(start: Self.t("2027-02-01T00:00:00Z")), secret: Secret([4, 5, 6])),
        ])
        let s = RotationSchedule(chain: chain, now: Self.now)
        #expect(s.handOvers.count == 1 && s.handOvers[0].to == nil && s.handOvers[0].resumes == Self.t("2027-02-01T00:00:00Z"))
        #expect(s.lastSend == nil && s.sendEnd == Self.t("2027-01-01T00:00:00Z"))
    }

    /// A hand-over that is over is history: its overlap is not judged any more.
    @Test func aPastHandOverDoesNotWarn() throws {
        let (s, d) = try schedule(Self.monthly(["2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z"], lead: 60, tail: 60))
        #expect(s.current == 1 && s.handOvers.isEmpty)
        #expect(d.isEmpty, "\(d)")
    }

    @Test func spans() {
        #expect(RotationSchedule.span(45) == "45 s" && RotationSchedule.span(1800) == "30 min" && RotationSchedule.span(3600) == "1 h" && RotationSchedule.span(5400) == "90 min")
        #expect(RotationSchedule.span(86400) == "24 h" && RotationSchedule.span(30 * 86400) == "30 d")
        let s = RotationSchedule(chain: KeyChain(name: "c", keys: []), now: 1000)
        #expect(s.relative(1000 + 7200) == "in 2 h" && s.relative(1000 - 7200) == "2 h ago" && s.relative(.max) == "never")
    }
}
