import Synchronization

// The control protocol (pure: no I/O). JSON lines over a unix stream socket: each request is
// one JSON object on one line, each answer one JSON object on one line, in order.
//
//   request   {"version":1,"command":"status"}             (+ the command's arguments, + "id")
//   answer    {"ok":true,"version":1,"command":"status",...}
//   error     {"ok":false,"version":1,"code":"unknown-command","error":"..."}
//
// "id", when a request has one, is copied into its answer. A bad request (not JSON, not an
// object, no or another version, an unknown command or argument) gets an error answer and
// changes nothing; the connection stays usable. Commands are registered by name, so later
// ones (key management) join the same dispatcher.

public enum ControlProtocol {
    /// The version this tcpaod speaks; a request for another one is refused with the versions
    /// spoken (`versions`).
    public static let version = 1
    public static let versions = [1]
    /// A request line longer than this is refused and the connection closed.
    public static let maxRequestBytes = 65536
}

/// An error answer: a stable `code` for programs and a sentence for people.
public struct ControlError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable, CaseIterable {
        case badJSON = "bad-json"
        case badRequest = "bad-request"
        case unsupportedVersion = "unsupported-version"
        case unknownCommand = "unknown-command"
        case unknownPeer = "unknown-peer"
        case unknownChain = "unknown-chain"
        case unknownKey = "unknown-key"
        /// A key change the configuration's rules refuse (`tcpaod check` would).
        case invalidKey = "invalid-key"
        /// A key removal while connections use the key.
        case keyInUse = "key-in-use"
        /// A key change that could not be written back to the configuration file (nothing changed).
        case notWritten = "not-written"
        /// A per-connection key for a connection tcpaod does not hold.
        case unknownConnection = "unknown-connection"
        case requestTooLong = "request-too-long"
        case permissionDenied = "permission-denied"
        case busy
        case timeout
        case unavailable
        case `internal`
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

/// A parsed request: the command and its arguments (every member but version, command, id).
public struct ControlRequest: Sendable {
    public var version: Int
    public var command: String
    public var arguments: [String: JSONValue]
    public var id: JSONValue?

    public init(command: String, arguments: [String: JSONValue] = [:], id: JSONValue? = nil, version: Int = ControlProtocol.version) {
        self.version = version
        self.command = command
        self.arguments = arguments
        self.id = id
    }

    /// The request as one line (what a client sends), with its newline.
    public func encoded() -> [UInt8] {
        var w = JSONWriter()
        w.beginObject()
        w.field("version", version)
        w.field("command", command)
        if let id { w.field("id", id) }
        for k in arguments.keys.sorted() { w.key(k); w.value(arguments[k]!) }
        w.endObject()
        return w.bytes + [0x0A]
    }

    public func string(_ name: String) throws(ControlError) -> String? {
        guard let v = arguments[name], !v.isNull else { return nil }
        guard let s = v.string else { throw ControlError(.badRequest, "`\(name)` must be a string, not \(v.typeName)") }
        return s
    }

    public func int(_ name: String, _ range: ClosedRange<Int>) throws(ControlError) -> Int? {
        guard let v = arguments[name], !v.isNull else { return nil }
        guard let n = v.int, let i = Int(exactly: n), range.contains(i) else {
            throw ControlError(.badRequest, "`\(name)` must be a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return i
    }

    public func bool(_ name: String) throws(ControlError) -> Bool? {
        guard let v = arguments[name], !v.isNull else { return nil }
        guard let b = v.bool else { throw ControlError(.badRequest, "`\(name)` must be true or false, not \(v.typeName)") }
        return b
    }
}

/// A command the daemon answers: its name, its arguments (any other is refused), and the
/// handler that writes the answer's members after "ok", "version" and "command".
public struct ControlCommand: Sendable {
    public var name: String
    public var summary: String
    public var arguments: [String]
    public var handler: @Sendable (ControlRequest, inout JSONWriter) throws -> Void

    public init(_ name: String, summary: String, arguments: [String] = [],
                handler: @escaping @Sendable (ControlRequest, inout JSONWriter) throws -> Void) {
        self.name = name
        self.summary = summary
        self.arguments = arguments
        self.handler = handler
    }
}

/// Turns request lines into answer lines. Commands can be registered at any time (the
/// built-in `help` lists them).
public final class ControlDispatcher: Sendable {
    private let commands = Mutex<[String: ControlCommand]>([:])

    public init() {
        register(ControlCommand("help", summary: "the commands and protocol versions this daemon speaks") { [unowned self] _, w in
            w.key("versions")
            w.beginArray()
            for v in ControlProtocol.versions { w.int(v) }
            w.endArray()
            w.key("commands")
            w.beginArray()
            for c in self.registered {
                w.beginObject()
                w.field("name", c.name)
                w.field("summary", c.summary)
                w.key("arguments")
                w.beginArray()
                for a in c.arguments { w.string(a) }
                w.endArray()
                w.endObject()
            }
            w.endArray()
        })
    }

    public func register(_ c: ControlCommand) {
        commands.withLock { $0[c.name] = c }
    }

    public var registered: [ControlCommand] {
        commands.withLock { Array($0.values) }.sorted { $0.name < $1.name }
    }

    /// Parses and checks one request line (without its newline).
    public func parse(_ line: some Collection<UInt8>) -> Result<ControlRequest, ControlErrorWithID> {
        let v: JSONValue
        do { v = try JSONValue.parse(line) } catch {
            let hint = line.isEmpty || line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D })
                ? "an empty line is no request" : "the request is not valid JSON (\(error))"
            return .failure(ControlErrorWithID(ControlError(.badJSON, "\(hint); send one JSON object per line, e.g. {\"version\":\(ControlProtocol.version),\"command\":\"status\"}"), id: nil))
        }
        guard case .object(var o) = v else {
            return .failure(ControlErrorWithID(ControlError(.badRequest, "a request is a JSON object, not \(v.typeName), e.g. {\"version\":\(ControlProtocol.version),\"command\":\"status\"}"), id: nil))
        }
        let id = o.removeValue(forKey: "id")
        func fail(_ c: ControlError.Code, _ m: String) -> Result<ControlRequest, ControlErrorWithID> { .failure(ControlErrorWithID(ControlError(c, m), id: id)) }
        guard let ver = o.removeValue(forKey: "version") else {
            return fail(.badRequest, "`version` is missing: this daemon speaks control protocol version \(ControlProtocol.version) (add \"version\":\(ControlProtocol.version))")
        }
        guard let n = ver.int, let version = Int(exactly: n) else {
            return fail(.badRequest, "`version` must be a whole number (this daemon speaks version \(ControlProtocol.version))")
        }
        guard ControlProtocol.versions.contains(version) else {
            return fail(.unsupportedVersion, "this daemon speaks control protocol version \(ControlProtocol.versions.map(String.init).joined(separator: ", ")), not \(version)")
        }
        guard let cv = o.removeValue(forKey: "command") else {
            return fail(.badRequest, "`command` is missing; commands: \(names)")
        }
        guard let command = cv.string else { return fail(.badRequest, "`command` must be a string, not \(cv.typeName)") }
        guard let c = commands.withLock({ $0[command] }) else {
            return fail(.unknownCommand, "unknown command `\(command)`; commands: \(names)")
        }
        for k in o.keys.sorted() where !c.arguments.contains(k) {
            let takes = c.arguments.isEmpty ? "it takes none" : "it takes: \(c.arguments.joined(separator: ", "))"
            return fail(.badRequest, "`\(command)` has no argument `\(k)` (\(takes))")
        }
        return .success(ControlRequest(command: command, arguments: o.dictionary, id: id, version: version))
    }

    private var names: String { registered.map(\.name).joined(separator: ", ") }

    /// The answer line (with its newline) to one request line (without its newline).
    public func respond(to line: some Collection<UInt8>) -> [UInt8] {
        let req: ControlRequest
        switch parse(line) {
        case .failure(let e): return ControlDispatcher.errorLine(e.error, id: e.id)
        case .success(let r): req = r
        }
        guard let c = commands.withLock({ $0[req.command] }) else {
            return ControlDispatcher.errorLine(ControlError(.unknownCommand, "unknown command `\(req.command)`"), id: req.id)
        }
        var w = JSONWriter(reserving: 4096)
        w.beginObject()
        w.field("ok", true)
        w.field("version", ControlProtocol.version)
        w.field("command", req.command)
        if let id = req.id { w.field("id", id) }
        do { try c.handler(req, &w) } catch let e as ControlError {
            return ControlDispatcher.errorLine(e, id: req.id)
        } catch {
            return ControlDispatcher.errorLine(ControlError(.internal, "\(req.command): \(error)"), id: req.id)
        }
        w.endObject()
        return w.bytes + [0x0A]
    }

    public static func errorLine(_ e: ControlError, id: JSONValue? = nil) -> [UInt8] {
        var w = JSONWriter()
        w.beginObject()
        w.field("ok", false)
        w.field("version", ControlProtocol.version)
        w.field("code", e.code.rawValue)
        w.field("error", e.message)
        if let id { w.field("id", id) }
        if e.code == .unsupportedVersion {
            w.key("versions")
            w.beginArray()
            for v in ControlProtocol.versions { w.int(v) }
            w.endArray()
        }
        w.endObject()
        return w.bytes + [0x0A]
    }
}

public struct ControlErrorWithID: Error, Sendable {
    public var error: ControlError
    public var id: JSONValue?

    init(_ error: ControlError, id: JSONValue?) {
        self.error = error
        self.id = id
    }
}
