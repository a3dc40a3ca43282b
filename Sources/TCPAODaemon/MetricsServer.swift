import Dispatch
import Foundation
import Logging
import Synchronization
import TCPAO
import TCPAOConfig
#if canImport(Glibc)
import Glibc
#endif

/// A request head read off the metrics socket.
public enum HTTPHead: Equatable, Sendable {
    /// Not all of it yet.
    case incomplete
    case request(method: String, path: String)
    /// Not a request this responder takes: answered with `status` and closed.
    case bad(status: Int, reason: String)
}

/// The minimal HTTP/1.1 of the metrics endpoint (pure): one request per connection, GET or
/// HEAD of /metrics, anything else a 404, 405 or 4xx with a one-line reason; every answer
/// closes the connection.
public enum MetricsHTTP {
    /// A request head (request line and header fields) larger than this is refused (431).
    public static let maxHeadBytes = 8192
    public static let path = "/metrics"

    /// Reads a request head from the bytes received so far.
    public static func parse(_ bytes: some Collection<UInt8>) -> HTTPHead {
        let b = Array(bytes.prefix(maxHeadBytes + 4))
        // The request line, as soon as it is whole: a bad one is refused without waiting.
        guard let nl = b.firstIndex(of: 0x0A) else {
            return b.count > maxHeadBytes ? .bad(status: 431, reason: "the request line is longer than \(maxHeadBytes) bytes") : .incomplete
        }
        var line = b[..<nl]
        if line.last == 0x0D { line = line.dropLast() }
        let parts = line.split(separator: 0x20, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, parts[0].allSatisfy(isTokenChar), !parts[1].isEmpty else {
            return .bad(status: 400, reason: "not an HTTP request line (expected `GET /metrics HTTP/1.1`)")
        }
        let version = String(decoding: parts[2], as: UTF8.self)
        guard version.hasPrefix("HTTP/") else {
            return .bad(status: 400, reason: "not an HTTP request line (expected `GET /metrics HTTP/1.1`)")
        }
        guard version == "HTTP/1.1" || version == "HTTP/1.0" else {
            return .bad(status: 505, reason: "\(version) is not supported: use HTTP/1.1")
        }
        let target = String(decoding: parts[1], as: UTF8.self)
        guard target.hasPrefix("/") else {
            return .bad(status: 400, reason: "the request target must be a path such as /metrics")
        }
        // Then the header fields, up to the empty line (CRLF CRLF, or bare LFs).
        var start = nl + 1
        while true {
            guard let e = b[start...].firstIndex(of: 0x0A) else {
                return b.count > maxHeadBytes ? .bad(status: 431, reason: "the request head is longer than \(maxHeadBytes) bytes") : .incomplete
            }
            var field = b[start..<e]
            if field.last == 0x0D { field = field.dropLast() }
            if field.isEmpty { break }
            guard let colon = field.firstIndex(of: UInt8(ascii: ":")), colon > field.startIndex,
                  field[field.startIndex..<colon].allSatisfy(isTokenChar) else {
                return .bad(status: 400, reason: "a header field without a name and a colon")
            }
            start = e + 1
        }
        let path = String(target.prefix { $0 != "?" && $0 != "#" })
        return .request(method: String(decoding: parts[0], as: UTF8.self), path: path)
    }

    /// RFC 9110 tchar.
    static func isTokenChar(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
        default: "!#$%&'*+-.^_`|~".utf8.contains(c)
        }
    }

    /// The whole response to `head` (only called for a complete or a bad head). `metrics` is
    /// called for a GET or HEAD of /metrics only.
    public static func respond(to head: HTTPHead, metrics: () -> [UInt8]) -> [UInt8] {
        switch head {
        case .incomplete:
            return response(408, "the request did not arrive whole in time\n")
        case .bad(let status, let reason):
            return response(status, reason + "\n")
        case .request(let method, let path):
            guard path == MetricsHTTP.path else {
                return response(404, "not found: tcpaod serves \(MetricsHTTP.path) only\n")
            }
            guard method == "GET" || method == "HEAD" else {
                return response(405, "\(method) is not allowed: use GET\n", extra: [("Allow", "GET, HEAD")])
            }
            return response(200, metrics(), contentType: MetricsExposition.contentType, headOnly: method == "HEAD")
        }
    }

    static let reasons = [200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
                          431: "Request Header Fields Too Large", 503: "Service Unavailable", 505: "HTTP Version Not Supported"]

    public static func response(_ status: Int, _ body: String, extra: [(String, String)] = []) -> [UInt8] {
        response(status, Array(body.utf8), contentType: "text/plain; charset=utf-8", extra: extra)
    }

    public static func response(_ status: Int, _ body: [UInt8], contentType: String, headOnly: Bool = false,
                                extra: [(String, String)] = []) -> [UInt8] {
        var h = "HTTP/1.1 \(status) \(reasons[status] ?? "Error")\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n"
        for (k, v) in extra { h += "\(k): \(v)\r\n" }
        h += "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        var out = Array(h.utf8)
        if !headOnly { out += body }
        return out
    }
}

public struct MetricsServerError: Error, CustomStringConvertible {
    public var description: String
}

/// The metrics listener: a TCP socket on `metrics.listen`, accepted on its own queue, each
/// connection answered on its own thread (at most `maxClients` at once; one more gets a 503).
/// Every read and write has a time limit, so a slow client holds its own thread for a few
/// seconds and nothing else; the answer is rendered from the daemon's last counter report, so
/// a scrape never waits for a worker.
public final class MetricsServer: @unchecked Sendable {
    public let address: ListenAddress
    let render: @Sendable () -> [UInt8]
    let log: Logger
    public static let maxClients = 8
    /// A request must arrive whole within this long of the connection.
    public var requestTimeoutMs = 5_000
    /// A client that reads nothing of its answer for this long is dropped.
    public var sendStallMs = 5_000

    private var listener: ThreadedListener?
    /// The port bound (the configured one; the kernel's choice for port 0, in tests).
    public private(set) var port: UInt16 = 0

    public init(address: ListenAddress, log: Logger, render: @escaping @Sendable () -> [UInt8]) {
        self.address = address
        self.log = log
        self.render = render
    }

    public func start() throws(MetricsServerError) {
        let v6 = address.address.isV6
        let fd = socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw MetricsServerError(description: "metrics: socket(): \(Sys.describe(Int(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if v6 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size)) }
        let r = MetricsServer.withSockaddr(address) { bind(fd, $0, $1) }
        guard r == 0 else {
            let e = errno
            close(fd)
            let hint = e == EADDRNOTAVAIL ? " (no interface here has that address)" : e == EADDRINUSE ? " (another program listens there)" : ""
            throw MetricsServerError(description: "metrics: cannot listen on \(address): \(Sys.describe(Int(e)))\(hint)")
        }
        guard listen(fd, 16) == 0 else {
            let e = errno
            close(fd)
            throw MetricsServerError(description: "metrics: listen on \(address): \(Sys.describe(Int(e)))")
        }
        port = MetricsServer.boundPort(fd) ?? address.port
        let l = ThreadedListener(label: "tcpaod.metrics", threadName: "tcpaod.metrics-client", maxClients: MetricsServer.maxClients,
                                 busy: { MetricsHTTP.response(503, "busy: \(MetricsServer.maxClients) clients are connected; try again\n") },
                                 serve: { [self] c in serve(c) })
        l.start(fd)
        listener = l
    }

    public func stop() {
        listener?.stop()
    }

    static func withSockaddr<R>(_ a: ListenAddress, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        let bytes = a.address.bytes
        if a.address.isV6 {
            var s = sockaddr_in6()
            s.sin6_family = sa_family_t(AF_INET6)
            s.sin6_port = a.port.bigEndian
            withUnsafeMutableBytes(of: &s.sin6_addr) { $0.copyBytes(from: bytes) }
            return withUnsafePointer(to: &s) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        }
        var s = sockaddr_in()
        s.sin_family = sa_family_t(AF_INET)
        s.sin_port = a.port.bigEndian
        withUnsafeMutableBytes(of: &s.sin_addr) { $0.copyBytes(from: bytes) }
        return withUnsafePointer(to: &s) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    }

    static func boundPort(_ fd: Int32) -> UInt16? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) == 0 } }
        guard ok else { return nil }
        return withUnsafeBytes(of: &ss) { raw in
            // sin_port and sin6_port are both at offset 2, in network order.
            UInt16(raw[2]) << 8 | UInt16(raw[3])
        }
    }

    /// Reads one request head (within `requestTimeoutMs`), answers it, closes.
    func serve(_ fd: Int32) {
        let started = DispatchTime.now().uptimeNanoseconds
        var buf: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 2048)
        var head = HTTPHead.incomplete
        while true {
            head = MetricsHTTP.parse(buf)
            guard head == .incomplete else { break }
            let left = requestTimeoutMs - Int((DispatchTime.now().uptimeNanoseconds &- started) / 1_000_000)
            guard left > 0, UnixSocket.wait(fd, write: false, ms: left) else { break } // 408
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n > 0 { buf.append(contentsOf: chunk[..<n]); continue }
            if n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) { continue }
            return // closed before a whole request: nobody to answer
        }
        guard UnixSocket.sendAll(fd, MetricsHTTP.respond(to: head, metrics: render), stallMs: sendStallMs) else { return }
        // Half-close, then let the client close first (up to 1 s): closing with unread request
        // bytes would send a reset that can cut the answer short.
        shutdown(fd, Int32(SHUT_WR))
        let until = DispatchTime.now().uptimeNanoseconds + 1_000_000_000
        while true {
            let now = DispatchTime.now().uptimeNanoseconds
            guard now < until, UnixSocket.wait(fd, write: false, ms: Int((until - now) / 1_000_000)) else { break }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN) { break }
        }
    }
}
