import Foundation
import Testing
import TCPAO
import TCPAOConfig
@testable import TCPAODaemon

/// key-add, key-remove, key-prefer requests: parsed strictly (a bad one runs nothing), the
/// secret never echoed; a removal refused while connections use the key.
@Suite struct KeyCommandTests {
    static let secret = "00112233445566778899aabbccddeeff"

    static func addLine(_ extra: String = "") -> String {
        #"{"version":1,"command":"key-add","chain":"k","key_id":2,"send_id":2,"recv_id":2,"algorithm":"hmac-sha-256-128","secret_hex":"\#(secret)"\#(extra)}"#
    }

    /// A dispatcher with the key commands' argument lists, whose handler only parses.
    static func dispatcher(_ parsed: @escaping @Sendable (KeyOperation) -> Void) -> ControlDispatcher {
        let d = ControlDispatcher()
        for (name, args) in [("key-add", KeyRequests.addArguments), ("key-remove", KeyRequests.keyArguments), ("key-prefer", KeyRequests.keyArguments)] {
            d.register(ControlCommand(name, summary: "test", arguments: args) { req, w in
                let op = try KeyRequests.operation(req)
                parsed(op)
                w.field("summary", op.summary)
            })
        }
        return d
    }

    func answer(_ line: String) -> (JSONValue, String, KeyOperation?) {
        final class Box: @unchecked Sendable { var op: KeyOperation? }
        let box = Box()
        let raw = Self.dispatcher { box.op = $0 }.respond(to: Array(line.utf8))
        let text = String(decoding: raw, as: UTF8.self)
        return (try! JSONValue.parse(raw.dropLast()), text, box.op)
    }

    @Test func aGoodAddIsParsedAndTheSecretNeverAnswered() throws {
        let (v, text, op) = answer(Self.addLine(#","prefer":true,"send_lifetime":{"start":null,"end":null},"accept_lifetime":{"start":5}"#))
        #expect(v["ok"]?.bool == true, "\(text)")
        #expect(!text.contains(Self.secret))
        guard case .add(let chain, let k, let prefer)? = op else { Issue.record("not an add"); return }
        #expect(chain == "k" && k.keyID == 2 && k.sendID == 2 && k.recvID == 2 && prefer)
        #expect(k.algorithm == .hmacSHA256_128 && k.secret.count == 16 && k.includeOptions)
        #expect(k.sendLifetime == .always && k.acceptLifetime == Lifetime(start: 5))
        #expect(!"\(k.secret)".contains("00112233"))
    }

    @Test(arguments: [
        (#"{"version":1,"command":"key-add","chain":"k","key_id":2,"send_id":2,"recv_id":2,"algorithm":"hmac-sha-256-128"}"#, "`secret_hex` is missing"),
        (addLine(#","secret":"x""#), "has no argument `secret`"),
        (#"{"version":1,"command":"key-add","chain":"k","key_id":2,"send_id":2,"recv_id":2,"algorithm":"md5","secret_hex":"00"}"#, "`md5` is not a supported algorithm"),
        (#"{"version":1,"command":"key-add","chain":"k","key_id":2,"send_id":256,"recv_id":2,"algorithm":"hmac-sha-1-96","secret_hex":"00"}"#, "`send_id` must be a whole number from 0 to 255"),
        (#"{"version":1,"command":"key-add","chain":"k","key_id":2,"send_id":2,"recv_id":2,"algorithm":"hmac-sha-1-96","secret_hex":"0g"}"#, "not an even number of hexadecimal digits"),
        (addLine(#","send_lifetime":{"start":10,"end":5}"#), "ends before it starts"),
        (addLine(#","send_lifetime":{"begin":10}"#), "has no member `begin`"),
        (addLine(#","mac_length":40"#), "longer than"),
        (#"{"version":1,"command":"key-remove","chain":"k"}"#, "`key_id` is missing"),
        (#"{"version":1,"command":"key-prefer","key_id":1}"#, "`chain` is missing"),
        (#"{"version":1,"command":"key-remove","chain":"k","key_id":-1}"#, "`key_id` must be a whole number"),
    ])
    func badRequestsRunNothing(line: String, reason: String) {
        let (v, text, op) = answer(line)
        #expect(v["ok"]?.bool == false && op == nil, "\(text)")
        #expect(v["error"]?.string?.contains(reason) == true, "\(text)")
        #expect(!text.contains(Self.secret))
    }

    @Test func removalIsRefusedWhileAConnectionUsesTheKey() throws {
        let yaml = """
        key-chains:
          - name: k
            keys:
              - { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: hmac-sha-1-96, hexadecimal-string: "\(Self.secret)" }
              - { key-id: 2, send-id: 2, recv-id: 2, crypto-algorithm: hmac-sha-1-96, hexadecimal-string: "\(Self.secret)" }
        peers:
          - { name: b, prefix: 192.0.2.2/32, key-chain: k }
        """
        let (c, d) = ConfigLoader.parse(yaml, now: 1_800_000_000)
        let cfg = try #require(c, "\(d)")
        let key = FlowKey(local: IPAddress("192.0.2.1")!, remote: IPAddress("192.0.2.2")!, localPort: 40000, remotePort: 179)
        func chunk(_ send: UInt8, _ recv: UInt8, _ phase: FlowState.Phase = .established) -> [FlowChunk] {
            [FlowChunk(queue: 100, peers: ["b"], flows: [FlowInfo(key: key, peer: 0, phase: phase, createdAt: 0, lastSeen: 0,
                                                                 currentSendID: send, lastRecvKeyID: recv)])]
        }
        let remove1 = KeyOperation.remove(chain: "k", keyID: 1)
        let why = try #require(KeyRequests.removalRefusal(remove1, config: cfg, flows: chunk(1, 1)))
        #expect(why.contains("1 connection(s) of peer b send with it") && why.contains("tcpaod key prefer"))
        #expect(KeyRequests.removalRefusal(remove1, config: cfg, flows: chunk(2, 1))?.contains("last received it") == true)
        #expect(KeyRequests.removalRefusal(remove1, config: cfg, flows: chunk(2, 2)) == nil)
        #expect(KeyRequests.removalRefusal(remove1, config: cfg, flows: chunk(1, 1, .finished)) == nil)
        #expect(KeyRequests.removalRefusal(remove1, config: cfg, flows: []) == nil)
    }

    @Test func theKeysAnswerListsTheRuntimeChanges() throws {
        var w = JSONWriter()
        w.beginObject()
        ControlViews.writeKeys(config: Configuration(file: "x"), counters: CounterSnapshot(), usage: KeyUsage([]), now: 0,
                               runtimeChanges: ["key 2 removed from chain k"], into: &w)
        w.endObject()
        let v = try JSONValue.parse(w.bytes)
        #expect(v["runtime_changes"]?.array == [.string("key 2 removed from chain k")])
    }
}
