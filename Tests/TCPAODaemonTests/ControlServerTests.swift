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

/// The control socket over a real unix socket (in a temporary directory; no root needed).
@Suite(.serialized) struct ControlServerTests {
    static func tempDir() -> String {
        let d = NSTemporaryDirectory() + "tcpaod-ctl-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    static func server(_ path: String, big: Int = 0) -> ControlServer {
        let d = ControlDispatcher()
        d.register(ControlCommand("ping", summary: "") { _, w in w.field("pong", true) })
        d.register(ControlCommand("big", summary: "") { _, w in w.field("data", String(repeating: "x", count: big)) })
        let s = ControlServer(path: path, dispatcher: d, log: Logger(label: "test"))
        s.idleTimeoutMs = 1500
        s.requestTimeoutMs = 1000
        s.sendStallMs = 500
        return s
    }

    /// A raw client: connects, returns the fd (blocking).
    static func connect(_ path: String) -> Int32 {
        let fd = UnixSocket.open(nonblocking: false)
        #expect(UnixSocket.connect(fd, path) == 0)
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    static func write(_ fd: Int32, _ s: String) {
        let b = Array(s.utf8)
        _ = b.withUnsafeBytes { send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    static func readLine(_ fd: Int32) -> String? {
        var out: [UInt8] = []
        var c: UInt8 = 0
        while recv(fd, &c, 1, 0) == 1 {
            if c == 0x0A { return String(decoding: out, as: UTF8.self) }
            out.append(c)
        }
        return nil
    }

    @Test func answersInOrderAndManyClientsAtOnceWhileOneIsStuck() throws {
        let dir = Self.tempDir()
        let path = dir + "/control.sock"
        let s = Self.server(path)
        #expect(try s.start() == .listening)
        defer { s.stop() }
        var st = stat()
        #expect(lstat(path, &st) == 0 && st.st_mode & 0o777 == 0o600)
        // A stuck client (half a request, never finished) and an idle one hold their threads only.
        let stuck = Self.connect(path)
        Self.write(stuck, #"{"version":1,"comm"#)
        let idle = Self.connect(path)
        // Several clients, several requests each, pipelined.
        let ok = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 6) { _ in
            let fd = Self.connect(path)
            Self.write(fd, "{\"version\":1,\"command\":\"ping\",\"id\":1}\n{\"version\":1,\"command\":\"ping\",\"id\":2}\nnonsense\n")
            let a = Self.readLine(fd), b = Self.readLine(fd), c = Self.readLine(fd)
            if a?.contains(#""id":1"#) == true, b?.contains(#""id":2"#) == true, c?.contains("bad-json") == true { ok.add(1, ordering: .relaxed) }
            close(fd)
        }
        #expect(ok.load(ordering: .relaxed) == 6)
        // The stuck one is told its request never completed, then dropped; the idle one dropped.
        #expect(Self.readLine(stuck)?.contains(#""code":"timeout""#) == true)
        #expect(Self.readLine(idle) == nil)
        close(stuck)
        close(idle)
        // A last request without a newline before EOF is answered.
        let fd = Self.connect(path)
        Self.write(fd, #"{"version":1,"command":"ping"}"#)
        shutdown(fd, Int32(SHUT_WR))
        #expect(Self.readLine(fd)?.contains(#""pong":true"#) == true)
        close(fd)
    }

    @Test func tooLongRequestsAndVanishingClients() throws {
        let dir = Self.tempDir()
        let path = dir + "/c.sock"
        let s = Self.server(path, big: 8 << 20)
        #expect(try s.start() == .listening)
        defer { s.stop() }
        let fd = Self.connect(path)
        Self.write(fd, String(repeating: "x", count: ControlProtocol.maxRequestBytes + 10))
        #expect(Self.readLine(fd)?.contains("request-too-long") == true)
        close(fd)
        // A client that asks for a large answer and goes away before reading it; one that
        // reads nothing (the send stalls, then it is dropped).
        for _ in 0..<3 {
            let g = Self.connect(path)
            Self.write(g, "{\"version\":1,\"command\":\"big\"}\n")
            close(g)
        }
        let lazy = Self.connect(path)
        Self.write(lazy, "{\"version\":1,\"command\":\"big\"}\n")
        // The server still answers others.
        let h = Self.connect(path)
        Self.write(h, "{\"version\":1,\"command\":\"ping\"}\n")
        #expect(Self.readLine(h)?.contains("pong") == true)
        close(h)
        close(lazy)
    }

    @Test func busyBeyondTheClientLimit() throws {
        let dir = Self.tempDir()
        let path = dir + "/c.sock"
        let s = Self.server(path)
        #expect(try s.start() == .listening)
        defer { s.stop() }
        var held: [Int32] = []
        for _ in 0..<ControlServer.maxClients {
            let fd = Self.connect(path)
            Self.write(fd, "{\"version\":1,\"command\":\"ping\"}\n")
            #expect(Self.readLine(fd)?.contains("pong") == true)
            held.append(fd)
        }
        let extra = Self.connect(path)
        #expect(Self.readLine(extra)?.contains(#""code":"busy""#) == true)
        close(extra)
        held.forEach { close($0) }
    }

    @Test func staleSocketIsReplacedLiveOneLeftAloneAndStopRemovesOnlyItsOwn() throws {
        let dir = Self.tempDir()
        let path = dir + "/control.sock"
        // A leftover socket file (its process died): replaced.
        let dead = UnixSocket.open(nonblocking: false)
        #expect(UnixSocket.bind(dead, path) == 0)
        close(dead)
        let a = Self.server(path)
        #expect(try a.start() == .listening)
        // A second server on a live socket: refused, the file stays the first's.
        let b = Self.server(path)
        #expect(try b.start() == .inUse)
        b.stop()
        #expect(FileManager.default.fileExists(atPath: path))
        let fd = Self.connect(path)
        Self.write(fd, "{\"version\":1,\"command\":\"ping\"}\n")
        #expect(Self.readLine(fd)?.contains("pong") == true)
        close(fd)
        a.stop()
        #expect(!FileManager.default.fileExists(atPath: path))
        // Not a socket: never deleted.
        _ = FileManager.default.createFile(atPath: path, contents: Data("keep".utf8))
        #expect(throws: ControlServerError.self) { try Self.server(path).start() }
        #expect(FileManager.default.contents(atPath: path) == Data("keep".utf8))
    }

    @Test func clientErrorsSayWhatToDo() throws {
        let dir = Self.tempDir()
        // Nothing there.
        let missing = ControlClient(path: dir + "/none.sock", instance: "ns9")
        do { _ = try missing.send(ControlRequest(command: "status")); Issue.record("no error") } catch {
            #expect(error.kind == .notRunning)
            #expect(error.description.contains("instance \"ns9\" is not running") && error.description.contains(dir + "/none.sock"))
            #expect(error.description.contains("tcpaod run --config FILE --instance ns9"))
        }
        // A socket file nobody listens on.
        let stale = dir + "/stale.sock"
        let fd = UnixSocket.open(nonblocking: false)
        #expect(UnixSocket.bind(fd, stale) == 0)
        close(fd)
        do { _ = try ControlClient(path: stale, instance: nil).send(ControlRequest(command: "status")); Issue.record("no error") } catch {
            #expect(error.kind == .notRunning && error.description.contains("nothing listens on \(stale)"))
        }
        // A daemon of another protocol version.
        let path = dir + "/v2.sock"
        let d = ControlDispatcher()
        let s = ControlServer(path: path, dispatcher: d, log: Logger(label: "test"))
        #expect(try s.start() == .listening)
        defer { s.stop() }
        do { _ = try ControlClient(path: path, instance: nil).send(ControlRequest(command: "status", version: 2)); Issue.record("no error") } catch {
            #expect(error.kind == .protocolMismatch)
            #expect(error.description.contains("version mismatch") && error.description.contains("speaks control protocol version 1"))
        }
        do { _ = try ControlClient(path: path, instance: nil).send(ControlRequest(command: "status")); Issue.record("no error") } catch {
            #expect(error.kind == .protocolMismatch && error.description.contains("older tcpaod"))
        }
    }
}

/// `tcpaod flows` reads the flow table in chunks, one per worker loop turn: 100,000 flows.
@Suite struct FlowSnapshotTests {
    /// An IPv4 TCP segment from `src`:`sport` to `dst`:`dport` (checksums are not checked).
    static func segment(src: UInt32, dst: UInt32, sport: UInt16, dport: UInt16, seq: UInt32, flags: UInt8) -> [UInt8] {
        func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 255), UInt8(v >> 8 & 255), UInt8(v & 255)] }
        var p: [UInt8] = [0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0] + be32(src) + be32(dst)
        p += [UInt8(sport >> 8), UInt8(sport & 255), UInt8(dport >> 8), UInt8(dport & 255)] + be32(seq) + be32(0)
        p += [0x50, flags, 0xFA, 0xF0, 0, 0, 0, 0]
        return p
    }

    static let local: UInt32 = 0xC000_0201 // 192.0.2.1
    static let peer: UInt32 = 0xC000_0202 // 192.0.2.2

    static func config(maxFlows: Int) -> EngineConfig {
        let mkt = MKT(chainKeyID: 7, sendID: 3, recvID: 4, algorithm: .hmacSHA1_96, secret: Secret(Array("the flow snapshot test secret".utf8)))
        // Migration (accept-key-mismatch): unsigned SYNs from the peer make flows cheaply.
        let p = PeerPolicy(name: "b", prefix: IPPrefix("192.0.2.2/32")!, keyChain: KeyChain(name: "k", keys: [mkt]), acceptKeyMismatch: true)
        return EngineConfig(peers: [p], limits: FlowLimits(maxFlows: maxFlows))
    }

    /// An engine holding `n` flows: n - 2 half-open ones from the peer and two we signed a SYN for.
    static func engine(flows n: Int) -> UnsafeMutablePointer<AOEngine> {
        let e = UnsafeMutablePointer<AOEngine>.allocate(capacity: 1)
        e.initialize(to: AOEngine(config: config(maxFlows: n + 16)))
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 2048, alignment: 16)
        defer { buf.deallocate() }
        let clock = EngineClock(wall: 1_000_000, mono: 100)
        func run(_ bytes: [UInt8], _ d: Direction) {
            bytes.withUnsafeBytes { buf.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            _ = e.pointee.process(buf, length: bytes.count, capacity: 2048, hint: d, clock: clock)
        }
        for i in 0..<(n - 2) {
            let sport = UInt16(1024 + i % 60000), dport = UInt16(830 + i / 60000)
            run(segment(src: peer, dst: local, sport: sport, dport: dport, seq: UInt32(i), flags: 0x02), .ingress)
        }
        for i in 0..<2 { run(segment(src: local, dst: peer, sport: UInt16(40000 + i), dport: 179, seq: 1000, flags: 0x02), .egress) }
        return e
    }

    /// A worker loop: a "batch" (here: sleeping like an idle receive, unless work is pending),
    /// then the mailbox.
    final class FakeWorker: @unchecked Sendable {
        let mailbox = Mailbox()
        let stop = Atomic<Bool>(false)
        let turns = Atomic<Int>(0)
        let finished = DispatchSemaphore(value: 0)

        func start() {
            Thread { [self] in
                while !stop.load(ordering: .relaxed) {
                    if !mailbox.hasPending { usleep(100_000) } // an idle receive times out after 100 ms
                    mailbox.runPending()
                    turns.add(1, ordering: .relaxed)
                }
                finished.signal()
            }.start()
        }

        func end() {
            stop.store(true, ordering: .relaxed)
            finished.wait()
        }
    }

    @Test func aWalkCopiesEveryFlowOnceInBoundedSteps() {
        let e = Self.engine(flows: 10_000)
        defer { e.deinitialize(count: 1); e.deallocate() }
        #expect(e.pointee.flowCount == 10_000)
        let w = FakeWorker()
        w.start()
        defer { w.end() }
        let walk = FlowWalk(peer: nil, slots: 1000)
        walk.start(e, on: w.mailbox)
        let chunks = walk.wait(until: .now() + 30) ?? []
        let flows = chunks.flatMap(\.flows)
        #expect(flows.count == 10_000)
        #expect(Set(flows.map(\.key)).count == 10_000)
        #expect(walk.steps == 10 && walk.largestStep <= 1000)
        // The two connections we opened: signed one SYN with SendID 3.
        let ours = flows.filter { $0.key.remotePort == 179 }
        #expect(ours.count == 2)
        for f in ours {
            #expect(f.phase == .synSent && f.currentSendID == 3 && f.signed == 1 && f.localISN == 1000 && chunks[0].peerName(f) == "b")
        }
        let theirs = flows.first { $0.key.remotePort == 1024 }
        #expect(theirs?.phase == .synReceived && theirs?.remoteISN == 0 && theirs?.signed == 0 && theirs?.createdAt == 100)
        // By peer: unknown names match nothing.
        let none = FlowWalk(peer: "nobody", slots: 1000)
        none.start(e, on: w.mailbox)
        #expect(none.wait(until: .now() + 30)?.isEmpty == true)
        // Keys: the two flows with current_key SendID 3.
        #expect(KeyUsage(chunks).count(peer: "b", sendID: 3) == 2)
    }

    /// The figure in the report: 100,000 flows, walked 4,096 slots per loop turn, written as
    /// the `flows` answer, read back by the client. Must take well under a second.
    @Test func oneHundredThousandFlowsAnswerWithinASecond() throws {
        let n = 100_000
        let e = Self.engine(flows: n)
        defer { e.deinitialize(count: 1); e.deallocate() }
        let w = FakeWorker()
        w.start()
        defer { w.end() }
        let clock = ContinuousClock()
        let t0 = clock.now
        let walk = FlowWalk(peer: nil, slots: FlowWalk.defaultSlots)
        walk.start(e, on: w.mailbox)
        let chunks = try #require(walk.wait(until: .now() + 30))
        let t1 = clock.now
        var jw = JSONWriter(reserving: n * 400)
        jw.beginObject()
        ControlViews.writeFlows(chunks, now: 130, into: &jw)
        jw.endObject()
        let t2 = clock.now
        let parsed = try JSONValue.parse(jw.bytes)
        let t3 = clock.now
        #expect(chunks.reduce(0) { $0 + $1.flows.count } == n && parsed["total"] == .int(Int64(n)) && parsed["flows"]?.array?.count == n)
        #expect(walk.steps == (n + FlowWalk.defaultSlots - 1) / FlowWalk.defaultSlots && walk.largestStep <= FlowWalk.defaultSlots)
        let first = parsed["flows"]?.array?.first
        #expect(first?["age"] == .int(30) && first?["peer"] == .string("b") && first?["local_port"] != nil)
        let total = t2 - t0
        print("flows snapshot of \(n): walk \(t1 - t0) in \(walk.steps) steps (largest \(walk.largestStep) flows, longest step \(walk.longestStepNanoseconds / 1000) µs), JSON \(t2 - t1) (\(jw.bytes.count / 1_000_000) MB), client parse \(t3 - t2); daemon side total \(total)")
        // The walk is the worker's part: each step holds its loop for one chunk's copy.
        #expect(t1 - t0 < .seconds(1), "walking 100,000 flows took \(t1 - t0)")
        #expect(walk.longestStepNanoseconds < 50_000_000, "a step held the worker for \(walk.longestStepNanoseconds) ns")
        #if !DEBUG
        // Optimized (swift test -c release -Xswiftc -enable-testing): the whole answer.
        #expect(total < .seconds(1), "100,000 flows took \(total)")
        #endif
    }
}
