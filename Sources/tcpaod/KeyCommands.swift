import ArgumentParser
import Foundation
import TCPAO
import TCPAOConfig
import TCPAODaemon

// `tcpaod key add|remove|prefer`: runtime MKT management over the control socket (commands
// key-add, key-remove, key-prefer). The daemon checks each change with the configuration's
// rules and applies it to every worker at once; a refused change changes nothing (exit 1).
// Changes are written back to the configuration file (comments kept) unless --runtime: then a
// reload (SIGHUP) or a restart goes back to the file. The secret comes from a key file or stdin,
// never the command line.

struct Key: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Add, prefer or remove MKTs of the running daemon's key chains.",
        discussion: """
        Each change is checked like the configuration file (tcpaod check) and applied to every queue at once; \
        a refused change says why and changes nothing (exit 1). Each change is also written to the daemon's \
        configuration file (atomically, its comments, layout and mode kept; refused when the file changed since \
        it was loaded). With --runtime it is not: a reload (SIGHUP, systemctl reload) or a restart then goes back \
        to the file's keys (the daemon logs the runtime changes it discards). \
        A hitless rollover, on both ends: `key add` (the new key is accepted, the old one still sends), then \
        `key prefer` (new connections and, as the peer asks for it with RNextKeyID, existing ones move to it), \
        then, once `tcpaod flows` shows no connection on the old key, `key remove`.
        """,
        subcommands: [KeyAdd.self, KeyPrefer.self, KeyRemove.self])
}

struct KeyAdd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Add an MKT to a key chain of the running daemon.",
        discussion: """
        The secret is read from --key-file (the configuration's key-file rules: not readable by every user; \
        `hex:` at its start means hexadecimal, else the text itself) or, hexadecimal, from stdin (--hex-stdin). \
        Without --prefer the key is accepted at once but sends only when its send lifetime makes it the \
        preferred key (or after `tcpaod key prefer`); with --prefer its send lifetime starts now and it is \
        preferred. Lifetimes: `always`, or START..END with RFC 3339 times, either side empty for no bound.
        """)

    @OptionGroup var options: ControlOptions
    @Option(help: "The key chain (its name in the configuration).") var chain: String?
    @Option(help: "The key's key-id in its chain.") var keyId: Int?
    @Option(help: ArgumentHelp("Install the MKT for this one connection instead of a chain (runtime only, forgotten with the connection): this side's address and port, then the peer's; IPv6 in brackets.", valueName: "LOCAL:PORT,REMOTE:PORT")) var connection: String?
    @Option(help: "SendID: the TCP-AO KeyID of segments we send with it (0-255).") var sendId: Int
    @Option(help: "RecvID: the TCP-AO KeyID of segments we receive with it (0-255).") var recvId: Int
    @Option(help: "hmac-sha-1-96, aes-128-cmac-96, hmac-sha-256-96, hmac-sha-256-128, ...") var algorithm: String
    @Option(help: "MAC length in bytes (default: the algorithm's).") var macLength: Int?
    @Flag(help: "Leave TCP options out of the MAC (include-tcp-options: false).") var excludeOptions = false
    @Option(help: ArgumentHelp("Read the master key from this file.", valueName: "file")) var keyFile: String?
    @Flag(help: "Read the master key, hexadecimal, from stdin.") var hexStdin = false
    @Option(help: ArgumentHelp("The send lifetime (default: always).", valueName: "START..END")) var sendLifetime: String?
    @Option(help: ArgumentHelp("The accept lifetime (default: always).", valueName: "START..END")) var acceptLifetime: String?
    @Flag(help: "Make it the preferred key at once.") var prefer = false
    @Flag(help: "Runtime only: do not write the change to the configuration file.") var runtime = false

    func validate() throws {
        guard (keyFile != nil) != hexStdin else { throw ValidationError("give exactly one of --key-file FILE and --hex-stdin") }
        if let connection {
            guard chain == nil, keyId == nil, !prefer, sendLifetime == nil, acceptLifetime == nil else {
                throw ValidationError("--connection: a connection's MKT has no --chain, --key-id, --prefer or lifetimes (it is preferred at once and lasts as long as the connection)")
            }
            _ = try KeyAdd.connectionObject(connection)
        } else {
            guard chain != nil, let keyId else { throw ValidationError("give --chain and --key-id (or --connection for one connection's MKT)") }
            guard (0...Int(Int32.max)).contains(keyId) else { throw ValidationError("--key-id: use a number from 0 to \(Int32.max)") }
        }
        guard (0...255).contains(sendId), (0...255).contains(recvId) else { throw ValidationError("--send-id and --recv-id are TCP-AO KeyIDs: 0 to 255") }
        if let s = sendLifetime { _ = try KeyAdd.lifetime(s, "--send-lifetime") }
        if let s = acceptLifetime { _ = try KeyAdd.lifetime(s, "--accept-lifetime") }
    }

    /// LOCAL:PORT,REMOTE:PORT (IPv6 as [ADDR]:PORT) as the protocol's connection object.
    static func connectionObject(_ s: String) throws -> JSONValue {
        func endpoint(_ e: String) throws -> (String, Int64) {
            let e = e.trimmingCharacters(in: .whitespaces)
            guard let colon = e.lastIndex(of: ":"), let port = Int64(e[e.index(after: colon)...]), (1...65535).contains(port) else {
                throw ValidationError("--connection: `\(e)` is not ADDRESS:PORT (IPv6: [ADDRESS]:PORT)")
            }
            var a = String(e[..<colon])
            if a.hasPrefix("[") && a.hasSuffix("]") { a = String(a.dropFirst().dropLast()) }
            guard IPAddress(a) != nil else { throw ValidationError("--connection: `\(a)` is not an IPv4 or IPv6 address") }
            return (a, port)
        }
        let parts = s.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2 else { throw ValidationError("--connection: write LOCAL:PORT,REMOTE:PORT (this side first, as `tcpaod flows` shows it)") }
        let (l, lp) = try endpoint(parts[0]), (r, rp) = try endpoint(parts[1])
        return .object(JSONObject(["local": .string(l), "local_port": .int(lp), "remote": .string(r), "remote_port": .int(rp)]))
    }

    /// `always` or START..END (RFC 3339, either side empty) as the protocol's lifetime object.
    static func lifetime(_ s: String, _ option: String) throws -> JSONValue {
        if s == "always" { return .object(JSONObject(["start": .null, "end": .null])) }
        let parts = s.components(separatedBy: "..")
        guard parts.count == 2 else { throw ValidationError("\(option): write always, or START..END with RFC 3339 times (e.g. 2026-01-01T00:00:00Z..), either side empty") }
        func t(_ p: String) throws -> JSONValue {
            if p.isEmpty { return .null }
            guard let v = RFC3339.parse(p) else { throw ValidationError("\(option): `\(p)` is not an RFC 3339 date-time (e.g. 2026-01-01T00:00:00Z)") }
            return .int(v)
        }
        return .object(JSONObject(["start": try t(parts[0]), "end": try t(parts[1])]))
    }

    func secretHex() throws -> String {
        var bytes: [UInt8]
        if let keyFile {
            switch KeyFile.read(keyFile) {
            case .failure(let p): fail("\(p.message) (fix: \(p.fix)); nothing was changed", code: 1)
            case .success(let r):
                if let w = r.warning { FileHandle.standardError.write(Data("tcpaod: warning: \(w.message) (fix: \(w.fix))\n".utf8)) }
                bytes = r.bytes
            }
        } else {
            var input = FileHandle.standardInput.readDataToEndOfFile()
            let text = String(decoding: input, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            input.resetBytes(in: 0..<input.count)
            guard let b = [UInt8](hex: text) else { fail("--hex-stdin: stdin is not an even number of hexadecimal digits; nothing was changed", code: 1) }
            bytes = b
        }
        defer { for i in bytes.indices { bytes[i] = 0 } }
        guard !bytes.isEmpty else { fail("the secret is empty: a TCP-AO master key needs at least 1 byte; nothing was changed", code: 1) }
        return bytes.hexString
    }

    func run() throws {
        if let connection {
            var args: [String: JSONValue] = [
                "connection": try KeyAdd.connectionObject(connection), "send_id": .int(Int64(sendId)), "recv_id": .int(Int64(recvId)),
                "algorithm": .string(algorithm), "include_options": .bool(!excludeOptions),
            ]
            if let macLength { args["mac_length"] = .int(Int64(macLength)) }
            args["secret_hex"] = .string(try secretHex())
            try report(options, ControlRequest(command: "key-add", arguments: args))
            return
        }
        var args: [String: JSONValue] = [
            "chain": .string(chain ?? ""), "key_id": .int(Int64(keyId ?? 0)), "send_id": .int(Int64(sendId)), "recv_id": .int(Int64(recvId)),
            "algorithm": .string(algorithm), "prefer": .bool(prefer), "include_options": .bool(!excludeOptions),
        ]
        if let macLength { args["mac_length"] = .int(Int64(macLength)) }
        if let s = sendLifetime { args["send_lifetime"] = try KeyAdd.lifetime(s, "--send-lifetime") }
        if let s = acceptLifetime { args["accept_lifetime"] = try KeyAdd.lifetime(s, "--accept-lifetime") }
        args["secret_hex"] = .string(try secretHex())
        // Written back as `key-file: PATH`: the daemon reads the same file at its next load.
        if let keyFile, !runtime { args["key_file"] = .string(URL(fileURLWithPath: keyFile).standardizedFileURL.resolvingSymlinksInPath().path) }
        args["runtime"] = .bool(runtime)
        try report(options, ControlRequest(command: "key-add", arguments: args))
    }
}

struct KeyPrefer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prefer",
        abstract: "Make an MKT the preferred one: new segments are sent with it, its RecvID is the RNextKeyID advertised.",
        discussion: """
        Its send lifetime starts now; no other key changes, so the peer may go on sending with the old key until \
        it moves too. Connections move to the key as the peer asks for it (RNextKeyID): prefer it on both ends.
        """)

    @OptionGroup var options: ControlOptions
    @Option(help: "The key chain.") var chain: String
    @Option(help: "The key's key-id.") var keyId: Int
    @Flag(help: "Runtime only: do not write the change to the configuration file.") var runtime = false

    func run() throws {
        try report(options, ControlRequest(command: "key-prefer", arguments: ["chain": .string(chain), "key_id": .int(Int64(keyId)), "runtime": .bool(runtime)]))
    }
}

struct KeyRemove: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove",
        abstract: "Remove an MKT from a key chain of the running daemon.",
        discussion: """
        Refused, with the reason, while a connection sends with the key or last received it (prefer another key \
        on both ends first, and wait until `tcpaod flows` shows the connections on it), and for a chain's last key.
        """)

    @OptionGroup var options: ControlOptions
    @Option(help: "The key chain.") var chain: String
    @Option(help: "The key's key-id.") var keyId: Int
    @Flag(help: "Runtime only: do not write the change to the configuration file.") var runtime = false

    func run() throws {
        try report(options, ControlRequest(command: "key-remove", arguments: ["chain": .string(chain), "key_id": .int(Int64(keyId)), "runtime": .bool(runtime)]))
    }
}

/// Sends a key request, prints the answer (exit 1 when refused, 2 when the daemon cannot be asked).
private func report(_ options: ControlOptions, _ request: ControlRequest) throws {
    let (v, raw) = try options.target.ask(request, refusedCode: 1)
    if options.json { print(String(decoding: raw, as: UTF8.self)); return }
    for w in v["warnings"]?.array ?? [] { FileHandle.standardError.write(Data("tcpaod: warning: \(w.string ?? "")\n".utf8)) }
    let pref = v["preferred_key_id"]?.int.map { "key \($0)" } ?? "no key"
    let rnext = v["rnext_key_id"]?.int.map(String.init) ?? "-"
    let what = v["summary"]?.string ?? "?"
    if v["connection"] != nil {
        print(v["summary"]?.string ?? "?")
        return
    }
    let kept = v["written"]?.string.map { "written to \($0)" } ?? "runtime only: a reload or restart goes back to the configuration file"
    print(v["changed"]?.bool == true ? "\(what) (\(kept)); the chain sends with \(pref), RNextKeyID \(rnext)"
                                     : "\(what): nothing changed; the chain sends with \(pref), RNextKeyID \(rnext)")
}
