import Foundation
import Testing
import TCPAO
import TCPAOConfig
import TCPAOTestSupport
@testable import TCPAOPcap

@Suite struct VerifyPcapTests {
    struct Vector: Decodable { let section: String; let algorithm: String; let options_included_in_mac: Bool; let packet_hex: String }
    struct File: Decodable { let vectors: [Vector] }
    static let vectors: [Vector] = {
        let url = Bundle.module.url(forResource: "rfc9235", withExtension: "json", subdirectory: "Resources")!
        return try! JSONDecoder().decode(File.self, from: Data(contentsOf: url)).vectors
    }()

    /// Key chains for the vectors: one per algorithm and option flag (they share KeyIDs 61/84,
    /// which one chain could not hold), secret "testvector".
    static let vectorConfig = """
    key-chains:
    \(["hmac-sha-1-96", "aes-128-cmac-96"].flatMap { alg in [true, false].map { inc in """
      - name: \(alg)-\(inc ? "incl" : "excl")
        keys:
          - { key-id: 1, send-id: 61, recv-id: 84, crypto-algorithm: \(alg), key-string: "testvector", include-tcp-options: \(inc) }

    """ } }.joined())
    """

    static func configuration() throws -> Configuration {
        let (c, d) = ConfigLoader.parse(vectorConfig, purpose: .keyChainsOnly, now: 0)
        return try #require(c, "\(d)")
    }

    static var vectorPackets: [[UInt8]] { vectors.map { [UInt8](hex: $0.packet_hex)! } }

    @Test func allVectorsVerify() throws {
        let packets = try PcapReader.parse(PcapWriter.data(Self.vectorPackets))
        #expect(packets.count == 32)
        var v = CaptureVerifier(configuration: try Self.configuration(), strict: true)
        let (reports, summary) = v.verify(packets)
        #expect(summary.verified == 32 && summary.failed == 0 && summary.success, "\(summary.line)")
        #expect(summary.line == "32 verified, 0 failed")
        #expect(reports.allSatisfy { $0.result == .verified })
        #expect(reports[0].key == "hmac-sha-1-96-incl/1" && reports[0].keyID == 61 && reports[1].keyID == 84)
    }

    @Test func aTamperedByteFails() throws {
        var pkts = Self.vectorPackets
        pkts[2][pkts[2].count - 5] ^= 0x20 // client data of 4.1.3, inside the BGP OPEN
        var v = CaptureVerifier(configuration: try Self.configuration())
        let (reports, summary) = v.verify(try PcapReader.parse(PcapWriter.data(pkts)))
        #expect(summary.verified == 31 && summary.failed == 1 && !summary.success)
        #expect(reports[2].result == .badMAC)
    }

    @Test func withoutTheSYNThereIsNoState() throws {
        var v = CaptureVerifier(configuration: try Self.configuration())
        let (reports, summary) = v.verify(try PcapReader.parse(PcapWriter.data(Array(Self.vectorPackets[2..<4]))))
        #expect(reports.map(\.result) == [.noState, .noState])
        #expect(!summary.success && summary.line == "0 verified, 0 failed (2 no-state)")
    }

    @Test func unknownKeyAndNoAO() throws {
        let (c, _) = ConfigLoader.parse("""
        key-chains:
          - name: other
            keys: [ { key-id: 1, send-id: 7, recv-id: 7, crypto-algorithm: hmac-sha-1-96, key-string: "something else" } ]
        """, purpose: .keyChainsOnly, now: 0)
        var v = CaptureVerifier(configuration: try #require(c))
        let b = PacketBuilder(src: "192.0.2.1", dst: "192.0.2.2", srcPort: 1, dstPort: 2)
        let (r, s) = v.verify(try PcapReader.parse(PcapWriter.data([Self.vectorPackets[0], b.segment(seq: 1, flags: 0x02)])))
        #expect(r.map(\.result) == [.unknownKeyID, .noAO])
        #expect(!s.success)
    }

    /// Strict mode: an unsigned segment inside a protected connection is a failure.
    @Test func strictCountsUnsignedSegmentsOfProtectedConnections() throws {
        var pkts = Self.vectorPackets
        // An unsigned RST from the server of the 6.1 connection (IPv6), as an attacker would inject.
        let syn = pkts[16]
        let rst = PacketBuilder(src: IPAddress(v6At: syn, 24).description, dst: IPAddress(v6At: syn, 8).description,
                                srcPort: 179, dstPort: UInt16(syn[40]) << 8 | UInt16(syn[41])).segment(seq: 5, flags: 0x04)
        pkts.insert(rst, at: 18)
        var lax = CaptureVerifier(configuration: try Self.configuration())
        #expect(lax.verify(try PcapReader.parse(PcapWriter.data(pkts))).1.success)
        var strict = CaptureVerifier(configuration: try Self.configuration(), strict: true)
        let s = strict.verify(try PcapReader.parse(PcapWriter.data(pkts))).1
        #expect(s.failed == 1 && !s.success)
    }

    /// Whole connections produced by two engines, across the 2^32 wrap (SNE 0 -> 1) and a key
    /// rollover, written to a capture: every segment verifies.
    @Test func simulatedTrafficAcrossTheWrapVerifies() throws {
        let (cfg, d) = ConfigLoader.parse("""
        key-chains:
          - name: c
            keys:
              - { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: aes-128-cmac-96, key-string: "correct horse battery" }
        """, purpose: .keyChainsOnly, now: 0)
        let config = try #require(cfg, "\(d)")
        var h = TwoHosts(configA: testConfig(peer: "198.51.100.0/24", chain: testChain(algorithm: .aes128CMAC_96)),
                         configB: testConfig(peer: "192.0.2.0/24", chain: testChain(algorithm: .aes128CMAC_96)))
        let c = PacketBuilder(src: "192.0.2.10", dst: "198.51.100.20", srcPort: 50000, dstPort: 830)
        let s = c.reversed
        var wire: [[UInt8]] = []
        func send(_ p: [UInt8], _ side: TwoHosts.Side) { if let w = h.send(p, from: side).onWire { wire.append(w) } }
        send(c.segment(seq: 0xFFFF_F000, flags: 0x02, options: PacketBuilder.synOptions()), .a)
        send(s.segment(seq: 77, ack: 0xFFFF_F001, flags: 0x12, options: PacketBuilder.synOptions()), .b)
        var seq: UInt32 = 0xFFFF_F001
        for _ in 0..<6 {
            send(c.segment(seq: seq, ack: 78, flags: 0x18, options: PacketBuilder.tsOptions(), payload: [UInt8](repeating: 1, count: 1400)), .a)
            seq &+= 1400
            send(s.segment(seq: 78, ack: seq, flags: 0x10, options: PacketBuilder.tsOptions()), .b)
        }
        #expect(wire.count == 14)
        var v = CaptureVerifier(configuration: config, strict: true)
        let (reports, summary) = v.verify(try PcapReader.parse(PcapWriter.data(wire)))
        #expect(summary.line == "14 verified, 0 failed")
        #expect(reports.compactMap(\.sne).max() == 1) // the wrap was crossed
    }

    /// Routers accept short master keys (Linux: up to 80 bytes), so a capture of a session
    /// protected with one must verify: verify-pcap never refuses a key for its strength.
    @Test func aCaptureSignedWithAShortKeyVerifies() throws {
        for (alg, secret) in [("hmac-sha-1-96", "k"), ("aes-128-cmac-96", "1234567")] {
            let (cfg, d) = ConfigLoader.parse("""
            key-chains:
              - name: short
                keys:
                  - { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: \(alg), key-string: "\(secret)" }
            """, purpose: .keyChainsOnly, now: 0)
            let config = try #require(cfg, "\(d)")
            #expect(d.errors.isEmpty && config.keyChains[0].keys[0].secret.count == secret.utf8.count)
            // The engines sign with the very key the loader produced.
            let chain = config.keyChains[0]
            var h = TwoHosts(configA: testConfig(peer: "198.51.100.0/24", chain: chain), configB: testConfig(peer: "192.0.2.0/24", chain: chain))
            let c = PacketBuilder(src: "192.0.2.10", dst: "198.51.100.20", srcPort: 50001, dstPort: 179)
            let s = c.reversed
            var wire: [[UInt8]] = []
            func send(_ p: [UInt8], _ side: TwoHosts.Side) { if let w = h.send(p, from: side).onWire { wire.append(w) } }
            send(c.segment(seq: 1000, flags: 0x02, options: PacketBuilder.synOptions()), .a)
            send(s.segment(seq: 5000, ack: 1001, flags: 0x12, options: PacketBuilder.synOptions()), .b)
            send(c.segment(seq: 1001, ack: 5001, flags: 0x18, options: PacketBuilder.tsOptions(), payload: [UInt8](repeating: 7, count: 100)), .a)
            send(s.segment(seq: 5001, ack: 1101, flags: 0x10, options: PacketBuilder.tsOptions()), .b)
            #expect(wire.count == 4, "\(alg)")
            var v = CaptureVerifier(configuration: config, strict: true)
            let (reports, summary) = v.verify(try PcapReader.parse(PcapWriter.data(wire)))
            #expect(summary.line == "4 verified, 0 failed" && summary.success, "\(alg): \(summary.line)")
            #expect(reports.allSatisfy { $0.key == "short/1" })
        }
    }

    @Test func linkTypesAndPcapng() throws {
        let ip = Self.vectorPackets[0]
        // Ethernet with a VLAN tag, Linux cooked v1 and v2: all reduce to the IP packet.
        let eth = [UInt8](repeating: 0xAA, count: 12) + [0x81, 0x00, 0, 5, 0x08, 0x00] + ip
        let sll = [UInt8](repeating: 0, count: 14) + [0x08, 0x00] + ip
        let sll2 = [0x08, 0x00] + [UInt8](repeating: 0, count: 18) + ip
        for (link, frame) in [(UInt32(1), eth), (113, sll), (276, sll2)] {
            #expect(PcapReader.strip(link, frame) == ip)
        }
        #expect(PcapReader.strip(1, [UInt8](repeating: 0, count: 12) + [0x08, 0x06] + [1, 2]) == nil) // ARP
        // A pcapng: section header, interface (Ethernet), one enhanced packet.
        func le32(_ v: Int) -> [UInt8] { [UInt8(v & 255), UInt8(v >> 8 & 255), UInt8(v >> 16 & 255), UInt8(v >> 24 & 255)] }
        let shb: [UInt8] = [0x0A, 0x0D, 0x0D, 0x0A] + le32(28) + [0x4D, 0x3C, 0x2B, 0x1A, 1, 0, 0, 0] + [UInt8](repeating: 0xFF, count: 8) + le32(28)
        let idb: [UInt8] = le32(1) + le32(20) + [1, 0, 0, 0] + le32(65535) + le32(20)
        var epbBody = le32(0) + le32(0) + le32(1_000_000) + le32(eth.count) + le32(eth.count) + eth
        while epbBody.count % 4 != 0 { epbBody.append(0) }
        let epb = le32(6) + le32(epbBody.count + 12) + epbBody + le32(epbBody.count + 12)
        let got = try PcapReader.parse(shb + idb + epb)
        #expect(got.count == 1 && got[0].ip == ip && got[0].frame == 1)
        #expect(throws: PcapError.self) { try PcapReader.parse([1, 2, 3, 4, 5]) }
        // Blocks too short for their type: an error, not a trap.
        let shortSPB: [UInt8] = le32(3) + le32(12) + le32(12)
        let shortEPB: [UInt8] = le32(6) + le32(12) + le32(12)
        #expect(throws: PcapError.self) { try PcapReader.parse(shb + idb + shortSPB) }
        #expect(throws: PcapError.self) { try PcapReader.parse(shb + idb + shortEPB) }
        #expect(throws: PcapError.self) { try PcapReader.parse(Array(PcapWriter.data([ip]).dropLast(3))) }
    }

    // MARK: the command

    static var tcpaod: URL {
        let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        return dir.appendingPathComponent("tcpaod")
    }

    static func run(_ args: [String]) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = tcpaod
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// `swift test` builds the executable product too; a missing binary is a failure, not a skip.
    @Test func theCommandExitsZeroOnlyWhenAllVerify() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.tcpaod.path), "\(Self.tcpaod.path) was not built")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vp-\(getpid())-\(Int.random(in: 0...1_000_000))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let cfg = dir.appendingPathComponent("c.yaml").path
        try Self.vectorConfig.write(toFile: cfg, atomically: true, encoding: .utf8)
        chmod(cfg, 0o600)
        let good = dir.appendingPathComponent("good.pcap").path
        FileManager.default.createFile(atPath: good, contents: Data(PcapWriter.data(Self.vectorPackets)))
        var pkts = Self.vectorPackets
        pkts[30][pkts[30].count - 1] ^= 1
        let bad = dir.appendingPathComponent("bad.pcap").path
        FileManager.default.createFile(atPath: bad, contents: Data(PcapWriter.data(pkts)))

        let (rc1, out1) = try Self.run(["verify-pcap", "--config", cfg, good])
        #expect(rc1 == 0 && out1.hasSuffix("32 verified, 0 failed\n"), "\(out1)")
        #expect(out1.contains("keyid 61 rnext 84: verified (hmac-sha-1-96-incl/1)"))
        let (rc2, out2) = try Self.run(["verify-pcap", "--config", cfg, "--quiet", bad])
        #expect(rc2 == 1 && out2 == "31 verified, 1 failed\n", "\(out2)")
        let (rc3, out3) = try Self.run(["verify-pcap", "--config", cfg, "--json", bad])
        let json = try JSONSerialization.jsonObject(with: Data(out3.utf8)) as? [String: Any]
        #expect(rc3 == 1 && (json?["segments"] as? [Any])?.count == 32 && json?["line"] as? String == "31 verified, 1 failed")
        let (rc4, out4) = try Self.run(["verify-pcap", "--config", cfg, dir.appendingPathComponent("missing.pcap").path])
        #expect(rc4 == 2 && out4.contains("missing.pcap"))
    }
}
