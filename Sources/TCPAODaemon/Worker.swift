import CNetfilterQueue
import Dispatch
import Foundation
import Logging
import Synchronization
import TCPAO
import TCPAOConfig
#if canImport(Glibc)
import Glibc
#endif

/// I/O counters of one worker.
public struct IOStats: Codable, Sendable {
    public var queue: Int
    public var batches: UInt64 = 0
    /// Packets that got a verdict: accepted + modified + dropped.
    public var packets: UInt64 = 0
    public var accepted: UInt64 = 0
    public var modified: UInt64 = 0
    public var dropped: UInt64 = 0
    /// Packets the kernel did not copy whole (or without payload): dropped.
    public var truncated: UInt64 = 0
    /// Packet messages that could not be parsed (a bad attribute, cut short by the receive);
    /// those whose packet id could be read were dropped (and are counted in `dropped` too).
    public var malformedMessages: UInt64 = 0
    /// NLMSG_ERROR messages from the kernel refusing a verdict (logged at most every 10 s).
    public var netlinkErrors: UInt64 = 0
    public var enobufs: UInt64 = 0
    /// Receives that failed with anything but EAGAIN, EINTR or ENOBUFS.
    public var receiveErrors: UInt64 = 0
    public var sendErrors: UInt64 = 0
    /// Messages that are neither packets nor errors (NLMSG_NOOP, NLMSG_DONE, acks, other types).
    public var foreignMessages: UInt64 = 0
    public var flows: Int = 0

    public init(queue: Int) {
        self.queue = queue
    }

    // Counters missing from a stats file (written by an older tcpaod still running) read as 0.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func n(_ k: CodingKeys) throws -> UInt64 { try c.decodeIfPresent(UInt64.self, forKey: k) ?? 0 }
        queue = try c.decode(Int.self, forKey: .queue)
        batches = try n(.batches)
        packets = try n(.packets)
        accepted = try n(.accepted)
        modified = try n(.modified)
        dropped = try n(.dropped)
        truncated = try n(.truncated)
        malformedMessages = try n(.malformedMessages)
        netlinkErrors = try n(.netlinkErrors)
        enobufs = try n(.enobufs)
        receiveErrors = try n(.receiveErrors)
        sendErrors = try n(.sendErrors)
        foreignMessages = try n(.foreignMessages)
        flows = try c.decodeIfPresent(Int.self, forKey: .flows) ?? 0
    }
}

/// At most one log line every `interval` seconds about a counter, telling how much it grew
/// since the last line. Events in between are counted, not logged.
struct LogLimiter {
    var interval: UInt32 = 10
    private(set) var loggedAt: UInt32? = nil
    private var countAtLastLog: UInt64 = 0

    /// When a line is due at `now` (monotonic seconds) for a counter now at `count`: the events
    /// since the last line and the seconds since it (nil for the first line).
    mutating func due(count: UInt64, now: UInt32) -> (events: UInt64, seconds: UInt32?)? {
        if let at = loggedAt, now &- at < interval { return nil }
        defer { loggedAt = now; countAtLastLog = count }
        return (count &- countAtLastLog, loggedAt.map { now &- $0 })
    }
}

/// Work handed to a worker from another thread (reload, counters, stop).
final class Mailbox: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [() -> Void] = []
    private let pending = Atomic<Bool>(false)

    func post(_ f: @escaping () -> Void) {
        lock.lock()
        items.append(f)
        pending.store(true, ordering: .releasing)
        lock.unlock()
    }

    /// Something waits to run: the loop then polls the socket instead of sleeping in it, so
    /// work posted in steps (a flow walk) continues at the next loop turn.
    @inline(__always)
    var hasPending: Bool { pending.load(ordering: .acquiring) }

    /// Cheap to call on every loop turn: no lock unless something was posted.
    @inline(__always)
    func runPending() {
        guard pending.load(ordering: .acquiring) else { return }
        lock.lock()
        let work = items
        items = []
        pending.store(false, ordering: .relaxed)
        lock.unlock()
        for f in work { f() }
    }
}

/// One NFQUEUE and the engine that decides its packets. Its loop runs as one long-lived block
/// on its own Dispatch queue: it sleeps in recvmmsg, so the kernel wakes this thread directly
/// when packets arrive, decides the whole batch and sends all its verdicts (with the edited
/// packets) in one sendmsg. Other threads reach it only through its mailbox.
final class Worker: @unchecked Sendable {
    let socket: NFQueueSocket
    let queue: DispatchQueue
    /// The engine lives at a fixed address so the packet loop reaches it without going
    /// through a class property.
    let engine: UnsafeMutablePointer<AOEngine>
    let io: UnsafeMutablePointer<IOStats>
    let hostMode: Bool
    var log: Logger
    let mailbox = Mailbox()
    /// Coarse monotonic second of the loop's last turn (the systemd watchdog reads it).
    let heartbeat = Atomic<UInt32>(0)
    var stopRequested = false
    let finished = DispatchSemaphore(value: 0)
    /// Set by `stop()` once the loop has ended (then only the caller's thread touches state).
    /// Set once the loop has ended (on the control queue); read by control-socket threads, which
    /// then read the engine directly (nothing writes it any more).
    let stoppedFlag = Atomic<Bool>(false)
    var stopped: Bool { stoppedFlag.load(ordering: .acquiring) }
    /// Counters of configurations replaced by reloads.
    var retired = CounterSnapshot()
    var mtus: [UInt32: (mtu: Int, at: UInt32)] = [:]
    var enobufsLog = LogLimiter()
    var receiveErrorLog = LogLimiter()
    var sendErrorLog = LogLimiter()
    var netlinkErrorLog = LogLimiter()
    var malformedLog = LogLimiter()

    /// Seconds for the expiry sweep to go round the whole flow table, and the fewest slots a
    /// second's slice looks at.
    static let sweepSeconds = 30
    static let sweepMinimum = 64

    /// The marks the rules' HMARK spread gives packets that had none (`QueueSpread`): the
    /// verdict gives them back mark 0. Nil when the rules do not spread by HMARK. Set before
    /// `start()`.
    var spreadMarks: ClosedRange<UInt32>? = nil

    /// The loopback interface's index in this network namespace (0 if none).
    let loopbackIndex = UInt32(if_nametoindex("lo"))

    /// The connections' labels in conntrack (flow-state: conntrack), this worker's own socket.
    let flowStore: ConntrackFlowStore?
    var storeFailuresLogged: UInt64 = 0
    var storeLoggedAt: UInt32 = 0

    /// `labelOffset`: keep flow state in conntrack labels from that bit (nil: memory only).
    /// Throws when the queue cannot be bound or the conntrack socket cannot be opened.
    init(queue number: UInt16, config: EngineConfig, hostMode: Bool, synchronized: SynchronizedFlows, budget: FlowBudget,
         labelOffset: Int? = nil, log: Logger) throws {
        socket = try NFQueueSocket(queue: number)
        do { flowStore = try labelOffset.map { try ConntrackFlowStore(offset: $0) } } catch {
            socket.close()
            throw error
        }
        queue = DispatchQueue(label: "tcpaod.queue\(number)", qos: .userInteractive)
        engine = .allocate(capacity: 1)
        engine.initialize(to: AOEngine(config: config, synchronized: synchronized, budget: budget))
        engine.pointee.stateStore = flowStore
        // Labels are written once the batch's verdicts are out (see `deferStateSaves`).
        engine.pointee.deferStateSaves = flowStore != nil
        io = .allocate(capacity: 1)
        io.initialize(to: IOStats(queue: Int(number)))
        self.hostMode = hostMode
        // Alive from creation: the watchdog's first look may come before run() is scheduled.
        heartbeat.store(Worker.clock().mono, ordering: .relaxed)
        self.log = log
        self.log[metadataKey: "queue"] = "\(number)"
    }

    deinit {
        engine.deinitialize(count: 1) // wipes every flow's keys
        engine.deallocate()
        io.deallocate()
    }

    func start() {
        queue.async { [self] in run() }
    }

    /// The worker loop: receive (sleeping up to 100 ms), decide, verdict; between batches the
    /// mailbox and, once a second, the flow table's housekeeping.
    func run() {
        // `top -H`, `ps -L` and the watchdog test see which thread serves which queue.
        _ = tcpaod_set_thread_name("tcpaod-q\(socket.queue)")
        var lastHousekeeping = Worker.clock().mono
        heartbeat.store(lastHousekeeping, ordering: .relaxed)
        while !stopRequested {
            drain(maxBatches: 64, blocking: !mailbox.hasPending)
            mailbox.runPending()
            let now = Worker.clock().mono
            if now != lastHousekeeping {
                lastHousekeeping = now
                heartbeat.store(now, ordering: .relaxed)
                housekeeping()
            }
        }
        // Stopping: every packet still queued gets its verdict; done when the queue has been
        // quiet for 100 ms, or after 2 s whatever the load (with on-exit: keep-rules packets keep
        // coming; the kernel drops those once the socket is closed).
        let deadline = DispatchTime.now().uptimeNanoseconds + 2_000_000_000
        var quiet = 0
        while quiet < 100 && DispatchTime.now().uptimeNanoseconds < deadline {
            if drain(maxBatches: 64, blocking: false) > 0 { quiet = 0; continue }
            usleep(10_000)
            quiet += 10
        }
        socket.close()
        finished.signal()
    }

    static func clock() -> EngineClock {
        var w = timespec(), m = timespec()
        clock_gettime(CLOCK_REALTIME_COARSE, &w)
        clock_gettime(CLOCK_MONOTONIC_COARSE, &m)
        return EngineClock(wall: Int64(w.tv_sec), mono: UInt32(truncatingIfNeeded: m.tv_sec))
    }

    /// Reads and decides batches until the socket is empty, or `maxBatches` were done so that
    /// the loop gets to its mailbox and housekeeping (the next drain takes the rest). Every
    /// message whose packet id is known gets exactly one verdict. Returns the number of
    /// messages received.
    @discardableResult
    func drain(maxBatches: Int, blocking: Bool) -> Int {
        let sock = socket
        let eng = engine
        let io = self.io
        let host = hostMode
        let marks = spreadMarks
        var total = 0
        for b in 0..<maxBatches {
            // Only the first receive may sleep; the rest take what is already queued.
            let n = sock.receiveBatch(blocking: blocking && b == 0)
            if n <= 0 {
                if n == 0 || n == -Int(EAGAIN) || n == -Int(EWOULDBLOCK) { break }
                if n == -Int(EINTR) { continue }
                if n == -Int(ENOBUFS) {
                    // The kernel dropped messages for us: the receive buffer overflowed. The
                    // packets themselves stay queued or were dropped by the kernel (fail closed).
                    io.pointee.enobufs &+= 1
                    noteENOBUFS()
                    continue
                }
                io.pointee.receiveErrors &+= 1
                noteReceiveError(n)
                break
            }
            let clock = Worker.clock()
            io.pointee.batches &+= 1
            for i in 0..<n {
                let p: QueuedPacket
                switch sock.message(i) {
                case .packet(let q):
                    p = q
                case .malformedPacket(let id):
                    // A packet waits in the kernel's queue until it gets a verdict: answer every
                    // one whose id could be read (Suricata's source-nfq.c does the same).
                    io.pointee.malformedMessages &+= 1
                    if let id {
                        io.pointee.packets &+= 1
                        io.pointee.dropped &+= 1
                        noteSendResult(sock.addVerdict(id: id, verdict: NF.drop, payload: nil, length: 0))
                    }
                    noteMalformed(id)
                    continue
                case .netlinkError(let e, let id) where e != 0:
                    io.pointee.netlinkErrors &+= 1
                    noteNetlinkError(e, id)
                    continue
                case .netlinkError, .foreign:
                    io.pointee.foreignMessages &+= 1
                    continue
                }
                io.pointee.packets &+= 1
                // Exactly one verdict per packet, whatever happens below.
                guard let payload = p.payload, !p.truncated else {
                    io.pointee.truncated &+= 1
                    io.pointee.dropped &+= 1
                    noteSendResult(sock.addVerdict(id: p.id, verdict: NF.drop, payload: nil, length: 0))
                    continue
                }
                let hint: Direction? = host ? (p.hook == NF.hookLocalOut ? .egress : (p.hook == NF.hookLocalIn ? .ingress : nil)) : nil
                let mtu = (hint != .egress && p.inDev != 0 && Worker.carriesSYN(payload, p.length)) ? mtuOf(p.inDev, clock.mono) : 0
                let r: Int
                // Arrived on the loopback interface: sent by this host's own stack (with
                // protect-loopback, or its own ICMP errors about segments it could not send).
                let local = p.inDev != 0 && p.inDev == loopbackIndex
                // The HMARK spread marked a packet that had no mark: it leaves with none again.
                let mark: UInt32? = marks.map { $0.contains(p.mark) ? 0 : nil } ?? nil
                switch eng.pointee.process(payload, length: p.length, capacity: p.capacity, hint: hint, mtu: mtu,
                                           fromLoopback: local, clock: clock) {
                case .accept:
                    io.pointee.accepted &+= 1
                    r = sock.addVerdict(id: p.id, verdict: NF.accept, payload: nil, length: 0, mark: mark)
                case .acceptModified(let len):
                    io.pointee.modified &+= 1
                    r = sock.addVerdict(id: p.id, verdict: NF.accept, payload: payload, length: len, mark: mark)
                case .drop:
                    io.pointee.dropped &+= 1
                    r = sock.addVerdict(id: p.id, verdict: NF.drop, payload: nil, length: 0)
                }
                noteSendResult(r)
            }
            noteSendResult(sock.flush())
            eng.pointee.savePendingStates(now: clock.mono)
            total += n
            if n < sock.slotCount { break }
        }
        return total
    }

    /// A TCP segment with SYN set (cheap look at the headers, for MSS clamping only).
    @inline(__always)
    static func carriesSYN(_ p: UnsafeRawPointer, _ len: Int) -> Bool {
        guard len >= 40 else { return false }
        let b0 = p.load(as: UInt8.self)
        if b0 >> 4 == 4 {
            let ihl = Int(b0 & 0x0F) * 4
            return p.load(fromByteOffset: 9, as: UInt8.self) == 6 && len > ihl + 13 && p.load(fromByteOffset: ihl + 13, as: UInt8.self) & 0x02 != 0
        }
        return b0 >> 4 == 6 && len > 53 && p.load(fromByteOffset: 6, as: UInt8.self) == 6 && p.load(fromByteOffset: 53, as: UInt8.self) & 0x02 != 0
    }

    /// The MTU of an interface, cached for 30 s (for MSS clamping of SYNs).
    func mtuOf(_ ifindex: UInt32, _ now: UInt32) -> Int {
        if let c = mtus[ifindex], now &- c.at < 30 { return c.mtu }
        var name = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
        var mtu = 0
        if if_indextoname(ifindex, &name) != nil, let f = fopen("/sys/class/net/\(Sys.string(name))/mtu", "r") {
            var v: Int32 = 0
            if readInt(f, &v) { mtu = Int(v) }
            fclose(f)
        }
        mtus[ifindex] = (mtu, now)
        return mtu
    }

    func noteENOBUFS() {
        guard let (n, secs) = enobufsLog.due(count: io.pointee.enobufs, now: Worker.clock().mono) else { return }
        log.warning("netlink receive buffer overflowed \(n) time(s)\(Worker.since(secs)) (ENOBUFS); the kernel dropped those packets")
    }

    func noteReceiveError(_ r: Int) {
        guard let (n, secs) = receiveErrorLog.due(count: io.pointee.receiveErrors, now: Worker.clock().mono) else { return }
        log.error("receiving from NFQUEUE failed: \(Sys.describe(r)) (\(n) failure(s)\(Worker.since(secs)))")
    }

    /// Counts and logs (rate-limited) a failed send; `r` is a result of `addVerdict` or `flush`.
    @inline(__always)
    func noteSendResult(_ r: Int) {
        if r < 0 { noteSendError(r) }
    }

    func noteSendError(_ r: Int) {
        io.pointee.sendErrors &+= 1
        guard let (n, secs) = sendErrorLog.due(count: io.pointee.sendErrors, now: Worker.clock().mono) else { return }
        log.error("sending verdicts failed: \(Sys.describe(r)) (\(n) failure(s)\(Worker.since(secs)))")
    }

    /// The kernel refused a verdict (an unknown packet id, a malformed verdict): it answers
    /// with NLMSG_ERROR even without NLM_F_ACK.
    func noteNetlinkError(_ e: Int32, _ id: UInt32?) {
        guard let (n, secs) = netlinkErrorLog.due(count: io.pointee.netlinkErrors, now: Worker.clock().mono) else { return }
        let what = id.map { "the verdict for packet \($0)" } ?? "a message"
        log.error("the kernel refused \(what): \(Sys.describe(Int(e))) (\(n) error(s)\(Worker.since(secs)))")
    }

    func noteMalformed(_ id: UInt32?) {
        guard let (n, secs) = malformedLog.due(count: io.pointee.malformedMessages, now: Worker.clock().mono) else { return }
        let what = id.map { "packet \($0) dropped" } ?? "no packet id, no verdict possible"
        log.warning("malformed NFQUEUE message (\(what)); \(n) malformed message(s)\(Worker.since(secs))")
    }

    private static func since(_ secs: UInt32?) -> String {
        secs.map { " in the last \($0) s" } ?? ""
    }

    /// Once a second: a slice of the flow table is checked for flows to forget, so that the
    /// whole table is seen every `Worker.sweepSeconds` (a timeout fires up to that much late):
    /// 1/30 of the flows per second, so an idle flow costs next to nothing (issue 14).
    func housekeeping() {
        let eng = engine
        let budget = max(Worker.sweepMinimum, (eng.pointee.flowTableHighWater + Worker.sweepSeconds - 1) / Worker.sweepSeconds)
        let now = Worker.clock().mono
        eng.pointee.expire(now: now, budget: budget)
        if let st = flowStore, st.failures != storeFailuresLogged, storeLoggedAt == 0 || now &- storeLoggedAt >= 10 {
            // At most every 10 s, with what the kernel said.
            storeLoggedAt = now
            log.warning("conntrack label requests failed \(st.failures - storeFailuresLogged) time(s): \(ConntrackLabels.explain(st.lastError)); those connections' state is in memory only until a write succeeds (retried each second)")
            storeFailuresLogged = st.failures
        }
    }

    // MARK: called from other threads; each hops onto the worker's queue

    /// Switches the engine to `c`; returns once the worker has done it (within ~100 ms).
    func reconfigure(_ c: EngineConfig) {
        let done = DispatchSemaphore(value: 0)
        mailbox.post { [self] in
            retired.add(engine.pointee.reconfigure(c))
            done.signal()
        }
        done.wait()
    }

    /// The worker's counters, taken on its own thread (waits for it, at most ~100 ms), or
    /// directly once it has stopped.
    func snapshot() -> (CounterSnapshot, IOStats) {
        if stopped { return takeSnapshot() }
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result = (CounterSnapshot(), IOStats(queue: Int(socket.queue)))
        mailbox.post { [self] in
            result = takeSnapshot()
            done.signal()
        }
        done.wait()
        return result
    }

    /// The connections whose keys moved since the last call, taken on the worker's thread (or
    /// directly once it has stopped): the stats tick logs them.
    func takeKeyEvents() -> (events: [FlowKeyEvent], lost: UInt64) {
        if stopped { return engine.pointee.takeKeyEvents() }
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: (events: [FlowKeyEvent], lost: UInt64) = ([], 0)
        mailbox.post { [self] in
            result = engine.pointee.takeKeyEvents()
            done.signal()
        }
        done.wait()
        return result
    }

    /// Installs a connection's own MKT if this worker holds the connection (on its thread,
    /// between batches); the answer arrives through the handle.
    func installConnectionKey(_ key: FlowKey, _ mkt: MKT, wall: Int64) -> Pending<ConnectionKeyResult> {
        let p = Pending<ConnectionKeyResult>()
        if stopped { p.fulfil(.notFound); return p }
        mailbox.post { [self] in p.fulfil(engine.pointee.installConnectionKey(key, mkt, wall: wall)) }
        return p
    }

    /// The counters, taken on the worker's thread; the answer arrives through the handle.
    func requestSnapshot() -> Pending<(CounterSnapshot, IOStats)> {
        let p = Pending<(CounterSnapshot, IOStats)>()
        if stopped { p.fulfil(takeSnapshot()); return p }
        mailbox.post { [self] in p.fulfil(takeSnapshot()) }
        return p
    }

    /// Copies the worker's flows (those of peer `peer`, by name, or all) a chunk of at most
    /// `slots` table slots per loop turn, between batches: a walk of 100,000 flows never holds
    /// the packet path for more than one chunk's copy.
    func requestFlows(peer: String?, slots: Int = FlowWalk.defaultSlots) -> FlowWalk {
        let w = FlowWalk(peer: peer, slots: slots)
        if stopped {
            while !w.step(engine) {}
        } else {
            w.start(engine, on: mailbox)
        }
        return w
    }

    private func takeSnapshot() -> (CounterSnapshot, IOStats) {
        var s = retired
        s.add(engine.pointee.snapshot())
        var i = io.pointee
        i.flows = engine.pointee.flowCount
        return (s, i)
    }

    /// Stops the loop after every packet still queued got its verdict, and closes the socket.
    func stop() {
        guard !stopped else { return }
        mailbox.post { [self] in stopRequested = true }
        finished.wait()
        stoppedFlag.store(true, ordering: .releasing)
    }
}

/// An answer from a worker's thread, waited for on another (never on a worker's queue).
final class Pending<T>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var value: T?

    func fulfil(_ v: T) {
        value = v
        done.signal()
    }

    /// The value, or nil when it did not come by `deadline`.
    func wait(until deadline: DispatchTime) -> T? {
        guard done.wait(timeout: deadline) == .success else { return nil }
        return value
    }
}

/// Flows copied in one step, with the names of the peers their `peer` indexes (the engine's
/// configuration then: a reload between two steps changes nothing for either).
public struct FlowChunk: Sendable {
    public var queue: Int
    public var peers: [String]
    public var flows: [FlowInfo]

    public init(queue: Int, peers: [String], flows: [FlowInfo]) {
        self.queue = queue
        self.peers = peers
        self.flows = flows
    }

    public func peerName(_ f: FlowInfo) -> String { f.peer >= 0 && f.peer < peers.count ? peers[f.peer] : "?" }
}

/// A walk over one engine's flows in bounded steps, each run on the worker's thread between
/// batches. The chunks are read by the waiting thread once `done` is signalled (the semaphore
/// orders the two); after a timeout it stops reading and marks the walk cancelled.
final class FlowWalk: @unchecked Sendable {
    static let defaultSlots = 4096
    let peer: String?
    let slots: Int
    private var cursor = 0
    private(set) var chunks: [FlowChunk] = []
    /// Steps taken and the most flows copied in one (tests).
    private(set) var steps = 0
    private(set) var largestStep = 0
    private(set) var longestStepNanoseconds: UInt64 = 0
    private let done = DispatchSemaphore(value: 0)
    private let cancelled = Atomic<Bool>(false)

    init(peer: String?, slots: Int) {
        self.peer = peer
        self.slots = max(slots, 1)
    }

    /// Posts the first step to the worker's mailbox; each step posts the next until the end.
    /// (A pending mailbox keeps the worker from sleeping in its receive: the steps follow each
    /// other at every loop turn, between batches.)
    func start(_ engine: UnsafeMutablePointer<AOEngine>, on mailbox: Mailbox) {
        func next() { if !step(engine) { mailbox.post(next) } }
        mailbox.post(next)
    }

    /// One chunk; true when the walk is over (finished or cancelled).
    func step(_ engine: UnsafeMutablePointer<AOEngine>) -> Bool {
        if cancelled.load(ordering: .relaxed) { return true }
        var index: Int? = nil
        if let peer {
            // By name in the worker's own configuration (a reload may have changed indexes).
            guard let i = engine.pointee.config.peers.firstIndex(where: { $0.name == peer }) else {
                done.signal()
                return true
            }
            index = i
        }
        let t0 = DispatchTime.now().uptimeNanoseconds
        var chunk: [FlowInfo] = []
        chunk.reserveCapacity(min(slots, engine.pointee.flowCount))
        let next = engine.pointee.copyFlows(from: cursor, slots: slots, peer: index, into: &chunk)
        steps += 1
        largestStep = max(largestStep, chunk.count)
        longestStepNanoseconds = max(longestStepNanoseconds, DispatchTime.now().uptimeNanoseconds - t0)
        if !chunk.isEmpty { chunks.append(FlowChunk(queue: 0, peers: engine.pointee.config.peers.map(\.name), flows: chunk)) }
        guard let n = next else {
            done.signal()
            return true
        }
        cursor = n
        return false
    }

    /// The flows in chunks, or nil when the walk did not end by `deadline` (it is then cancelled).
    func wait(until deadline: DispatchTime) -> [FlowChunk]? {
        guard done.wait(timeout: deadline) == .success else {
            cancelled.store(true, ordering: .relaxed)
            return nil
        }
        return chunks
    }
}

/// Reads one integer from the first line of a file.
private func readInt(_ f: UnsafeMutablePointer<FILE>, _ v: inout Int32) -> Bool {
    var buf = [CChar](repeating: 0, count: 32)
    guard fgets(&buf, 32, f) != nil else { return false }
    guard let n = Int32(Sys.string(buf).trimmingCharacters(in: [" ", "\n"])) else { return false }
    v = n
    return true
}
