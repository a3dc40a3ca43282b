import Foundation
import TCPAO
import Yams

// MARK: master keys (key-string, hexadecimal-string, key-file)

extension ConfigLoader {
    /// RFC 5925 5.3 advises master keys of 12-24 bytes (after RFC 3562) but sets no minimum.
    static let advisedSecretLength = 12
    /// Below this a key is "far too short" (a louder warning, still not an error).
    static let weakSecretLength = 8
    /// Linux's TCP-AO (`TCP_AO_MAXKEYLEN`) refuses longer keys.
    static let linuxMaxSecretLength = 80

    /// key-string (text), hexadecimal-string, or key-file (a file holding the key as text, one
    /// trailing newline ignored; `hex:` at its start means hexadecimal). Never echoes the secret.
    ///
    /// A short key is a warning, never an error, for every purpose: the key must match the
    /// peer's, and routers (Cisco, Juniper) and Linux (up to 80 bytes) accept short ones, so
    /// refusing it would leave such a session unprotected, or its capture unverifiable.
    mutating func readSecret(_ kind: String, _ n: Node, _ path: String) -> Secret? {
        var bytes: [UInt8]
        switch kind {
        case "key-string":
            guard let s = n.scalar?.string else {
                report(.error, n, path, "expected a text value", fix: "write the shared secret in quotes"); return nil
            }
            inlineSecrets = true
            bytes = Array(s.utf8)
        case "hexadecimal-string":
            guard let s = n.scalar?.string, let b = [UInt8](hex: s) else {
                report(.error, n, path, "not an even number of hexadecimal digits", fix: "write pairs of 0-9a-f, e.g. \"00ff17\""); return nil
            }
            inlineSecrets = true
            bytes = b
        default:
            guard let p = n.scalar?.string, !p.isEmpty else { report(.error, n, path, "no path", fix: "write the key file's path"); return nil }
            // Relative to the configuration file's directory (which is "" for `--config c.yaml`).
            let dir = (file as NSString).deletingLastPathComponent
            let full = p.hasPrefix("/") || dir.isEmpty ? p : dir + "/" + p
            guard let mode = ConfigLoader.fileMode(full) else {
                report(.error, n, path, "key file \(full) does not exist or cannot be examined", fix: "create it (mode 600) or correct the path")
                return nil
            }
            if mode & 0o004 != 0 {
                report(.error, n, path, "key file \(full) is readable by every user", fix: "chmod 600 \(full)")
                return nil
            }
            if mode & 0o040 != 0 {
                report(.warning, n, path, "key file \(full) is readable by its group", fix: "chmod 600 \(full)")
            }
            guard let data = FileManager.default.contents(atPath: full) else {
                report(.error, n, path, "key file \(full) cannot be read", fix: "check its owner and mode (tcpaod runs as root)")
                return nil
            }
            bytes = [UInt8](data)
            if bytes.last == 0x0A { bytes.removeLast(); if bytes.last == 0x0D { bytes.removeLast() } }
            if bytes.starts(with: Array("hex:".utf8)) {
                guard let b = [UInt8](hex: String(decoding: bytes.dropFirst(4), as: UTF8.self)) else {
                    report(.error, n, path, "key file \(full) starts with hex: but is not hexadecimal", fix: "write pairs of 0-9a-f after hex:")
                    return nil
                }
                bytes = b
            }
        }
        defer { for i in bytes.indices { bytes[i] = 0 } }
        let fixLength = "use at least 16 random bytes on both ends, e.g. `openssl rand -hex 16` as a hexadecimal-string"
        if bytes.isEmpty {
            // The one length refused: with no key anyone can compute the MAC.
            report(.error, n, path, "the secret is empty: a TCP-AO master key needs at least 1 byte, or anyone can compute the MAC", fix: fixLength)
            return nil
        }
        if bytes.count < ConfigLoader.weakSecretLength {
            report(.warning, n, path,
                   "the secret is only \(bytes.count) byte\(bytes.count == 1 ? "" : "s"), far too short to resist guessing (RFC 5925 5.3 advises 12-24); accepted because the peer's key must match",
                   fix: fixLength)
        } else if bytes.count < ConfigLoader.advisedSecretLength {
            report(.warning, n, path, "the secret is only \(bytes.count) bytes (RFC 5925 5.3 advises 12-24)", fix: "use at least 16 random bytes")
        }
        if bytes.count > ConfigLoader.linuxMaxSecretLength {
            report(.warning, n, path, "the secret is \(bytes.count) bytes; Linux's TCP-AO accepts at most 80",
                   fix: "use a shorter key if a Linux host is a peer")
        }
        return Secret(bytes)
    }
}
