import Foundation
import Logging
import Synchronization
import Testing
import TCPAO
import TCPAOConfig
@testable import TCPAODaemon
#if canImport(Glibc)
import Glibc
#endif

/// One sample of the text exposition: name, labels, value.
struct Sample: Equatable {
    var name: String
    var labels: [String: String]
    var value: Double
}

/// A small reader of the Prometheus text format (the test's own, so that the renderer is
/// checked against the format, not against itself): samples, and each family's TYPE and HELP.
struct Exposition {
    var samples: [Sample] = []
    var types: [String: String] = [:]
    var helps: [String: Int] = [:]
    var typeLines: [String: Int] = [:]

    init(_ bytes: [UInt8]) throws {
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.hasSuffix("\n"))
        for line in text.split(separator: "\n") {
            if line.hasPrefix("# TYPE ") {
                let p = line.split(separator: " ")
                types[String(p[2])] = String(p[3])
                typeLines[String(p[2]), default: 0] += 1
                continue
            }
            if line.hasPrefix("# HELP ") {
                helps[String(line.split(separator: " ")[2]), default: 0] += 1
                continue
            }
            samples.append(try Exposition.sample(String(line)))
        }
    }

    struct Bad: Error, CustomStringConvertible { var description: String }

    static func sample(_ line: String) throws -> Sample {
        var i = line.startIndex
        while i < line.endIndex, line[i] != "{", line[i] != " " { i = line.index(after: i) }
        let name = String(line[..<i])
        guard name.range(of: "^[a-zA-Z_:][a-zA-Z0-9_:]*$", options: .regularExpression) != nil else { throw Bad(description: "bad name in \(line)") }
        var labels: [String: String] = [:]
        if i < line.endIndex, line[i] == "{" {
            i = line.index(after: i)
            while line[i] != "}" {
                let eq = line[i...].firstIndex(of: "=")!
                let key = String(line[i..<eq])
                i = line.index(eq, offsetBy: 2) // past ="
                var v = ""
                while line[i] != "\"" {
                    if line[i] == "\\" {
                        i = line.index(after: i)
                        v.append(line[i] == "n" ? "\n" : line[i])
                    } else {
                        v.append(line[i])
                    }
                    i = line.index(after: i)
                }
                labels[key] = v
                i = line.index(after: i)
                if line[i] == "," { i = line.index(after: i) }
            }
            i = line.index(after: i)
        }
        guard line[i] == " ", let v = Double(line[line.index(after: i)...]) else { throw Bad(description: "bad value in \(line)") }
        return Sample(name: name, labels: labels, value: v)
    }

    func values(_ name: String) -> [Sample] { samples.filter { $0.name == name } }
    func sum(_ name: String) -> Double { values(name).reduce(0) { $0 + $1.value } }
    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples.first { $0.name == name && $0.labels == labels }?.value
    }
}

@Suite struct MetricsTests {
    // MARK: the mapping from a report to the exposition

    static func report() -> StatsReport {
        var total: [String: UInt64] = [:]
        for c in Counter.allCases { total[c.label] = 0 }
        for r in DropReason.allCases { total["dropped-" + r.label] = 0 }
        var peerB = total, peerC = total
        total["packets"] = 1000; total["signed"] = 410; total["verified"] = 520
        total["passed-unmatched"] = 7; total["flows-restored"] = 3; total["mss-clamped"] = 4
        total["dropped-bad-mac"] = 5; total["dropped-malformed"] = 2; total["dropped-missing-ao"] = 1
        peerB["signed"] = 400; peerB["verified"] = 500; peerB["dropped-bad-mac"] = 4
        peerC["signed"] = 10; peerC["verified"] = 20; peerC["dropped-bad-mac"] = 1; peerC["dropped-missing-ao"] = 1
        let keys: [String: [String: [String: UInt64]]] = [
            "b": ["1": ["signed": 300, "verified": 450, "bad-mac": 4], "2": ["signed": 100, "verified": 50, "bad-mac": 0]],
            "c\"quoted\\": ["7": ["signed": 10, "verified": 20, "bad-mac": 1]],
        ]
        let counters = CounterSnapshot(total: total, peers: ["b": peerB, "c\"quoted\\": peerC], keys: keys)
        var q100 = IOStats(queue: 100), q101 = IOStats(queue: 101)
        q100.packets = 600; q100.accepted = 100; q100.modified = 495; q100.dropped = 5; q100.flows = 3; q100.enobufs = 2
        q101.packets = 400; q101.accepted = 50; q101.modified = 347; q101.dropped = 3; q101.flows = 1
        return StatsReport(pid: 42, time: 1_800_000_000, uptime: 100, mode: "host", config: "/etc/tcpaod/tcpaod.yaml", reloads: 2,
                           counters: counters, queues: [q100, q101],
                           kernelQueues: [KernelQueueStats(queue: 100, queued: 1, queueDropped: 9, userDropped: 0),
                                          KernelQueueStats(queue: 101, queued: 0, queueDropped: 0, userDropped: 1)],
                           synchronizedFlows: 4)
    }

    static let info = MetricsInfo(version: "0.1.0", instance: "site-a", mode: "host", reloads: 2, loadedAt: 1_799_999_000,
                                  lastReloadSucceeded: true, maxFlows: 65536, peers: 2)
    static let process = ProcessStats(cpuSeconds: 1.25, residentBytes: 8_388_608, virtualBytes: 1e9, startTime: 1_799_990_000,
                                      openFDs: 12, maxFDs: 1024)

    @Test func namesTypesAndSuffixes() throws {
        let e = try Exposition(MetricsExposition.render(Self.report(), Self.info, process: Self.process))
        #expect(!e.samples.isEmpty)
        for s in e.samples {
            #expect(s.name.hasPrefix("tcpaod_") || s.name.hasPrefix("process_"), "\(s.name)")
            #expect(e.types[s.name] != nil, "\(s.name) has no TYPE line")
        }
        for (name, type) in e.types {
            #expect(type == "counter" || type == "gauge", "\(name): \(type)")
            #expect((type == "counter") == name.hasSuffix("_total"), "\(name) is a \(type): counters and only counters end in _total")
            #expect(e.typeLines[name] == 1 && e.helps[name] == 1, "\(name): one TYPE and one HELP line")
        }
        for l in Set(e.samples.flatMap(\.labels.keys)) {
            #expect(["peer", "key", "reason", "queue", "verdict", "error", "version", "tcpaod_instance", "mode"].contains(l), "label \(l)")
        }
    }

    @Test func valuesAndLabels() throws {
        let r = Self.report()
        let e = try Exposition(MetricsExposition.render(r, Self.info, process: Self.process))
        // Per peer and key; the sums are the totals of `tcpaod stats`.
        #expect(e.value("tcpaod_segments_signed_total", ["peer": "b", "key": "1"]) == 300)
        #expect(e.value("tcpaod_segments_verified_total", ["peer": "b", "key": "2"]) == 50)
        #expect(e.value("tcpaod_segments_bad_mac_total", ["peer": "b", "key": "1"]) == 4)
        // A label value with a quote and a backslash comes back whole (escaped on the wire).
        #expect(e.value("tcpaod_segments_verified_total", ["peer": "c\"quoted\\", "key": "7"]) == 20)
        #expect(e.sum("tcpaod_segments_signed_total") == Double(r.counters["signed"]))
        #expect(e.sum("tcpaod_segments_verified_total") == Double(r.counters["verified"]))
        // Drops per peer and reason; those of no peer under peer="".
        #expect(e.value("tcpaod_segments_dropped_total", ["peer": "b", "reason": "bad-mac"]) == 4)
        #expect(e.value("tcpaod_segments_dropped_total", ["peer": "", "reason": "malformed"]) == 2)
        #expect(e.value("tcpaod_segments_dropped_total", ["peer": "", "reason": "bad-mac"]) == 0)
        #expect(e.value("tcpaod_segments_dropped_total", ["peer": "c\"quoted\\", "reason": "missing-ao"]) == 1)
        #expect(e.values("tcpaod_segments_dropped_total").count == DropReason.allCases.count * 3)
        #expect(e.sum("tcpaod_segments_dropped_total") == 8)
        #expect(e.value("tcpaod_segments_passed_total", ["reason": "unmatched"]) == 7)
        #expect(e.value("tcpaod_segments_total") == 1000)
        #expect(e.value("tcpaod_flows_restored_total") == 3)
        #expect(e.value("tcpaod_mss_clamped_total") == 4)
        // Per queue, and the kernel's own counters.
        #expect(e.value("tcpaod_packets_total", ["queue": "100"]) == 600)
        #expect(e.value("tcpaod_packets_total", ["queue": "101"]) == 400)
        #expect(e.value("tcpaod_verdicts_total", ["queue": "100", "verdict": "modified"]) == 495)
        #expect(e.value("tcpaod_queue_errors_total", ["queue": "100", "error": "enobufs"]) == 2)
        #expect(e.value("tcpaod_queue_dropped_total", ["queue": "100"]) == 9)
        #expect(e.value("tcpaod_queue_user_dropped_total", ["queue": "101"]) == 1)
        #expect(e.value("tcpaod_queue_waiting", ["queue": "100"]) == 1)
        #expect(e.sum("tcpaod_flows") == 4 && e.types["tcpaod_flows"] == "gauge")
        #expect(e.value("tcpaod_synchronized_flows") == 4)
        // The daemon.
        #expect(e.value("tcpaod_reloads_total") == 2)
        #expect(e.value("tcpaod_config_load_timestamp_seconds") == 1_799_999_000)
        #expect(e.value("tcpaod_config_last_reload_successful") == 1)
        #expect(e.value("tcpaod_build_info", ["version": "0.1.0", "tcpaod_instance": "site-a", "mode": "host"]) == 1)
        #expect(e.value("tcpaod_peers") == 2 && e.value("tcpaod_max_flows") == 65536)
        // The process.
        #expect(e.value("process_cpu_seconds_total") == 1.25 && e.types["process_cpu_seconds_total"] == "counter")
        #expect(e.value("process_resident_memory_bytes") == 8_388_608)
        #expect(e.value("process_virtual_memory_bytes") == 1e9)
        #expect(e.value("process_start_time_seconds") == 1_799_990_000)
        #expect(e.value("process_open_fds") == 12 && e.value("process_max_fds") == 1024)
    }

    @Test func noProcessMetricsWithoutProcAndAFailedReloadShows() throws {
        var info = Self.info
        info.lastReloadSucceeded = false
        let e = try Exposition(MetricsExposition.render(StatsReport(pid: 1, time: 0, uptime: 0, mode: "gateway", config: "x", reloads: 0,
                                                                    counters: CounterSnapshot(), queues: [], kernelQueues: [], synchronizedFlows: 0),
                                                        info, process: nil))
        #expect(e.value("tcpaod_config_last_reload_successful") == 0)
        #expect(!e.samples.contains { $0.name.hasPrefix("process_") })
        // Every drop reason has its series even before the first drop (peer="": no peer yet).
        #expect(e.values("tcpaod_segments_dropped_total").count == DropReason.allCases.count)
    }

    /// Counters only grow across reloads: the report folds in what reloads retired, and a
    /// peer removed by a reload keeps its series.
    @Test func retiredCountersKeepTheSeriesMonotonic() throws {
        var before = Self.report()
        let e1 = try Exposition(MetricsExposition.render(before, Self.info, process: nil))
        // A reload retires the engine's counters (Engine.reconfigure) and starts new blocks
        // without peer c; the worker reports retired + current.
        var current = CounterSnapshot(total: ["signed": 5, "verified": 6], peers: ["b": ["signed": 5, "verified": 6]],
                                      keys: ["b": ["1": ["signed": 5, "verified": 6, "bad-mac": 0]]])
        current.add(before.counters)
        before.counters = current
        let e2 = try Exposition(MetricsExposition.render(before, Self.info, process: nil))
        for s in e1.samples where e1.types[s.name] == "counter" {
            let after = try #require(e2.value(s.name, s.labels), "\(s.name)\(s.labels) disappeared")
            #expect(after >= s.value, "\(s.name)\(s.labels) went back from \(s.value) to \(after)")
        }
        #expect(e2.value("tcpaod_segments_signed_total", ["peer": "b", "key": "1"]) == 305)
    }

    // MARK: /proc/self

    @Test func procSelfStatIsParsedFromTheLastParenthesis() throws {
        // A command name with spaces and a parenthesis of its own.
        let stat = "4242 (tcp aod) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 125 0 0 20 0 5 0 12345 104857600 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0"
        let p = try #require(ProcessStats.parse(stat: stat, openFDs: 9, maxFDs: 4096, ticksPerSecond: 100, pageSize: 4096, bootTime: 1_700_000_000))
        #expect(p.cpuSeconds == 3.75)
        #expect(p.startTime == 1_700_000_000 + 123.45)
        #expect(p.virtualBytes == 104_857_600 && p.residentBytes == 2048 * 4096)
        #expect(p.openFDs == 9 && p.maxFDs == 4096)
        #expect(ProcessStats.parse(stat: "4242 (x) S 1 2", openFDs: 0, maxFDs: nil, ticksPerSecond: 100, pageSize: 4096, bootTime: 0) == nil)
        #expect(ProcessStats.bootTime(procStat: "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n") == 1_700_000_000)
    }

    @Test func thisProcessIsRead() throws {
        let p = try #require(ProcessStats.read())
        let now = Date().timeIntervalSince1970
        #expect(p.startTime > now - 86400 * 365 && p.startTime <= now + 2)
        #expect(p.residentBytes > 1_000_000 && p.virtualBytes >= p.residentBytes)
        #expect(p.openFDs >= 3 && p.cpuSeconds >= 0)
    }

    // MARK: HTTP

    static func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    @Test func requestHeads() {
        let get = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9477\r\nUser-Agent: Prometheus/2.42.0\r\nAccept: text/plain\r\n\r\n"
        #expect(MetricsHTTP.parse(Self.bytes(get)) == .request(method: "GET", path: "/metrics"))
        // Every prefix of it is incomplete: nothing is answered before the empty line.
        for n in 0..<get.utf8.count { #expect(MetricsHTTP.parse(Self.bytes(get).prefix(n)) == .incomplete, "\(n)") }
        #expect(MetricsHTTP.parse(Self.bytes("GET /metrics?x=1 HTTP/1.0\n\n")) == .request(method: "GET", path: "/metrics"))
        #expect(MetricsHTTP.parse(Self.bytes("POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")) == .request(method: "POST", path: "/metrics"))
        // A bad request line is refused as soon as it is whole.
        for line in ["hello\r\n", "GET /metrics\r\n", "GET  /metrics HTTP/1.1\r\n", "G(T /metrics HTTP/1.1\r\n", "GET metrics HTTP/1.1\r\n",
                     "\u{16}\u{03}\u{01} x y\r\n"] {
            guard case .bad(400, _) = MetricsHTTP.parse(Self.bytes(line)) else { Issue.record("\(line.debugDescription) not refused"); continue }
        }
        guard case .bad(505, _) = MetricsHTTP.parse(Self.bytes("GET /metrics HTTP/2.0\r\n")) else { Issue.record("HTTP/2.0"); return }
        guard case .bad(400, _) = MetricsHTTP.parse(Self.bytes("GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n")) else { Issue.record("header"); return }
        // A head that never ends is refused past its limit.
        let long = "GET /metrics HTTP/1.1\r\n" + String(repeating: "X-Filler: 0123456789abcdef\r\n", count: 400)
        guard case .bad(431, _) = MetricsHTTP.parse(Self.bytes(long)) else { Issue.record("431"); return }
        guard case .bad(431, _) = MetricsHTTP.parse([UInt8](repeating: UInt8(ascii: "A"), count: MetricsHTTP.maxHeadBytes + 1)) else { Issue.record("431 line"); return }
    }

    /// (status, headers, body) of a response.
    static func split(_ r: [UInt8]) -> (Int, [String: String], [UInt8]) {
        let text = String(decoding: r, as: UTF8.self)
        let end = text.range(of: "\r\n\r\n")!
        let lines = text[..<end.lowerBound].components(separatedBy: "\r\n")
        let status = Int(lines[0].split(separator: " ")[1])!
        var h: [String: String] = [:]
        for l in lines.dropFirst() {
            let p = l.split(separator: ":", maxSplits: 1)
            h[String(p[0]).lowercased()] = p[1].trimmingCharacters(in: .whitespaces)
        }
        return (status, h, Array(text[end.upperBound...].utf8))
    }

    @Test func routes() {
        let body = Self.bytes("tcpaod_up 1\n")
        let rendered = Atomic<Int>(0)
        func respond(_ h: HTTPHead) -> (Int, [String: String], [UInt8]) {
            Self.split(MetricsHTTP.respond(to: h) { rendered.add(1, ordering: .relaxed); return body })
        }
        var (s, h, b) = respond(.request(method: "GET", path: "/metrics"))
        #expect(s == 200 && b == body && h["content-length"] == "\(body.count)" && h["connection"] == "close")
        #expect(h["content-type"] == "text/plain; version=0.0.4; charset=utf-8")
        (s, h, b) = respond(.request(method: "HEAD", path: "/metrics"))
        #expect(s == 200 && b.isEmpty && h["content-length"] == "\(body.count)")
        (s, h, b) = respond(.request(method: "GET", path: "/"))
        #expect(s == 404 && String(decoding: b, as: UTF8.self).contains("/metrics"))
        (s, h, b) = respond(.request(method: "POST", path: "/metrics"))
        #expect(s == 405 && h["allow"] == "GET, HEAD")
        (s, _, _) = respond(.request(method: "DELETE", path: "/nothing"))
        #expect(s == 404)
        (s, _, _) = respond(.incomplete)
        #expect(s == 408)
        (s, _, b) = respond(.bad(status: 400, reason: "why"))
        #expect(s == 400 && b == Self.bytes("why\n"))
        #expect(rendered.load(ordering: .relaxed) == 2, "rendered for GET and HEAD of /metrics only")
    }

    // MARK: the server, over real TCP on loopback

    static func connect(_ port: UInt16, v6: Bool = false) throws -> Int32 {
        let fd = socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let a = ListenAddress(address: IPAddress(v6 ? "::1" : "127.0.0.1")!, port: port)
        let r = MetricsServer.withSockaddr(a) { Glibc.connect(fd, $0, $1) }
        try #require(r == 0, "connect: \(String(cString: strerror(errno)))")
        return fd
    }

    static func send(_ fd: Int32, _ s: String) {
        let b = Array(s.utf8)
        _ = b.withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Everything until the server closes.
    static func readAll(_ fd: Int32) -> [UInt8] {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n <= 0 { return out }
            out += chunk[..<n]
        }
    }

    static func request(_ port: UInt16, _ text: String, v6: Bool = false) throws -> (Int, [String: String], [UInt8]) {
        let fd = try connect(port, v6: v6)
        defer { close(fd) }
        send(fd, text)
        return split(readAll(fd))
    }

    static func server(_ address: String = "127.0.0.1", timeoutMs: Int = 600) throws -> MetricsServer {
        guard case .success(let a) = ListenAddress.parse(address.contains(":") ? "[\(address)]:1" : "\(address):1") else { throw Exposition.Bad(description: address) }
        let body = MetricsExposition.render(report(), info, process: nil)
        let s = MetricsServer(address: ListenAddress(address: a.address, port: 0), log: Logger(label: "test")) { body }
        s.requestTimeoutMs = timeoutMs
        try s.start()
        #expect(s.port != 0)
        return s
    }

    @Test func servesMetricsOverTCP() throws {
        let s = try Self.server()
        defer { s.stop() }
        let (status, h, body) = try Self.request(s.port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(status == 200 && h["content-length"] == "\(body.count)")
        let e = try Exposition(body)
        #expect(e.value("tcpaod_packets_total", ["queue": "100"]) == 600)
        #expect(try Self.request(s.port, "GET /status HTTP/1.1\r\n\r\n").0 == 404)
        #expect(try Self.request(s.port, "PUT /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi").0 == 405)
        #expect(try Self.request(s.port, "garbage\r\n").0 == 400)
    }

    @Test func servesOverIPv6() throws {
        // Skipped where this host has no ::1 (IPv6 disabled).
        let probe = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        let ok = MetricsServer.withSockaddr(ListenAddress(address: IPAddress("::1")!, port: 0)) { bind(probe, $0, $1) } == 0
        close(probe)
        guard ok else { return }
        let s = try Self.server("::1")
        defer { s.stop() }
        #expect(try Self.request(s.port, "GET /metrics HTTP/1.1\r\n\r\n", v6: true).0 == 200)
    }

    /// A client that never finishes its request gets a 408 after the time limit; meanwhile
    /// others are answered at once.
    @Test func aRequestThatNeverEndsTimesOutWithoutBlockingOthers() throws {
        let s = try Self.server()
        defer { s.stop() }
        let slow = try Self.connect(s.port)
        defer { close(slow) }
        Self.send(slow, "GET /metrics HTTP/1.1\r\nHost: slow")
        let silent = try Self.connect(s.port)
        defer { close(silent) }
        let t0 = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<5 { #expect(try Self.request(s.port, "GET /metrics HTTP/1.1\r\n\r\n").0 == 200) }
        let (status, _, body) = Self.split(Self.readAll(slow))
        let ms = Int((DispatchTime.now().uptimeNanoseconds - t0) / 1_000_000)
        #expect(status == 408 && String(decoding: body, as: UTF8.self).contains("did not arrive whole"))
        #expect(ms >= 500, "answered after \(ms) ms, before the 600 ms limit")
        #expect(Self.split(Self.readAll(silent)).0 == 408)
    }

    @Test func tooManyClientsAreToldBusy() throws {
        let s = try Self.server(timeoutMs: 10_000)
        defer { s.stop() }
        // Each held client has its thread, waiting for a request (for up to 10 s).
        let held = try (0..<MetricsServer.maxClients).map { _ in try Self.connect(s.port) }
        defer { held.dropFirst().forEach { close($0) } }
        let (status, _, body) = try Self.request(s.port, "GET /metrics HTTP/1.1\r\n\r\n")
        #expect(status == 503 && String(decoding: body, as: UTF8.self).contains("busy"), "\(status)")
        // Once one leaves, a client is served again.
        close(held[0])
        let served = try #require((0..<200).lazy.map { _ -> Int in
            let st = (try? Self.request(s.port, "GET /metrics HTTP/1.1\r\n\r\n").0) ?? 0
            if st != 200 { usleep(20_000) }
            return st
        }.first { $0 == 200 }, "never served again")
        #expect(served == 200)
    }

    @Test func anAddressInUseIsAClearError() throws {
        let s = try Self.server()
        defer { s.stop() }
        let other = MetricsServer(address: ListenAddress(address: IPAddress("127.0.0.1")!, port: s.port), log: Logger(label: "test")) { [] }
        #expect(throws: MetricsServerError.self) { try other.start() }
        do { try other.start() } catch { #expect(error.description.contains("127.0.0.1:\(s.port)") && error.description.contains("another program")) }
        let gone = MetricsServer(address: ListenAddress(address: IPAddress("192.0.2.123")!, port: 9477), log: Logger(label: "test")) { [] }
        do { try gone.start(); gone.stop(); Issue.record("bound an address this host does not have") } catch {
            #expect(error.description.contains("no interface here has that address"))
        }
    }

    // MARK: configuration

    static let base = """
    key-chains:
      - name: k
        keys:
          - { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: hmac-sha-256-128, key-string: "a metrics test key of some length" }
    peers:
      - { name: b, prefix: 192.0.2.2/32, key-chain: k }

    """

    static func load(_ extra: String) -> (Configuration?, [Diagnostic]) {
        ConfigLoader.parse(base + extra, file: "m.yaml", now: 1_800_000_000)
    }

    @Test(arguments: [("metrics: { listen: 127.0.0.1:9477 }", "127.0.0.1:9477"),
                      ("metrics:\n  listen: \"[::1]:9477\"", "[::1]:9477"),
                      ("metrics: { listen: \"[::]:1\" }", "[::]:1"),
                      ("metrics: { listen: 0.0.0.0:65535 }", "0.0.0.0:65535"),
                      ("metrics: { listen: '[2001:db8::1]:9100' }", "[2001:db8::1]:9100")])
    func listenAddresses(_ yaml: String, _ expected: String) throws {
        let (c, d) = Self.load(yaml)
        let cfg = try #require(c, "\(d)")
        #expect(cfg.metrics?.listen.description == expected)
        #expect(d.isEmpty, "\(d)")
    }

    @Test func noMetricsByDefault() throws {
        let (c, _) = Self.load("")
        #expect(try #require(c).metrics == nil)
    }

    @Test(arguments: [
        ("metrics: { listen: 127.0.0.1 }", "has no port", "metrics.listen"),
        ("metrics: { listen: \"127.0.0.1:\" }", "is not a port", "metrics.listen"),
        ("metrics: { listen: 127.0.0.1:0 }", "is not a port", "metrics.listen"),
        ("metrics: { listen: 127.0.0.1:65536 }", "is not a port", "metrics.listen"),
        ("metrics: { listen: 127.0.0.1:http }", "is not a port", "metrics.listen"),
        ("metrics: { listen: localhost:9477 }", "host names are not resolved", "metrics.listen"),
        ("metrics: { listen: 127.0.0.256:9477 }", "is not an IP address", "metrics.listen"),
        ("metrics: { listen: \"::1:9477\" }", "needs brackets", "metrics.listen"),
        ("metrics: { listen: \"[::1]\" }", "no port after", "metrics.listen"),
        ("metrics: { listen: \"[::1:9477\" }", "no closing", "metrics.listen"),
        ("metrics: { listen: \"[127.0.0.1]:9477\" }", "not an IPv6 address", "metrics.listen"),
        ("metrics: { listen: \"\" }", "expected a text value", "metrics.listen"),
        ("metrics: { listn: 127.0.0.1:9477 }", "unknown key `listn`", "metrics.listn"),
        ("metrics: {}", "`listen` is missing", "metrics"),
        ("metrics: 127.0.0.1:9477", "expected a mapping", "metrics"),
    ])
    func badListenAddresses(_ yaml: String, _ message: String, _ path: String) throws {
        let (c, d) = Self.load(yaml)
        #expect(c == nil, "refused")
        let hit = try #require(d.errors.first { $0.message.contains(message) }, "no error with \"\(message)\": \(d)")
        #expect(hit.path == path, "\(hit)")
        #expect(hit.line == 7, "located on the metrics line: \(hit)")
        #expect(!hit.fix.isEmpty)
        #expect(!hit.description.contains("a metrics test key"), "no secret in a diagnostic")
    }

    @Test func unquotedBracketsAreReported() {
        // `listen: [::1]:9477` is YAML for a list: refused, located.
        let (c, d) = Self.load("metrics: { listen: [::1]:9477 }")
        #expect(c == nil && d.hasErrors && d.errors.allSatisfy { $0.line == 7 }, "\(d)")
    }
}
