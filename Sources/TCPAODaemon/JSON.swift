// A small JSON reader and writer for the control protocol: exact integers (counters are
// 64-bit), fields written in a fixed order, and fast enough for a response with 100,000 flows.

/// A parsed JSON value.
public enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    /// An unsigned integer above Int64.max.
    case uint(UInt64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)

    public subscript(_ k: String) -> JSONValue? {
        if case .object(let o) = self { return o[k] }
        return nil
    }

    public var string: String? { if case .string(let s) = self { return s }; return nil }
    public var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var array: [JSONValue]? { if case .array(let a) = self { return a }; return nil }
    public var object: JSONObject? { if case .object(let o) = self { return o }; return nil }
    public var isNull: Bool { self == .null }

    /// A whole number (an integral double counts too).
    public var int: Int64? {
        switch self {
        case .int(let v): return v
        case .uint(let v): return Int64(exactly: v)
        case .double(let d): return Int64(exactly: d)
        default: return nil
        }
    }

    public var uint64: UInt64? {
        switch self {
        case .int(let v): return UInt64(exactly: v)
        case .uint(let v): return v
        case .double(let d): return UInt64(exactly: d)
        default: return nil
        }
    }

    /// The name of its type, for error messages.
    public var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .int, .uint, .double: "a number"
        case .string: "a string"
        case .array: "a list"
        case .object: "an object"
        }
    }
}

/// A JSON object's members in their order. Objects here are small (a flow has 20 members):
/// a linear search beats hashing, and parsing 100,000 of them stays cheap.
public struct JSONObject: Sendable, Equatable, ExpressibleByDictionaryLiteral {
    public private(set) var keys: [String] = []
    public private(set) var values: [JSONValue] = []

    public init() {}

    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        for (k, v) in elements { self[k] = v }
    }

    public init(_ d: [String: JSONValue]) {
        for k in d.keys.sorted() { self[k] = d[k] }
    }

    public var count: Int { keys.count }
    public var isEmpty: Bool { keys.isEmpty }

    public subscript(_ k: String) -> JSONValue? {
        get {
            for i in keys.indices where keys[i] == k { return values[i] }
            return nil
        }
        set {
            if let i = keys.firstIndex(of: k) {
                if let v = newValue { values[i] = v } else { keys.remove(at: i); values.remove(at: i) }
            } else if let v = newValue {
                keys.append(k)
                values.append(v)
            }
        }
    }

    /// Appends a member known to be new (the parser checks).
    mutating func append(_ k: String, _ v: JSONValue) {
        keys.append(k)
        values.append(v)
    }

    @discardableResult
    public mutating func removeValue(forKey k: String) -> JSONValue? {
        guard let i = keys.firstIndex(of: k) else { return nil }
        keys.remove(at: i)
        return values.remove(at: i)
    }

    public var dictionary: [String: JSONValue] { Dictionary(uniqueKeysWithValues: zip(keys, values)) }

    /// The same members, in any order.
    public static func == (a: JSONObject, b: JSONObject) -> Bool {
        a.count == b.count && a.keys.indices.allSatisfy { b[a.keys[$0]] == a.values[$0] }
    }
}

public struct JSONParseError: Error, Equatable, CustomStringConvertible {
    public var offset: Int
    public var reason: String
    public var description: String { "\(reason) at byte \(offset)" }
}

extension JSONValue {
    /// Parses one JSON value (RFC 8259) that fills `bytes` (whitespace around it allowed).
    public static func parse(_ bytes: some Collection<UInt8>) throws(JSONParseError) -> JSONValue {
        let a = Array(bytes)
        return try a.withUnsafeBufferPointer { (u) throws(JSONParseError) -> JSONValue in
            var p = JSONParser(u)
            return try p.document()
        }
    }

    public static func parse(_ s: String) throws(JSONParseError) -> JSONValue { try parse(Array(s.utf8)) }
}

struct JSONParser {
    let b: UnsafeBufferPointer<UInt8>
    var i = 0
    var depth = 0
    static let maxDepth = 64

    init(_ b: UnsafeBufferPointer<UInt8>) { self.b = b }

    /// Text from the input, checked to be UTF-8 (ASCII, the common case, needs no check).
    func text(_ r: Range<Int>) -> String? {
        let u = UnsafeBufferPointer(rebasing: b[r])
        for c in u where c >= 0x80 { return String(validating: u, as: UTF8.self) }
        return String(decoding: u, as: UTF8.self)
    }

    func fail(_ r: String) -> JSONParseError { JSONParseError(offset: i, reason: r) }

    mutating func document() throws(JSONParseError) -> JSONValue {
        skipSpace()
        guard i < b.count else { throw fail("no JSON value") }
        let v = try value()
        skipSpace()
        guard i == b.count else { throw fail("unexpected text after the JSON value") }
        return v
    }

    mutating func skipSpace() {
        while i < b.count, b[i] == 0x20 || b[i] == 0x09 || b[i] == 0x0A || b[i] == 0x0D { i += 1 }
    }

    mutating func value() throws(JSONParseError) -> JSONValue {
        guard i < b.count else { throw fail("unexpected end") }
        switch b[i] {
        case UInt8(ascii: "{"): return try objectValue()
        case UInt8(ascii: "["): return try arrayValue()
        case UInt8(ascii: "\""): return .string(try stringValue())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw fail("unexpected character `\(String(decoding: [b[i]], as: UTF8.self))`")
        }
    }

    mutating func literal(_ w: StaticString) throws(JSONParseError) {
        let n = w.utf8CodeUnitCount
        guard i + n <= b.count else { throw fail("unexpected end") }
        for k in 0..<n where b[i + k] != w.utf8Start[k] { throw fail("invalid literal") }
        i += n
    }

    mutating func objectValue() throws(JSONParseError) -> JSONValue {
        depth += 1
        guard depth <= JSONParser.maxDepth else { throw fail("nested too deeply") }
        defer { depth -= 1 }
        i += 1
        var o = JSONObject()
        skipSpace()
        if i < b.count, b[i] == UInt8(ascii: "}") { i += 1; return .object(o) }
        while true {
            skipSpace()
            guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw fail("expected a quoted member name") }
            let k = try stringValue()
            skipSpace()
            guard i < b.count, b[i] == UInt8(ascii: ":") else { throw fail("expected `:`") }
            i += 1
            skipSpace()
            let v = try value()
            guard o[k] == nil else { throw fail("member `\(k)` appears twice") }
            o.append(k, v)
            skipSpace()
            guard i < b.count else { throw fail("unexpected end in an object") }
            if b[i] == UInt8(ascii: ",") { i += 1; continue }
            if b[i] == UInt8(ascii: "}") { i += 1; return .object(o) }
            throw fail("expected `,` or `}`")
        }
    }

    mutating func arrayValue() throws(JSONParseError) -> JSONValue {
        depth += 1
        guard depth <= JSONParser.maxDepth else { throw fail("nested too deeply") }
        defer { depth -= 1 }
        i += 1
        var a: [JSONValue] = []
        skipSpace()
        if i < b.count, b[i] == UInt8(ascii: "]") { i += 1; return .array(a) }
        while true {
            skipSpace()
            a.append(try value())
            skipSpace()
            guard i < b.count else { throw fail("unexpected end in a list") }
            if b[i] == UInt8(ascii: ",") { i += 1; continue }
            if b[i] == UInt8(ascii: "]") { i += 1; return .array(a) }
            throw fail("expected `,` or `]`")
        }
    }

    mutating func hex4() throws(JSONParseError) -> UInt32 {
        guard i + 4 <= b.count else { throw fail("unexpected end in a \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = b[i]
            let d: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw fail("bad \\u escape")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }

    mutating func stringValue() throws(JSONParseError) -> String {
        i += 1
        let start = i
        // Fast path: no escapes.
        while i < b.count, b[i] != UInt8(ascii: "\""), b[i] != UInt8(ascii: "\\"), b[i] >= 0x20 { i += 1 }
        if i < b.count, b[i] == UInt8(ascii: "\"") {
            guard let s = text(start..<i) else { throw JSONParseError(offset: start, reason: "a string that is not UTF-8") }
            i += 1
            return s
        }
        var out = Array(b[start..<i])
        while true {
            guard i < b.count else { throw fail("unterminated string") }
            let c = b[i]
            if c == UInt8(ascii: "\"") { i += 1; break }
            if c < 0x20 { throw fail("a control character in a string") }
            if c != UInt8(ascii: "\\") { out.append(c); i += 1; continue }
            i += 1
            guard i < b.count else { throw fail("unterminated string") }
            let e = b[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var cp = try hex4()
                if cp >= 0xD800 && cp < 0xDC00 {
                    guard i + 6 <= b.count, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") else { throw fail("a lone surrogate") }
                    i += 2
                    let lo = try hex4()
                    guard lo >= 0xDC00 && lo < 0xE000 else { throw fail("a lone surrogate") }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                } else if cp >= 0xDC00 && cp < 0xE000 {
                    throw fail("a lone surrogate")
                }
                guard let u = Unicode.Scalar(cp) else { throw fail("bad \\u escape") }
                out.append(contentsOf: Array(String(Character(u)).utf8))
            default: throw fail("bad escape `\\\(String(decoding: [e], as: UTF8.self))`")
            }
        }
        guard let s = String(validating: out, as: UTF8.self) else { throw JSONParseError(offset: start, reason: "a string that is not UTF-8") }
        return s
    }

    mutating func number() throws(JSONParseError) -> JSONValue {
        let start = i
        var neg = false
        if b[i] == UInt8(ascii: "-") { neg = true; i += 1 }
        guard i < b.count, b[i] >= UInt8(ascii: "0"), b[i] <= UInt8(ascii: "9") else { throw fail("bad number") }
        if b[i] == UInt8(ascii: "0"), i + 1 < b.count, b[i + 1] >= UInt8(ascii: "0"), b[i + 1] <= UInt8(ascii: "9") {
            throw fail("a number with a leading zero")
        }
        var mag: UInt64 = 0
        var overflow = false
        while i < b.count, b[i] >= UInt8(ascii: "0"), b[i] <= UInt8(ascii: "9") {
            let (m1, o1) = mag.multipliedReportingOverflow(by: 10)
            let (m2, o2) = m1.addingReportingOverflow(UInt64(b[i] - UInt8(ascii: "0")))
            if o1 || o2 { overflow = true }
            mag = m2
            i += 1
        }
        var integral = true
        if i < b.count, b[i] == UInt8(ascii: ".") {
            integral = false
            i += 1
            guard i < b.count, b[i] >= UInt8(ascii: "0"), b[i] <= UInt8(ascii: "9") else { throw fail("bad number") }
            while i < b.count, b[i] >= UInt8(ascii: "0"), b[i] <= UInt8(ascii: "9") { i += 1 }
        }
        if i < b.count, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
            integral = false
            i += 1
            if i < b.count, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") { i += 1 }
            guard i < b.count, b[i] >= UInt8(ascii: "0"), b[i] <= UInt8(ascii: "9") else { throw fail("bad number") }
            while i < b.count, b[i] >= UInt8(ascii: "0"), b[i] <= UInt8(ascii: "9") { i += 1 }
        }
        if integral && !overflow {
            if !neg { return mag <= UInt64(Int64.max) ? .int(Int64(mag)) : .uint(mag) }
            if mag <= UInt64(Int64.max) { return .int(-Int64(mag)) }
            if mag == UInt64(Int64.max) + 1 { return .int(.min) }
        }
        guard let d = Double(text(start..<i) ?? "") else { throw JSONParseError(offset: start, reason: "bad number") }
        return .double(d)
    }
}

/// Writes JSON text into a byte buffer, members in the order written. The caller keeps the
/// structure balanced (`begin`/`end` pairs, a value after each `key`); commas are placed here.
public struct JSONWriter {
    public private(set) var bytes: [UInt8] = []
    /// Per open object or list: whether an element (member) was written into it yet.
    private var started: [Bool] = []
    /// A member name was just written: the next value is its value, no new element.
    private var afterKey = false

    public init(reserving n: Int = 256) { bytes.reserveCapacity(n) }

    /// A comma before every element of a container but the first.
    private mutating func element() {
        guard !started.isEmpty else { return }
        if started[started.count - 1] { bytes.append(UInt8(ascii: ",")) } else { started[started.count - 1] = true }
    }

    private mutating func valuePrefix() {
        if afterKey { afterKey = false } else { element() }
    }

    public mutating func beginObject() { valuePrefix(); bytes.append(UInt8(ascii: "{")); started.append(false) }
    public mutating func endObject() { started.removeLast(); bytes.append(UInt8(ascii: "}")) }
    public mutating func beginArray() { valuePrefix(); bytes.append(UInt8(ascii: "[")); started.append(false) }
    public mutating func endArray() { started.removeLast(); bytes.append(UInt8(ascii: "]")) }

    /// A member name inside an object; the value written next belongs to it.
    public mutating func key(_ k: StaticString) {
        element()
        bytes.append(UInt8(ascii: "\""))
        bytes.append(contentsOf: UnsafeBufferPointer(start: k.utf8Start, count: k.utf8CodeUnitCount))
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
        afterKey = true
    }

    /// A member name that is not a literal (peer names, counter labels).
    public mutating func key(_ k: String) {
        element()
        appendString(k)
        bytes.append(UInt8(ascii: ":"))
        afterKey = true
    }

    public mutating func string(_ s: String) { valuePrefix(); appendString(s) }
    public mutating func int(_ v: Int64) { valuePrefix(); appendDecimal(v) }
    public mutating func int(_ v: Int) { int(Int64(v)) }
    public mutating func uint(_ v: UInt64) { valuePrefix(); appendDecimal(v) }
    public mutating func bool(_ v: Bool) { valuePrefix(); appendASCII(v ? "true" : "false") }
    public mutating func null() { valuePrefix(); appendASCII("null") }
    public mutating func double(_ v: Double) {
        valuePrefix()
        if !v.isFinite { appendASCII("null") } else if v == v.rounded(), abs(v) < 1e15 { appendDecimal(Int64(v)) } else { appendASCII(String(v)) }
    }

    /// Text that is already one JSON value, copied as is.
    public mutating func raw(_ json: some Collection<UInt8>) { valuePrefix(); bytes.append(contentsOf: json) }

    public mutating func value(_ v: JSONValue) {
        switch v {
        case .null: null()
        case .bool(let b): bool(b)
        case .int(let n): int(n)
        case .uint(let n): uint(n)
        case .double(let d): double(d)
        case .string(let s): string(s)
        case .array(let a):
            beginArray()
            for e in a { value(e) }
            endArray()
        case .object(let o):
            beginObject()
            for i in o.keys.indices { key(o.keys[i]); value(o.values[i]) }
            endObject()
        }
    }

    // A member and its value.
    public mutating func field(_ k: StaticString, _ v: String) { key(k); string(v) }
    public mutating func field(_ k: StaticString, _ v: String?) { key(k); if let v { string(v) } else { null() } }
    public mutating func field(_ k: StaticString, _ v: Int) { key(k); int(v) }
    public mutating func field(_ k: StaticString, _ v: Int64) { key(k); int(v) }
    public mutating func field(_ k: StaticString, _ v: UInt64) { key(k); uint(v) }
    public mutating func field(_ k: StaticString, _ v: UInt32?) { key(k); if let v { uint(UInt64(v)) } else { null() } }
    public mutating func field(_ k: StaticString, _ v: UInt8?) { key(k); if let v { uint(UInt64(v)) } else { null() } }
    public mutating func field(_ k: StaticString, _ v: Bool) { key(k); bool(v) }
    public mutating func field(_ k: StaticString, _ v: JSONValue) { key(k); value(v) }

    private mutating func appendASCII(_ s: String) { bytes.append(contentsOf: s.utf8) }

    private mutating func appendDecimal(_ v: Int64) {
        if v < 0 {
            bytes.append(UInt8(ascii: "-"))
            appendDecimal(v == .min ? UInt64(Int64.max) + 1 : UInt64(-v))
        } else {
            appendDecimal(UInt64(v))
        }
    }

    private mutating func appendDecimal(_ v: UInt64) {
        if v < 10 { bytes.append(UInt8(ascii: "0") + UInt8(v)); return }
        var tmp: (UInt64, UInt64, UInt64) = (0, 0, 0) // 24 bytes: room for 20 digits
        var n = 0
        withUnsafeMutableBytes(of: &tmp) { t in
            var x = v
            while x > 0 {
                t[23 - n] = UInt8(ascii: "0") + UInt8(x % 10)
                x /= 10
                n += 1
            }
            bytes.append(contentsOf: t[(24 - n)...])
        }
    }

    private mutating func appendString(_ s: String) {
        bytes.append(UInt8(ascii: "\""))
        // Most strings need no escape: copied in one go.
        var s = s
        let plain = s.withUTF8 { u in
            for c in u where c < 0x20 || c == UInt8(ascii: "\"") || c == UInt8(ascii: "\\") { return false }
            bytes.append(contentsOf: u)
            return true
        }
        if plain {
            bytes.append(UInt8(ascii: "\""))
            return
        }
        for c in s.utf8 {
            switch c {
            case UInt8(ascii: "\""): bytes.append(contentsOf: [0x5C, 0x22])
            case UInt8(ascii: "\\"): bytes.append(contentsOf: [0x5C, 0x5C])
            case 0x0A: bytes.append(contentsOf: [0x5C, UInt8(ascii: "n")])
            case 0x0D: bytes.append(contentsOf: [0x5C, UInt8(ascii: "r")])
            case 0x09: bytes.append(contentsOf: [0x5C, UInt8(ascii: "t")])
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: [0x5C, UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(c >> 4)], hex[Int(c & 15)]])
            default: bytes.append(c)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}
