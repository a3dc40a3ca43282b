import CLibCrypto
import Testing
@testable import TCPAO

/// MACKey keeps its own pre-keyed HMAC states and its own CMAC last-block logic over AES-CBC, so
/// it is checked here against OpenSSL's one-shot EVP_MAC for every message length that a segment
/// can produce around block boundaries, split at every point between the two input pieces
/// (pseudo-header+header | payload), as AOMAC feeds it.
@Suite struct MACReferenceTests {
    static func reference(_ kind: KDFKind, key: [UInt8], message: [UInt8]) -> [UInt8] {
        let (mac, param, value): (String, String, String) = switch kind {
        case .hmacSHA1: ("HMAC", "digest", "SHA1")
        case .hmacSHA256: ("HMAC", "digest", "SHA256")
        case .aesCMAC: ("CMAC", "cipher", "AES-128-CBC")
        }
        var out = [UInt8](repeating: 0, count: 64)
        var outLen = 0
        let ok = param.withCString { p in
            value.withCString { v in
                mac.withCString { m in
                    var params = [OSSL_PARAM_construct_utf8_string(p, UnsafeMutablePointer(mutating: v), 0), OSSL_PARAM_construct_end()]
                    return EVP_Q_mac(nil, m, nil, nil, &params, key, key.count, message, message.count, &out, out.count, &outLen)
                }
            }
        }
        precondition(ok != nil, "EVP_Q_mac failed")
        return Array(out[0..<outLen])
    }

    static let algorithms: [AOAlgorithm] = [.hmacSHA1_96, .aes128CMAC_96, .hmacSHA256_128]

    @Test(arguments: algorithms)
    func everyLengthAndSplitMatchesOpenSSL(_ alg: AOAlgorithm) {
        var rng = SplitMix(seed: 0x5eed_0000 + UInt64(alg.kind.outputLength))
        let keyLength = alg.kind == .aesCMAC ? 16 : 20
        let key = (0..<keyLength).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let mk = MACKey(algorithm: alg, bytes: key)
        var lengths = Array(0...200)
        for base in [512, 1024, 1448, 1500] { lengths += Array(base - 40...base + 40) }
        var mismatches: [String] = []
        var out = [UInt8](repeating: 0, count: 32)
        for n in lengths {
            let msg = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            let want = Self.reference(alg.kind, key: key, message: msg)
            // Every split for short messages; block-boundary splits and a few random ones otherwise.
            var splits = n <= 80 ? Array(0...n) : [0, 1, 15, 16, 17, 31, 32, 33, 40, 52, 60, 64, 76, n - 1, n]
            if n > 80 { for _ in 0..<6 { splits.append(Int(rng.next() % UInt64(n + 1))) } }
            for s in splits where s <= n {
                msg.withUnsafeBytes { m in
                    out.withUnsafeMutableBytes { o in
                        mk.compute(UnsafeRawBufferPointer(rebasing: m[0..<s]), UnsafeRawBufferPointer(rebasing: m[s..<n]), into: o.baseAddress!)
                    }
                }
                if Array(out[0..<want.count]) != want { mismatches.append("length \(n) split \(s)") }
            }
        }
        let count = mismatches.count
        #expect(count == 0, "\(alg): \(mismatches.prefix(10)) (\(count) in all)")
    }
}

struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
