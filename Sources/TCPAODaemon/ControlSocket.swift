import Foundation
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
