// TCP-AO algorithms: RFC 5926 (HMAC-SHA-1-96, AES-128-CMAC-96) and HMAC-SHA-256 with a
// configurable MAC length (offered by Linux as "hmac(sha256)" and by router vendors).

public enum KDFKind: String, Sendable, Hashable, Codable {
    case hmacSHA1, aesCMAC, hmacSHA256

    /// RFC 5926 3.1.1: Output_Length in bits is the KDF's natural output (the PRF's size).
    public var outputLength: Int {
        switch self {
        case .hmacSHA1: 20
        case .aesCMAC: 16
        case .hmacSHA256: 32
        }
    }
}

public struct AOAlgorithm: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The PRF used both for the KDF and for the MAC.
    public var kind: KDFKind
    /// Bytes of the truncated MAC carried in the option.
    public var macLength: Int

    public init(kind: KDFKind, macLength: Int) {
        self.kind = kind
        self.macLength = macLength
    }

    public static let hmacSHA1_96 = AOAlgorithm(kind: .hmacSHA1, macLength: 12)
    public static let aes128CMAC_96 = AOAlgorithm(kind: .aesCMAC, macLength: 12)
    public static let hmacSHA256_96 = AOAlgorithm(kind: .hmacSHA256, macLength: 12)
    public static let hmacSHA256_128 = AOAlgorithm(kind: .hmacSHA256, macLength: 16)

    /// Configuration names (RFC 8177 / RFC 9648 style).
    public static let byName: [(String, AOAlgorithm)] = [
        ("hmac-sha-1-96", .hmacSHA1_96),
        ("aes-128-cmac-96", .aes128CMAC_96),
        ("hmac-sha-256-96", .hmacSHA256_96),
        ("hmac-sha-256-128", .hmacSHA256_128),
    ]

    public init?(name: String) {
        guard let a = AOAlgorithm.byName.first(where: { $0.0 == name.lowercased() })?.1 else { return nil }
        self = a
    }

    public var description: String {
        AOAlgorithm.byName.first(where: { $0.1 == self })?.0 ?? "\(AOAlgorithm.familyName(kind))-\(macLength * 8)"
    }

    static func familyName(_ k: KDFKind) -> String {
        switch k {
        case .hmacSHA1: "hmac-sha-1"
        case .aesCMAC: "aes-128-cmac"
        case .hmacSHA256: "hmac-sha-256"
        }
    }

    /// Linux's name for the algorithm in `struct tcp_ao_add.alg_name`.
    public var linuxName: String {
        switch kind {
        case .hmacSHA1: "hmac(sha1)"
        case .aesCMAC: "cmac(aes128)"
        case .hmacSHA256: "hmac(sha256)"
        }
    }

    /// The AO option's Length field: Kind, Length, KeyID, RNextKeyID and the MAC (RFC 5925 2.2).
    @inline(__always) public var optionLength: Int { Spec.aoHeaderLength + macLength }
    /// The header space the option takes once padded to a 32-bit boundary with NOPs.
    @inline(__always) public var alignedOptionLength: Int { (optionLength + 3) & ~3 }
}
