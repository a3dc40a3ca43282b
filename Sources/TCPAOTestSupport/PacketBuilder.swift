import TCPAO

/// Builds IPv4/IPv6 TCP packets with correct checksums, for tests, fixtures and benchmarks.
public struct PacketBuilder: Sendable {
    public var src: IPAddress
    public var dst: IPAddress
    public var srcPort: UInt16
    public var dstPort: UInt16

    public init(src: String, dst: String, srcPort: UInt16, dstPort: UInt16) {
        self.src = IPAddress(src)!
        self.dst = IPAddress(dst)!
        self.srcPort = srcPort
        self.dstPort = dstPort
    }

    public var reversed: PacketBuilder {
        PacketBuilder(src: dst.description, dst: src.description, srcPort: dstPort, dstPort: srcPort)
    }

    /// Linux-like SYN options: MSS, SACK-permitted, timestamps, window scale (20 bytes).
    public static func synOptions(mss: UInt16 = 1460, tsval: UInt32 = 1000) -> [UInt8] {
        [2, 4, UInt8(mss >> 8), UInt8(mss & 0xFF), 4, 2, 8, 10] + be32(tsval) + be32(0) + [1, 3, 3, 7]
    }

    /// NOP NOP timestamps (12 bytes), as Linux puts on every segment.
    public static func tsOptions(tsval: UInt32 = 1001, tsecr: UInt32 = 1000) -> [UInt8] {
        [1, 1, 8, 10] + be32(tsval) + be32(tsecr)
    }

    /// NOP NOP SACK with `blocks` blocks.
    public static func sackOption(blocks: Int) -> [UInt8] {
        var o: [UInt8] = [1, 1, 5, UInt8(2 + 8 * blocks)]
        for b in 0..<blocks { o += be32(UInt32(1000 * b + 5000)) + be32(UInt32(1000 * b + 5500)) }
        return o
    }

    public static func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 255), UInt8(v >> 8 & 255), UInt8(v & 255)] }

    public func segment(seq: UInt32, ack: UInt32 = 0, flags: UInt8, window: UInt16 = 64240,
                        options: [UInt8] = [], payload: [UInt8] = []) -> [UInt8] {
        precondition(options.count % 4 == 0 && options.count <= 40)
        var tcp = [UInt8](repeating: 0, count: 20)
        tcp[0] = UInt8(srcPort >> 8); tcp[1] = UInt8(srcPort & 255)
        tcp[2] = UInt8(dstPort >> 8); tcp[3] = UInt8(dstPort & 255)
        tcp.replaceSubrange(4..<8, with: PacketBuilder.be32(seq))
        tcp.replaceSubrange(8..<12, with: PacketBuilder.be32(ack))
        tcp[12] = UInt8((20 + options.count) / 4) << 4
        tcp[13] = flags
        tcp[14] = UInt8(window >> 8); tcp[15] = UInt8(window & 255)
        tcp += options + payload
        var ip: [UInt8]
        if src.isV6 {
            ip = [0x60, 0, 0, 0, UInt8(tcp.count >> 8), UInt8(tcp.count & 255), Spec.ipProtoTCP, 64] + src.bytes + dst.bytes
        } else {
            let total = 20 + tcp.count
            ip = [0x45, 0, UInt8(total >> 8), UInt8(total & 255), 0x12, 0x34, 0x40, 0, 64, Spec.ipProtoTCP, 0, 0] + src.bytes + dst.bytes
            let c = ip.withUnsafeBytes { InternetChecksum.finish(InternetChecksum.sum($0.baseAddress!, 20)) }
            ip[10] = UInt8(c >> 8); ip[11] = UInt8(c & 255)
        }
        // TCP checksum over pseudo-header and segment, computed here rather than through the parser
        // so that deliberately malformed segments can be built too.
        var pseudo = src.bytes + dst.bytes
        pseudo += src.isV6 ? PacketBuilder.be32(UInt32(tcp.count)) + [0, 0, 0, Spec.ipProtoTCP]
                           : [0, Spec.ipProtoTCP, UInt8(tcp.count >> 8), UInt8(tcp.count & 255)]
        let all = pseudo + tcp
        let c = all.withUnsafeBytes { InternetChecksum.finish(InternetChecksum.sum($0.baseAddress!, $0.count)) }
        tcp[16] = UInt8(c >> 8); tcp[17] = UInt8(c & 255)
        return ip + tcp
    }
}

/// A packet in a buffer with room to grow, as a worker holds it.
public final class PacketBuffer {
    public let capacity: Int
    public let pointer: UnsafeMutableRawPointer
    public private(set) var length: Int

    public init(_ bytes: [UInt8], capacity: Int = 2048) {
        self.capacity = max(capacity, bytes.count)
        pointer = .allocate(byteCount: self.capacity, alignment: 16)
        length = bytes.count
        bytes.withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
    }

    deinit { pointer.deallocate() }

    public var bytes: [UInt8] { Array(UnsafeRawBufferPointer(start: pointer, count: length)) }

    public func setLength(_ n: Int) { length = n }

    public func segment() throws -> TCPSegment { try TCPSegment.parse(pointer, count: length) }
}
