import Foundation
import Prometheus
import TCPAO
#if canImport(Glibc)
import Glibc
#endif

/// What the metrics show besides the counters: the daemon's state as published to the control
/// socket (no key material: names, numbers and times only).
public struct MetricsInfo: Sendable, Equatable {
    public var version: String
    public var instance: String
    public var mode: String
    public var reloads: Int
    /// When the configuration in use was loaded (epoch seconds).
    public var loadedAt: Int64
    /// False after a reload that failed (the previous configuration still runs).
    public var lastReloadSucceeded: Bool
    public var maxFlows: Int
    public var peers: Int

    public init(version: String, instance: String, mode: String, reloads: Int, loadedAt: Int64,
                lastReloadSucceeded: Bool, maxFlows: Int, peers: Int) {
        self.version = version
        self.instance = instance
        self.mode = mode
        self.reloads = reloads
        self.loadedAt = loadedAt
        self.lastReloadSucceeded = lastReloadSucceeded
        self.maxFlows = maxFlows
        self.peers = peers
    }
}

/// The standard process metrics (process_cpu_seconds_total, process_resident_memory_bytes, ...)
/// from /proc/self, as Prometheus's own clients export them on Linux.
public struct ProcessStats: Sendable, Equatable {
    public var cpuSeconds: Double
    public var residentBytes: Double
    public var virtualBytes: Double
    /// Epoch seconds.
    public var startTime: Double
    public var openFDs: Int
    public var maxFDs: Int?

    public init(cpuSeconds: Double, residentBytes: Double, virtualBytes: Double, startTime: Double, openFDs: Int, maxFDs: Int?) {
        self.cpuSeconds = cpuSeconds
        self.residentBytes = residentBytes
        self.virtualBytes = virtualBytes
        self.startTime = startTime
        self.openFDs = openFDs
        self.maxFDs = maxFDs
    }

    /// Parses /proc/self/stat (proc(5)): utime, stime and starttime in clock ticks, vsize in
    /// bytes, rss in pages. The command name (field 2) may hold spaces and parentheses: the
    /// fields are counted from the last `)`. `bootTime` is /proc/stat's btime.
    public static func parse(stat: String, openFDs: Int, maxFDs: Int?, ticksPerSecond: Double, pageSize: Double,
                             bootTime: Double) -> ProcessStats? {
        guard let close = stat.lastIndex(of: ")"), ticksPerSecond > 0 else { return nil }
        // fields[0] is field 3 (state): field N is fields[N - 3].
        let fields = stat[stat.index(after: close)...].split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count >= 22, let utime = Double(fields[11]), let stime = Double(fields[12]),
              let start = Double(fields[19]), let vsize = Double(fields[20]), let rss = Double(fields[21]) else { return nil }
        return ProcessStats(cpuSeconds: (utime + stime) / ticksPerSecond, residentBytes: rss * pageSize, virtualBytes: vsize,
                            startTime: bootTime + start / ticksPerSecond, openFDs: openFDs, maxFDs: maxFDs)
    }

    /// btime from /proc/stat's text.
    public static func bootTime(procStat: String) -> Double? {
        for line in procStat.split(separator: "\n") where line.hasPrefix("btime ") {
            return Double(line.dropFirst(6).trimmingCharacters(in: .whitespaces))
        }
        return nil
    }

    /// This process's, now (nil where /proc is not there).
    public static func read() -> ProcessStats? {
        guard let stat = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8),
              let procStat = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
              let boot = bootTime(procStat: procStat) else { return nil }
        var fds = 0
        if let d = opendir("/proc/self/fd") {
            while let e = readdir(d) {
                let dot = withUnsafeBytes(of: e.pointee.d_name) { $0[0] == UInt8(ascii: ".") }
                if !dot { fds += 1 }
            }
            closedir(d)
            fds -= 1 // the directory's own descriptor
        }
        var lim = rlimit()
        let maxFDs = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 && lim.rlim_cur != rlim_t.max /* RLIM_INFINITY */ ? Int(clamping: lim.rlim_cur) : nil
        return parse(stat: stat, openFDs: max(fds, 0), maxFDs: maxFDs, ticksPerSecond: Double(sysconf(Int32(_SC_CLK_TCK))),
                     pageSize: Double(sysconf(Int32(_SC_PAGESIZE))), bootTime: boot)
    }
}

/// The Prometheus text exposition of a `StatsReport` (pure: the daemon gathers, this writes),
/// written by swift-prometheus's registry, a fresh one per scrape, so that its series are
/// exactly the report's. Names: `tcpaod_` first, counters end in `_total`; labels `peer`, `key`
/// (the key's `key-id` in its chain), `reason` (the stats' drop reasons), `queue`.
///
/// Counters are monotonic for the daemon's life: a worker's counters fold in those of the
/// configurations a reload retired (a peer or key removed by a reload keeps its last values).
public enum MetricsExposition {
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    public static func render(_ r: StatsReport, _ info: MetricsInfo, process: ProcessStats?) -> [UInt8] {
        let reg = PrometheusCollectorRegistry()
        func name(_ n: String, _ help: String) -> MetricNameDescriptor { MetricNameDescriptor(metricName: n, unitName: "", helpText: help) }
        func counter(_ n: String, _ help: String, _ labels: [(String, String)] = [], _ v: UInt64) {
            reg.makeCounter(descriptor: name(n, help), labels: labels).increment(by: Int64(clamping: v))
        }
        func gauge(_ n: String, _ help: String, _ labels: [(String, String)] = [], _ v: Double) {
            reg.makeGauge(descriptor: name(n, help), labels: labels).set(v)
        }
        let c = r.counters

        // `instance` is Prometheus's own target label: the tcpaod instance is `tcpaod_instance`.
        gauge("tcpaod_build_info", "tcpaod's version, instance name and mode (always 1)",
              [("version", info.version), ("tcpaod_instance", info.instance), ("mode", info.mode)], 1)
        counter("tcpaod_reloads_total", "configuration reloads that took effect (SIGHUP)", [], UInt64(max(info.reloads, 0)))
        gauge("tcpaod_config_load_timestamp_seconds", "when the configuration in use was loaded (start or last successful reload)", [],
              Double(info.loadedAt))
        gauge("tcpaod_config_last_reload_successful", "0 after a reload that failed (the previous configuration still runs)", [],
              info.lastReloadSucceeded ? 1 : 0)
        gauge("tcpaod_peers", "configured peers", [], Double(info.peers))
        gauge("tcpaod_max_flows", "connections tracked at most (max-flows)", [], Double(info.maxFlows))

        // Segments, per peer and key: the sums over the series are the stats' totals.
        let signedHelp = "segments signed (TCP-AO option inserted) per peer and key"
        let verifiedHelp = "segments whose TCP-AO MAC verified, per peer and key"
        let badHelp = "segments dropped for a wrong MAC, per peer and key"
        for peer in c.keys.keys.sorted() {
            for (key, kc) in c.keys[peer] ?? [:] {
                let l = [("peer", peer), ("key", key)]
                counter("tcpaod_segments_signed_total", signedHelp, l, kc[KeyCounter.signed.label] ?? 0)
                counter("tcpaod_segments_verified_total", verifiedHelp, l, kc[KeyCounter.verified.label] ?? 0)
                counter("tcpaod_segments_bad_mac_total", badHelp, l, kc[KeyCounter.badMAC.label] ?? 0)
            }
        }
        // Drops, per peer and reason; those no peer matched (malformed, ...) have peer="".
        let dropHelp = "segments dropped, per peer and reason (peer=\"\": no peer matched)"
        for reason in DropReason.allCases {
            let k = "dropped-" + reason.label
            var attributed: UInt64 = 0
            for (peer, pc) in c.peers {
                let v = pc[k] ?? 0
                attributed &+= v
                counter("tcpaod_segments_dropped_total", dropHelp, [("peer", peer), ("reason", reason.label)], v)
            }
            let total = c[k]
            counter("tcpaod_segments_dropped_total", dropHelp, [("peer", ""), ("reason", reason.label)], total > attributed ? total - attributed : 0)
        }
        let passedHelp = "segments accepted without TCP-AO work: unmatched (no peer), unsigned (accept-key-mismatch), icmp"
        for (label, counterLabel) in [("unmatched", Counter.passedUnmatched), ("unsigned", .passedUnsigned), ("icmp", .passedICMP)] {
            counter("tcpaod_segments_passed_total", passedHelp, [("reason", label)], c[counterLabel.label])
        }
        counter("tcpaod_segments_total", "segments the engines decided", [], c[Counter.packets.label])
        counter("tcpaod_mss_clamped_total", "SYNs whose MSS was lowered to leave room for the TCP-AO option", [], c[Counter.mssClamped.label])
        counter("tcpaod_options_trimmed_total", "segments whose TCP options were trimmed to fit the TCP-AO option", [], c[Counter.optionsTrimmed.label])
        counter("tcpaod_flows_created_total", "connections tracked", [], c[Counter.flowsCreated.label])
        counter("tcpaod_flows_expired_total", "connections forgotten after their idle, handshake or linger time", [], c[Counter.flowsExpired.label])
        counter("tcpaod_flows_evicted_total", "connections evicted for a new one (max-flows reached)", [], c[Counter.flowsEvicted.label])
        counter("tcpaod_flows_restored_total", "connections taken over from their conntrack label (restart, failover)", [], c[Counter.flowsRestored.label])
        counter("tcpaod_flow_restore_failed_total", "stored labels whose state did not verify the segment (dropped)", [], c[Counter.restoreFailed.label])
        counter("tcpaod_flow_states_saved_total", "conntrack labels written", [], c[Counter.statesSaved.label])
        counter("tcpaod_flow_state_save_failed_total", "conntrack label writes that failed", [], c[Counter.stateSaveFailed.label])

        // Per queue: tcpaod's I/O, then the kernel's own counters.
        for q in r.queues {
            let ql = String(q.queue)
            counter("tcpaod_packets_total", "packets that got a verdict, per NFQUEUE", [("queue", ql)], q.packets)
            for (v, n) in [("accepted", q.accepted), ("modified", q.modified), ("dropped", q.dropped)] {
                counter("tcpaod_verdicts_total", "verdicts per NFQUEUE: accepted unchanged, modified, dropped", [("queue", ql), ("verdict", v)], n)
            }
            counter("tcpaod_batches_total", "receive batches per NFQUEUE", [("queue", ql)], q.batches)
            for (e, n) in [("truncated", q.truncated), ("malformed-message", q.malformedMessages), ("netlink", q.netlinkErrors),
                           ("enobufs", q.enobufs), ("receive", q.receiveErrors), ("send", q.sendErrors)] {
                counter("tcpaod_queue_errors_total", "NFQUEUE I/O problems per queue (enobufs: the socket buffer overflowed)",
                        [("queue", ql), ("error", e)], n)
            }
            gauge("tcpaod_flows", "connections tracked now, per NFQUEUE", [("queue", ql)], Double(q.flows))
        }
        for k in r.kernelQueues {
            let ql = String(k.queue)
            counter("tcpaod_queue_dropped_total", "packets the kernel dropped because the queue was full (nfnetlink_queue queue_dropped)",
                    [("queue", ql)], UInt64(max(k.queueDropped, 0)))
            counter("tcpaod_queue_user_dropped_total", "packets the kernel could not hand to tcpaod (nfnetlink_queue user_dropped)",
                    [("queue", ql)], UInt64(max(k.userDropped, 0)))
            gauge("tcpaod_queue_waiting", "packets waiting in the kernel for a verdict", [("queue", ql)], Double(k.queued))
        }
        gauge("tcpaod_synchronized_flows", "connections in a synchronized state (established), all queues", [], Double(r.synchronizedFlows))

        if let p = process {
            let cpu = reg.makeCounter(descriptor: name("process_cpu_seconds_total", "Total user and system CPU time spent in seconds."), labels: [])
            if p.cpuSeconds > 0 { cpu.increment(by: p.cpuSeconds) }
            gauge("process_resident_memory_bytes", "Resident memory size in bytes.", [], p.residentBytes)
            gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", [], p.virtualBytes)
            gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", [], p.startTime)
            gauge("process_open_fds", "Number of open file descriptors.", [], Double(p.openFDs))
            if let m = p.maxFDs { gauge("process_max_fds", "Maximum number of open file descriptors.", [], Double(m)) }
        }
        var out: [UInt8] = []
        out.reserveCapacity(8192)
        reg.emit(into: &out)
        return out
    }
}
