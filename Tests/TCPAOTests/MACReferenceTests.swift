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

    /// AES-CMAC keys re-key cipher contexts given back by dropped keys (`CipherContextPool`):
    /// every key made that way, while others are alive and after others were dropped, must MAC
    /// as a fresh one does, and its first MAC must not depend on what the context did before.
    @Test func reusedCipherContextsMACAsFreshOnes() {
        var rng = SplitMix(seed: 0xc0_47e7)
        var alive: [MasterKey.KeyedPRF] = [] // a MACKey in a class box
        var keys: [[UInt8]] = []
        var mismatches: [String] = []
        var out = [UInt8](repeating: 0, count: 32)
        for round in 0..<3000 {
            let key = (0..<16).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            let msg = (0..<Int(rng.next() % 120)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            let mk = MACKey(algorithm: .aes128CMAC_96, bytes: key)
            msg.withUnsafeBytes { m in out.withUnsafeMutableBytes { mk.compute(m, UnsafeRawBufferPointer(start: nil, count: 0), into: $0.baseAddress!) } }
            if Array(out[0..<16]) != Self.reference(.aesCMAC, key: key, message: msg) { mismatches.append("round \(round)") }
            // Keep some keys alive for a while, drop others at once: contexts go back in a
            // different order than they came out.
            if rng.next() % 3 == 0 { alive.append(MasterKey.KeyedPRF(mk)); keys.append(key) }
            if alive.count > 40 || rng.next() % 5 == 0, !alive.isEmpty {
                let i = Int(rng.next() % UInt64(alive.count))
                let k = alive.remove(at: i), kb = keys.remove(at: i)
                msg.withUnsafeBytes { m in out.withUnsafeMutableBytes { k.key.compute(m, UnsafeRawBufferPointer(start: nil, count: 0), into: $0.baseAddress!) } }
                if Array(out[0..<16]) != Self.reference(.aesCMAC, key: kb, message: msg) { mismatches.append("round \(round), kept key") }
            }
        }
        let count = mismatches.count
        #expect(count == 0, "\(mismatches.prefix(10)) (\(count) in all)")
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
