import Dispatch
import Foundation
import Logging
import TCPAO
import TCPAOConfig
#if canImport(Glibc)
import Glibc
#endif

/// tcpaod's version, shown by `tcpaod status`.
public let tcpaodVersion = "0.1.0"

/// What the control socket reads about the daemon, published by the control queue.
public struct DaemonView: Sendable {
    public var config: Configuration
    public var reloads: Int
    /// When the configuration in use was loaded (start, or the last successful reload).
    public var loadedAt: Int64
    public var flowState: String
    public var controlSocket: String?
    /// The metrics endpoint's URL when it listens.
    public var metrics: String?
    /// False after a reload that failed, until one succeeds.
    public var lastReloadSucceeded: Bool
    /// Runtime key changes (key-add, key-remove, key-prefer) since the file was last loaded.
    public var runtimeKeyChanges: [String] = []
}

extension Daemon {
    /// The control socket's time limit for answers that need the workers.
    static let queryTimeout = DispatchTimeInterval.seconds(10)

    func publish(loadedAt: Int64) {
        let v = DaemonView(config: config, reloads: reloads, loadedAt: loadedAt, flowState: flowStateNote,
                           controlSocket: controlServer?.path, metrics: metricsServer.map(Daemon.metricsURL), lastReloadSucceeded: true,
                           runtimeKeyChanges: runtimeKeyChanges)
        published.withLock { $0 = v }
    }

    /// Opens the control socket once the queues are bound. A socket another live tcpaod
    /// answers on (the same instance name twice) is left to it: this one runs without.
    func startControl() {
        registerCommands()
        let path = RuntimePaths(instance: config.instance).controlSocket
        let server = ControlServer(path: path, dispatcher: dispatcher, log: log)
        do {
            switch try server.start() {
            case .listening:
                controlServer = server
                log.info("control socket \(path) (instance \(RuntimePaths(instance: config.instance).displayName)): tcpaod status, flows, keys")
            case .inUse:
                log.warning("control socket \(path) is in use by another running tcpaod (the same instance name); this one runs without a control socket: give each tcpaod on this host its own `instance:` (or --instance)")
            }
        } catch {
            log.error("no control socket: \(error); tcpaod runs without it (status, flows and keys cannot reach it)")
        }
    }

    /// Starts the metrics endpoint (`metrics: { listen: ... }`) once the queues are bound. An
    /// address that cannot be bound is logged; tcpaod protects the traffic without it.
    func startMetrics() {
        guard let m = config.metrics else { return }
        latestReport.withLock { $0 = report() }
        let server = MetricsServer(address: m.listen, log: log) { [unowned self] in metricsText() }
        do {
            try server.start()
            metricsServer = server
            log.info("metrics: \(Daemon.metricsURL(server)) (Prometheus text format)")
        } catch {
            log.error("no metrics endpoint: \(error); tcpaod runs without it")
        }
    }

    static func metricsURL(_ s: MetricsServer) -> String {
        let a = s.address.address
        return "http://\(a.isV6 ? "[\(a)]" : "\(a)"):\(s.port)\(MetricsHTTP.path)"
    }

    /// One scrape: the last report with the published view, and /proc/self.
    func metricsText() -> [UInt8] {
        let v = published.withLock { $0 }
        let r = latestReport.withLock { $0 } ?? StatsReport(
            pid: getpid(), time: Int64(Date().timeIntervalSince1970), uptime: 0, mode: v.config.mode.rawValue, config: configPath,
            reloads: v.reloads, counters: CounterSnapshot(), queues: [], kernelQueues: [], synchronizedFlows: 0)
        let info = MetricsInfo(version: tcpaodVersion, instance: RuntimePaths(instance: v.config.instance).displayName,
                               mode: v.config.mode.rawValue, reloads: v.reloads, loadedAt: v.loadedAt,
                               lastReloadSucceeded: v.lastReloadSucceeded, maxFlows: v.config.limits.maxFlows, peers: v.config.peers.count)
        return MetricsExposition.render(r, info, process: ProcessStats.read())
    }

    func registerCommands() {
        dispatcher.register(ControlCommand("status", summary: "version, mode, uptime, configuration, queues with their counters and the kernel's drops, flow state") { [unowned self] _, w in
            try writeStatus(&w)
        })
        dispatcher.register(ControlCommand("flows", summary: "one entry per connection: 4-tuple, age, phase, KeyIDs, SNEs, counters", arguments: ["peer", "limit"]) { [unowned self] req, w in
            try writeFlows(&w, peer: try req.string("peer"), limit: try req.int("limit", 0...Int(Int32.max)))
        })
        dispatcher.register(ControlCommand("keys", summary: "per key chain and key: validity now, preferred, connections using it, counters") { [unowned self] _, w in
            try writeKeys(&w)
        })
        registerKeyCommands()
        dispatcher.register(ControlCommand("stats", summary: "the counters of `tcpaod stats` (the stats file's content)") { [unowned self] _, w in
            let r = try liveReport()
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys]
            w.key("stats")
            w.raw(try enc.encode(r))
        })
    }

    // MARK: answers

    /// Counters of every worker, asked of all at once (each answers between two batches).
    func workerSnapshots() throws(ControlError) -> [(CounterSnapshot, IOStats)] {
        let pending = workers.map { $0.requestSnapshot() }
        let deadline = DispatchTime.now() + Daemon.queryTimeout
        var out: [(CounterSnapshot, IOStats)] = []
        for (i, p) in pending.enumerated() {
            guard let v = p.wait(until: deadline) else {
                throw ControlError(.timeout, "queue \(workers[i].socket.queue) did not answer within 10 s")
            }
            out.append(v)
        }
        return out
    }

    /// The flows of every worker (in chunks, see `Worker.requestFlows`), with their queue.
    func workerFlows(peer: String?) throws(ControlError) -> [FlowChunk] {
        let walks = workers.map { $0.requestFlows(peer: peer) }
        let deadline = DispatchTime.now() + Daemon.queryTimeout
        var out: [FlowChunk] = []
        for (i, w) in walks.enumerated() {
            guard let chunks = w.wait(until: deadline) else {
                walks.forEach { _ = $0.wait(until: .now()) } // cancels the others too
                throw ControlError(.timeout, "queue \(workers[i].socket.queue) did not list its flows within 10 s")
            }
            for var c in chunks {
                c.queue = Int(workers[i].socket.queue)
                out.append(c)
            }
        }
        return out
    }

    func liveReport() throws(ControlError) -> StatsReport {
        let v = published.withLock { $0 }
        let snaps = try workerSnapshots()
        var total = CounterSnapshot()
        for s in snaps { total.add(s.0) }
        let mine = Set(v.config.queues.map(Int.init))
        return StatsReport(pid: getpid(), time: Int64(Date().timeIntervalSince1970), uptime: Int64(-started.timeIntervalSinceNow),
                           mode: v.config.mode.rawValue, config: configPath, reloads: v.reloads, counters: total, queues: snaps.map(\.1),
                           kernelQueues: KernelQueueStats.read().filter { mine.contains($0.queue) },
                           synchronizedFlows: synchronized.count)
    }

    func writeStatus(_ w: inout JSONWriter) throws(ControlError) {
        let v = published.withLock { $0 }
        let snaps = try workerSnapshots()
        let kernel = KernelQueueStats.read()
        let s = StatusInfo(
            version: tcpaodVersion, pid: Int(getpid()), instance: RuntimePaths(instance: v.config.instance).displayName,
            mode: v.config.mode.rawValue, startedAt: Int64(started.timeIntervalSince1970), now: Int64(Date().timeIntervalSince1970),
            configFile: configPath.hasPrefix("/") ? configPath : FileManager.default.currentDirectoryPath + "/" + configPath, loadedAt: v.loadedAt, reloads: v.reloads,
            flowStore: v.config.flowState.rawValue, flowStoreReason: v.flowState,
            maxFlows: v.config.limits.maxFlows, synchronizedFlows: synchronized.count, peers: v.config.peers.count,
            controlSocket: v.controlSocket, metrics: v.metrics, statsFile: v.config.statsFile, rules: manageRules ? v.config.firewall.rawValue : nil,
            queues: snaps.map { s in (io: s.1, kernel: kernel.first { $0.queue == s.1.queue }) })
        ControlViews.writeStatus(s, into: &w)
    }

    func writeFlows(_ w: inout JSONWriter, peer: String?, limit: Int?) throws(ControlError) {
        let v = published.withLock { $0 }
        if let peer, !v.config.peers.contains(where: { $0.name == peer }) {
            throw ControlError(.unknownPeer, "no peer `\(peer)`; peers: \(v.config.peers.map(\.name).joined(separator: ", "))")
        }
        let flows = try workerFlows(peer: peer)
        ControlViews.writeFlows(flows, now: Worker.clock().mono, limit: limit, into: &w)
    }

    func writeKeys(_ w: inout JSONWriter) throws(ControlError) {
        let v = published.withLock { $0 }
        let snaps = try workerSnapshots()
        var total = CounterSnapshot()
        for s in snaps { total.add(s.0) }
        let flows = try workerFlows(peer: nil)
        ControlViews.writeKeys(config: v.config, counters: total, usage: KeyUsage(flows),
                               now: Int64(Date().timeIntervalSince1970), runtimeChanges: v.runtimeKeyChanges, into: &w)
    }
}

/// Connections per peer and current_key (SendID), ended ones not counted.
public struct KeyUsage: Sendable {
    public var byPeer: [String: [UInt8: Int]] = [:]

    public init(_ chunks: [FlowChunk]) {
        for c in chunks {
            for f in c.flows where f.phase != .finished && f.phase != .reset {
                guard let id = f.currentSendID else { continue }
                byPeer[c.peerName(f), default: [:]][id, default: 0] += 1
            }
        }
    }

    public func count(peer: String, sendID: UInt8) -> Int { byPeer[peer]?[sendID] ?? 0 }
}

/// What `status` reports, gathered by the daemon.
public struct StatusInfo: Sendable {
    public var version: String
    public var pid: Int
    public var instance: String
    public var mode: String
    public var startedAt: Int64
    public var now: Int64
    public var configFile: String
    public var loadedAt: Int64
    public var reloads: Int
    public var flowStore: String
    public var flowStoreReason: String
    public var maxFlows: Int
    public var synchronizedFlows: Int
    public var peers: Int
    public var controlSocket: String?
    /// The metrics endpoint's URL (nil: none).
    public var metrics: String? = nil
    public var statsFile: String
    /// The firewall back end when tcpaod manages the rules (nil: --no-rules).
    public var rules: String?
    public var queues: [(io: IOStats, kernel: KernelQueueStats?)]
}

/// The JSON of the answers (pure; the daemon gathers, these write). Names follow Linux where
/// it has them: TCP_AO_INFO's pkt_good, pkt_bad, pkt_key_not_found, pkt_ao_required,
/// pkt_dropped_icmp, /proc/net/netfilter/nfnetlink_queue's queue_dropped, user_dropped.
public enum ControlViews {
    public static func writeStatus(_ s: StatusInfo, into w: inout JSONWriter) {
        w.field("tcpaod", s.version)
        w.field("pid", s.pid)
        w.field("instance", s.instance)
        w.field("mode", s.mode)
        w.field("started_at", s.startedAt)
        w.field("uptime", s.now - s.startedAt)
        w.key("config")
        w.beginObject()
        w.field("file", s.configFile)
        w.field("loaded_at", s.loadedAt)
        w.field("reloads", s.reloads)
        w.endObject()
        w.key("flow_state")
        w.beginObject()
        w.field("store", s.flowStore)
        w.field("reason", s.flowStoreReason)
        w.endObject()
        var flows = 0
        for q in s.queues { flows += q.io.flows }
        w.field("flows", flows)
        w.field("synchronized_flows", s.synchronizedFlows)
        w.field("max_flows", s.maxFlows)
        w.field("peers", s.peers)
        w.field("rules", s.rules)
        w.field("control_socket", s.controlSocket)
        w.field("metrics", s.metrics)
        w.field("stats_file", s.statsFile)
        w.key("queues")
        w.beginArray()
        for q in s.queues {
            let io = q.io
            w.beginObject()
            w.field("queue", io.queue)
            w.field("packets", io.packets)
            w.field("accepted", io.accepted)
            w.field("modified", io.modified)
            w.field("dropped", io.dropped)
            w.field("batches", io.batches)
            w.field("truncated", io.truncated)
            w.field("malformed_messages", io.malformedMessages)
            w.field("enobufs", io.enobufs)
            w.field("receive_errors", io.receiveErrors)
            w.field("send_errors", io.sendErrors)
            w.field("netlink_errors", io.netlinkErrors)
            w.field("flows", io.flows)
            w.key("kernel")
            if let k = q.kernel {
                w.beginObject()
                w.field("waiting", k.queued)
                w.field("queue_dropped", k.queueDropped)
                w.field("user_dropped", k.userDropped)
                w.endObject()
            } else {
                w.null()
            }
            w.endObject()
        }
        w.endArray()
    }

    /// `flows`: every connection of every queue (the first `limit` when given), and "total",
    /// the number there are. Monotonic times become ages in seconds at `now`.
    public static func writeFlows(_ chunks: [FlowChunk], now: UInt32, limit: Int? = nil, into w: inout JSONWriter) {
        var total = 0
        for c in chunks { total += c.flows.count }
        w.field("total", total)
        w.key("flows")
        w.beginArray()
        var n = 0
        outer: for c in chunks {
            for f in c.flows {
                if let limit, n >= limit { break outer }
                n += 1
                writeFlow(f, peer: c.peerName(f), queue: c.queue, now: now, into: &w)
            }
        }
        w.endArray()
    }

    static func writeFlow(_ f: FlowInfo, peer: String, queue: Int, now: UInt32, into w: inout JSONWriter) {
        w.beginObject()
        w.field("peer", peer)
        w.field("local", f.key.local.description)
        w.field("local_port", Int(f.key.localPort))
        w.field("remote", f.key.remote.description)
        w.field("remote_port", Int(f.key.remotePort))
        w.field("phase", f.phase.label)
        w.field("age", Int(now &- f.createdAt))
        w.field("idle", Int(now &- f.lastSeen))
        w.field("key_id", f.currentSendID)
        w.field("rnext_key_id", f.peerRNextKeyID)
        w.field("last_recv_key_id", f.lastRecvKeyID)
        w.field("send_sne", UInt64(f.sendSNE))
        w.field("recv_sne", UInt64(f.recvSNE))
        w.field("local_isn", f.localISN)
        w.field("remote_isn", f.remoteISN)
        w.field("signed", f.signed)
        w.field("verified", f.verified)
        w.field("dropped", f.dropped)
        w.field("label_saved", f.labelSaved)
        if let c = f.connectionKey {
            // The connection's own MKT (key-add with `connection`); never its secret.
            w.key("connection_key")
            w.beginObject()
            w.field("send_id", Int(c.sendID))
            w.field("recv_id", Int(c.recvID))
            w.field("algorithm", "\(c.algorithm)")
            w.field("exclusive", c.exclusive)
            w.endObject()
        }
        w.field("queue", queue)
        w.endObject()
    }

    /// `keys`: per chain, its keys (validity now, preferred, connections, per-key counters
    /// summed over the chain's peers); per peer, the chain's counters there. No key material.
    public static func writeKeys(config: Configuration, counters: CounterSnapshot, usage: KeyUsage, now: Int64,
                                 runtimeChanges: [String] = [], into w: inout JSONWriter) {
        w.field("time", now)
        // The key changes made over the control socket since the file was loaded (a reload
        // or restart discards them).
        w.key("runtime_changes")
        w.beginArray()
        for c in runtimeChanges { w.string(c) }
        w.endArray()
        w.key("chains")
        w.beginArray()
        for chain in config.keyChains {
            let peers = config.peers.filter { $0.keyChain.name == chain.name }
            let preferred = chain.preferredSendKey(at: now)
            let rnext = chain.rnextKeyID(at: now)
            w.beginObject()
            w.field("name", chain.name)
            w.key("peers")
            w.beginArray()
            for p in peers { w.string(p.name) }
            w.endArray()
            w.key("keys")
            w.beginArray()
            for (i, k) in chain.keys.enumerated() {
                var signed: UInt64 = 0, good: UInt64 = 0, bad: UInt64 = 0
                var conns = 0
                for p in peers {
                    let c = counters.keys[p.name]?["\(k.chainKeyID)"] ?? [:]
                    signed += c[KeyCounter.signed.label] ?? 0
                    good += c[KeyCounter.verified.label] ?? 0
                    bad += c[KeyCounter.badMAC.label] ?? 0
                    // current_key names a SendID; it is this key's when this is the key
                    // with that SendID (the one valid now if several share it).
                    let holder = chain.sendKey(sendID: k.sendID, at: now) ?? chain.keys.firstIndex { $0.sendID == k.sendID }
                    if holder == i { conns += usage.count(peer: p.name, sendID: k.sendID) }
                }
                w.beginObject()
                w.field("key_id", k.chainKeyID)
                w.field("send_id", UInt8?.some(k.sendID))
                w.field("recv_id", UInt8?.some(k.recvID))
                w.field("algorithm", k.algorithm.description)
                w.field("include_options", k.includeOptions)
                w.key("send_lifetime")
                writeLifetime(k.sendLifetime, into: &w)
                w.key("accept_lifetime")
                writeLifetime(k.acceptLifetime, into: &w)
                w.field("send_valid", k.sendLifetime.contains(now))
                w.field("accept_valid", k.acceptLifetime.contains(now))
                w.field("preferred", preferred == i)
                w.field("rnext", rnext == k.recvID && k.acceptLifetime.contains(now))
                w.field("connections", conns)
                w.field("pkt_signed", signed)
                w.field("pkt_good", good)
                w.field("pkt_bad", bad)
                w.endObject()
            }
            w.endArray()
            w.endObject()
        }
        w.endArray()
        w.key("peers")
        w.beginArray()
        for p in config.peers {
            let c = counters.peers[p.name] ?? [:]
            func n(_ label: String) -> UInt64 { c[label] ?? 0 }
            let chain = p.keyChain
            w.beginObject()
            w.field("name", p.name)
            w.field("chain", chain.name)
            w.field("preferred_key_id", chain.preferredSendKey(at: now).map { Int64(chain.keys[$0].chainKeyID) }.map(JSONValue.int) ?? .null)
            w.field("rnext_key_id", chain.rnextKeyID(at: now))
            var conns = 0
            for (_, c) in usage.byPeer[p.name] ?? [:] { conns += c }
            w.field("connections", conns)
            w.field("pkt_signed", n(Counter.signed.label))
            w.field("pkt_good", n(Counter.verified.label))
            w.field("pkt_bad", n("dropped-" + DropReason.badMAC.label))
            // Linux counts a segment whose KeyID matches no usable key as "key not found";
            // here a key outside its accept lifetime is not usable either.
            w.field("pkt_key_not_found", n("dropped-" + DropReason.unknownKeyID.label) + n("dropped-" + DropReason.expiredKey.label))
            w.field("pkt_ao_required", n("dropped-" + DropReason.missingAO.label))
            w.field("pkt_dropped_icmp", n("dropped-" + DropReason.icmpHardError.label))
            w.field("pkt_unsigned_accepted", n(Counter.passedUnsigned.label))
            w.endObject()
        }
        w.endArray()
    }

    static func writeLifetime(_ l: Lifetime, into w: inout JSONWriter) {
        w.beginObject()
        w.key("start")
        if l.start == .min { w.null() } else { w.int(l.start) }
        w.key("end")
        if l.end == .max { w.null() } else { w.int(l.end) }
        w.endObject()
    }
}
