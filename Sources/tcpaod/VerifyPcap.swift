import ArgumentParser
import Foundation
import TCPAO
import TCPAOConfig
import TCPAOPcap

struct VerifyPcap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify-pcap",
        abstract: "Check the TCP-AO MAC of every segment of a packet capture.",
        discussion: """
        Follows each TCP connection from its SYN (ISNs, SNE), picks the MKT by the segment's KeyID among the \
        key chains of the configuration (only `key-chains` is needed), and reports per segment: verified, \
        bad-mac, unknown-key-id, no-ao, no-state (connection started before the capture), malformed.
        Reads pcap and pcapng; Ethernet, raw IP and Linux cooked captures.
        Exit status 0 only when at least one segment was verified and none failed.
        """)

    @Option(name: .shortAndLong, help: "Configuration file (its key-chains are used).")
    var config: String

    @Argument(help: "The capture (pcap or pcapng).")
    var capture: String

    @Flag(help: "Print the per-segment results and the summary as JSON.")
    var json = false

    @Flag(help: "Print only the summary line.")
    var quiet = false

    @Flag(help: "Also count as failed: segments without TCP-AO in connections that use it, unknown KeyIDs, malformed segments.")
    var strict = false

    func run() throws {
        let cfg = try loadConfiguration(config, purpose: .keyChainsOnly, quietWarnings: true)
        let packets: [CapturedPacket]
        do { packets = try PcapReader.read(path: capture) } catch {
            FileHandle.standardError.write(Data("tcpaod: \(capture): \(error)\n".utf8))
            throw ExitCode(2)
        }
        var v = CaptureVerifier(configuration: cfg, strict: strict)
        let (reports, summary) = v.verify(packets)
        if json {
            struct Out: Encodable { let segments: [SegmentReport]; let summary: VerifySummary; let line: String }
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try enc.encode(Out(segments: reports, summary: summary, line: summary.line)), as: UTF8.self))
        } else {
            if !quiet {
                let t0 = reports.first?.time ?? 0
                for r in reports {
                    let ep = { (a: String, p: UInt16) in a.contains(":") ? "[\(a)]:\(p)" : "\(a):\(p)" }
                    let ids = r.keyID.map { k in "keyid \(k) rnext \(r.rnextKeyID ?? 0)" } ?? "-"
                    var res = r.result.rawValue
                    if let k = r.key { res += " (\(k))" }
                    if let d = r.detail { res += " (\(d))" }
                    print(String(format: "%6d %10.6f ", r.frame, r.time - t0) + "\(ep(r.src, r.srcPort)) > \(ep(r.dst, r.dstPort)) [\(r.flags)] seq \(r.seq) len \(r.payload) \(ids): \(res)")
                }
            }
            print(summary.line)
        }
        if !summary.success { throw ExitCode(1) }
    }
}
