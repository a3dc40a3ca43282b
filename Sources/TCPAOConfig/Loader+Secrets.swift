import Foundation
import TCPAO

// MARK: master keys (key-string, hexadecimal-string, key-file)

extension ConfigLoader {
    /// RFC 5925 5.3 advises master keys of 12-24 bytes (after RFC 3562) but sets no minimum.
    static let advisedSecretLength = 12
    /// Below this a key is "far too short" (a louder warning, still not an error).
    public static let weakSecretLength = 8
    /// Linux's TCP-AO (`TCP_AO_MAXKEYLEN`) refuses longer keys.
    static let linuxMaxSecretLength = 80

    /// Key strings starting with this are the examples' placeholders (config/examples): refused.
    static let placeholderSecretPrefix = "REPLACE ME"

    /// The length rules of a master key: empty is an error (false), short or longer than
    /// Linux accepts are warnings. Runtime key changes (`KeyOperation`) run the same checks.
    mutating func checkSecretLength(_ count: Int, _ n: ConfigNode?, _ path: @autoclosure () -> String) -> Bool {
        let fixLength = "use at least 16 random bytes on both ends, e.g. `openssl rand -hex 16` as a hexadecimal-string"
        if count == 0 {
            // The one length refused: with no key anyone can compute the MAC.
            report(.error, n, path(), "the secret is empty: a TCP-AO master key needs at least 1 byte, or anyone can compute the MAC", fix: fixLength)
            return false
        }
        if count < ConfigLoader.weakSecretLength {
            report(.warning, n, path(),
                   "the secret is only \(count) byte\(count == 1 ? "" : "s"), far too short to resist guessing (RFC 5925 5.3 advises 12-24); accepted because the peer's key must match",
                   fix: fixLength)
        } else if count < ConfigLoader.advisedSecretLength {
            report(.warning, n, path(), "the secret is only \(count) bytes (RFC 5925 5.3 advises 12-24)", fix: "use at least 16 random bytes")
        }
        if count > ConfigLoader.linuxMaxSecretLength {
            report(.warning, n, path(), "the secret is \(count) bytes; Linux's TCP-AO accepts at most 80",
                   fix: "use a shorter key if a Linux host is a peer")
        }
        return true
    }

    /// key-string (text), hexadecimal-string, or key-file (a file holding the key as text, one
    /// trailing newline ignored; `hex:` at its start means hexadecimal). Never echoes the secret.
    ///
    /// A short key is a warning, never an error, for every purpose: the key must match the
    /// peer's, and routers (Cisco, Juniper) and Linux (up to 80 bytes) accept short ones, so
    /// refusing it would leave such a session unprotected, or its capture unverifiable.
    mutating func readSecret(_ kind: String, _ n: ConfigNode, _ path: @autoclosure () -> String) -> Secret? {
        var bytes: [UInt8]
        switch kind {
        case "key-string":
            guard let s = n.text else {
                report(.error, n, path(), "expected a text value", fix: "write the shared secret in quotes"); return nil
            }
            inlineSecrets = true
            if s.hasPrefix(ConfigLoader.placeholderSecretPrefix) {
                // The shipped examples' placeholders: published, so never a key.
                report(.error, n, path(), "the secret is the example's placeholder (\"\(ConfigLoader.placeholderSecretPrefix)...\"): anyone who has read the example could compute the MAC",
                       fix: "replace it with a secret of your own on both ends, e.g. `openssl rand -hex 16` as a hexadecimal-string")
                return nil
            }
            bytes = Array(s.utf8)
        case "hexadecimal-string":
            guard let s = n.text, let b = [UInt8](hex: s) else {
                report(.error, n, path(), "not an even number of hexadecimal digits", fix: "write pairs of 0-9a-f, e.g. \"00ff17\""); return nil
            }
            inlineSecrets = true
            bytes = b
        default:
            guard let p = n.text, !p.isEmpty else { report(.error, n, path(), "no path", fix: "write the key file's path"); return nil }
            // Relative to the configuration file's directory (which is "" for `--config c.yaml`).
            let dir = (file as NSString).deletingLastPathComponent
            let full = p.hasPrefix("/") || dir.isEmpty ? p : dir + "/" + p
            switch KeyFile.read(full) {
            case .failure(let p):
                report(.error, n, path(), p.message, fix: p.fix)
                return nil
            case .success(let r):
                if let w = r.warning { report(.warning, n, path(), w.message, fix: w.fix) }
                bytes = r.bytes
            }
        }
        defer { for i in bytes.indices { bytes[i] = 0 } }
        guard checkSecretLength(bytes.count, n, path()) else { return nil }
        return Secret(bytes)
    }
}

/// A key file (`key-file:`, `tcpaod key add --key-file`): the key as text, one trailing newline
/// ignored, `hex:` at its start meaning hexadecimal. Refused when every user may read it; a
/// warning when its group may.
public enum KeyFile {
    public struct Problem: Error, Sendable {
        public var message: String
        public var fix: String
    }

    /// The key's bytes (the caller wipes them) and a warning, or why the file cannot be used.
    public static func read(_ full: String) -> Result<(bytes: [UInt8], warning: Problem?), Problem> {
        guard let mode = ConfigLoader.fileMode(full) else {
            return .failure(Problem(message: "key file \(full) does not exist or cannot be examined", fix: "create it (mode 600) or correct the path"))
        }
        if mode & 0o004 != 0 {
            return .failure(Problem(message: "key file \(full) is readable by every user", fix: "chmod 600 \(full)"))
        }
        let warning = mode & 0o040 != 0 ? Problem(message: "key file \(full) is readable by its group", fix: "chmod 600 \(full)") : nil
        guard var data = FileManager.default.contents(atPath: full) else {
            return .failure(Problem(message: "key file \(full) cannot be read", fix: "check its owner and mode (tcpaod runs as root)"))
        }
        var bytes = [UInt8](data)
        data.resetBytes(in: 0..<data.count)
        if bytes.last == 0x0A { bytes.removeLast(); if bytes.last == 0x0D { bytes.removeLast() } }
        if bytes.starts(with: Array("hex:".utf8)) {
            let b = [UInt8](hex: String(decoding: bytes.dropFirst(4), as: UTF8.self))
            for i in bytes.indices { bytes[i] = 0 }
            guard let b else {
                return .failure(Problem(message: "key file \(full) starts with hex: but is not hexadecimal", fix: "write pairs of 0-9a-f after hex:"))
            }
            bytes = b
        }
        return .success((bytes, warning))
    }
}
