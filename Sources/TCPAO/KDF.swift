import CLibCrypto

/// The connection-identifying half of a traffic key derivation (RFC 5925 5.2, Figures 7 and 8):
/// source and destination address and port, source and destination ISN, from the point of view of
/// the segment's sender.
public struct KDFContext: Sendable, Equatable {
    public var src: IPAddress
    public var dst: IPAddress
    public var srcPort: UInt16
    public var dstPort: UInt16
    public var srcISN: UInt32
    /// Zero for SYN segments without ACK (RFC 5925 5.2).
    public var dstISN: UInt32

    public init(src: IPAddress, dst: IPAddress, srcPort: UInt16, dstPort: UInt16, srcISN: UInt32, dstISN: UInt32) {
        self.src = src; self.dst = dst; self.srcPort = srcPort; self.dstPort = dstPort
        self.srcISN = srcISN; self.dstISN = dstISN
    }

    /// Writes the context bytes; returns their count (20 for IPv4, 44 for IPv6).
    @inline(__always)
    func write(to p: UnsafeMutableRawPointer, at o: Int) -> Int {
        var i = o
        i += src.write(to: p, at: i)
        i += dst.write(to: p, at: i)
        store16(p, i, srcPort); store16(p, i + 2, dstPort)
        store32(p, i + 4, srcISN); store32(p, i + 8, dstISN)
        return i + 12 - o
    }
}

/// An MKT's master key, prepared for its KDF once when the configuration is loaded.
/// For AES-128-CMAC, RFC 5926 3.1.1.2: a master key that is not 16 bytes is first reduced with
/// K = AES-CMAC(0^128, MKT); for the HMAC KDFs the master key is used as it is.
public final class MasterKey: @unchecked Sendable {
    public let algorithm: AOAlgorithm
    let prepared: Secret
    /// The master key as configured.
    public let original: Secret
    /// HMAC: the KDF's PRF keyed once with the master key (its pre-keyed digest states are
    /// only read when computing, so the workers share it); each traffic key then costs the
    /// four digest blocks of one HMAC, not a keying as well. AES-CMAC keys a context per
    /// derivation (its cipher context is written while computing).
    let hmacPRF: KeyedPRF?

    /// A keyed MAC context shared read-only (HMAC's pre-keyed states).
    final class KeyedPRF: @unchecked Sendable {
        let key: MACKey
        init(_ key: consuming MACKey) { self.key = key }
    }

    public init(algorithm: AOAlgorithm, secret: Secret) {
        self.algorithm = algorithm
        self.original = secret
        if algorithm.kind == .aesCMAC && secret.count != 16 {
            var k = [UInt8](repeating: 0, count: 16)
            let zero = [UInt8](repeating: 0, count: 16)
            zero.withUnsafeBytes { z in
                let prf = MACKey(algorithm: algorithm, key: z)
                secret.withBytes { s in
                    k.withUnsafeMutableBytes { prf.compute(s, UnsafeRawBufferPointer(start: nil, count: 0), into: $0.baseAddress!) }
                }
            }
            prepared = Secret(k)
            k.withUnsafeMutableBytes { OPENSSL_cleanse($0.baseAddress, $0.count) }
        } else {
            prepared = secret
        }
        hmacPRF = algorithm.kind == .aesCMAC ? nil : secret.withBytes { KeyedPRF(MACKey(algorithm: algorithm, key: $0)) }
    }

    /// KDF_alg(master_key, context, output_length) of RFC 5925 5.2 with the input block of
    /// RFC 5926 3.1.1: i (=1) | Label "TCP-AO" | Context | Output_Length in bits (16 bits).
    /// Called once per connection and direction, not per segment.
    public func deriveTrafficKey(_ ctx: KDFContext) -> TrafficKey {
        let outLen = algorithm.kind.outputLength
        return withUnsafeTemporaryAllocation(byteCount: 64, alignment: 8) { buf in
            let p = buf.baseAddress!
            store8(p, 0, 1)
            var i = 1
            for c in Spec.kdfLabel { store8(p, i, c); i += 1 }
            i += ctx.write(to: p, at: i)
            store16(p, i, UInt16(outLen * 8)); i += 2
            let input = UnsafeRawBufferPointer(start: p, count: i)
            if let prf = hmacPRF {
                return TrafficKey(count: outLen) { out in
                    prf.key.compute(input, UnsafeRawBufferPointer(start: nil, count: 0), into: out.baseAddress!)
                }
            }
            return prepared.withBytes { key in
                let prf = MACKey(algorithm: algorithm, key: key)
                return TrafficKey(count: outLen) { out in
                    prf.compute(input, UnsafeRawBufferPointer(start: nil, count: 0), into: out.baseAddress!)
                }
            }
        }
    }
}
