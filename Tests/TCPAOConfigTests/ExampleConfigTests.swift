import Foundation
import Testing
@testable import TCPAOConfig
import TCPAO

/// Every configuration under config/examples loads with no error and no warning, at several
/// times across its keys' lifetimes, and the example deployment's ends agree on their keys.
@Suite struct ExampleConfigTests {
    static let examples = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("config/examples")

    /// Before the first hand-over, during its 24 h overlap, just after it, years later.
    static let times = ["2026-11-15T00:00:00Z", "2026-11-30T18:00:00Z", "2026-12-01T06:00:00Z", "2031-06-01T00:00:00Z"]
        .map { RFC3339.parse($0)! }

    static func files() -> [String] {
        let base = examples.path
        let all = FileManager.default.enumerator(atPath: base)?.compactMap { $0 as? String } ?? []
        return all.filter { $0.hasSuffix(".yaml") }.sorted().map { base + "/" + $0 }
    }

    /// Parsed from the text: a checkout's file mode is not the installed file's (tcpaod refuses
    /// inline secrets in a world-readable file; `load` would judge the checkout).
    /// The placeholders (refused as they are, see `thePlaceholderSecretsAreRefusedAsTheyAre`) are
    /// replaced as an operator would: a secret of one's own per placeholder, the same at both
    /// ends (here derived from the placeholder's text).
    static func parse(_ path: String, now: Int64) throws -> (Configuration?, [Diagnostic]) {
        var text = try String(contentsOfFile: path, encoding: .utf8)
        text = text.replacingOccurrences(of: "key-string: \"REPLACE ME: ", with: "key-string: \"secret of our own for ")
        return ConfigLoader.parse(text, file: path, now: now)
    }

    @Test func thePlaceholderSecretsAreRefusedAsTheyAre() throws {
        let path = Self.examples.appendingPathComponent("device.yaml").path
        let (cfg, d) = ConfigLoader.parse(try String(contentsOfFile: path, encoding: .utf8), file: path, now: Self.times[0])
        #expect(cfg == nil)
        let placeholders = d.errors.filter { $0.message.contains("the example's placeholder") }
        #expect(placeholders.count == 2 && placeholders.allSatisfy { $0.path.hasSuffix("key-string") && !$0.message.contains("dev1 key") })
        #expect(d.errors.first?.message.contains("the example's placeholder") == true, "the placeholder is the first thing said")
    }

    @Test func theDeploymentExamplesExist() {
        let names = Set(Self.files().map { ($0 as NSString).lastPathComponent })
        #expect(names.isSuperset(of: ["nms.yaml", "device.yaml", "device-gateway.yaml"]), "\(names)")
    }

    @Test(arguments: files()) func loadsWithoutErrorOrWarning(_ path: String) throws {
        for now in Self.times {
            let (cfg, d) = try Self.parse(path, now: now)
            #expect(cfg != nil && d.isEmpty, "\(path) at \(RFC3339.format(now)):\n\(d.map(\.description).joined(separator: "\n"))")
        }
    }

    /// Both ends of a pair hold the same MKTs: same IDs (mirrored), algorithm, options flag,
    /// secret and lifetimes.
    @Test(arguments: [("device.yaml", "nms", "dev1"), ("device-gateway.yaml", "nms", "dev2")])
    func theEndsOfAPairHoldTheSameKeys(_ file: String, _ chain: String, _ nmsChain: String) throws {
        let now = Self.times[0]
        let nms = try #require(try Self.parse(Self.examples.appendingPathComponent("nms.yaml").path, now: now).0)
        let dev = try #require(try Self.parse(Self.examples.appendingPathComponent(file).path, now: now).0)
        let a = try #require(nms.keyChains.first { $0.name == nmsChain }).keys
        let b = try #require(dev.keyChains.first { $0.name == chain }).keys
        #expect(a.count == b.count && a.count == 2)
        for (x, y) in zip(a, b) {
            #expect(x.sendID == y.recvID && x.recvID == y.sendID && x.algorithm == y.algorithm && x.includeOptions == y.includeOptions)
            #expect(x.secret == y.secret && x.sendLifetime == y.sendLifetime && x.acceptLifetime == y.acceptLifetime)
        }
        // The draft's "two MKTs with 24-hour overlap for monthly rotations".
        let h = try #require(RotationSchedule(chain: KeyChain(name: nmsChain, keys: a), now: now).handOvers.first)
        #expect(h.overlap == 86400 && h.isHitless)
        // Every key pair of the NMS is unique to its device.
        let secrets = nms.allKeys.map(\.secret)
        #expect(secrets.indices.allSatisfy { i in !secrets[(i + 1)...].contains(secrets[i]) })
    }
}
