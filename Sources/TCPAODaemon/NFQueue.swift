import CNetfilterQueue
#if canImport(Glibc)
import Glibc
#endif

/// Netfilter constants used by the data path, from the kernel's UAPI headers (in one place).
enum NF {
    static let drop: Int32 = 0       // NF_DROP
    static let accept: Int32 = 1     // NF_ACCEPT
    static let hookLocalIn: UInt8 = 1
    static let hookForward: UInt8 = 2
    static let hookLocalOut: UInt8 = 3
    static let msgPacket = UInt16(NFNL_SUBSYS_QUEUE) << 8 | UInt16(NFQNL_MSG_PACKET.rawValue)
    static let attrPacketHdr = UInt16(NFQA_PACKET_HDR.rawValue)
    static let attrPayload = UInt16(NFQA_PAYLOAD.rawValue)
    static let attrInDev = UInt16(NFQA_IFINDEX_INDEV.rawValue)
    static let attrOutDev = UInt16(NFQA_IFINDEX_OUTDEV.rawValue)
    static let attrCapLen = UInt16(NFQA_CAP_LEN.rawValue)
    static let nlaTypeMask: UInt16 = 0x3FFF // NLA_TYPE_MASK: strips NLA_F_NESTED / NLA_F_NET_BYTEORDER
    /// NFQNL_MAX_COPY_RANGE (0xffff - NLA_HDRLEN): the largest packet a verdict can carry.
    static let maxPacket = 65531
    static let solNetlink: Int32 = 270
    static let netlinkNoENOBUFS: Int32 = 5
    static let netlinkExtAck: Int32 = 11
}

public struct NFQueueError: Error, CustomStringConvertible {
    public var description: String
}

/// One packet of a received batch, parsed from its netlink message. Offsets point into the
/// receive slot, whose free tail lets the packet grow in place.
struct QueuedPacket {
    var id: UInt32
    var hook: UInt8
    var inDev: UInt32
    var outDev: UInt32
    var payload: UnsafeMutableRawPointer?
    var length: Int
    /// Bytes available at `payload` for the packet to grow into.
    var capacity: Int
    /// The kernel copied less than the whole packet (NFQA_CAP_LEN): it cannot be edited.
    var truncated: Bool
}

/// A netlink socket bound to one NFQUEUE, in copy-packet mode, receiving in batches with
/// recvmmsg into preallocated slots and sending all of a batch's verdicts in one sendto.
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
    static let hdrSize = 40
    /// Zero bytes that pad a payload attribute to 4 bytes (never written after creation).
    let zeroPad: UnsafeMutableRawPointer = {
        let p = UnsafeMutableRawPointer.allocate(byteCount: 4, alignment: 4)
        p.storeBytes(of: 0, as: UInt32.self)
        return p
    }()

    /// Opens and binds queue `queue`. Throws with a message an operator can act on.
    init(queue: UInt16, batch: Int = 64, slotSize: Int = 65536 + 1024, receiveBuffer: Int = 8 << 20, maxQueued: UInt32 = 8192) throws {
        self.queue = queue
        guard let s = mnl_socket_open(NETLINK_NETFILTER) else {
            throw NFQueueError(description: "cannot open a netfilter netlink socket: \(String(cString: strerror(errno)))")
        }
        nl = s
        fd = mnl_socket_get_fd(s)
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
            guard mnl_socket_bind(s, 0, pid_t(MNL_SOCKET_AUTOPID)) >= 0 else {
                throw NFQueueError(description: "cannot bind the netlink socket: \(String(cString: strerror(errno)))")
            }
            // A large receive buffer absorbs bursts; root may exceed rmem_max with the FORCE option.
            var rb = Int32(receiveBuffer)
            if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rb, socklen_t(MemoryLayout<Int32>.size)) != 0 {
                _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rb, socklen_t(MemoryLayout<Int32>.size))
            }
            var sb = Int32(4 << 20)
            if setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sb, socklen_t(MemoryLayout<Int32>.size)) != 0 {
                _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sb, socklen_t(MemoryLayout<Int32>.size))
            }
            var one: Int32 = 1
            _ = setsockopt(fd, NF.solNetlink, NF.netlinkExtAck, &one, socklen_t(MemoryLayout<Int32>.size))
            try configure { nlh in nfq_nlmsg_cfg_put_cmd(nlh, UInt16(AF_UNSPEC), UInt8(NFQNL_CFG_CMD_BIND.rawValue)) }
            try configure { nlh in
                // Copy whole packets; no GSO flag, so the kernel segments GSO/GRO packets before
                // queueing them and every segment is signed or verified on its own.
                nfq_nlmsg_cfg_put_params(nlh, UInt8(NFQNL_COPY_PACKET.rawValue), 0xFFFF)
                nfq_nlmsg_cfg_put_qmaxlen(nlh, maxQueued)
            }
            // Blocking receives with a timeout: the worker loop sleeps in recvmmsg and still
            // looks at its mailbox (reload, stats, stop) at least every 100 ms.
            var tv = timeval(tv_sec: 0, tv_usec: 100_000)
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        } catch {
            close()
            throw error
        }
    }

    private var closed = false
    func close() {
        guard !closed else { return }
        closed = true
        mnl_socket_close(nl)
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
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 8)
        defer { buf.deallocate() }
        guard let nlh = nfq_nlmsg_put(buf.assumingMemoryBound(to: CChar.self), Int32(NFQNL_MSG_CONFIG.rawValue), UInt32(queue)) else {
            throw NFQueueError(description: "nfq_nlmsg_put failed")
        }
        fill(nlh)
        nlh.pointee.nlmsg_flags |= UInt16(NLM_F_ACK)
        let seq = UInt32.random(in: 1...UInt32.max)
        nlh.pointee.nlmsg_seq = seq
        guard mnl_socket_sendto(nl, nlh, Int(nlh.pointee.nlmsg_len)) >= 0 else {
            throw NFQueueError(description: "configuring queue \(queue): \(String(cString: strerror(errno)))")
        }
        while true {
            let n = mnl_socket_recvfrom(nl, buf, 8192)
            guard n > 0 else { throw NFQueueError(description: "configuring queue \(queue): no answer from the kernel") }
            let h = buf.assumingMemoryBound(to: nlmsghdr.self)
            guard h.pointee.nlmsg_type == UInt16(NLMSG_ERROR) else { continue } // a queued packet: the kernel re-queues later
            let err = buf.load(fromByteOffset: MemoryLayout<nlmsghdr>.size, as: Int32.self)
            if err == 0 { return }
            let e = -err
            // The kernel answers EPERM both when the caller lacks CAP_NET_ADMIN and when another
            // socket owns the queue (nfqnl_recv_config); the queue's presence in
            // /proc/net/netfilter/nfnetlink_queue tells the two apart.
            if e == EBUSY || (e == EPERM && KernelQueueStats.read().contains { $0.queue == Int(queue) }) {
                throw NFQueueError(description: "NFQUEUE \(queue) is already bound by another process (another tcpaod?); stop it or choose another `queue`")
            }
            if e == EPERM {
                throw NFQueueError(description: "binding NFQUEUE \(queue): operation not permitted: tcpaod needs CAP_NET_ADMIN (run as root)")
            }
            throw NFQueueError(description: "configuring NFQUEUE \(queue): \(String(cString: strerror(e)))")
        }
    }

    /// Receives up to `slotCount` messages. Blocking: waits (up to the 100 ms receive timeout)
    /// for the first, then takes what else is there (MSG_WAITFORONE): one syscall both sleeps and
    /// fetches the batch. Returns the count, or -errno (-EAGAIN: nothing arrived).
    @inline(__always)
    func receiveBatch(blocking: Bool) -> Int {
        let n = tcpaod_recvmmsg(fd, msgs, UInt32(slotCount), blocking ? Int32(MSG_WAITFORONE) : Int32(MSG_DONTWAIT))
        if n < 0 { return -Int(errno) }
        return Int(n)
    }

    /// Parses message `i` of the last batch. Nil for anything that is not a queued packet.
    @inline(__always)
    func packet(_ i: Int) -> QueuedPacket? {
        let base = slots + i * slotSize
        let len = Int(msgs[i].msg_len)
        guard len >= 20 else { return nil }
        let h = base.load(as: nlmsghdr.self)
        guard h.nlmsg_type == NF.msgPacket, Int(h.nlmsg_len) <= len else { return nil }
        var p = QueuedPacket(id: 0, hook: 0, inDev: 0, outDev: 0, payload: nil, length: 0, capacity: 0, truncated: false)
        var off = 16 + 4 // nlmsghdr + nfgenmsg
        let end = Int(h.nlmsg_len)
        var haveHeader = false
        while off + 4 <= end {
            let alen = Int(base.load(fromByteOffset: off, as: UInt16.self))
            let atype = base.load(fromByteOffset: off + 2, as: UInt16.self) & NF.nlaTypeMask
            guard alen >= 4, off + alen <= end else { return nil }
            let v = off + 4
            switch atype {
            case NF.attrPacketHdr where alen >= 4 + 7:
                p.id = UInt32(bigEndian: base.loadUnaligned(fromByteOffset: v, as: UInt32.self))
                p.hook = base.load(fromByteOffset: v + 6, as: UInt8.self)
                haveHeader = true
            case NF.attrPayload:
                p.payload = base + v
                p.length = alen - 4
            case NF.attrInDev where alen >= 8:
                p.inDev = UInt32(bigEndian: base.loadUnaligned(fromByteOffset: v, as: UInt32.self))
            case NF.attrOutDev where alen >= 8:
                p.outDev = UInt32(bigEndian: base.loadUnaligned(fromByteOffset: v, as: UInt32.self))
            case NF.attrCapLen:
                p.truncated = true
            default: break
            }
            off += (alen + 3) & ~3
        }
        guard haveHeader else { return nil }
        if let pl = p.payload {
            // The payload is the message's last attribute; the rest of the slot is free.
            p.capacity = min(slotSize - (pl - base), NF.maxPacket)
        }
        return p
    }

    /// Adds a verdict for packet `id` to the batch being built; with `payload`, the packet's
    /// (new) bytes go with it, sent straight from where they are: no copy in user space. The
    /// payload must stay where it is until `flush` (it lives in a receive slot, reused only by the
    /// next receive). Returns false when an earlier partial flush failed.
    @inline(__always)
    func addVerdict(id: UInt32, verdict v: Int32, payload pl: UnsafeRawPointer?, length: Int) -> Bool {
        var ok = true
        // A packet the kernel cannot take back (over NFQNL_MAX_COPY_RANGE) is dropped, never sent.
        let oversized = pl != nil && length > NF.maxPacket
        let verdict = oversized ? NF.drop : v
        let payload = oversized ? nil : pl
        if txCount == slotCount { ok = flush() }
        let h = hdrs + txCount * NFQueueSocket.hdrSize
        let padded = (length + 3) & ~3
        let total = 32 + (payload != nil ? 4 + padded : 0)
        // struct nlmsghdr: what nfq_nlmsg_put() writes for NFQNL_MSG_VERDICT.
        h.storeBytes(of: UInt32(total), toByteOffset: 0, as: UInt32.self)
        h.storeBytes(of: UInt16(NFNL_SUBSYS_QUEUE) << 8 | UInt16(NFQNL_MSG_VERDICT.rawValue), toByteOffset: 4, as: UInt16.self)
        h.storeBytes(of: UInt16(NLM_F_REQUEST), toByteOffset: 6, as: UInt16.self)
        h.storeBytes(of: UInt64(0), toByteOffset: 8, as: UInt64.self) // seq, pid
        // struct nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id = queue (big-endian).
        h.storeBytes(of: UInt8(AF_UNSPEC), toByteOffset: 16, as: UInt8.self)
        h.storeBytes(of: UInt8(NFNETLINK_V0), toByteOffset: 17, as: UInt8.self)
        h.storeBytes(of: queue.bigEndian, toByteOffset: 18, as: UInt16.self)
        // NFQA_VERDICT_HDR: struct nfqnl_msg_verdict_hdr { be32 verdict; be32 id; }
        h.storeBytes(of: UInt16(12), toByteOffset: 20, as: UInt16.self)
        h.storeBytes(of: UInt16(NFQA_VERDICT_HDR.rawValue), toByteOffset: 22, as: UInt16.self)
        h.storeBytes(of: UInt32(bitPattern: verdict).bigEndian, toByteOffset: 24, as: UInt32.self)
        h.storeBytes(of: id.bigEndian, toByteOffset: 28, as: UInt32.self)
        var iov = txIov + txIovs
        if let payload {
            h.storeBytes(of: UInt16(4 + length), toByteOffset: 32, as: UInt16.self)
            h.storeBytes(of: UInt16(NFQA_PAYLOAD.rawValue), toByteOffset: 34, as: UInt16.self)
            iov.pointee = iovec(iov_base: h, iov_len: 36)
            iov += 1
            iov.pointee = iovec(iov_base: UnsafeMutableRawPointer(mutating: payload), iov_len: length)
            iov += 1
            if padded > length {
                iov.pointee = iovec(iov_base: zeroPad, iov_len: padded - length)
                iov += 1
            }
        } else {
            iov.pointee = iovec(iov_base: h, iov_len: 32)
            iov += 1
        }
        txIovs = iov - txIov
        txCount += 1
        return ok
    }

    /// Sends every verdict collected so far in one sendmsg. False when the kernel refused it.
    @inline(__always)
    func flush() -> Bool {
        guard txCount > 0 else { return true }
        var addr = sockaddr_nl()
        addr.nl_family = sa_family_t(AF_NETLINK)
        var m = msghdr()
        let n = withUnsafeMutablePointer(to: &addr) { ap in
            m.msg_name = UnsafeMutableRawPointer(ap)
            m.msg_namelen = socklen_t(MemoryLayout<sockaddr_nl>.size)
            m.msg_iov = txIov
            m.msg_iovlen = txIovs
            return sendmsg(fd, &m, 0)
        }
        txCount = 0
        txIovs = 0
        return n >= 0
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
            let parts = String(cString: line).split(separator: " ").compactMap { Int($0) }
            if parts.count >= 7 {
                out.append(KernelQueueStats(queue: parts[0], queued: parts[2], queueDropped: parts[5], userDropped: parts[6]))
            }
        }
        return out
    }
}
