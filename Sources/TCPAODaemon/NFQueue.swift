import CNetfilterQueue
#if canImport(Glibc)
import Glibc
#endif

public struct NFQueueError: Error, CustomStringConvertible {
    public var description: String
}

/// A netlink socket bound to one NFQUEUE, in copy-packet mode, receiving in batches with
/// recvmmsg into preallocated slots and sending all of a batch's verdicts in one sendmsg. It
/// only moves bytes: messages are parsed and verdicts encoded by `NFQCodec`, and every system
/// call goes through `Sys`.
final class NFQueueSocket {
    let queue: UInt16
    let nl: OpaquePointer
    let fd: Int32
    let slotCount: Int
    let slotSize: Int
    let slots: UnsafeMutableRawPointer
    let msgs: UnsafeMutablePointer<tcpaod_mmsghdr>
    let iovs: UnsafeMutablePointer<iovec>
    /// Verdict headers (nlmsghdr, nfgenmsg, verdict and payload attribute headers), one per
    /// packet of a batch; the packets themselves are sent from their receive slots.
    let hdrs: UnsafeMutableRawPointer
    let txIov: UnsafeMutablePointer<iovec>
    var txCount = 0
    var txIovs = 0
    static let hdrSize = NFQCodec.verdictHeaderCapacity
    /// Zero bytes that pad a payload attribute to 4 bytes (never written after creation).
    let zeroPad: UnsafeMutableRawPointer = {
        let p = UnsafeMutableRawPointer.allocate(byteCount: 4, alignment: 4)
        p.storeBytes(of: 0, as: UInt32.self)
        return p
    }()

    /// Opens and binds queue `queue`. Throws with a message an operator can act on.
    init(queue: UInt16, batch: Int = 64, slotSize: Int = 65536 + 1024, receiveBuffer: Int = 8 << 20, maxQueued: UInt32 = 8192) throws {
        self.queue = queue
        let (socket, openErrno) = Sys.mnlOpen(NETLINK_NETFILTER)
        guard let s = socket else {
            throw NFQueueError(description: "cannot open a netfilter netlink socket: \(Sys.describe(Int(openErrno)))")
        }
        nl = s
        fd = Sys.mnlFD(s)
        slotCount = batch
        self.slotSize = slotSize
        slots = .allocate(byteCount: batch * slotSize, alignment: 64)
        msgs = .allocate(capacity: batch)
        iovs = .allocate(capacity: batch)
        hdrs = .allocate(byteCount: batch * NFQueueSocket.hdrSize, alignment: 8)
        txIov = .allocate(capacity: batch * 3)
        for i in 0..<batch {
            iovs[i] = iovec(iov_base: slots + i * slotSize, iov_len: slotSize)
            var h = tcpaod_mmsghdr()
            h.msg_hdr.msg_iov = iovs + i
            h.msg_hdr.msg_iovlen = 1
            msgs[i] = h
        }
        do {
            let e = Sys.mnlBind(s)
            guard e == 0 else {
                throw NFQueueError(description: "cannot bind the netlink socket: \(Sys.describe(e))")
            }
            // A large receive buffer absorbs bursts; root may exceed rmem_max with the FORCE option.
            if Sys.setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, Int32(receiveBuffer)) != 0 {
                _ = Sys.setsockopt(fd, SOL_SOCKET, SO_RCVBUF, Int32(receiveBuffer))
            }
            if Sys.setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, Int32(4 << 20)) != 0 {
                _ = Sys.setsockopt(fd, SOL_SOCKET, SO_SNDBUF, Int32(4 << 20))
            }
            _ = Sys.setsockopt(fd, NF.solNetlink, NF.netlinkExtAck, Int32(1))
            try configure { nlh in nfq_nlmsg_cfg_put_cmd(nlh, UInt16(AF_UNSPEC), UInt8(NFQNL_CFG_CMD_BIND.rawValue)) }
            try configure { nlh in
                // Copy whole packets; no GSO flag, so the kernel segments GSO/GRO packets before
                // queueing them and every segment is signed or verified on its own.
                nfq_nlmsg_cfg_put_params(nlh, UInt8(NFQNL_COPY_PACKET.rawValue), 0xFFFF)
                nfq_nlmsg_cfg_put_qmaxlen(nlh, maxQueued)
            }
            // Blocking receives with a timeout: the worker loop sleeps in recvmmsg and still
            // looks at its mailbox (reload, stats, stop) at least every 100 ms.
            _ = Sys.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, timeval(tv_sec: 0, tv_usec: 100_000))
        } catch {
            close()
            throw error
        }
    }

    private var closed = false
    func close() {
        guard !closed else { return }
        closed = true
        Sys.mnlClose(nl)
    }

    deinit {
        close()
        slots.deallocate()
        msgs.deallocate()
        iovs.deallocate()
        hdrs.deallocate()
        txIov.deallocate()
        zeroPad.deallocate()
    }

    /// Sends one configuration message with NLM_F_ACK and waits for the kernel's answer.
    private func configure(_ fill: (UnsafeMutablePointer<nlmsghdr>) -> Void) throws {
        let size = 8192
        let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { buf.deallocate() }
        guard let nlh = nfq_nlmsg_put(buf.assumingMemoryBound(to: CChar.self), Int32(NFQNL_MSG_CONFIG.rawValue), UInt32(queue)) else {
            throw NFQueueError(description: "nfq_nlmsg_put failed")
        }
        fill(nlh)
        nlh.pointee.nlmsg_flags |= UInt16(NLM_F_ACK)
        nlh.pointee.nlmsg_seq = UInt32.random(in: 1...UInt32.max)
        let sent = Sys.mnlSendto(nl, nlh, Int(nlh.pointee.nlmsg_len))
        guard sent >= 0 else {
            throw NFQueueError(description: "configuring queue \(queue): \(Sys.describe(sent))")
        }
        while true {
            let n = Sys.mnlRecvfrom(nl, buf, size)
            guard n > 0 else {
                throw NFQueueError(description: "configuring queue \(queue): no answer from the kernel\(n < 0 ? " (\(Sys.describe(n)))" : "")")
            }
            let e: Int32
            switch NFQCodec.parseMessage(buf, received: n, slotSize: size) {
            case .netlinkError(_, verdictID: .some):
                continue // about a verdict `dropNow` sent, not the answer awaited
            case .netlinkError(let code, verdictID: nil):
                e = code
            case .packet(let p):
                // Queued between the bind and the copy-mode parameters: it waits for a verdict
                // like any other (the kernel does not queue it again). Fail closed.
                dropNow(p.id)
                continue
            case .malformedPacket(let id):
                if let id { dropNow(id) }
                continue
            case .foreign:
                continue
            }
            if e == 0 { return }
            // The kernel answers EPERM both when the caller lacks CAP_NET_ADMIN and when another
            // socket owns the queue (nfqnl_recv_config); the queue's presence in
            // /proc/net/netfilter/nfnetlink_queue tells the two apart.
            if e == EBUSY || (e == EPERM && KernelQueueStats.read().contains { $0.queue == Int(queue) }) {
                throw NFQueueError(description: "NFQUEUE \(queue) is already bound by another process (another tcpaod?); stop it or choose another `queue`")
            }
            if e == EPERM {
                throw NFQueueError(description: "binding NFQUEUE \(queue): operation not permitted: tcpaod needs CAP_NET_ADMIN (run as root)")
            }
            throw NFQueueError(description: "configuring NFQUEUE \(queue): \(Sys.describe(Int(e)))")
        }
    }

    /// Sends a DROP verdict for one packet on its own (outside a batch, while configuring).
    private func dropNow(_ id: UInt32) {
        let h = UnsafeMutableRawPointer.allocate(byteCount: NFQCodec.verdictHeaderCapacity, alignment: 8)
        defer { h.deallocate() }
        let v = NFQCodec.encodeVerdict(into: h, queue: queue, id: id, verdict: NF.drop, payloadLength: nil)
        _ = Sys.mnlSendto(nl, h, v.headerLength)
    }

    /// Receives up to `slotCount` messages. Blocking: waits (up to the 100 ms receive timeout)
    /// for the first, then takes what else is there (MSG_WAITFORONE): one syscall both sleeps and
    /// fetches the batch. Returns the count, or -errno (-EAGAIN: nothing arrived).
    @inline(__always)
    func receiveBatch(blocking: Bool) -> Int {
        Sys.recvmmsg(fd, msgs, slotCount, blocking ? Int32(MSG_WAITFORONE) : Int32(MSG_DONTWAIT))
    }

    /// Parses message `i` of the last batch.
    @inline(__always)
    func message(_ i: Int) -> NFQMessage {
        NFQCodec.parseMessage(slots + i * slotSize, received: Int(msgs[i].msg_len), slotSize: slotSize)
    }

    /// Adds a verdict for packet `id` to the batch being built; with `payload`, the packet's
    /// (new) bytes go with it, sent straight from where they are: no copy in user space. The
    /// payload must stay where it is until `flush` (it lives in a receive slot, reused only by the
    /// next receive). Returns 0, or -errno when the batch was full and sending it failed.
    @inline(__always)
    func addVerdict(id: UInt32, verdict v: Int32, payload pl: UnsafeRawPointer?, length: Int, mark: UInt32? = nil) -> Int {
        var result = 0
        if txCount == slotCount { result = flush() }
        let h = hdrs + txCount * NFQueueSocket.hdrSize
        let e = NFQCodec.encodeVerdict(into: h, queue: queue, id: id, verdict: v, payloadLength: pl != nil ? length : nil, mark: mark)
        var iov = txIov + txIovs
        iov.pointee = iovec(iov_base: h, iov_len: e.headerLength)
        iov += 1
        if e.payloadLength > 0, let pl {
            iov.pointee = iovec(iov_base: UnsafeMutableRawPointer(mutating: pl), iov_len: e.payloadLength)
            iov += 1
        }
        if e.padding > 0 {
            iov.pointee = iovec(iov_base: zeroPad, iov_len: e.padding)
            iov += 1
        }
        txIovs = iov - txIov
        txCount += 1
        return result < 0 ? result : 0
    }

    /// Sends every verdict collected so far in one sendmsg. Bytes sent (0 when there was
    /// nothing to send), or -errno when the kernel refused them.
    @inline(__always)
    func flush() -> Int {
        guard txCount > 0 else { return 0 }
        var addr = sockaddr_nl()
        addr.nl_family = sa_family_t(AF_NETLINK)
        var m = msghdr()
        let n = withUnsafeMutablePointer(to: &addr) { ap in
            m.msg_name = UnsafeMutableRawPointer(ap)
            m.msg_namelen = socklen_t(MemoryLayout<sockaddr_nl>.size)
            m.msg_iov = txIov
            m.msg_iovlen = txIovs
            return Sys.sendmsg(fd, &m, 0)
        }
        txCount = 0
        txIovs = 0
        return n
    }
}

/// The kernel's own per-queue counters (/proc/net/netfilter/nfnetlink_queue).
public struct KernelQueueStats: Codable, Sendable {
    public var queue: Int
    public var queued: Int
    public var queueDropped: Int
    public var userDropped: Int

    /// Fields: queue, portid, queue_total, copy_mode, copy_range, queue_dropped, user_dropped, id_sequence, 1.
    public static func read() -> [KernelQueueStats] {
        guard let f = fopen("/proc/net/netfilter/nfnetlink_queue", "r") else { return [] }
        defer { fclose(f) }
        var out: [KernelQueueStats] = []
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, 256, f) != nil {
            let parts = Sys.string(line).split(separator: " ").compactMap { Int($0) }
            if parts.count >= 7 {
                out.append(KernelQueueStats(queue: parts[0], queued: parts[2], queueDropped: parts[5], userDropped: parts[6]))
            }
        }
        return out
    }
}
