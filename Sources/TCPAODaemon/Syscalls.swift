import CNetfilterQueue
#if canImport(Glibc)
import Glibc
#endif

/// The one place where the data path makes system calls (the NFQUEUE socket: libmnl's socket
/// calls, setsockopt, recvmmsg, sendmsg), as swift-nio's `NIOPosix/System.swift` does. Each
/// wrapper reads errno right after the call, before anything else can run and change it, and
/// returns it: the result, or `-errno` when the call failed. Callers never read `errno`.
enum Sys {
    /// The text of an errno value (a positive one, or the negative result of a wrapper).
    static func describe(_ e: Int) -> String {
        String(cString: strerror(Int32(truncatingIfNeeded: e < 0 ? -e : e)))
    }

    /// The NUL-terminated string a C call wrote into `chars`.
    static func string(_ chars: [CChar]) -> String {
        String(decoding: chars.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A libmnl netlink socket of `bus`, or nil and the errno.
    static func mnlOpen(_ bus: Int32) -> (socket: OpaquePointer?, errno: Int32) {
        let s = mnl_socket_open(bus)
        return (s, s == nil ? errno : 0)
    }

    /// Binds with the kernel choosing the port id. 0 or -errno.
    static func mnlBind(_ s: OpaquePointer) -> Int {
        let r = mnl_socket_bind(s, 0, pid_t(MNL_SOCKET_AUTOPID))
        return r < 0 ? -Int(errno) : 0
    }

    static func mnlFD(_ s: OpaquePointer) -> Int32 {
        mnl_socket_get_fd(s)
    }

    static func mnlClose(_ s: OpaquePointer) {
        _ = mnl_socket_close(s)
    }

    /// Sends one netlink message to the kernel. Bytes sent or -errno.
    static func mnlSendto(_ s: OpaquePointer, _ buf: UnsafeRawPointer, _ len: Int) -> Int {
        let n = mnl_socket_sendto(s, buf, len)
        return n < 0 ? -Int(errno) : n
    }

    /// Receives one datagram (blocking, or up to the socket's receive timeout). Bytes or -errno.
    static func mnlRecvfrom(_ s: OpaquePointer, _ buf: UnsafeMutableRawPointer, _ len: Int) -> Int {
        let n = mnl_socket_recvfrom(s, buf, len)
        return n < 0 ? -Int(errno) : n
    }

    /// setsockopt with an int value. 0 or -errno.
    static func setsockopt(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32) -> Int {
        var v = value
        let r = Glibc.setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size))
        return r != 0 ? -Int(errno) : 0
    }

    /// setsockopt with a timeval (SO_RCVTIMEO). 0 or -errno.
    static func setsockopt(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: timeval) -> Int {
        var v = value
        let r = Glibc.setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<timeval>.size))
        return r != 0 ? -Int(errno) : 0
    }

    /// recvmmsg(2) without a timeout: the number of messages received or -errno.
    @inline(__always)
    static func recvmmsg(_ fd: Int32, _ msgs: UnsafeMutablePointer<tcpaod_mmsghdr>, _ count: Int, _ flags: Int32) -> Int {
        let n = tcpaod_recvmmsg(fd, msgs, UInt32(count), flags)
        return n < 0 ? -Int(errno) : Int(n)
    }

    /// sendmsg(2): bytes sent or -errno.
    @inline(__always)
    static func sendmsg(_ fd: Int32, _ m: UnsafePointer<msghdr>, _ flags: Int32) -> Int {
        let n = Glibc.sendmsg(fd, m, flags)
        return n < 0 ? -Int(errno) : n
    }
}
