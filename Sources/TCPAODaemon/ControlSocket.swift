import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Unix stream socket calls shared by the control server and its client. Results: a value, or
/// -errno.
enum UnixSocket {
    /// sun_path holds 108 bytes, the terminating NUL included.
    static let maxPathBytes = 107

    static func withAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R? {
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count <= maxPathBytes else { return nil }
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &a.sun_path) { p in
            p.copyBytes(from: bytes)
            p[bytes.count] = 0
        }
        let len = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
        return withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, len) } }
    }

    /// A new unix stream socket (close-on-exec). fd or -errno.
    static func open(nonblocking: Bool) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | (nonblocking ? Int32(SOCK_NONBLOCK.rawValue) : 0), 0)
        return fd < 0 ? -errno : fd
    }

    /// connect(2) to `path`: 0 or -errno (-ENAMETOOLONG for a path that does not fit).
    static func connect(_ fd: Int32, _ path: String) -> Int32 {
        withAddress(path) { a, l in Glibc.connect(fd, a, l) == 0 ? 0 : -errno } ?? -ENAMETOOLONG
    }

    static func bind(_ fd: Int32, _ path: String) -> Int32 {
        withAddress(path) { a, l in Glibc.bind(fd, a, l) == 0 ? 0 : -errno } ?? -ENAMETOOLONG
    }

    static func setNonblocking(_ fd: Int32) {
        let fl = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, fl | O_NONBLOCK)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    }

    /// Waits until `fd` is readable (or writable) or `ms` milliseconds passed. True when ready.
    static func wait(_ fd: Int32, write: Bool, ms: Int) -> Bool {
        var p = pollfd(fd: fd, events: Int16(write ? POLLOUT : POLLIN), revents: 0)
        var left = max(ms, 0)
        while true {
            let t0 = DispatchTime.now().uptimeNanoseconds
            let r = poll(&p, 1, Int32(clamping: left))
            if r > 0 { return true }
            if r == 0 { return false }
            guard errno == EINTR else { return true } // let the read or write report it
            left -= Int((DispatchTime.now().uptimeNanoseconds - t0) / 1_000_000)
            if left <= 0 { return false }
        }
    }

    /// Writes all of `bytes` to a non-blocking socket, waiting at most `stallMs` each time the
    /// peer does not read. Never raises SIGPIPE. True when all was written.
    static func sendAll(_ fd: Int32, _ bytes: [UInt8], stallMs: Int) -> Bool {
        var off = 0
        return bytes.withUnsafeBytes { b in
            while off < b.count {
                let n = send(fd, b.baseAddress! + off, b.count - off, Int32(MSG_NOSIGNAL))
                if n > 0 { off += n; continue }
                if n < 0 && errno == EINTR { continue }
                if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                    if wait(fd, write: true, ms: stallMs) { continue }
                }
                return false
            }
            return true
        }
    }

    /// The peer's uid (SO_PEERCRED), nil if unknown.
    static func peerUID(_ fd: Int32) -> UInt32? {
        // struct ucred { pid_t pid; uid_t uid; gid_t gid; } (glibc declares it only with _GNU_SOURCE).
        var cred: (Int32, UInt32, UInt32) = (0, 0, 0)
        var len = socklen_t(MemoryLayout.size(ofValue: cred))
        let SO_PEERCRED: Int32 = 17
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0, len >= 12 else { return nil }
        return cred.1
    }
}

/// The accept loop of a listening socket whose clients each get a thread of their own (the
/// control socket, the metrics endpoint): at most `maxClients` at once, one more is sent `busy`
/// and closed. A failed accept for want of descriptors or memory leaves the pending connection
/// keeping the (level-triggered) source firing: it is paused for 100 ms instead of spinning.
final class ThreadedListener: @unchecked Sendable {
    let maxClients: Int
    private let threadName: String
    private let queue: DispatchQueue
    private var source: DispatchSourceRead?
    private let clients = Atomic<Int>(0)
    /// Called first for each connection; false: it was refused (answered and left to close).
    private let admit: (Int32) -> Bool
    private let busy: () -> [UInt8]
    private let serve: @Sendable (Int32) -> Void

    init(label: String, threadName: String, maxClients: Int, admit: @escaping (Int32) -> Bool = { _ in true },
         busy: @escaping () -> [UInt8], serve: @escaping @Sendable (Int32) -> Void) {
        queue = DispatchQueue(label: label)
        self.threadName = threadName
        self.maxClients = maxClients
        self.admit = admit
        self.busy = busy
        self.serve = serve
    }

    /// Starts accepting on `fd` (listening, non-blocking); `stop` closes it.
    func start(_ fd: Int32) {
        let src = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
        src.setEventHandler { [unowned self] in acceptAll(fd) }
        src.setCancelHandler { close(fd) }
        source = src
        src.resume()
    }

    func stop() {
        source?.cancel()
        source = nil
    }

    private func acceptAll(_ lfd: Int32) {
        while true {
            let c = accept(lfd, nil, nil)
            if c < 0 {
                let e = errno
                if e == EINTR { continue }
                if e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM, let s = source {
                    s.suspend()
                    nonisolated(unsafe) let paused = s // resumed once, on this same queue
                    queue.asyncAfter(deadline: .now() + .milliseconds(100)) { paused.resume() }
                }
                return // EAGAIN: all taken; anything else: the next event retries
            }
            UnixSocket.setNonblocking(c)
            guard admit(c) else {
                close(c)
                continue
            }
            if clients.add(1, ordering: .relaxed).newValue > maxClients {
                clients.subtract(1, ordering: .relaxed)
                _ = UnixSocket.sendAll(c, busy(), stallMs: 100)
                close(c)
                continue
            }
            let serve = self.serve
            let t = Thread { [self] in
                serve(c)
                close(c)
                clients.subtract(1, ordering: .relaxed)
            }
            t.name = threadName
            t.start()
        }
    }
}
