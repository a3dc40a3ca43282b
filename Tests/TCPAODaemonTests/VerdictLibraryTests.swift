import CNetfilterQueue
import Testing
@testable import TCPAODaemon

/// The codec's verdicts are byte for byte what libnetfilter_queue builds (nfq_nlmsg_put,
/// nfq_nlmsg_verdict_put, nfq_nlmsg_verdict_put_pkt), the reference the kernel is tested with.
@Suite struct VerdictLibraryTests {
    static func library(queue: UInt16, id: UInt32, verdict: Int32, payload: [UInt8]?) -> [UInt8] {
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 70000, alignment: 8)
        defer { buf.deallocate() }
        // Zeroed: the installed libmnl's mnl_attr_put leaves the attribute padding as it finds
        // it; the codec's padding is zero bytes.
        buf.initializeMemory(as: UInt8.self, repeating: 0, count: 70000)
        let nlh = nfq_nlmsg_put(buf.assumingMemoryBound(to: CChar.self), Int32(NFQNL_MSG_VERDICT.rawValue), UInt32(queue))!
        nfq_nlmsg_verdict_put(nlh, Int32(bitPattern: id), verdict)
        if let payload { payload.withUnsafeBytes { nfq_nlmsg_verdict_put_pkt(nlh, $0.baseAddress, UInt32(payload.count)) } }
        return Array(UnsafeRawBufferPointer(start: buf, count: Int(nlh.pointee.nlmsg_len)))
    }

    static func codec(queue: UInt16, id: UInt32, verdict: Int32, payload: [UInt8]?) -> [UInt8] {
        let (header, e) = encode(queue: queue, id: id, verdict: verdict, payloadLength: payload?.count)
        return header + (payload.map { Array($0.prefix(e.payloadLength)) } ?? []) + [UInt8](repeating: 0, count: e.padding)
    }

    @Test(arguments: [nil, 0, 1, 2, 3, 4, 61, 1500, 65530, 65531])
    func verdictMatchesLibnetfilterQueue(payloadLength: Int?) {
        let payload = payloadLength.map { n in (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) } }
        for (queue, id, verdict) in [(UInt16(0), UInt32(1), NF.accept), (7, 0xFFFF_FFFF, NF.drop), (0xABCD, 0x1234_5678, NF.accept)] {
            #expect(Self.codec(queue: queue, id: id, verdict: verdict, payload: payload)
                == Self.library(queue: queue, id: id, verdict: verdict, payload: payload))
        }
    }
}
