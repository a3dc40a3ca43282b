import Foundation

/// One captured frame, reduced to its IP packet.
public struct CapturedPacket: Sendable {
    /// Seconds since the epoch, with fraction.
    public var time: Double
    /// The IP packet (IPv4 or IPv6), link-layer header removed.
    public var ip: [UInt8]
    /// 1-based frame number in the capture (as Wireshark counts).
    public var frame: Int
}

public enum PcapError: Error, CustomStringConvertible {
    case notACapture
    case truncated(frame: Int)
    case unsupportedLinkType(UInt32)

    public var description: String {
        switch self {
        case .notACapture: "not a pcap or pcapng file (bad magic number)"
        case .truncated(let f): "the capture is cut short in frame \(f)"
        case .unsupportedLinkType(let t): "link type \(t) is not supported (Ethernet, raw IP and Linux cooked captures are)"
        }
    }
}

/// Reads classic pcap (both byte orders, micro- and nanosecond) and pcapng (section header,
/// interface description, enhanced and simple packet blocks). Frames that carry no IP packet
/// (ARP, other ethertypes) are skipped.
public struct PcapReader {
    public static func read(path: String) throws -> [CapturedPacket] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CocoaError(.fileReadNoSuchFile, userInfo: [NSFilePathErrorKey: path])
        }
        return try parse([UInt8](data))
    }

    public static func parse(_ b: [UInt8]) throws -> [CapturedPacket] {
        guard b.count >= 4 else { throw PcapError.notACapture }
        switch (b[0], b[1], b[2], b[3]) {
        case (0xD4, 0xC3, 0xB2, 0xA1): return try classic(b, little: true, nano: false)
        case (0xA1, 0xB2, 0xC3, 0xD4): return try classic(b, little: false, nano: false)
        case (0x4D, 0x3C, 0xB2, 0xA1): return try classic(b, little: true, nano: true)
        case (0xA1, 0xB2, 0x3C, 0x4D): return try classic(b, little: false, nano: true)
        case (0x0A, 0x0D, 0x0D, 0x0A): return try pcapng(b)
        default: throw PcapError.notACapture
        }
    }

    static func u32(_ b: [UInt8], _ o: Int, _ little: Bool) -> UInt32 {
        let v = UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24
        return little ? v : v.byteSwapped
    }

    static func u16(_ b: [UInt8], _ o: Int, _ little: Bool) -> UInt16 {
        let v = UInt16(b[o]) | UInt16(b[o + 1]) << 8
        return little ? v : v.byteSwapped
    }

    static func classic(_ b: [UInt8], little: Bool, nano: Bool) throws -> [CapturedPacket] {
        guard b.count >= 24 else { throw PcapError.notACapture }
        let link = u32(b, 20, little) & 0x0FFF_FFFF
        try checkLink(link)
        var out: [CapturedPacket] = []
        var o = 24
        var frame = 0
        while o < b.count {
            frame += 1
            guard o + 16 <= b.count else { throw PcapError.truncated(frame: frame) }
            let sec = Double(u32(b, o, little)), frac = Double(u32(b, o + 4, little))
            let incl = Int(u32(b, o + 8, little))
            o += 16
            guard o + incl <= b.count else { throw PcapError.truncated(frame: frame) }
            if let ip = strip(link, Array(b[o..<(o + incl)])) {
                out.append(CapturedPacket(time: sec + frac / (nano ? 1e9 : 1e6), ip: ip, frame: frame))
            }
            o += incl
        }
        return out
    }

    static func pcapng(_ b: [UInt8]) throws -> [CapturedPacket] {
        var out: [CapturedPacket] = []
        var little = true
        var links: [UInt32] = []
        var tsres: [Double] = []
        var o = 0
        var frame = 0
        while o + 12 <= b.count {
            let type = u32(b, o, little)
            if type == 0x0A0D_0D0A { // section header: byte order magic at +8
                little = b[o + 8] == 0x4D
                links = []
                tsres = []
            }
            let len = Int(u32(b, o + 4, little))
            guard len >= 12, o + len <= b.count else { throw PcapError.truncated(frame: frame + 1) }
            let body = o + 8
            switch type {
            case 1: // interface description
                guard len >= 20 else { throw PcapError.truncated(frame: frame + 1) }
                let link = UInt32(u16(b, body, little))
                links.append(link)
                var res = 1e-6
                var opt = body + 8
                while opt + 4 <= o + len - 4 {
                    let code = u16(b, opt, little), olen = Int(u16(b, opt + 2, little))
                    if code == 0 { break }
                    if code == 9 && olen >= 1 { // if_tsresol
                        let v = b[opt + 4]
                        res = v & 0x80 != 0 ? pow(2, -Double(v & 0x7F)) : pow(10, -Double(v))
                    }
                    opt += 4 + ((olen + 3) & ~3)
                }
                tsres.append(res)
            case 6: // enhanced packet
                frame += 1
                guard len >= 32 else { throw PcapError.truncated(frame: frame) }
                let ifc = Int(u32(b, body, little))
                guard ifc < links.count else { throw PcapError.truncated(frame: frame) }
                try checkLink(links[ifc])
                let ts = Double(UInt64(u32(b, body + 4, little)) << 32 | UInt64(u32(b, body + 8, little))) * tsres[ifc]
                let cap = Int(u32(b, body + 12, little))
                guard body + 20 + cap <= o + len else { throw PcapError.truncated(frame: frame) }
                if let ip = strip(links[ifc], Array(b[(body + 20)..<(body + 20 + cap)])) {
                    out.append(CapturedPacket(time: ts, ip: ip, frame: frame))
                }
            case 3: // simple packet (interface 0, no timestamp)
                frame += 1
                guard len >= 16, let link = links.first else { throw PcapError.truncated(frame: frame) }
                let cap = min(Int(u32(b, body, little)), len - 16)
                if let ip = strip(link, Array(b[(body + 4)..<(body + 4 + cap)])) {
                    out.append(CapturedPacket(time: 0, ip: ip, frame: frame))
                }
            default: break
            }
            o += len
        }
        return out
    }

    static let supported: Set<UInt32> = [0, 1, 12, 14, 101, 113, 228, 229, 276]

    static func checkLink(_ l: UInt32) throws {
        guard supported.contains(l) else { throw PcapError.unsupportedLinkType(l) }
    }

    /// Removes the link-layer header; nil when the frame is not IPv4/IPv6.
    static func strip(_ link: UInt32, _ f: [UInt8]) -> [UInt8]? {
        func ipVersionOK(_ p: ArraySlice<UInt8>) -> [UInt8]? {
            guard let first = p.first, first >> 4 == 4 || first >> 4 == 6 else { return nil }
            return Array(p)
        }
        switch link {
        case 1: // Ethernet, with 802.1Q / 802.1ad tags
            var o = 12
            while o + 2 <= f.count {
                let et = UInt16(f[o]) << 8 | UInt16(f[o + 1])
                if et == 0x8100 || et == 0x88A8 { o += 4; continue }
                guard et == 0x0800 || et == 0x86DD else { return nil }
                return ipVersionOK(f[(o + 2)...])
            }
            return nil
        case 113: // Linux cooked v1: 16 bytes, protocol at 14
            guard f.count > 16 else { return nil }
            return ipVersionOK(f[16...])
        case 276: // Linux cooked v2: 20 bytes
            guard f.count > 20 else { return nil }
            return ipVersionOK(f[20...])
        case 0: // BSD loopback: 4-byte address family
            guard f.count > 4 else { return nil }
            return ipVersionOK(f[4...])
        default: // raw IP (12, 14, 101), IPv4 (228), IPv6 (229)
            return ipVersionOK(f[...])
        }
    }
}

/// Writes a classic pcap with raw IP frames (LINKTYPE_RAW, 101): test fixtures and demos.
public struct PcapWriter {
    public static func data(_ packets: [[UInt8]], startTime: UInt32 = 1_790_000_000) -> [UInt8] {
        var out: [UInt8] = []
        func le32(_ v: UInt32) { out += [UInt8(v & 255), UInt8(v >> 8 & 255), UInt8(v >> 16 & 255), UInt8(v >> 24)] }
        func le16(_ v: UInt16) { out += [UInt8(v & 255), UInt8(v >> 8)] }
        le32(0xA1B2_C3D4); le16(2); le16(4); le32(0); le32(0); le32(65535); le32(101)
        for (i, p) in packets.enumerated() {
            le32(startTime); le32(UInt32(i * 1000)); le32(UInt32(p.count)); le32(UInt32(p.count))
            out += p
        }
        return out
    }
}
