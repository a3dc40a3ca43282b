import CLibCrypto
import Synchronization

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
    /// The KDF's PRF keyed with the prepared master key at the first derivation, then kept, so
    /// that a traffic key costs one MAC, not a keying as well (a connection derives three on
    /// each side). Made on first use, so a fleet's 50,000 chains cost nothing until their
    /// peers connect. HMAC's pre-keyed digest states are only read while computing: the
    /// workers share it outside the lock. AES-CMAC's cipher context is written while
    /// computing: it is used under the lock.
    let prf = Mutex<KeyedPRF?>(nil)

    /// A keyed MAC context owned by its master key.
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
            let empty = UnsafeRawBufferPointer(start: nil, count: 0)
            let (algorithm, prepared) = (self.algorithm, self.prepared)
            func keyed(_ p: inout KeyedPRF?) -> KeyedPRF {
                if let k = p { return k }
                let k = prepared.withBytes { KeyedPRF(MACKey(algorithm: algorithm, key: $0)) }
                p = k
                return k
            }
            if algorithm.kind == .aesCMAC {
                return withUnsafeTemporaryAllocation(byteCount: 32, alignment: 16) { tmp in
                    let t = tmp.baseAddress!
                    defer { OPENSSL_cleanse(t, 32) }
                    prf.withLock { p in keyed(&p).key.compute(input, empty, into: t) }
                    return TrafficKey(count: outLen) { $0.baseAddress!.copyMemory(from: t, byteCount: outLen) }
                }
            }
            let k = prf.withLock { p in keyed(&p) }
            return TrafficKey(count: outLen) { k.key.compute(input, empty, into: $0.baseAddress!) }
        }
    }
}
