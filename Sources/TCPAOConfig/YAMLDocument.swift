// libyaml, as Yams vendors it (Yams's CYaml module): the loader reads libyaml's events itself
// into the compact document below. Yams's own node tree (a tag object, a style and a copy per
// node, a duplicate-key pass per mapping) took most of the time of a 50,000-peer file; the
// loader needs none of it: every scalar is text (the loader does the typing, with its own
// messages) and `fields` reports duplicate keys. `ConfigFileEdit`, which needs scalar styles
// and anchors, still uses Yams's tree.
import CYaml

/// A YAML document as libyaml's events describe it, in flat arrays: one entry per node, the
/// children of each collection contiguous in `children` (a mapping's as key, value, key,
/// value), every scalar's text once in `scalars`. An alias is the index of the node its anchor
/// names (the tree is a graph then, as in any YAML composer). Immutable once made (hence
/// Sendable: threads read one document).
final class YAMLDocument: @unchecked Sendable {
    enum Kind: UInt8, Sendable { case scalar, sequence, mapping }

    struct Entry: Sendable {
        var kind: Kind
        var line: Int32
        var column: Int32
        /// Scalar: index into `scalars`; collection: first index into `children`.
        var first: Int32
        /// Collection: number of children (a mapping's is twice its pairs).
        var count: Int32
    }

    // Copied out of the builder's arrays into storage of the document's own: nodes read it
    // through the pointers, with no array retained and released at each read (threads reading
    // one document would contend on the arrays' reference counts).
    let entries: UnsafeMutableBufferPointer<Entry>
    let children: UnsafeMutableBufferPointer<Int32>
    let scalars: UnsafeMutableBufferPointer<String>
    let rootIndex: Int32

    init(_ b: Builder, root: Int32) {
        entries = .allocate(capacity: b.entries.count)
        _ = entries.initialize(from: b.entries)
        children = .allocate(capacity: b.children.count)
        _ = children.initialize(from: b.children)
        scalars = .allocate(capacity: b.scalars.count)
        _ = scalars.initialize(from: b.scalars)
        rootIndex = root
    }

    deinit {
        entries.deallocate()
        children.deallocate()
        scalars.deinitialize().deallocate()
    }

    /// The root node. Nodes do not keep their document alive (no reference counting on
    /// every node copy, which threads reading one document would contend on): whoever reads
    /// the nodes holds the document.
    var root: ConfigNode { ConfigNode(doc: self, index: rootIndex) }

    /// The arrays while a document is read; `YAMLDocument(builder, root:)` makes the
    /// immutable document of them.
    struct Builder {
        var entries: [Entry] = []
        var children: [Int32] = []
        var scalars: [String] = []

        /// Appends a scalar node; returns its index.
        mutating func addScalar(_ text: String, line: Int32, column: Int32) -> Int32 {
            let i = Int32(entries.count)
            entries.append(Entry(kind: .scalar, line: line, column: column, first: Int32(scalars.count), count: 0))
            scalars.append(text)
            return i
        }

        /// Appends a list or mapping node whose children (a mapping's as key, value, ...) are
        /// nodes already added; returns its index.
        mutating func addCollection<C: Collection<Int32>>(_ kind: Kind, line: Int32, column: Int32, children c: C) -> Int32 {
            let i = Int32(entries.count)
            entries.append(Entry(kind: kind, line: line, column: column, first: Int32(children.count), count: Int32(c.count)))
            children.append(contentsOf: c)
            return i
        }
    }

    /// libyaml's error, in the words `ConfigLoader.reportYAML` reports.
    struct ParseError: Error {
        let problem: String
        let line: Int
        let column: Int
    }

    /// The document; nil for an empty stream. Throws for text that is not YAML, an undefined
    /// alias, or more than one document.
    static func parse(_ text: String) throws(ParseError) -> YAMLDocument? {
        var text = text
        var b = Builder()
        let root = text.withUTF8 { buf in Result { () throws(ParseError) in try compose(buf, into: &b) } }
        guard let r = try root.get() else { return nil }
        return YAMLDocument(b, root: r)
    }

    private static func compose(_ buf: UnsafeBufferPointer<UInt8>, into b: inout Builder) throws(ParseError) -> Int32? {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { throw ParseError(problem: "out of memory", line: 0, column: 0) }
        defer { yaml_parser_delete(&parser) }
        yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING)
        // libyaml reads the buffer in place; it stays valid for the whole parse.
        yaml_parser_set_input_string(&parser, buf.baseAddress ?? UnsafePointer(bitPattern: 1), buf.count)

        var anchors: [String: Int32] = [:]
        // Open collections, and where their children start in `pending`.
        var open: [(kind: Kind, line: Int32, column: Int32, anchor: String?, from: Int)] = []
        var pending: [Int32] = []
        var root: Int32? = nil
        var documents = 0
        b.entries.reserveCapacity(buf.count / 16)
        b.scalars.reserveCapacity(buf.count / 24)
        b.children.reserveCapacity(buf.count / 16)

        func error(_ p: yaml_parser_t) -> ParseError {
            let problem = p.problem.map { String(cString: $0) } ?? "the text cannot be read"
            if p.error == YAML_READER_ERROR {
                // The reader (e.g. a control character) gives a byte offset, not a mark.
                let end = min(p.problem_offset, buf.count)
                var line = 1, lineStart = 0
                for i in 0..<end where buf[i] == 0x0A { line += 1; lineStart = i + 1 }
                return ParseError(problem: problem, line: line, column: end - lineStart + 1)
            }
            if let c = p.context {
                return ParseError(problem: "\(problem) (\(String(cString: c)) at line \(p.context_mark.line + 1))",
                                  line: Int(p.problem_mark.line) + 1, column: Int(p.problem_mark.column) + 1)
            }
            return ParseError(problem: problem, line: Int(p.problem_mark.line) + 1, column: Int(p.problem_mark.column) + 1)
        }
        func text(_ p: UnsafeMutablePointer<yaml_char_t>?, _ n: Int) -> String {
            guard let p else { return "" }
            return String(decoding: UnsafeBufferPointer(start: p, count: n), as: UTF8.self)
        }
        func cString(_ p: UnsafeMutablePointer<yaml_char_t>?) -> String? {
            p.map { String(cString: UnsafePointer($0)) }
        }
        /// A finished node: a child of the innermost open collection, or the root.
        func place(_ i: Int32) {
            if open.isEmpty { root = i } else { pending.append(i) }
        }

        var event = yaml_event_t()
        while true {
            guard yaml_parser_parse(&parser, &event) == 1 else { throw error(parser) }
            defer { yaml_event_delete(&event) }
            let mark = (line: Int32(clamping: event.start_mark.line + 1), column: Int32(clamping: event.start_mark.column + 1))
            switch event.type {
            case YAML_STREAM_END_EVENT:
                return root
            case YAML_DOCUMENT_START_EVENT:
                documents += 1
                if documents > 1 {
                    throw ParseError(problem: "expected a single document in the stream, but found another document",
                                     line: Int(mark.line), column: Int(mark.column))
                }
            case YAML_SCALAR_EVENT:
                let s = event.data.scalar
                let i = b.addScalar(text(s.value, s.length), line: mark.line, column: mark.column)
                if let a = cString(s.anchor) { anchors[a] = i }
                place(i)
            case YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
                // Its entry is added at its end, when its children are known; an anchor on it
                // is kept until then (an alias inside its own collection is refused, as
                // libyaml's composer does).
                let mapping = event.type == YAML_MAPPING_START_EVENT
                let anchor = mapping ? event.data.mapping_start.anchor : event.data.sequence_start.anchor
                open.append((mapping ? .mapping : .sequence, mark.line, mark.column, cString(anchor), pending.count))
            case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                let o = open.removeLast()
                let i = b.addCollection(o.kind, line: o.line, column: o.column, children: pending[o.from...])
                pending.removeSubrange(o.from...)
                if let a = o.anchor { anchors[a] = i }
                place(i)
            case YAML_ALIAS_EVENT:
                guard let a = cString(event.data.alias.anchor), let i = anchors[a] else {
                    throw ParseError(problem: "found undefined alias", line: Int(mark.line), column: Int(mark.column))
                }
                place(i)
            default:
                break // stream start, document end
            }
        }
    }
}

/// One node of a `YAMLDocument`: what the loader reads. Valid while its document lives (the
/// loader holds the document while it reads).
struct ConfigNode: Sendable {
    unowned(unsafe) let doc: YAMLDocument
    let index: Int32

    private var entry: YAMLDocument.Entry { doc.entries[Int(index)] }

    /// Where the node starts in the file (1-based line and column, as libyaml counts them).
    struct Mark: Equatable, Sendable {
        let line: Int
        let column: Int
    }

    var mark: Mark { let e = entry; return Mark(line: Int(e.line), column: Int(e.column)) }

    /// The scalar's text; nil for a list or a mapping.
    var text: String? {
        let e = entry
        return e.kind == .scalar ? doc.scalars[Int(e.first)] : nil
    }

    var isSequence: Bool { entry.kind == .sequence }

    /// A list's items; nil if the node is not a list.
    var sequence: [ConfigNode]? {
        let e = entry
        guard e.kind == .sequence else { return nil }
        return (0..<Int(e.count)).map { ConfigNode(doc: doc, index: doc.children[Int(e.first) + $0]) }
    }

    /// A mapping's pairs in the file's order; nil if the node is not a mapping.
    var mapping: Pairs? {
        let e = entry
        guard e.kind == .mapping else { return nil }
        return Pairs(doc: doc, first: Int(e.first), count: Int(e.count) / 2)
    }

    /// The value under `key` in a mapping (the first, if the key is repeated).
    subscript(key: String) -> ConfigNode? {
        mapping?.first { $0.key.text == key }?.value
    }

    struct Pairs: RandomAccessCollection {
        unowned(unsafe) let doc: YAMLDocument
        let first: Int
        let count: Int
        var startIndex: Int { 0 }
        var endIndex: Int { count }
        subscript(i: Int) -> (key: ConfigNode, value: ConfigNode) {
            (ConfigNode(doc: doc, index: doc.children[first + 2 * i]), ConfigNode(doc: doc, index: doc.children[first + 2 * i + 1]))
        }
    }
}
