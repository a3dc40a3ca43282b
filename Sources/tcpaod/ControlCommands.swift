import ArgumentParser
import Foundation
import TCPAO
import TCPAOConfig
import TCPAODaemon

// `tcpaod status`, `flows`, `keys`: ask the running daemon over its control socket (JSON lines,
// see ControlProtocol) and print its answer, as text or (--json) as the daemon sent it.

/// Which daemon to ask: --socket, else --instance, else the configuration's instance, else the
/// default instance.
struct ControlTarget {
    var instance: String?
    var socket: String?
    var config: String?

    func client() throws -> ControlClient {
        if let socket { return ControlClient(path: socket, instance: nil) }
        var name = instance
        if name == nil, let config { name = try loadConfiguration(config, quietWarnings: true).instance }
        if let n = name, n != "default", !n.isEmpty, let why = RuntimePaths.problem(n) {
            fail("--instance: \(why)", code: 2)
        }
        return ControlClient(instance: name, socket: nil)
    }

    /// The answer to `request`; on failure, prints why and exits (2; 1 when the daemon refused).
    func ask(_ request: ControlRequest, refusedCode: Int32 = 2) throws -> (JSONValue, [UInt8]) {
        let c = try client()
        do { return try c.send(request) } catch {
            fail(error.description, code: error.kind == .refused ? refusedCode : 2)
        }
    }
}

func fail(_ message: String, code: Int32) -> Never {
    FileHandle.standardError.write(Data("tcpaod: \(message)\n".utf8))
    Foundation.exit(code)
}

struct ControlOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The tcpaod instance to ask (its socket is /run/tcpaod/NAME/control.sock; default: the default instance, /run/tcpaod/control.sock).", valueName: "name"))
    var instance: String?

    @Option(help: ArgumentHelp("The control socket to ask (overrides --instance).", valueName: "path"))
    var socket: String?

    @Option(name: .shortAndLong, help: "Configuration file (to find its `instance`).")
    var config: String?

    @Flag(help: "Print the daemon's answer as JSON (one line).")
    var json = false

    var target: ControlTarget { ControlTarget(instance: instance, socket: socket, config: config) }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the running daemon: version, mode, uptime, configuration, queues, flow state.",
        discussion: "Asks the daemon over its control socket. Exit 2 when it cannot be reached (not running, permission denied).")

    @OptionGroup var options: ControlOptions

    func run() throws {
        let (v, raw) = try options.target.ask(ControlRequest(command: "status"))
        if options.json { print(String(decoding: raw, as: UTF8.self)); return }
        let inst = v["instance"]?.string ?? "?"
        print("tcpaod \(v["tcpaod"]?.string ?? "?"), instance \(inst), pid \(int(v["pid"])), mode \(v["mode"]?.string ?? "?"), up \(duration(int(v["uptime"])))")
        let cfg = v["config"]
        let now = int(v["started_at"]) + int(v["uptime"])
        print("config \(cfg?["file"]?.string ?? "?"), loaded \(timestamp(int(cfg?["loaded_at"]))) (\(duration(now - int(cfg?["loaded_at"]))) ago), \(int(cfg?["reloads"])) reload(s)")
        let fs = v["flow_state"]
        print("flow state: \(fs?["store"]?.string ?? "?"): \(fs?["reason"]?.string ?? "")")
        print("flows: \(int(v["flows"])) (\(int(v["synchronized_flows"])) synchronized), max-flows \(int(v["max_flows"])), \(int(v["peers"])) peer(s)")
        print("rules: \(v["rules"]?.string.map { "installed (\($0))" } ?? "not managed (--no-rules)")")
        print("control socket: \(v["control_socket"]?.string ?? "-"), stats file: \(v["stats_file"]?.string ?? "-"), metrics: \(v["metrics"]?.string ?? "-")")
        for q in v["queues"]?.array ?? [] {
            var line = "queue \(int(q["queue"])): packets \(int(q["packets"])) accepted \(int(q["accepted"])) modified \(int(q["modified"])) dropped \(int(q["dropped"])) flows \(int(q["flows"])) batches \(int(q["batches"])) enobufs \(int(q["enobufs"]))"
            for k in ["truncated", "malformed_messages", "receive_errors", "send_errors", "netlink_errors"] where int(q[k]) > 0 {
                line += " \(k) \(int(q[k]))"
            }
            if let k = q["kernel"], !k.isNull {
                line += "; kernel: waiting \(int(k["waiting"])) queue_dropped \(int(k["queue_dropped"])) user_dropped \(int(k["user_dropped"]))"
            } else {
                line += "; kernel: not listed in /proc/net/netfilter/nfnetlink_queue"
            }
            print(line)
        }
    }
}

struct Flows: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the connections the daemon tracks: 4-tuple, age, TCP phase, KeyIDs, SNEs, counters.",
        discussion: """
        One line per connection: KEYID is the SendID the daemon signs with (current_key), RNEXT the peer's last \
        RNextKeyID; SNE is send/receive; SIGNED, VERIFIED and DROPPED count this connection's segments. --json \
        adds the ISNs. No key material is ever shown.
        """)

    @OptionGroup var options: ControlOptions

    @Option(help: "Only the connections of this peer (its name in the configuration).")
    var peer: String?

    func run() throws {
        var args: [String: JSONValue] = [:]
        if let peer { args["peer"] = .string(peer) }
        let (v, raw) = try options.target.ask(ControlRequest(command: "flows", arguments: args))
        if options.json { print(String(decoding: raw, as: UTF8.self)); return }
        let flows = v["flows"]?.array ?? []
        func id(_ x: JSONValue?) -> String { x?.int.map(String.init) ?? "-" }
        func addr(_ a: String, _ p: Int64) -> String { a.contains(":") ? "[\(a)]:\(p)" : "\(a):\(p)" }
        var rows: [[String]] = [["PEER", "LOCAL", "REMOTE", "PHASE", "AGE", "IDLE", "KEYID", "RNEXT", "SNE", "SIGNED", "VERIFIED", "DROPPED"]]
        rows.reserveCapacity(flows.count + 1)
        for f in flows {
            rows.append([f["peer"]?.string ?? "?", addr(f["local"]?.string ?? "?", int(f["local_port"])),
                         addr(f["remote"]?.string ?? "?", int(f["remote_port"])), f["phase"]?.string ?? "?",
                         duration(int(f["age"])), duration(int(f["idle"])), id(f["key_id"]), id(f["rnext_key_id"]),
                         "\(int(f["send_sne"]))/\(int(f["recv_sne"]))", "\(int(f["signed"]))", "\(int(f["verified"]))", "\(int(f["dropped"]))"])
        }
        printTable(rows)
        print("\(int(v["total"])) connection(s)\(peer.map { " of peer \($0)" } ?? "")")
    }
}

struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show each key chain's keys: valid for sending and accepting now, preferred, connections using them, counters.",
        discussion: """
        Counters use the names of Linux's TCP_AO_INFO: pkt_good (verified), pkt_bad (bad MAC) per key; per peer also \
        pkt_key_not_found (a KeyID no usable key has), pkt_ao_required (no TCP-AO), pkt_dropped_icmp (ICMP hard errors \
        dropped, RFC 5925 7.8). "connections" counts the connections whose current_key is the key. Secrets are never shown.
        """)

    @OptionGroup var options: ControlOptions

    func run() throws {
        let (v, raw) = try options.target.ask(ControlRequest(command: "keys"))
        if options.json { print(String(decoding: raw, as: UTF8.self)); return }
        let now = int(v["time"])
        func life(_ l: JSONValue?) -> String {
            let s = l?["start"]?.int.map { timestamp($0) } ?? "always"
            let e = l?["end"]?.int.map { timestamp($0) } ?? "no end"
            return s == "always" && e == "no end" ? "always" : "\(s) .. \(e)"
        }
        for c in v["chains"]?.array ?? [] {
            let peers = (c["peers"]?.array ?? []).compactMap(\.string)
            print("key chain \(c["name"]?.string ?? "?") (peers: \(peers.isEmpty ? "none" : peers.joined(separator: ", ")))")
            var rows: [[String]] = [["KEY", "SENDID", "RECVID", "ALGORITHM", "SEND", "ACCEPT", "PREFERRED", "CONNECTIONS", "SIGNED", "PKT_GOOD", "PKT_BAD"]]
            for k in c["keys"]?.array ?? [] {
                let send = k["send_valid"]?.bool == true ? "valid" : ((k["send_lifetime"]?["start"]?.int ?? .min) > now ? "not yet" : "expired")
                let accept = k["accept_valid"]?.bool == true ? "valid" : ((k["accept_lifetime"]?["start"]?.int ?? .min) > now ? "not yet" : "expired")
                rows.append(["\(int(k["key_id"]))", "\(int(k["send_id"]))", "\(int(k["recv_id"]))", k["algorithm"]?.string ?? "?",
                             send, accept, k["preferred"]?.bool == true ? "yes" : "-", "\(int(k["connections"]))",
                             "\(int(k["pkt_signed"]))", "\(int(k["pkt_good"]))", "\(int(k["pkt_bad"]))"])
            }
            printTable(rows, indent: "  ")
            for k in c["keys"]?.array ?? [] where k["send_lifetime"]?["start"]?.isNull == false || k["send_lifetime"]?["end"]?.isNull == false
                || k["accept_lifetime"]?["start"]?.isNull == false || k["accept_lifetime"]?["end"]?.isNull == false {
                print("  key \(int(k["key_id"])): send \(life(k["send_lifetime"])), accept \(life(k["accept_lifetime"]))")
            }
        }
        let changes = (v["runtime_changes"]?.array ?? []).compactMap(\.string)
        if !changes.isEmpty {
            print("runtime key changes (tcpaod key; a reload or restart goes back to the file): \(changes.joined(separator: "; "))")
        }
        for p in v["peers"]?.array ?? [] {
            let pref = p["preferred_key_id"]?.int.map { "key \($0)" } ?? "no key"
            let rnext = p["rnext_key_id"]?.int.map(String.init) ?? "-"
            print("peer \(p["name"]?.string ?? "?") (chain \(p["chain"]?.string ?? "?")): new connections use \(pref), RNextKeyID \(rnext); \(int(p["connections"])) connection(s); "
                  + "pkt_good \(int(p["pkt_good"])) pkt_bad \(int(p["pkt_bad"])) pkt_key_not_found \(int(p["pkt_key_not_found"])) pkt_ao_required \(int(p["pkt_ao_required"])) pkt_dropped_icmp \(int(p["pkt_dropped_icmp"]))")
        }
    }
}

// MARK: text helpers

func int(_ v: JSONValue?) -> Int64 { v?.int ?? 0 }

/// 59s, 12m03s, 5h02m, 3d04h.
func duration(_ s: Int64) -> String {
    if s < 60 { return "\(max(s, 0))s" }
    if s < 3600 { return String(format: "%dm%02ds", s / 60, s % 60) }
    if s < 86400 { return String(format: "%dh%02dm", s / 3600, s % 3600 / 60) }
    return String(format: "%dd%02dh", s / 86400, s % 86400 / 3600)
}

/// UTC, ISO 8601.
func timestamp(_ t: Int64) -> String {
    let f = ISO8601DateFormatter()
    f.timeZone = TimeZone(identifier: "UTC")
    return f.string(from: Date(timeIntervalSince1970: TimeInterval(t)))
}

/// Columns padded to their widest cell.
func printTable(_ rows: [[String]], indent: String = "") {
    guard let first = rows.first else { return }
    var width = [Int](repeating: 0, count: first.count)
    for r in rows { for (i, c) in r.enumerated() where i < width.count { width[i] = max(width[i], c.count) } }
    var out = ""
    out.reserveCapacity(rows.count * (width.reduce(0, +) + 2 * width.count + 1))
    for r in rows {
        out += indent
        for (i, c) in r.enumerated() {
            out += c
            if i < r.count - 1 { out += String(repeating: " ", count: width[i] - c.count + 2) }
        }
        out += "\n"
    }
    print(out, terminator: "")
}
