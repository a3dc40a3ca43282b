import Dispatch
import Foundation
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

public struct ControlServerError: Error, CustomStringConvertible {
    public var description: String
}

/// The control socket: a unix stream socket (mode 0600) that answers JSON-line requests
/// through a `ControlDispatcher`. It never runs on the workers' queues: connections are accepted
/// on its own queue, each client is served on its own thread (at most `maxClients` at once; one
/// more is told "busy"). Every read and write has a time limit, so a slow or stuck client costs
/// one of those threads for a few seconds, nothing else; a client that goes away mid-answer
/// only ends its own connection.
public final class ControlServer: @unchecked Sendable {
    public let path: String
    let dispatcher: ControlDispatcher
    let log: Logger
    public static let maxClients = 8
    /// A connection with no complete request for this long is closed.
    public var idleTimeoutMs = 30_000
    /// A request must arrive whole within this long of its first byte.
    public var requestTimeoutMs = 10_000
    /// A client that reads nothing of its answer for this long is dropped.
    public var sendStallMs = 5_000

    private var listener: ThreadedListener?
    /// The socket file this server made (device, inode), so that `stop` removes it and never
    /// another daemon's.
    private var made: (dev: UInt64, ino: UInt64)?

    public init(path: String, dispatcher: ControlDispatcher, log: Logger) {
        self.path = path
        self.dispatcher = dispatcher
        self.log = log
    }

    public enum Start: Equatable {
        case listening
        /// Another live process answers on this path.
        case inUse
    }

    /// Creates the socket (and its directory, mode 0755), mode 0600. A socket file left by a
    /// process that died is replaced; one a live process listens on is left alone (`.inUse`).
    public func start() throws -> Start {
        guard path.utf8.count <= UnixSocket.maxPathBytes else {
            throw ControlServerError(description: "control socket path \(path) is longer than \(UnixSocket.maxPathBytes) bytes")
        }
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty && !FileManager.default.fileExists(atPath: dir) {
            do {
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
            } catch {
                throw ControlServerError(description: "cannot create \(dir) for the control socket: \(error.localizedDescription)")
            }
        }
        let fd = UnixSocket.open(nonblocking: true)
        guard fd >= 0 else { throw ControlServerError(description: "control socket: socket(): \(Sys.describe(Int(fd)))") }
        var r = bindPrivately(fd)
        if r == -EADDRINUSE {
            var st = stat()
            guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK else {
                close(fd)
                throw ControlServerError(description: "\(path) exists and is not a socket; remove it or choose another instance name")
            }
            // Someone listening there? Then it is theirs; else a dead process's leftover.
            let probe = UnixSocket.open(nonblocking: false)
            let c = probe >= 0 ? UnixSocket.connect(probe, path) : -ECONNREFUSED
            if probe >= 0 { close(probe) }
            if c == 0 {
                close(fd)
                return .inUse
            }
            unlink(path)
            r = bindPrivately(fd)
        }
        guard r == 0 else {
            close(fd)
            throw ControlServerError(description: "binding the control socket \(path): \(Sys.describe(Int(r)))")
        }
        chmod(path, 0o600)
        var st = stat()
        if lstat(path, &st) == 0 { made = (UInt64(st.st_dev), UInt64(st.st_ino)) }
        guard listen(fd, 16) == 0 else {
            let e = errno
            close(fd)
            removeSocketFile()
            throw ControlServerError(description: "listening on the control socket \(path): \(Sys.describe(Int(e)))")
        }
        let l = ThreadedListener(label: "tcpaod.control-socket", threadName: "tcpaod.control-client", maxClients: ControlServer.maxClients,
                                 admit: { c in
                                     // Only root and the daemon's own user (the socket's mode already says so).
                                     guard let uid = UnixSocket.peerUID(c), uid != 0, uid != geteuid() else { return true }
                                     _ = UnixSocket.sendAll(c, ControlDispatcher.errorLine(ControlError(.permissionDenied, "permission denied: the control socket answers root only")), stallMs: 100)
                                     return false
                                 },
                                 busy: { ControlDispatcher.errorLine(ControlError(.busy, "busy: \(ControlServer.maxClients) clients are connected; try again")) },
                                 serve: { [self] c in serve(c) })
        l.start(fd)
        listener = l
        return .listening
    }

    /// bind(2) with a umask that leaves the socket file to its owner from its first moment.
    private func bindPrivately(_ fd: Int32) -> Int32 {
        let old = umask(0o177)
        defer { umask(old) }
        return UnixSocket.bind(fd, path)
    }

    /// Stops accepting and removes the socket file (if it is still the one this server made).
    public func stop() {
        listener?.stop()
        removeSocketFile()
    }

    private func removeSocketFile() {
        guard let m = made else { return }
        var st = stat()
        if lstat(path, &st) == 0, UInt64(st.st_dev) == m.dev, UInt64(st.st_ino) == m.ino { unlink(path) }
        made = nil
    }

    /// Answers the requests of one connection, in order, until it closes, misbehaves or idles.
    func serve(_ fd: Int32) {
        var buf: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        // Requests may carry a secret (key-add's secret_hex): nothing of them is left behind.
        defer {
            for i in buf.indices { buf[i] = 0 }
            for i in chunk.indices { chunk[i] = 0 }
        }
        var requestStarted: UInt64? = nil
        var idleSince = DispatchTime.now().uptimeNanoseconds
        func ms(since t: UInt64) -> Int { Int((DispatchTime.now().uptimeNanoseconds &- t) / 1_000_000) }
        while true {
            if let nl = buf.firstIndex(of: 0x0A) {
                let answer = {
                    var line = buf[..<nl]
                    if line.last == 0x0D { line = line.dropLast() }
                    return dispatcher.respond(to: line)
                }()
                // A request may carry a secret (key-add's secret_hex): wipe it from the buffer.
                for i in 0...nl { buf[i] = 0 }
                buf.removeSubrange(...nl)
                requestStarted = buf.isEmpty ? nil : DispatchTime.now().uptimeNanoseconds
                idleSince = DispatchTime.now().uptimeNanoseconds
                guard UnixSocket.sendAll(fd, answer, stallMs: sendStallMs) else { return }
                continue
            }
            if buf.count > ControlProtocol.maxRequestBytes {
                _ = UnixSocket.sendAll(fd, ControlDispatcher.errorLine(ControlError(.requestTooLong, "a request line is longer than \(ControlProtocol.maxRequestBytes) bytes; closing the connection")), stallMs: 100)
                return
            }
            let left = requestStarted.map { requestTimeoutMs - ms(since: $0) } ?? (idleTimeoutMs - ms(since: idleSince))
            guard left > 0, UnixSocket.wait(fd, write: false, ms: left) else {
                if requestStarted != nil {
                    _ = UnixSocket.sendAll(fd, ControlDispatcher.errorLine(ControlError(.timeout, "the request did not arrive whole within \(requestTimeoutMs / 1000) s (end it with a newline)")), stallMs: 100)
                }
                return
            }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n > 0 {
                if requestStarted == nil { requestStarted = DispatchTime.now().uptimeNanoseconds }
                buf.append(contentsOf: chunk[..<n])
                continue
            }
            if n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) { continue }
            if n == 0 && !buf.isEmpty && buf.contains(where: { $0 != 0x20 && $0 != 0x0D && $0 != 0x09 }) {
                // The last request without its newline (`printf '%s' '{...}' | socat`): answer it.
                _ = UnixSocket.sendAll(fd, dispatcher.respond(to: buf), stallMs: sendStallMs)
            }
            return
        }
    }
}
