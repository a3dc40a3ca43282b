import Testing
@testable import TCPAO

/// RFC 9235: every vector's traffic key and MAC, re-signing reproduces the packet, and any
/// flipped covered bit fails verification.
@Suite struct RFC9235Tests {
    static let file = RFC9235File.shared
    static let master = Secret(Array(file.master_key_ascii.utf8))

    @Test func thereAreAll32Vectors() {
        #expect(Self.file.vectors.count == 32)
        #expect(Self.file.master_key_ascii.utf8.count == 10) // exercises RFC 5926 3.1.1.2 for CMAC
    }

    @Test(arguments: RFC9235File.shared.vectors.map(\.name))
    func trafficKeyAndMAC(_ name: String) throws {
        let v = Self.file.vectors.first { $0.name == name }!
        let bytes = v.packet
        try withPacket(bytes) { p, cap in
            let seg = try TCPSegment.parse(p, count: bytes.count)
            #expect(seg.hasAO)
            #expect(seg.aoKeyID(p) == (v.fromClient ? Self.file.client_send_id : Self.file.server_send_id))
            let mk = MasterKey(algorithm: v.aoAlgorithm, secret: Self.master)
            let tk = mk.deriveTrafficKey(v.kdfContext(seg))
            #expect(tk.hexString == v.traffic_key_hex)
            let key = MACKey(algorithm: v.aoAlgorithm, key: tk)
            var out = [UInt8](repeating: 0, count: 32)
            out.withUnsafeMutableBytes {
                AOMAC.compute(p, seg, key: key, sne: Self.file.sne, includeOptions: v.options_included_in_mac, into: $0.baseAddress!)
            }
            #expect(Array(out[0..<12]).hexString == v.mac_hex)
            let good = AOMAC.verify(p, seg, key: key, sne: Self.file.sne, includeOptions: v.options_included_in_mac)
            #expect(good)
            // Wrong SNE: must fail.
            let wrongSNE = AOMAC.verify(p, seg, key: key, sne: 1, includeOptions: v.options_included_in_mac)
            #expect(!wrongSNE)
            #expect(seg.checksumIsValid(p) == v.tcp_checksum_in_packet_is_valid)
            _ = cap
        }
    }

    /// Strip the AO option, insert it again and sign: the packet comes back byte for byte.
    @Test(arguments: RFC9235File.shared.vectors.map(\.name))
    func resigningReproducesThePacket(_ name: String) throws {
        let v = Self.file.vectors.first { $0.name == name }!
        let original = v.packet
        try withPacket(original) { p, cap in
            let seg = try TCPSegment.parse(p, count: original.count)
            let keyID = seg.aoKeyID(p), rnext = seg.aoRNextKeyID(p)
            let stripped = AOOption.strip(p, seg)
            #expect(!stripped.hasAO)
            #expect(stripped.length == original.count - 16)
            let reparsed = try TCPSegment.parse(p, count: stripped.length)
            #expect(reparsed == stripped)
            if v.tcp_checksum_in_packet_is_valid { #expect(stripped.checksumIsValid(p)) }
            let mk = MasterKey(algorithm: v.aoAlgorithm, secret: Self.master)
            let key = MACKey(algorithm: v.aoAlgorithm, key: mk.deriveTrafficKey(v.kdfContext(stripped)))
            let inserted = try AOOption.insert(p, capacity: cap, stripped, macLength: 12, keyID: keyID, rnextKeyID: rnext)
            AOMAC.sign(p, inserted, key: key, sne: 0, includeOptions: v.options_included_in_mac)
            let result = Array(UnsafeRawBufferPointer(start: p, count: inserted.length))
            #expect(result.hexString == original.hexString)
        }
    }

    /// Flipping any single bit of what the MAC covers makes verification fail (or the packet
    /// unparseable); bits it does not cover (checksum, excluded options) leave it valid.
    @Test(arguments: RFC9235File.shared.vectors.map(\.name))
    func everyCoveredBitMatters(_ name: String) throws {
        let v = Self.file.vectors.first { $0.name == name }!
        let original = v.packet
        let seg0 = try withPacket(original) { p, _ in try TCPSegment.parse(p, count: original.count) }
        let mk = MasterKey(algorithm: v.aoAlgorithm, secret: Self.master)
        let key = MACKey(algorithm: v.aoAlgorithm, key: mk.deriveTrafficKey(v.kdfContext(seg0)))
        let t = seg0.tcpOffset
        var covered: [Int] = []
        // Pseudo-header addresses.
        if seg0.isV6 { covered += Array(8..<40) } else { covered += Array(12..<20) }
        // The TCP header but its checksum, the AO option (KeyIDs and MAC), the payload.
        covered += Array(t..<(t + 16)) + Array((t + 18)..<(t + 20))
        covered += Array(seg0.aoOffset..<(seg0.aoOffset + seg0.aoLength))
        covered += Array(seg0.payloadOffset..<seg0.length)
        var notCovered = Array((t + 16)..<(t + 18))
        let otherOptions = Array(seg0.optionsOffset..<seg0.optionsEnd).filter { $0 < seg0.aoOffset || $0 >= seg0.aoOffset + seg0.aoLength }
        if v.options_included_in_mac { covered += otherOptions } else { notCovered += otherOptions }
        var failures = 0
        for byte in covered {
            for bit in 0..<8 {
                var bytes = original
                bytes[byte] ^= UInt8(1 << bit)
                let ok: Bool = withPacket(bytes) { p, _ in
                    guard let seg = try? TCPSegment.parse(p, count: bytes.count), seg.hasAO else { return false }
                    return AOMAC.verify(p, seg, key: key, sne: 0, includeOptions: v.options_included_in_mac)
                }
                if ok { failures += 1; Issue.record("bit \(bit) of byte \(byte) flipped still verifies") }
            }
        }
        #expect(failures == 0)
        for byte in notCovered {
            var bytes = original
            bytes[byte] ^= 0x01
            let ok: Bool = withPacket(bytes) { p, _ in
                // A flip that changes the option structure (NOP into EOL, a length byte) is not a
                // question of MAC coverage.
                guard let seg = try? TCPSegment.parse(p, count: bytes.count), seg.aoOffset == seg0.aoOffset else { return true }
                return AOMAC.verify(p, seg, key: key, sne: 0, includeOptions: v.options_included_in_mac)
            }
            #expect(ok, "byte \(byte) is outside the MAC's coverage")
        }
    }
}
