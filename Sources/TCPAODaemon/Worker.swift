import Dispatch
import Foundation
import Logging
import TCPAO
import TCPAOConfig
#if canImport(Glibc)
import Glibc
#endif

/// I/O counters of one worker.
public struct IOStats: Codable, Sendable {
    public var queue: Int
    public var batches: UInt64 = 0
    public var packets: UInt64 = 0
    public var accepted: UInt64 = 0
    public var modified: UInt64 = 0
    public var dropped: UInt64 = 0
    public var truncated: UInt64 = 0
    public var enobufs: UInt64 = 0
    public var sendErrors: UInt64 = 0
    public var foreignMessages: UInt64 = 0
    public var flows: Int = 0
}

/// One NFQUEUE and the engine that decides its packets. All its state is touched only on its
/// own serial DispatchQueue; the read source drains the socket in batches: many packets per
/// recvmmsg, all their verdicts (with the edited packets) in one sendto.
final class Worker: @unchecked Sendable {
    let socket: NFQueueSocket
    let queue: DispatchQueue
    /// The engine lives at a fixed address so the packet loop reaches it without going
    /// through a class property.
    let engine: UnsafeMutablePointer<AOEngine>
    let io: UnsafeMutablePointer<IOStats>
    let hostMode: Bool
    var log: Logger
    var source: DispatchSourceRead?
    var timer: DispatchSourceTimer?
    /// Counters of configurations replaced by reloads.
    var retired = CounterSnapshot()
    var mtus: [UInt32: (mtu: Int, at: UInt32)] = [:]
    var enobufsLoggedAt: UInt32 = 0
    var enobufsAtLastLog: UInt64 = 0

    init(queue number: UInt16, config: EngineConfig, hostMode: Bool, synchronized: SynchronizedFlows, log: Logger) throws {
        socket = try NFQueueSocket(queue: number)
        queue = DispatchQueue(label: "tcpaod.queue\(number)", qos: .userInteractive)
        engine = .allocate(capacity: 1)
        engine.initialize(to: AOEngine(config: config, synchronized: synchronized))
        io = .allocate(capacity: 1)
        io.initialize(to: IOStats(queue: Int(number)))
        self.hostMode = hostMode
        self.log = log
        self.log[metadataKey: "queue"] = "\(number)"
    }

    deinit {
        engine.deinitialize(count: 1) // wipes every flow's keys
        engine.deallocate()
        io.deallocate()
    }

    func start() {
        let s = DispatchSource.makeReadSource(fileDescriptor: socket.fd, queue: queue)
        s.setEventHandler { [unowned self] in self.drain(maxBatches: 64) }
        source = s
        s.resume()
        let t = DispatchSource.makeTimerSource(queue: queue)
        t.schedule(deadline: .now() + 1, repeating: 1)
        t.setEventHandler { [unowned self] in self.housekeeping() }
        timer = t
        t.resume()
    }

    static func clock() -> EngineClock {
        var w = timespec(), m = timespec()
        clock_gettime(CLOCK_REALTIME_COARSE, &w)
        clock_gettime(CLOCK_MONOTONIC_COARSE, &m)
        return EngineClock(wall: Int64(w.tv_sec), mono: UInt32(truncatingIfNeeded: m.tv_sec))
    }

    /// Reads and decides batches until the socket is empty (or `maxBatches` were done, so
    /// timers on this queue get their turn; the read source fires again for the rest).
    /// Returns the number of packets.
    @discardableResult
    func drain(maxBatches: Int) -> Int {
        let sock = socket
        let eng = engine
        let io = self.io
        let host = hostMode
        var total = 0
        for _ in 0..<maxBatches {
            let n = sock.receiveBatch()
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
                log.error("receiving from NFQUEUE failed: \(String(cString: strerror(Int32(-n))))")
                break
            }
            let clock = Worker.clock()
            io.pointee.batches &+= 1
            for i in 0..<n {
                guard let p = sock.packet(i) else {
                    io.pointee.foreignMessages &+= 1
                    continue
                }
                io.pointee.packets &+= 1
                // Exactly one verdict per packet, whatever happens below.
                guard let payload = p.payload, !p.truncated else {
                    io.pointee.truncated &+= 1
                    io.pointee.dropped &+= 1
                    if !sock.addVerdict(id: p.id, verdict: NF.drop, payload: nil, length: 0) { io.pointee.sendErrors &+= 1 }
                    continue
                }
                let hint: Direction? = host ? (p.hook == NF.hookLocalOut ? .egress : (p.hook == NF.hookLocalIn ? .ingress : nil)) : nil
                let mtu = (hint != .egress && p.inDev != 0 && Worker.carriesSYN(payload, p.length)) ? mtuOf(p.inDev, clock.mono) : 0
                let ok: Bool
                switch eng.pointee.process(payload, length: p.length, capacity: p.capacity, hint: hint, mtu: mtu, clock: clock) {
                case .accept:
                    io.pointee.accepted &+= 1
                    ok = sock.addVerdict(id: p.id, verdict: NF.accept, payload: nil, length: 0)
                case .acceptModified(let len):
                    io.pointee.modified &+= 1
                    ok = sock.addVerdict(id: p.id, verdict: NF.accept, payload: payload, length: len)
                case .drop:
                    io.pointee.dropped &+= 1
                    ok = sock.addVerdict(id: p.id, verdict: NF.drop, payload: nil, length: 0)
                }
                if !ok { io.pointee.sendErrors &+= 1 }
            }
            if !sock.flush() {
                io.pointee.sendErrors &+= 1
                log.error("sending verdicts failed: \(String(cString: strerror(errno)))")
            }
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
        if if_indextoname(ifindex, &name) != nil, let f = fopen("/sys/class/net/\(String(cString: name))/mtu", "r") {
            var v: Int32 = 0
            if fscanf_int(f, &v) { mtu = Int(v) }
            fclose(f)
        }
        mtus[ifindex] = (mtu, now)
        return mtu
    }

    func noteENOBUFS() {
        let now = Worker.clock().mono
        if now &- enobufsLoggedAt >= 10 {
            let n = io.pointee.enobufs - enobufsAtLastLog
            log.warning("netlink receive buffer overflowed \(n) time(s) in the last \(enobufsLoggedAt == 0 ? 0 : now &- enobufsLoggedAt) s (ENOBUFS); the kernel dropped those packets")
            enobufsLoggedAt = now
            enobufsAtLastLog = io.pointee.enobufs
        }
    }

    func housekeeping() {
        let eng = engine
        let budget = max(1024, eng.pointee.config.limits.maxFlows / 8)
        eng.pointee.expire(now: Worker.clock().mono, budget: budget)
    }

    // MARK: called from other threads; each hops onto the worker's queue

    func reconfigure(_ c: EngineConfig) {
        queue.async { [self] in
            retired.add(engine.pointee.reconfigure(c))
        }
    }

    func snapshot() -> (CounterSnapshot, IOStats) {
        queue.sync {
            var s = retired
            s.add(engine.pointee.snapshot())
            var i = io.pointee
            i.flows = engine.pointee.flowCount
            return (s, i)
        }
    }

    /// Stops reading events and gives every packet still queued its verdict: keeps draining
    /// until the queue has been quiet for `quiet` milliseconds (bounded by `limit`).
    func stop(quiet: Int = 100, limit: Int = 2000) {
        queue.sync {
            source?.cancel()
            timer?.cancel()
            var quietFor = 0, waited = 0
            var pfd = pollfd(fd: socket.fd, events: Int16(POLLIN), revents: 0)
            while quietFor < quiet && waited < limit {
                if drain(maxBatches: 1024) > 0 { quietFor = 0; continue }
                _ = poll(&pfd, 1, 10)
                quietFor += 10
                waited += 10
            }
            socket.close()
        }
    }
}

/// Reads one integer with fscanf (not importable as a variadic in Swift).
private func fscanf_int(_ f: UnsafeMutablePointer<FILE>, _ v: inout Int32) -> Bool {
    var buf = [CChar](repeating: 0, count: 32)
    guard fgets(&buf, 32, f) != nil else { return false }
    guard let n = Int32(String(cString: buf).trimmingCharacters(in: [" ", "\n"])) else { return false }
    v = n
    return true
}
