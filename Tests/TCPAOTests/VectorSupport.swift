import Foundation
@testable import TCPAO

/// One RFC 9235 test vector as stored in Resources/rfc9235.json (copied from ../shared/vectors).
struct RFC9235Vector: Decodable {
    let section: String
    let ip_version: Int
    let algorithm: String
    let options_included_in_mac: Bool
    let segment: String
    let client_isn: UInt32
    let server_isn: UInt32
    let packet_hex: String
    let traffic_key_hex: String
    let mac_hex: String
    let traffic_key_kind: String
    let tcp_checksum_in_packet_is_valid: Bool

    var name: String { "\(section) \(segment)" }
    var packet: [UInt8] { [UInt8](hex: packet_hex)! }
    var aoAlgorithm: AOAlgorithm { algorithm == "HMAC-SHA-1-96" ? .hmacSHA1_96 : .aes128CMAC_96 }
    var fromClient: Bool { segment.contains("client->server") }
}


struct RFC9235File: Decodable {
    let master_key_ascii: String
    let mac_length: Int
    let sne: UInt32
    let client_send_id: UInt8
    let server_send_id: UInt8
    let vectors: [RFC9235Vector]

    static let shared: RFC9235File = {
        let url = Bundle.module.url(forResource: "rfc9235", withExtension: "json", subdirectory: "Resources")!
        return try! JSONDecoder().decode(RFC9235File.self, from: Data(contentsOf: url))
    }()
}

extension RFC9235Vector {
    /// The KDF context of the segment's sender (RFC 5925 5.2): SYN without ACK uses 0 for the
    /// receiver's ISN.
    func kdfContext(_ seg: TCPSegment) -> KDFContext {
        let senderISN = fromClient ? client_isn : server_isn
        let receiverISN = seg.isSYNWithoutACK ? 0 : (fromClient ? server_isn : client_isn)
        return KDFContext(src: seg.src, dst: seg.dst, srcPort: seg.srcPort, dstPort: seg.dstPort,
                          srcISN: senderISN, dstISN: receiverISN)
    }
}

/// Runs `body` with the packet copied into a buffer with `extra` spare bytes.
func withPacket<R>(_ bytes: [UInt8], extra: Int = 64, _ body: (UnsafeMutableRawPointer, Int) throws -> R) rethrows -> R {
    let buf = UnsafeMutableRawPointer.allocate(byteCount: bytes.count + extra, alignment: 16)
    defer { buf.deallocate() }
    buf.initializeMemory(as: UInt8.self, repeating: 0xEE, count: bytes.count + extra)
    bytes.withUnsafeBytes { buf.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
    return try body(buf, bytes.count + extra)
}
