import Dispatch
import Foundation
import TCPAO
import TCPAOConfig

// Runtime MKT management over the control socket: `key-add`, `key-remove`, `key-prefer`.
// Each request is checked by the configuration loader's rules (`Configuration.applying`), then
// applied on the control queue like a reload: every worker is reconfigured with the new key
// chain before the answer, unchanged keys keep their serials (cached traffic keys). By default
// the change is also written back to the configuration file first (`writeBack`: comments and
// layout kept, atomic, refused with nothing changed when it cannot be); with "runtime": true it
// is runtime only: a reload (SIGHUP) or a restart goes back to the file (the log lists the
// runtime changes that replaces), and no write-back is done while runtime changes are in effect.
// A bad request changes nothing.
//
//   {"version":1,"command":"key-add","chain":"k","key_id":2,"send_id":2,"recv_id":2,
//    "algorithm":"hmac-sha-256-128","secret_hex":"00ff...","prefer":false,
//    "send_lifetime":{"start":null,"end":null},"accept_lifetime":{...},   (lifetimes optional)
//    "key_file":"/etc/tcpaod/k2.key", "runtime":false}                     (both optional)
//   {"version":1,"command":"key-prefer","chain":"k","key_id":2}
//   {"version":1,"command":"key-remove","chain":"k","key_id":1}
//
// The secret arrives hexadecimal in `secret_hex`; it is never answered, never logged. Written
// back, it becomes `key-file: PATH` when the request names the file it came from (`key_file`),
// else `hexadecimal-string` in the file (which must then not be readable by every user).

public enum KeyRequests {
    public static let addArguments = ["chain", "key_id", "send_id", "recv_id", "algorithm", "mac_length", "include_options",
                                      "secret_hex", "send_lifetime", "accept_lifetime", "prefer", "runtime", "key_file"]
    public static let keyArguments = ["chain", "key_id", "runtime"]

    /// The operation a request asks for (`command` is key-add, key-remove or key-prefer).
    public static func operation(_ req: ControlRequest) throws(ControlError) -> KeyOperation {
        guard let chain = try req.string("chain"), !chain.isEmpty else {
            throw ControlError(.badRequest, "`chain` is missing: name the key chain (as in the configuration's key-chains)")
        }
        guard let keyID = try req.int("key_id", 0...Int(Int32.max)) else {
            throw ControlError(.badRequest, "`key_id` is missing: the key's key-id in its chain")
        }
        switch req.command {
        case "key-remove": return .remove(chain: chain, keyID: UInt64(keyID))
        case "key-prefer": return .prefer(chain: chain, keyID: UInt64(keyID))
        case "key-add": break
        default: throw ControlError(.unknownCommand, "`\(req.command)` is not a key command")
        }
        let m = try material(req)
        let key = NewKey(keyID: UInt64(keyID), sendID: m.sendID, recvID: m.recvID, algorithm: m.algorithm,
                         includeOptions: try req.bool("include_options") ?? true,
                         sendLifetime: try lifetime(req, "send_lifetime"), acceptLifetime: try lifetime(req, "accept_lifetime"),
                         secret: m.secret)
        return .add(chain: chain, key: key, prefer: try req.bool("prefer") ?? false)
    }

    /// A new key's `send_id`, `recv_id`, algorithm and secret (`secret_hex`; the decoded bytes
    /// are wiped once the `Secret` holds them).
    static func material(_ req: ControlRequest) throws(ControlError) -> (sendID: UInt8, recvID: UInt8, algorithm: AOAlgorithm, secret: Secret) {
        guard let send = try req.int("send_id", 0...255) else { throw ControlError(.badRequest, "`send_id` is missing: the TCP-AO KeyID we send with (0-255)") }
        guard let recv = try req.int("recv_id", 0...255) else { throw ControlError(.badRequest, "`recv_id` is missing: the TCP-AO KeyID we receive with (0-255)") }
        let alg = try algorithm(req)
        guard let hex = try req.string("secret_hex") else {
            throw ControlError(.badRequest, "`secret_hex` is missing: the master key, hexadecimal")
        }
        guard var bytes = [UInt8](hex: hex) else {
            throw ControlError(.badRequest, "`secret_hex` is not an even number of hexadecimal digits")
        }
        defer { for i in bytes.indices { bytes[i] = 0 } }
        return (UInt8(send), UInt8(recv), alg, Secret(bytes))
    }

    /// `algorithm` and the optional `mac_length`.
    static func algorithm(_ req: ControlRequest) throws(ControlError) -> AOAlgorithm {
        guard let name = try req.string("algorithm") else {
            throw ControlError(.badRequest, "`algorithm` is missing; one of: \(AOAlgorithm.byName.map(\.0).joined(separator: ", "))")
        }
        guard var alg = AOAlgorithm(name: name) else {
            throw ControlError(.badRequest, "`\(name)` is not a supported algorithm; one of: \(AOAlgorithm.byName.map(\.0).joined(separator: ", "))")
        }
        if let m = try req.int("mac_length", 4...64) {
            guard m <= alg.kind.outputLength else {
                throw ControlError(.badRequest, "`mac_length` \(m) is longer than \(alg)'s output (\(alg.kind.outputLength) bytes)")
            }
            alg = AOAlgorithm(kind: alg.kind, macLength: m)
        }
        return alg
    }

    /// {"start": seconds|null, "end": seconds|null} (null or absent: no bound), as `keys` shows.
    static func lifetime(_ req: ControlRequest, _ name: String) throws(ControlError) -> Lifetime {
        guard let v = req.arguments[name], !v.isNull else { return .always }
        guard case .object(let o) = v else {
            throw ControlError(.badRequest, "`\(name)` must be an object {\"start\": seconds or null, \"end\": seconds or null}")
        }
        var l = Lifetime.always
        for (k, x) in o.dictionary {
            guard k == "start" || k == "end" else { throw ControlError(.badRequest, "`\(name)` has no member `\(k)` (it has start, end)") }
            if x.isNull { continue }
            guard let t = x.int else { throw ControlError(.badRequest, "`\(name).\(k)` must be seconds since 1970 or null") }
            if k == "start" { l.start = t } else { l.end = t }
        }
        guard l.end > l.start else { throw ControlError(.badRequest, "`\(name)` ends before it starts") }
        return l
    }

    /// Why `op` (a removal) cannot be done now: connections of the chain's peers still send
    /// with the key's SendID, or last received its RecvID. Nil: nothing uses it.
    public static func removalRefusal(_ op: KeyOperation, config: Configuration, flows: [FlowChunk]) -> String? {
        guard case .remove(let name, let id) = op, let chain = config.keyChains.first(where: { $0.name == name }),
              let k = chain.keys.first(where: { $0.chainKeyID == id }) else { return nil }
        let peers = Set(config.peers.filter { $0.keyChain.name == name }.map(\.name))
        var sending: [String: Int] = [:], receiving: [String: Int] = [:]
        for c in flows {
            for f in c.flows where f.phase != .finished && f.phase != .reset {
                let p = c.peerName(f)
                guard peers.contains(p) else { continue }
                if f.currentSendID == k.sendID { sending[p, default: 0] += 1 } else if f.lastRecvKeyID == k.recvID { receiving[p, default: 0] += 1 }
            }
        }
        guard !sending.isEmpty || !receiving.isEmpty else { return nil }
        var parts: [String] = []
        for (p, n) in sending.sorted(by: { $0.key < $1.key }) { parts.append("\(n) connection(s) of peer \(p) send with it (KeyID \(k.sendID))") }
        for (p, n) in receiving.sorted(by: { $0.key < $1.key }) { parts.append("\(n) connection(s) of peer \(p) last received it (KeyID \(k.recvID))") }
        return "key \(id) of chain \(name) is in use: \(parts.joined(separator: "; ")); prefer another key on both ends first (tcpaod key prefer), wait until the connections moved (tcpaod flows), then remove it"
    }
}

extension Daemon {
    func registerKeyCommands() {
        dispatcher.register(ControlCommand("key-add", summary: "add an MKT to a key chain (written to the configuration file unless runtime: true; secret_hex: the master key, never answered or logged; key_file: the absolute path it came from, written as key-file)",
                                           arguments: KeyRequests.addArguments + ["connection"]) { [unowned self] req, w in
            if req.arguments["connection"] != nil { try addConnectionKey(req, &w) } else { try changeKeys(req, &w) }
        })
        dispatcher.register(ControlCommand("key-remove", summary: "remove an MKT from a key chain (written to the file unless runtime: true; refused while connections use it)",
                                           arguments: KeyRequests.keyArguments) { [unowned self] req, w in
            try changeKeys(req, &w)
        })
        dispatcher.register(ControlCommand("key-prefer", summary: "make an MKT the one new segments are sent with (written to the file unless runtime: true)",
                                           arguments: KeyRequests.keyArguments) { [unowned self] req, w in
            try changeKeys(req, &w)
        })
    }

    /// Parses, checks and applies one key request on the control queue (one change at a time,
    /// never during a reload). Throws with nothing changed.
    func changeKeys(_ req: ControlRequest, _ w: inout JSONWriter) throws(ControlError) {
        let op = try KeyRequests.operation(req)
        let runtime = try req.bool("runtime") ?? false
        let keyFile = try req.string("key_file")
        if let f = keyFile, !f.hasPrefix("/") {
            throw ControlError(.badRequest, "`key_file` must be an absolute path (the file the secret was read from)")
        }
        let r: Result<(KeyOperationResult, Int64), ControlError> = control.sync { [unowned self] in
            guard !stopping else { return .failure(ControlError(.unavailable, "tcpaod is stopping")) }
            let now = Int64(Date().timeIntervalSince1970)
            switch config.applying(op, now: now) {
            case .failure(let e):
                let code: ControlError.Code = switch e.kind {
                case .unknownChain: .unknownChain
                case .unknownKey: .unknownKey
                case .invalid: .invalidKey
                }
                log.notice("key change refused: \(op.summary): \(e.description)")
                return .failure(ControlError(code, e.description))
            case .success(let res):
                guard res.changed else { return .success((res, now)) }
                if case .remove = op {
                    let flows: [FlowChunk]
                    do throws(ControlError) { flows = try workerFlows(peer: nil) } catch { return .failure(error) }
                    if let why = KeyRequests.removalRefusal(op, config: config, flows: flows) {
                        log.notice("key change refused: \(why)")
                        return .failure(ControlError(.keyInUse, why))
                    }
                }
                if !runtime {
                    do throws(ControlError) { try writeBack(op, res, now: now, keyFile: keyFile) } catch {
                        log.notice("key change refused: \(op.summary): \(error.message)")
                        return .failure(error)
                    }
                }
                for d in res.warnings { log.warning("\(op.summary): \(d.path): \(d.message) (fix: \(d.fix))") }
                workers.forEach { $0.reconfigure(res.config.engineConfig()) }
                config = res.config
                if runtime { runtimeKeyChanges.append(op.summary) }
                let changes = runtimeKeyChanges
                published.withLock { $0.config = res.config; $0.runtimeKeyChanges = changes }
                let chain = res.config.keyChains.first { $0.name == op.chain }
                let pref = chain.flatMap { c in c.preferredSendKey(at: now).map { "\(c.keys[$0])" } } ?? "no key"
                let kept = runtime ? "runtime only: a reload or restart goes back to \(configPath)" : "written to \(configPath)"
                log.notice("\(op.summary) (\(kept)); chain \(op.chain) sends with \(pref)")
                return .success((res, now))
            }
        }
        let (res, now) = try r.get()
        w.field("changed", res.changed)
        w.field("runtime", runtime)
        if !runtime { w.field("written", configPath) }
        w.field("summary", res.changed ? op.summary : "key \(op.keyID) of chain \(op.chain) is already preferred")
        if let c = res.config.keyChains.first(where: { $0.name == op.chain }) {
            w.field("preferred_key_id", c.preferredSendKey(at: now).map { Int64(c.keys[$0].chainKeyID) }.map(JSONValue.int) ?? .null)
            w.field("rnext_key_id", c.rnextKeyID(at: now))
        }
        w.key("warnings")
        w.beginArray()
        for d in res.warnings { w.string("\(d.path): \(d.message) (fix: \(d.fix))") }
        w.endArray()
    }

    /// Writes a key change into the configuration file (on the control queue, before the
    /// workers get it): the file's text edited by `ConfigFileEdit` (comments and layout kept),
    /// checked to load as exactly the running keys plus the change, then replaced atomically
    /// (`ConfigFileWriter`: same mode and owner, fsync, rename; refused when the file changed
    /// since tcpaod loaded it). Throws with nothing written.
    func writeBack(_ op: KeyOperation, _ res: KeyOperationResult, now: Int64, keyFile: String?) throws(ControlError) {
        let fix = "make the change with --runtime (runtime only) and edit \(configPath) by hand, or fix the file and reload (SIGHUP)"
        guard runtimeKeyChanges.isEmpty else {
            throw ControlError(.notWritten, "runtime-only key changes are in effect (\(runtimeKeyChanges.joined(separator: "; "))): the file no longer matches the running keys, so this change is not written; reload (SIGHUP) to go back to the file first, or use --runtime; nothing was changed")
        }
        guard let text = configText else {
            throw ControlError(.notWritten, "\(configPath) could not be read when it was loaded; nothing was changed (fix: \(fix))")
        }
        let source: SecretSource? = if case .add = op { keyFile.map(SecretSource.keyFile) ?? .hexadecimalString } else { nil }
        let edited: String
        switch ConfigFileEdit.apply(op, to: text, now: now, secretSource: source) {
        case .success(let t): edited = t
        case .failure(let e):
            let code: ControlError.Code = switch e.kind {
            case .unknownChain: .unknownChain
            case .unknownKey: .unknownKey
            default: .notWritten
            }
            throw ControlError(code, "\(configPath)\(e.line > 0 ? ":\(e.line)" : ""): \(e.message); nothing was changed (fix: \(e.fix))")
        }
        // The edited file must load (key files read) as the running configuration with the change.
        let (parsed, diags) = ConfigLoader.parse(edited, file: configPath, now: now, previous: config)
        guard let parsed else {
            let first = diags.errors.first.map(\.description) ?? "?"
            throw ControlError(.notWritten, "the edited \(configPath) would not load (\(first)); nothing was changed (fix: \(fix))")
        }
        let diff = ConfigFileEdit.keyChainDifferences(parsed, res.config)
        guard diff.isEmpty else {
            throw ControlError(.notWritten, "\(configPath) does not hold the running keys (\(diff.prefix(3).joined(separator: "; "))): it changed since tcpaod loaded it; nothing was changed (fix: reload first (SIGHUP), or use --runtime)")
        }
        do throws(ConfigWriteError) {
            try ConfigFileWriter.atomicWrite(path: configPath, text: edited, expected: text, holdsSecrets: source == .hexadecimalString)
        } catch {
            throw ControlError(.notWritten, "\(error.message); nothing was changed (fix: \(error.fix))")
        }
        configText = edited
    }

    /// `key-add` with `connection`: an MKT for that one connection (`AOEngine.installConnectionKey`),
    /// asked of every worker (the one holding the connection installs it). Runtime only: it is
    /// forgotten with the connection.
    func addConnectionKey(_ req: ControlRequest, _ w: inout JSONWriter) throws(ControlError) {
        let (flow, mkt) = try KeyRequests.connectionKey(req)
        // On a client thread: the configuration as published (the control queue replaces `config`).
        let peers = published.withLock { $0.config.peers }
        guard peers.contains(where: { $0.prefix.contains(flow.remote) }) else {
            throw ControlError(.unknownConnection, "\(flow.remote) is in no peer's prefix: connection \(flow) is not protected by tcpaod (`remote` is the far end; in gateway mode `local` is the protected host)")
        }
        let wall = Int64(Date().timeIntervalSince1970)
        let answers = workers.map { $0.installConnectionKey(flow, mkt, wall: wall) }
        let deadline = DispatchTime.now() + Daemon.queryTimeout
        var installed = false
        var refusal: String? = nil
        for (i, a) in answers.enumerated() {
            guard let r = a.wait(until: deadline) else {
                throw ControlError(.timeout, "queue \(workers[i].socket.queue) did not answer within 10 s")
            }
            switch r {
            case .installed: installed = true
            case .refused(let why): refusal = why
            case .notFound: break
            }
        }
        if let refusal {
            log.notice("connection key refused: \(refusal)")
            throw ControlError(.invalidKey, refusal + "; nothing was changed")
        }
        guard installed else {
            throw ControlError(.unknownConnection, "tcpaod holds no connection \(flow) (`tcpaod flows` lists them: local is this side, remote the peer); nothing was changed")
        }
        log.notice("connection \(flow): its own MKT installed (SendID \(mkt.sendID), RecvID \(mkt.recvID), \(mkt.algorithm)); it moves to it when the peer asks for it (RNextKeyID), then the peer's configured keys are no longer accepted on it", metadata: ["flow": "\(flow)", "event": "connection-key"])
        w.field("changed", true)
        w.field("runtime", true)
        w.field("summary", "connection \(flow): MKT SendID \(mkt.sendID), RecvID \(mkt.recvID) (\(mkt.algorithm)) installed; RNextKeyID \(mkt.recvID) advertised")
        w.key("connection")
        w.beginObject()
        w.field("local", flow.local.description)
        w.field("local_port", Int(flow.localPort))
        w.field("remote", flow.remote.description)
        w.field("remote_port", Int(flow.remotePort))
        w.endObject()
        w.field("send_id", Int(mkt.sendID))
        w.field("recv_id", Int(mkt.recvID))
    }
}

extension KeyRequests {
    /// The connection and its MKT of a `key-add` with `connection`:
    ///   {"command":"key-add","connection":{"local":"192.0.2.1","local_port":40000,"remote":"192.0.2.2","remote_port":9339},
    ///    "send_id":100,"recv_id":100,"algorithm":"hmac-sha-1-96","secret_hex":"..."}
    /// (`local` is this side, the protected host in gateway mode; `remote` the peer.)
    public static func connectionKey(_ req: ControlRequest) throws(ControlError) -> (FlowKey, MKT) {
        for a in ["chain", "key_id", "prefer", "send_lifetime", "accept_lifetime", "key_file"] where req.arguments[a] != nil {
            throw ControlError(.badRequest, "`\(a)` does not apply to a connection's MKT (it belongs to no chain, is preferred at once and lasts as long as the connection)")
        }
        if try req.bool("runtime") == false {
            throw ControlError(.badRequest, "a connection's MKT is runtime only (it is forgotten with the connection): leave `runtime` out")
        }
        guard case .object(let o)? = req.arguments["connection"] else {
            throw ControlError(.badRequest, "`connection` must be an object {\"local\": address, \"local_port\": n, \"remote\": address, \"remote_port\": n}")
        }
        func address(_ n: String) throws(ControlError) -> IPAddress {
            guard let s = o.dictionary[n]?.string, let a = IPAddress(s) else {
                throw ControlError(.badRequest, "`connection.\(n)` must be an IPv4 or IPv6 address")
            }
            return a
        }
        func port(_ n: String) throws(ControlError) -> UInt16 {
            guard let v = o.dictionary[n]?.int, (1...65535).contains(v) else { throw ControlError(.badRequest, "`connection.\(n)` must be a port, 1-65535") }
            return UInt16(v)
        }
        for k in o.dictionary.keys where !["local", "local_port", "remote", "remote_port"].contains(k) {
            throw ControlError(.badRequest, "`connection` has no member `\(k)` (it has local, local_port, remote, remote_port)")
        }
        let flow = FlowKey(local: try address("local"), remote: try address("remote"), localPort: try port("local_port"), remotePort: try port("remote_port"))
        guard flow.local.isV6 == flow.remote.isV6 else { throw ControlError(.badRequest, "`connection.local` and `remote` are of different families") }
        let m = try material(req)
        guard m.secret.count >= ConfigLoader.weakSecretLength else {
            throw ControlError(.invalidKey, "the secret is \(m.secret.count == 0 ? "empty" : "only \(m.secret.count) bytes"): a connection's MKT needs at least \(ConfigLoader.weakSecretLength) (the TLS exporter gives 32)")
        }
        let mkt = MKT(chainKeyID: 0, sendID: m.sendID, recvID: m.recvID, algorithm: m.algorithm,
                      includeOptions: try req.bool("include_options") ?? true, secret: m.secret)
        return (flow, mkt)
    }
}
