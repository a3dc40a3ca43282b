import TCPAO
import TCPAOConfig

/// What verify-pcap concludes about one TCP segment.
public enum SegmentResult: String, Sendable, Codable, CaseIterable {
    /// The MAC checks out with an MKT of the configuration.
    case verified
    /// An MKT with the segment's KeyID exists, but the MAC does not match.
    case badMAC = "bad-mac"
    /// No MKT in the configuration has the segment's KeyID.
    case unknownKeyID = "unknown-key-id"
    /// The segment carries no TCP-AO option.
    case noAO = "no-ao"
    /// The connection's SYN (its ISNs) is not in the capture, so no traffic key can be derived.
    case noState = "no-state"
    /// The segment cannot be parsed (or its TCP-AO option is malformed).
    case malformed
}

public struct SegmentReport: Sendable, Codable {
    public var frame: Int
    public var time: Double
    public var src: String
    public var dst: String
    public var srcPort: UInt16
    public var dstPort: UInt16
    public var flags: String
    public var seq: UInt32
    public var ack: UInt32
    public var payload: Int
    /// The IP packet's length on the wire.
    public var length: Int = 0
    public var keyID: UInt8?
    public var rnextKeyID: UInt8?
    public var sne: UInt32?
    public var result: SegmentResult
    /// Which MKT verified it: "chain/key-id".
    public var key: String?
    public var detail: String?
}

public struct VerifySummary: Sendable, Codable {
    public var counts: [String: Int]
    public var verified: Int { counts[SegmentResult.verified.rawValue] ?? 0 }
    public var failed: Int
    public var strict: Bool

    /// `N verified, M failed` followed by the other categories.
    public var line: String {
        var s = "\(verified) verified, \(failed) failed"
        let others = SegmentResult.allCases.filter { $0 != .verified && $0 != .badMAC }
            .compactMap { r -> String? in
                let n = counts[r.rawValue] ?? 0
                return n > 0 ? "\(n) \(r.rawValue)" : nil
            }
        if !others.isEmpty { s += " (" + others.joined(separator: ", ") + ")" }
        return s
    }

    /// 0 only when something was verified and nothing failed.
    public var success: Bool { verified > 0 && failed == 0 }
}

/// Follows each TCP connection of a capture from its SYN (ISNs, SNE per direction) and checks
/// every segment's MAC with the MKTs of the configuration, chosen by the segment's KeyID.
public struct CaptureVerifier {
    struct Conversation {
        var client: IPAddress
        var clientPort: UInt16
        var clientISN: UInt32
        var serverISN: UInt32?
        var clientSNE: SNETracker
        var serverSNE: SNETracker
    }

    struct ConvKey: Hashable, Sendable {
        var a: IPAddress, b: IPAddress, pa: UInt16, pb: UInt16
        init(_ s: TCPSegment) {
            if (s.src, s.srcPort) < (s.dst, s.dstPort) { a = s.src; pa = s.srcPort; b = s.dst; pb = s.dstPort }
            else { a = s.dst; pa = s.dstPort; b = s.src; pb = s.srcPort }
        }
    }

    let keys: [(chain: String, mkt: MKT)]
    /// Strict mode: a segment without TCP-AO in a connection that uses TCP-AO, or with an
    /// unknown KeyID, counts as failed ("every segment of a protected flow is signed").
    public var strict: Bool
    var conversations: [ConvKey: Conversation] = [:]

    public init(configuration: Configuration, strict: Bool = false) {
        keys = configuration.keyChains.flatMap { c in c.keys.map { (c.name, $0) } }
        self.strict = strict
    }

    public mutating func verify(_ packets: [CapturedPacket]) -> ([SegmentReport], VerifySummary) {
        var reports: [(SegmentReport, ConvKey?)] = []
        var protected = Set<ConvKey>()
        for p in packets {
            if let (r, k) = verify(p) {
                reports.append((r, k))
                if let k, r.keyID != nil { protected.insert(k) }
            }
        }
        var counts: [String: Int] = [:]
        var failed = 0
        for (r, k) in reports {
            counts[r.result.rawValue, default: 0] += 1
            switch r.result {
            case .badMAC: failed += 1
            // Strict: an unsigned segment of a connection that uses TCP-AO (anywhere in the
            // capture), an unknown KeyID or a malformed segment is a failure too.
            case .noAO where strict: if let k, protected.contains(k) { failed += 1 }
            case .unknownKeyID where strict, .malformed where strict: failed += 1
            default: break
            }
        }
        return (reports.map(\.0), VerifySummary(counts: counts, failed: failed, strict: strict))
    }

    mutating func verify(_ p: CapturedPacket) -> (SegmentReport, ConvKey?)? {
        var bytes = p.ip
        return bytes.withUnsafeMutableBytes { buf -> (SegmentReport, ConvKey?)? in
            let ptr = buf.baseAddress!
            let ip: IPHeaderInfo
            do throws(PacketError) { ip = try IPHeaderInfo.parse(ptr, count: buf.count) } catch {
                // A frame cut short by the capture's snaplen cannot be checked: say so, never skip it.
                guard error == .truncated, buf.count >= 20 else { return nil }
                let isV6 = ptr.load(as: UInt8.self) >> 4 == 6
                guard (isV6 ? ptr.load(fromByteOffset: 6, as: UInt8.self) : ptr.load(fromByteOffset: 9, as: UInt8.self)) == Spec.ipProtoTCP,
                      !isV6 || buf.count >= 40 else { return nil }
                let src = isV6 ? IPAddress(v6At: ptr, 8) : IPAddress(v4At: ptr, 12)
                let dst = isV6 ? IPAddress(v6At: ptr, 24) : IPAddress(v4At: ptr, 16)
                let full = isV6 ? 40 + Int(UInt16(ptr.load(fromByteOffset: 4, as: UInt8.self)) << 8 | UInt16(ptr.load(fromByteOffset: 5, as: UInt8.self)))
                                : Int(UInt16(ptr.load(fromByteOffset: 2, as: UInt8.self)) << 8 | UInt16(ptr.load(fromByteOffset: 3, as: UInt8.self)))
                let r = SegmentReport(frame: p.frame, time: p.time, src: src.description, dst: dst.description, srcPort: 0, dstPort: 0,
                                      flags: "", seq: 0, ack: 0, payload: 0, length: full, result: .malformed,
                                      detail: "captured \(buf.count) of \(full) bytes: capture with a larger snaplen (tcpdump -s 0)")
                return (r, nil)
            }
            guard ip.protocolNumber == Spec.ipProtoTCP else { return nil }
            var r = SegmentReport(frame: p.frame, time: p.time, src: ip.src.description, dst: ip.dst.description, srcPort: 0, dstPort: 0,
                                  flags: "", seq: 0, ack: 0, payload: 0, result: .malformed)
            let seg: TCPSegment
            do throws(PacketError) { seg = try TCPSegment.parse(ptr, count: buf.count) } catch {
                r.detail = error.name
                return (r, nil)
            }
            r.srcPort = seg.srcPort; r.dstPort = seg.dstPort; r.seq = seg.seq; r.ack = seg.ack
            r.payload = seg.payloadLength
            r.length = seg.length
            r.flags = CaptureVerifier.flagString(seg.flags)
            let ck = ConvKey(seg)
            // Connection tracking from the SYN: a SYN without ACK starts (or restarts) it.
            if seg.isSYNWithoutACK {
                if conversations[ck]?.clientISN != seg.seq || conversations[ck]?.client != seg.src {
                    conversations[ck] = Conversation(client: seg.src, clientPort: seg.srcPort, clientISN: seg.seq, serverISN: nil,
                                                     clientSNE: SNETracker(isn: seg.seq), serverSNE: SNETracker(isn: 0))
                }
            } else if seg.isSYN, var c = conversations[ck], c.client == seg.dst, c.serverISN != seg.seq {
                c.serverISN = seg.seq
                c.serverSNE = SNETracker(isn: seg.seq)
                conversations[ck] = c
            }
            guard seg.hasAO else {
                r.result = .noAO
                return (r, ck)
            }
            let keyID = seg.aoKeyID(ptr)
            r.keyID = keyID
            r.rnextKeyID = seg.aoRNextKeyID(ptr)
            guard var c = conversations[ck] else { r.result = .noState; return (r, ck) }
            let fromClient = seg.src == c.client && seg.srcPort == c.clientPort
            let senderISN: UInt32? = fromClient ? c.clientISN : c.serverISN
            let receiverISN: UInt32? = seg.isSYNWithoutACK ? 0 : (fromClient ? c.serverISN : c.clientISN)
            guard let sISN = senderISN, let rISN = receiverISN else { r.result = .noState; return (r, ck) }
            let candidates = keys.filter { $0.mkt.sendID == keyID || $0.mkt.recvID == keyID }
            guard !candidates.isEmpty else { r.result = .unknownKeyID; return (r, ck) }
            let tracker = fromClient ? c.clientSNE : c.serverSNE
            let sne = seg.isSYN ? 0 : tracker.sne(for: seg.seq)
            r.sne = sne
            let ctx = KDFContext(src: seg.src, dst: seg.dst, srcPort: seg.srcPort, dstPort: seg.dstPort, srcISN: sISN, dstISN: rISN)
            var lengthMismatch = true
            for cand in candidates {
                guard cand.mkt.algorithm.macLength == seg.aoMACLength else { continue }
                lengthMismatch = false
                let key = MACKey(algorithm: cand.mkt.algorithm, key: cand.mkt.master.deriveTrafficKey(ctx))
                if AOMAC.verify(ptr, seg, key: key, sne: sne, includeOptions: cand.mkt.includeOptions) {
                    r.result = .verified
                    r.key = "\(cand.chain)/\(cand.mkt.chainKeyID)"
                    if fromClient { c.clientSNE.advance(to: seg.seq, sne: sne) } else { c.serverSNE.advance(to: seg.seq, sne: sne) }
                    conversations[ck] = c
                    return (r, ck)
                }
            }
            if lengthMismatch {
                r.result = .malformed
                r.detail = "TCP-AO MAC length \(seg.aoMACLength) matches no key with KeyID \(keyID)"
            } else {
                r.result = .badMAC
            }
            return (r, ck)
        }
    }

    static func flagString(_ f: UInt8) -> String {
        var s = ""
        if f & Spec.flagSYN != 0 { s += "S" }
        if f & Spec.flagFIN != 0 { s += "F" }
        if f & Spec.flagRST != 0 { s += "R" }
        if f & Spec.flagPSH != 0 { s += "P" }
        if f & Spec.flagACK != 0 { s += "." }
        return s.isEmpty ? "none" : s
    }
}
