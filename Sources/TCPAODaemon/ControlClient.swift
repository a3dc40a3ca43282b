import Foundation
import TCPAOConfig
#if canImport(Glibc)
import Glibc
#endif

/// Why a control request got no answer, said for the operator.
public struct ControlClientError: Error, CustomStringConvertible {
    public enum Kind: Sendable { case notRunning, permissionDenied, protocolMismatch, failed, refused }
    public var kind: Kind
    public var description: String
}

/// Asks a running tcpaod over its control socket: one request, one answer.
public struct ControlClient {
    /// The socket path, and the instance it belongs to (for messages; nil when the path was given).
    public var path: String
    public var instance: String?
    /// How long to wait for the answer.
    public var timeoutMs = 30_000

    public init(path: String, instance: String?) {
        self.path = path
        self.instance = instance
    }

    /// The client for an instance's default socket, or an explicit `--socket` path.
    public init(instance: String?, socket: String?) {
        if let socket {
            self.init(path: socket, instance: nil)
        } else {
            let p = RuntimePaths(instance: instance ?? "")
            self.init(path: p.controlSocket, instance: p.displayName)
        }
    }

    /// The instances with a control socket under /run/tcpaod (running or left by a crash).
    public static func knownInstances(base: String = RuntimePaths.base) -> [String] {
        var out: [String] = []
        if FileManager.default.fileExists(atPath: base + "/control.sock") { out.append("default") }
        let subs = (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []
        for d in subs.sorted() where FileManager.default.fileExists(atPath: "\(base)/\(d)/control.sock") { out.append(d) }
        return out
    }

    var who: String { instance.map { "instance \"\($0)\"" } ?? "the daemon" }

    var howToStart: String {
        let flag = instance.map { $0 == "default" ? "" : " --instance \($0)" } ?? ""
        let running = ControlClient.knownInstances()
        let others = instance == nil ? "" : running.isEmpty ? "; no tcpaod instance has a control socket in \(RuntimePaths.base)"
            : "; instances with a control socket: \(running.joined(separator: ", "))"
        return "start it with `tcpaod run --config FILE\(flag)` (or `systemctl start tcpaod`)\(others)"
    }

    /// Sends `request`, returns the answer (ok or not) as parsed JSON and its raw line.
    public func send(_ request: ControlRequest) throws(ControlClientError) -> (JSONValue, [UInt8]) {
        let fd = UnixSocket.open(nonblocking: false)
        guard fd >= 0 else { throw ControlClientError(kind: .failed, description: "socket(): \(Sys.describe(Int(fd)))") }
        defer { close(fd) }
        let r = UnixSocket.connect(fd, path)
        if r != 0 {
            switch -r {
            case ENOENT, ENOTDIR:
                let dir = (path as NSString).deletingLastPathComponent
                if instance != nil && instance != "default" && !FileManager.default.fileExists(atPath: dir) {
                    throw ControlClientError(kind: .notRunning, description: "no tcpaod instance \"\(instance!)\" on this host (no \(dir)): it is not running; \(howToStart)")
                }
                throw ControlClientError(kind: .notRunning, description: "\(who) is not running: no control socket at \(path); \(howToStart)")
            case ECONNREFUSED:
                throw ControlClientError(kind: .notRunning, description: "\(who) is not running: nothing listens on \(path) (left by a tcpaod that died?); \(howToStart)")
            case EACCES, EPERM:
                throw ControlClientError(kind: .permissionDenied, description: "permission denied on \(path): \(ownerHint); run the command as root (sudo tcpaod ...)")
            case ENAMETOOLONG:
                throw ControlClientError(kind: .failed, description: "\(path): the path is longer than \(UnixSocket.maxPathBytes) bytes")
            default:
                throw ControlClientError(kind: .failed, description: "connecting to \(path): \(Sys.describe(Int(r)))")
            }
        }
        UnixSocket.setNonblocking(fd)
        guard UnixSocket.sendAll(fd, request.encoded(), stallMs: timeoutMs) else {
            throw ControlClientError(kind: .failed, description: "\(who) at \(path) closed the connection before taking the request")
        }
        var buf: [UInt8] = []
        buf.reserveCapacity(1 << 16)
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeoutMs) * 1_000_000
        var scanned = 0
        while true {
            if let nl = buf[scanned...].firstIndex(of: 0x0A) {
                let line = Array(buf[..<nl])
                let v: JSONValue
                do { v = try JSONValue.parse(line) } catch {
                    throw ControlClientError(kind: .protocolMismatch, description: "\(who) at \(path) answered something that is not JSON (\(error)): is it a tcpaod control socket?")
                }
                try check(v)
                return (v, line)
            }
            scanned = buf.count
            let now = DispatchTime.now().uptimeNanoseconds
            guard now < deadline, UnixSocket.wait(fd, write: false, ms: Int((deadline - now) / 1_000_000)) else {
                throw ControlClientError(kind: .failed, description: "\(who) at \(path) did not answer within \(timeoutMs / 1000) s")
            }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n > 0 { buf.append(contentsOf: chunk[..<n]); continue }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            throw ControlClientError(kind: .failed, description: "\(who) at \(path) closed the connection without answering")
        }
    }

    /// Turns protocol-level refusals into errors that say what to do.
    func check(_ v: JSONValue) throws(ControlClientError) {
        guard v["ok"]?.bool == false else { return }
        let code = v["code"]?.string ?? ""
        let msg = v["error"]?.string ?? "(no message)"
        if code == ControlError.Code.unsupportedVersion.rawValue {
            let theirs = v["versions"]?.array?.compactMap { $0.int }.map(String.init).joined(separator: ", ") ?? v["version"]?.int.map(String.init) ?? "?"
            throw ControlClientError(kind: .protocolMismatch, description: "version mismatch: \(who) at \(path) speaks control protocol version \(theirs), this tcpaod speaks \(ControlProtocol.version): use the tcpaod binary that matches the running daemon")
        }
        if code == ControlError.Code.unknownCommand.rawValue {
            throw ControlClientError(kind: .protocolMismatch, description: "\(who) at \(path) does not know this command (\(msg)): it is an older tcpaod; use the tcpaod binary that matches the running daemon")
        }
        if code == ControlError.Code.permissionDenied.rawValue {
            throw ControlClientError(kind: .permissionDenied, description: "\(msg) (\(path)); run the command as root")
        }
        throw ControlClientError(kind: .refused, description: "\(who): \(msg) [\(code)]")
    }

    var ownerHint: String {
        var st = stat()
        guard stat(path, &st) == 0 else {
            let dir = (path as NSString).deletingLastPathComponent
            return "its directory \(dir) is not accessible to uid \(geteuid())"
        }
        let owner = getpwuid(st.st_uid).map { String(cString: $0.pointee.pw_name) } ?? "uid \(st.st_uid)"
        return "the socket belongs to \(owner) (mode \(String(st.st_mode & 0o777, radix: 8))) and answers only its owner"
    }
}
