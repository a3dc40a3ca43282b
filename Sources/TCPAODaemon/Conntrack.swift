import CNetfilterQueue
import TCPAO
#if canImport(Glibc)
import Glibc
#endif

public struct ConntrackError: Error, CustomStringConvertible {
    public var description: String
}

/// Reads and writes the conntrack labels of TCP connections over ctnetlink, synchronously: one
/// request, then its answer or a timeout. One instance per worker thread (no locks); the
/// buffers are allocated once, so a read or a write allocates nothing. Messages are encoded and
/// parsed by `ConntrackCodec`; every system call goes through `Sys`.
///
/// Preconditions, per network namespace (../shared/notes/flow-state-in-conntrack.md): conntrack
/// must be active for the flows (a `-m conntrack` / `-m state` match or a NAT table), and label
/// space is reserved for an entry at its creation only when a rule in the namespace uses labels
/// (`iptables -m connlabel --label N`); without it writes answer ENOSPC.
final class ConntrackLabels {
    /// The label bytes `read` and `write` take (128 bits).
    static let labelBytes = CTNL.labelBytes
    /// Answers to earlier requests skipped while waiting for one, at most (each is bounded by
    /// the requests this instance sent, so this only guards against a confused kernel).
    static let maxSkipped = 256

    let nl: OpaquePointer
    let fd: Int32
    private let tx: UnsafeMutableRawPointer
    private let rx: UnsafeMutableRawPointer
    private let rxSize = 8192
    private let scratch: UnsafeMutableRawPointer
    private var seq: UInt32
    private var closed = false

    /// After a `read` that returned 0: the entry carried no CTA_LABELS (no label space, or all
    /// its label bits zero: the kernel does not tell the two apart); the labels read are zeros.
    private(set) var lastReadHadNoLabels = false
    /// Answers that arrived after their request had timed out, and were skipped.
    private(set) var lateAnswers = 0

    /// Opens and binds a NETLINK_NETFILTER socket; `timeoutMilliseconds` bounds every wait for an
    /// answer. Throws with a message an operator can act on.
    init(timeoutMilliseconds: Int = 200) throws {
        let (socket, openErrno) = Sys.mnlOpen(NETLINK_NETFILTER)
        guard let s = socket else {
            throw ConntrackError(description: "cannot open a netfilter netlink socket: \(Sys.describe(Int(openErrno)))")
        }
        nl = s
        fd = Sys.mnlFD(s)
        tx = .allocate(byteCount: ConntrackCodec.requestCapacity, alignment: 8)
        rx = .allocate(byteCount: rxSize, alignment: 8)
        scratch = .allocate(byteCount: CTNL.labelBytes, alignment: 8)
        seq = UInt32.random(in: 1...UInt32.max)
        let e = Sys.mnlBind(s)
        guard e == 0 else {
            close()
            throw ConntrackError(description: "cannot bind the netfilter netlink socket: \(Sys.describe(e))")
        }
        // Errors carry only the request's header, not its attributes.
        _ = Sys.setsockopt(fd, CTNL.solNetlink, CTNL.netlinkCapAck, Int32(1))
        let t = max(timeoutMilliseconds, 1)
        _ = Sys.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, timeval(tv_sec: t / 1000, tv_usec: Int(t % 1000) * 1000))
    }

    func close() {
        guard !closed else { return }
        closed = true
        Sys.mnlClose(nl)
    }

    deinit {
        close()
        tx.deallocate()
        rx.deallocate()
        scratch.deallocate()
    }

    /// Reads the labels of the TCP connection a packet from `src`:`srcPort` to `dst`:`dstPort`
    /// belongs to (either direction) into `labels` (16 bytes; layout: `ConntrackCodec`).
    /// 0 when read (`lastReadHadNoLabels` tells an entry without labels: zeros are written),
    /// -ENOENT when there is no (confirmed) entry, -ETIMEDOUT without an answer, -errno else.
    /// `labels` is written only on success.
    func read(src: IPAddress, srcPort: UInt16, dst: IPAddress, dstPort: UInt16,
              into labels: UnsafeMutableRawPointer) -> Int32 {
        let s = nextSeq()
        let n = ConntrackCodec.encodeGet(into: tx, seq: s, src: src, srcPort: srcPort, dst: dst, dstPort: dstPort)
        guard n > 0 else { return -EINVAL }
        let r = exchange(n, seq: s, expectEntry: true)
        if r.result == 0 {
            labels.copyMemory(from: scratch, byteCount: CTNL.labelBytes)
            lastReadHadNoLabels = r.labelLength == nil
        }
        return r.result
    }

    /// Sets the label bits under `mask` (16 bytes) of that connection's entry to those of
    /// `labels` (16 bytes), leaving the other bits as they are. 0 when done, -ENOENT when there
    /// is no (confirmed) entry (a SYN's entry is confirmed only once the SYN leaves the stack),
    /// -ENOSPC when the entry has no label space (no label-using rule in the namespace when it
    /// was created), -ETIMEDOUT without an answer, -errno else.
    func write(src: IPAddress, srcPort: UInt16, dst: IPAddress, dstPort: UInt16,
               labels: UnsafeRawPointer, mask: UnsafeRawPointer) -> Int32 {
        let s = nextSeq()
        let n = ConntrackCodec.encodeLabelUpdate(into: tx, seq: s, src: src, srcPort: srcPort, dst: dst, dstPort: dstPort,
                                                 labels: labels, mask: mask)
        guard n > 0 else { return -EINVAL }
        return exchange(n, seq: s, expectEntry: false).result
    }

    @inline(__always)
    private func nextSeq() -> UInt32 {
        seq = seq == UInt32.max ? 1 : seq + 1
        return seq
    }

    /// Sends the request in `tx` and waits for the answer with sequence number `seq`, skipping
    /// answers to earlier requests. A GET is answered by the entry or an error; an update by an
    /// acknowledgement (error 0) or an error.
    private func exchange(_ length: Int, seq s: UInt32, expectEntry: Bool) -> (result: Int32, labelLength: Int?) {
        var sent = Sys.mnlSendto(nl, tx, length)
        while sent == -Int(EINTR) { sent = Sys.mnlSendto(nl, tx, length) }
        guard sent >= 0 else { return (Int32(sent), nil) }
        var skipped = 0
        while skipped < ConntrackLabels.maxSkipped {
            let n = Sys.mnlRecvfrom(nl, rx, rxSize)
            if n == -Int(EINTR) { continue }
            if n == -Int(EAGAIN) || n == -Int(EWOULDBLOCK) { return (-ETIMEDOUT, nil) }
            if n < 0 { return (Int32(n), nil) }
            var off = 0
            while off < n {
                let (m, used) = ConntrackCodec.parse(rx + off, count: n - off, labels: scratch)
                off += max(used, 1)
                switch m {
                case .entry(s, let labelLength):
                    if expectEntry { return (0, labelLength) }
                    return (-EBADMSG, nil) // an update is never answered with an entry
                case .error(s, let e):
                    if expectEntry && e == 0 { return (-EBADMSG, nil) } // an ACK for a GET: not asked for
                    return (-e, nil)
                case .malformed(s):
                    return (-EBADMSG, nil)
                case .entry, .error:
                    lateAnswers += 1
                    skipped += 1
                case .malformed, .foreign:
                    skipped += 1
                }
            }
        }
        return (-ETIMEDOUT, nil)
    }
}

/// Whether ctnetlink can hold flow state in this network namespace, decided at start.
enum ConntrackSupport: Equatable, CustomStringConvertible {
    case available
    case unavailable(reason: String)

    var description: String {
        switch self {
        case .available: return "ctnetlink available: flow state is copied into conntrack labels"
        case .unavailable(let reason): return "ctnetlink unavailable: \(reason); flow state kept in memory only"
        }
    }
}

extension ConntrackLabels {
    /// Opens a socket and looks up a TCP tuple that cannot exist (documentation addresses, port
    /// 0), for IPv4 and IPv6: ENOENT means ctnetlink answers lookups here. The kernel loads
    /// nf_conntrack_netlink itself when it is a module (request_module in nfnetlink_rcv_msg), so
    /// EOPNOTSUPP means it is not built or could not be loaded. This cannot tell whether label
    /// space is reserved (that is per entry, at its creation): the first write to a real entry
    /// does (ENOSPC).
    static func probe(timeoutMilliseconds: Int = 200) -> ConntrackSupport {
        let c: ConntrackLabels
        do {
            c = try ConntrackLabels(timeoutMilliseconds: timeoutMilliseconds)
        } catch {
            return .unavailable(reason: "\(error)")
        }
        defer { c.close() }
        let labels = UnsafeMutableRawPointer.allocate(byteCount: labelBytes, alignment: 8)
        defer { labels.deallocate() }
        let lookups: [(String, IPAddress, IPAddress)] = [
            ("IPv4", IPAddress("192.0.2.255")!, IPAddress("198.51.100.255")!),
            ("IPv6", IPAddress("2001:db8::ffff")!, IPAddress("2001:db8::fffe")!),
        ]
        for (family, a, b) in lookups {
            let r = c.read(src: a, srcPort: 0, dst: b, dstPort: 0, into: labels)
            if r == 0 || r == -ENOENT { continue }
            return .unavailable(reason: "an \(family) conntrack lookup answered: " + explain(r))
        }
        return .available
    }

    /// What a failed ctnetlink request means, for an operator.
    static func explain(_ r: Int32) -> String {
        switch -r {
        case EPERM, EACCES:
            return "\(Sys.describe(Int(r))) (needs CAP_NET_ADMIN in this network namespace)"
        case EOPNOTSUPP, EPROTONOSUPPORT:
            return "\(Sys.describe(Int(r))) (the kernel has no conntrack netlink interface: nf_conntrack_netlink is not built or could not be loaded; try `modprobe nf_conntrack_netlink`)"
        case ETIMEDOUT:
            return "no answer from the kernel"
        case ENOSPC:
            return "\(Sys.describe(Int(r))) (the entry has no label space: add a rule that uses labels, e.g. `iptables -t mangle -A OUTPUT -m connlabel --label 127`, before connections start)"
        default:
            return Sys.describe(Int(r))
        }
    }
}
