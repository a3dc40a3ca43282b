import Testing
@testable import TCPAOConfig
import Yams

/// The loader's document (libyaml events into flat arrays) against Yams's composer, which it
/// replaced: the same values at the same places, the same refusals.
@Suite struct YAMLDocumentTests {
    /// The document as nested Swift values with the place of each node, from either tree.
    indirect enum Shape: Equatable {
        case scalar(String, Int, Int)
        case list([Shape], Int, Int)
        case map([Shape], Int, Int)
    }

    static func shape(_ n: ConfigNode) -> Shape {
        let m = n.mark
        if let t = n.text { return .scalar(t, m.line, m.column) }
        if let q = n.sequence { return .list(q.map(shape), m.line, m.column) }
        return .map(n.mapping!.flatMap { [shape($0.key), shape($0.value)] }, m.line, m.column)
    }

    static func shape(_ n: Node) -> Shape {
        let m = n.mark!
        switch n {
        case .scalar(let s): return .scalar(s.string, m.line, m.column)
        case .sequence(let q): return .list(q.map(shape), m.line, m.column)
        case .mapping(let p): return .map(p.flatMap { [shape($0.key), shape($0.value)] }, m.line, m.column)
        case .alias: return .scalar("<alias>", m.line, m.column)
        }
    }

    static let documents = [
        "mode: host\nkey-chains:\n  - name: a\n    keys:\n      - { key-id: 1, key-string: \"x y\", send-lifetime: { always: true } }\npeers: []\n",
        "a: [1, 2, [3, {b: c}]]\nd:\n  e: 'quoted ''s'\n  f: |\n    block\n    text\n  g: >-\n    folded\n    text\n",
        "- plain\n- \"dq \\u00e9\"\n- ~\n- \n- key: value\n  other: 2\n",
        "--- \nx: 1\n...\n",
        "empty:\nnested:\n  - - a\n    - b\n  - []\n  - {}\n",
        "tagged: !!str 5\nunicode: é ünïcode\n",
    ]

    @Test func sameTreeAsYams() throws {
        for d in Self.documents {
            let ours = try #require(try YAMLDocument.parse(d))
            let yams = try #require(try Yams.compose(yaml: d, Resolver.basic))
            withExtendedLifetime(ours) { #expect(Self.shape(ours.root) == Self.shape(yams), "\(d)") }
        }
        #expect(try YAMLDocument.parse("") == nil)
        #expect(try YAMLDocument.parse("# only a comment\n") == nil)
    }

    @Test func anchorsAndAliases() throws {
        let doc = try #require(try YAMLDocument.parse("a: &x {k: v}\nb: *x\nc: &s text\nd: *s\n"))
        defer { withExtendedLifetime(doc) {} }
        let root = doc.root
        #expect(root["b"]?["k"]?.text == "v")
        #expect(root["b"]?.index == root["a"]?.index)
        #expect(root["d"]?.text == "text")
    }

    @Test func refusalsWithTheirPlace() {
        func error(_ text: String) -> YAMLDocument.ParseError? {
            do { _ = try YAMLDocument.parse(text); return nil } catch { return error }
        }
        let bad = error("mode: host\n  bad: indentation\n")
        #expect(bad?.line == 2 && bad?.problem.contains("mapping values are not allowed") == true)
        #expect(error("a: *nowhere\n")?.problem == "found undefined alias")
        #expect(error("a: 1\n---\nb: 2\n")?.problem.contains("single document") == true)
        #expect(error("a: [1, 2\n")?.line == 2)
        #expect(error("a: \"open\n")?.problem.contains("quoted scalar") == true)
        // A control character: the reader's byte offset, as a line and column.
        let control = error("a: 1\nb: x\u{1}y\n")
        #expect(control?.line == 2 && control?.column == 5 && control?.problem.contains("control characters") == true)
    }
}
