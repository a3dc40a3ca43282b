import Foundation
import Synchronization
import Testing
import TCPAOConfig
@testable import TCPAODaemon

/// The control protocol's codec and dispatch: every bad request gets one clear error line and
/// runs nothing.
@Suite struct ControlProtocolTests {
    /// A dispatcher with one command that counts its runs (so a refused request is seen to
    /// change nothing).
    final class Runs: Sendable {
        let count = Atomic<Int>(0)
        func load(ordering _: AtomicLoadOrdering) -> Int { count.load(ordering: .relaxed) }
        func add(_ n: Int, ordering _: AtomicUpdateOrdering) { count.add(n, ordering: .relaxed) }
    }

    static func dispatcher(_ runs: Runs) -> ControlDispatcher {
        let d = ControlDispatcher()
        d.register(ControlCommand("echo", summary: "test", arguments: ["text", "n", "flag"]) { req, w in
            runs.add(1, ordering: .relaxed)
            w.field("text", try req.string("text"))
            if let n = try req.int("n", 0...10) { w.field("n", n) }
            if let f = try req.bool("flag") { w.field("flag", f) }
        })
        d.register(ControlCommand("fails", summary: "test") { _, _ in
            throw ControlError(.unavailable, "nothing here")
        })
        d.register(ControlCommand("breaks", summary: "test") { _, _ in
            struct Oops: Error {}
            throw Oops()
        })
        return d
    }

    func answer(_ d: ControlDispatcher, _ line: String) throws -> JSONValue {
        let out = d.respond(to: Array(line.utf8))
        #expect(out.last == 0x0A)
        #expect(out.dropLast().firstIndex(of: 0x0A) == nil, "one line per answer")
        return try JSONValue.parse(out.dropLast())
    }

    @Test func aGoodRequestIsAnswered() throws {
        let runs = Runs()
        let d = Self.dispatcher(runs)
        let a = try answer(d, #"{"version":1,"command":"echo","text":"hi \"there\"\n","n":3,"flag":true,"id":42}"#)
        #expect(a["ok"] == .bool(true) && a["version"] == .int(1) && a["command"] == .string("echo"))
        #expect(a["text"] == .string("hi \"there\"\n") && a["n"] == .int(3) && a["flag"] == .bool(true))
        #expect(a["id"] == .int(42))
        #expect(runs.load(ordering: .relaxed) == 1)
    }

    @Test(arguments: [
        ("not json", "bad-json", "not valid JSON"),
        ("", "bad-json", "empty line"),
        ("   ", "bad-json", "empty line"),
        (#"{"version":1,"command":"echo""#, "bad-json", "not valid JSON"),
        (#"[1,2,3]"#, "bad-request", "a JSON object, not a list"),
        (#""status""#, "bad-request", "a JSON object, not a string"),
        (#"{"command":"echo"}"#, "bad-request", "`version` is missing"),
        (#"{"version":"1","command":"echo"}"#, "bad-request", "`version` must be a whole number"),
        (#"{"version":1.5,"command":"echo"}"#, "bad-request", "`version` must be a whole number"),
        (#"{"version":2,"command":"echo"}"#, "unsupported-version", "speaks control protocol version 1, not 2"),
        (#"{"version":0,"command":"nope"}"#, "unsupported-version", "not 0"),
        (#"{"version":1}"#, "bad-request", "`command` is missing"),
        (#"{"version":1,"command":7}"#, "bad-request", "`command` must be a string"),
        (#"{"version":1,"command":"frobnicate"}"#, "unknown-command", "unknown command `frobnicate`; commands: breaks, echo, fails, help"),
        (#"{"version":1,"command":"echo","colour":"red"}"#, "bad-request", "`echo` has no argument `colour` (it takes: text, n, flag)"),
        (#"{"version":1,"command":"help","x":1}"#, "bad-request", "it takes none"),
        (#"{"version":1,"command":"echo","version":1}"#, "bad-json", "appears twice"),
    ])
    func badRequestsGetAClearErrorAndRunNothing(line: String, code: String, says: String) throws {
        let runs = Runs()
        let d = Self.dispatcher(runs)
        let a = try answer(d, line)
        #expect(a["ok"] == .bool(false))
        #expect(a["version"] == .int(1))
        #expect(a["code"]?.string == code)
        let msg = a["error"]?.string ?? ""
        #expect(msg.contains(says), "\(msg)")
        if code == "unsupported-version" { #expect(a["versions"] == .array([.int(1)])) }
        #expect(runs.load(ordering: .relaxed) == 0)
    }

    @Test(arguments: [
        (#"{"version":1,"command":"echo","text":5}"#, "`text` must be a string, not a number"),
        (#"{"version":1,"command":"echo","n":11}"#, "`n` must be a whole number from 0 to 10"),
        (#"{"version":1,"command":"echo","n":"3"}"#, "`n` must be a whole number"),
        (#"{"version":1,"command":"echo","flag":"yes"}"#, "`flag` must be true or false, not a string"),
    ])
    func badArgumentsAreRefusedByTheHandler(line: String, says: String) throws {
        let d = Self.dispatcher(Runs())
        let a = try answer(d, line)
        #expect(a["ok"] == .bool(false) && a["code"]?.string == "bad-request")
        #expect(a["error"]?.string?.contains(says) == true, "\(a)")
    }

    @Test func handlerErrorsBecomeErrorAnswersWithTheRequestID() throws {
        let d = Self.dispatcher(Runs())
        let a = try answer(d, #"{"version":1,"command":"fails","id":"r1"}"#)
        #expect(a["ok"] == .bool(false) && a["code"]?.string == "unavailable" && a["error"]?.string == "nothing here" && a["id"] == .string("r1"))
        let b = try answer(d, #"{"version":1,"command":"breaks"}"#)
        #expect(b["ok"] == .bool(false) && b["code"]?.string == "internal")
        let c = try answer(d, #"{"version":9,"command":"echo","id":[1]}"#)
        #expect(c["id"] == .array([.int(1)]))
    }

    @Test func helpListsTheCommandsAndVersions() throws {
        let d = Self.dispatcher(Runs())
        let a = try answer(d, #"{"version":1,"command":"help"}"#)
        #expect(a["versions"] == .array([.int(1)]))
        let names = a["commands"]?.array?.compactMap { $0["name"]?.string }
        #expect(names == ["breaks", "echo", "fails", "help"])
        // Commands registered later (key management) join the same dispatcher.
        d.register(ControlCommand("later", summary: "added afterwards") { _, w in w.field("fine", true) })
        #expect(try answer(d, #"{"version":1,"command":"later"}"#)["fine"] == .bool(true))
    }

    @Test func requestsEncodeAsOneLine() throws {
        let r = ControlRequest(command: "flows", arguments: ["peer": .string("b\n")], id: .int(3))
        let line = r.encoded()
        #expect(line.last == 0x0A && line.dropLast().firstIndex(of: 0x0A) == nil)
        let d = ControlDispatcher()
        d.register(ControlCommand("flows", summary: "", arguments: ["peer"]) { req, w in w.field("peer", try req.string("peer")) })
        let a = try answer(d, String(decoding: line.dropLast(), as: UTF8.self))
        #expect(a["peer"] == .string("b\n") && a["id"] == .int(3))
    }

    // MARK: JSON

    @Test func jsonRoundTrips() throws {
        var w = JSONWriter()
        w.beginObject()
        w.field("s", "quote \" backslash \\ tab \t nl \n ctl \u{01} é 🙂")
        w.field("max", UInt64.max)
        w.field("min", Int64.min)
        w.field("neg", Int64(-5))
        w.field("nil", UInt8?.none)
        w.key("list")
        w.beginArray()
        w.int(1)
        w.beginObject()
        w.endObject()
        w.beginArray()
        w.endArray()
        w.double(2.5)
        w.endArray()
        w.field("t", true)
        w.endObject()
        let text = String(decoding: w.bytes, as: UTF8.self)
        #expect(text.contains(#""nil":null"#) && text.contains(#""list":[1,{},[],2.5]"#))
        let v = try JSONValue.parse(w.bytes)
        #expect(v["s"] == .string("quote \" backslash \\ tab \t nl \n ctl \u{01} é 🙂"))
        #expect(v["max"] == .uint(UInt64.max) && v["min"] == .int(Int64.min) && v["neg"] == .int(-5))
        #expect(v["nil"] == .null && v["t"] == .bool(true))
        #expect(v["list"] == .array([.int(1), .object([:]), .array([]), .double(2.5)]))
        // Foundation reads it too.
        #expect((try? JSONSerialization.jsonObject(with: Data(w.bytes))) != nil)
    }

    @Test func jsonParserAcceptsEscapesAndRefusesJunk() throws {
        #expect(try JSONValue.parse(#" "\u00e9\ud83d\ude42\/" "#) == .string("é🙂/"))
        #expect(try JSONValue.parse("-0.5e1") == .double(-5))
        #expect(try JSONValue.parse("18446744073709551616") == .double(18446744073709551616))
        for bad in ["01", "[1,]", "{\"a\":1,}", "\"\\ud800\"", "\"a\u{01}\"", "tru", "{\"a\" 1}", "1 2", "[" + String(repeating: "[", count: 100)] {
            #expect(throws: JSONParseError.self, "\(bad)") { try JSONValue.parse(bad) }
        }
    }

    // MARK: instances

    @Test func instancePathsAndNames() {
        #expect(RuntimePaths(instance: "").controlSocket == "/run/tcpaod/control.sock")
        #expect(RuntimePaths(instance: "default").statsFile == "/run/tcpaod/stats.json")
        #expect(RuntimePaths(instance: "ns-a").controlSocket == "/run/tcpaod/ns-a/control.sock")
        #expect(RuntimePaths(instance: "ns-a").statsFile == "/run/tcpaod/ns-a/stats.json")
        #expect(RuntimePaths.problem("site_1.b-2") == nil)
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b", String(repeating: "x", count: 33)] {
            #expect(RuntimePaths.problem(bad) != nil, "\(bad)")
        }
    }

    static let base = """
        key-chains:
          - name: k
            keys:
              - { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: hmac-sha-1-96, key-string: "a secret of some length" }
        peers:
          - { name: b, prefix: "192.0.2.2/32", key-chain: k }

        """

    @Test func instanceSettingPicksTheDefaultStatsFile() {
        let (a, _) = ConfigLoader.parse(Self.base, now: 0)
        #expect(a?.instance == "" && a?.statsFile == "/run/tcpaod/stats.json")
        let (b, _) = ConfigLoader.parse("instance: ns1\n" + Self.base, now: 0)
        #expect(b?.instance == "ns1" && b?.statsFile == "/run/tcpaod/ns1/stats.json")
        let (c, _) = ConfigLoader.parse("instance: ns1\nstats-file: /tmp/x.json\n" + Self.base, now: 0)
        #expect(c?.statsFile == "/tmp/x.json")
        let (d, _) = ConfigLoader.parse("instance: default\n" + Self.base, now: 0)
        #expect(d?.instance == "")
        let (e, diags) = ConfigLoader.parse("instance: ../etc\n" + Self.base, now: 0)
        #expect(e == nil)
        #expect(diags.contains { $0.description.contains("instance") && $0.description.contains("not an instance name") })
    }
}
