import Foundation
import Testing
@testable import TCPAODaemon
#if canImport(Glibc)
import Glibc
#endif

/// `ConfigFileWriter.atomicWrite`: the file replaced whole (owner, group and mode kept, a link
/// followed), or not at all when it changed on disk since it was read.
@Suite struct ConfigFileWriterTests {
    static func dir(_ name: String) throws -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("cfw-\(getpid())-\(name)").path
        try? FileManager.default.removeItem(atPath: d)
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    static func file(_ dir: String, _ text: String, mode: mode_t) -> String {
        let p = dir + "/tcpaod.yaml"
        #expect(FileManager.default.createFile(atPath: p, contents: Data(text.utf8)))
        #expect(chmod(p, mode) == 0)
        return p
    }

    static func status(_ p: String) -> stat {
        var st = stat()
        #expect(lstat(p, &st) == 0)
        return st
    }

    static func text(_ p: String) -> String? { try? String(contentsOfFile: p, encoding: .utf8) }

    @Test func replacesTheFileKeepingModeAndOwner() throws {
        let d = try Self.dir("write")
        let p = Self.file(d, "old: 1\n", mode: 0o640)
        let asRoot = getuid() == 0
        if asRoot { #expect(chown(p, 65534, 65534) == 0) }
        let before = Self.status(p)
        #expect(try ConfigFileWriter.contents(path: p) == "old: 1\n")
        try ConfigFileWriter.atomicWrite(path: p, text: "new: 2 # kept\n", expected: "old: 1\n")
        #expect(Self.text(p) == "new: 2 # kept\n")
        let after = Self.status(p)
        #expect(after.st_mode & 0o7777 == 0o640)
        #expect(after.st_uid == before.st_uid && after.st_gid == before.st_gid)
        if asRoot { #expect(after.st_uid == 65534 && after.st_gid == 65534) }
        #expect(after.st_ino != before.st_ino, "renamed over, not written in place")
        #expect(try FileManager.default.contentsOfDirectory(atPath: d) == ["tcpaod.yaml"], "no temporary file left")
    }

    @Test func refusesWhenTheFileChangedOnDisk() throws {
        let d = try Self.dir("changed")
        let p = Self.file(d, "edited by hand\n", mode: 0o600)
        #expect(throws: ConfigWriteError.self) {
            try ConfigFileWriter.atomicWrite(path: p, text: "new\n", expected: "as tcpaod read it\n")
        }
        do {
            try ConfigFileWriter.atomicWrite(path: p, text: "new\n", expected: "as tcpaod read it\n")
        } catch {
            #expect(error.description.contains("changed on disk") && error.description.contains("reload"))
        }
        #expect(Self.text(p) == "edited by hand\n")
        #expect(try FileManager.default.contentsOfDirectory(atPath: d) == ["tcpaod.yaml"])
    }

    @Test func followsALinkAndKeepsIt() throws {
        let d = try Self.dir("link")
        let p = Self.file(d, "a\n", mode: 0o600)
        let link = d + "/link.yaml"
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: "tcpaod.yaml")
        try ConfigFileWriter.atomicWrite(path: link, text: "b\n", expected: "a\n")
        #expect(Self.status(link).st_mode & S_IFMT == S_IFLNK)
        #expect(Self.text(p) == "b\n")
    }

    @Test func refusesASecretInAWorldReadableFile() throws {
        let d = try Self.dir("secret")
        let p = Self.file(d, "a\n", mode: 0o644)
        do {
            try ConfigFileWriter.atomicWrite(path: p, text: "hexadecimal-string: \"00ff\"\n", expected: "a\n", holdsSecrets: true)
            Issue.record("written")
        } catch {
            #expect(error.description.contains("readable by every user") && !error.description.contains("00ff"))
        }
        #expect(Self.text(p) == "a\n")
        // Without inline secrets the mode is kept as it is.
        try ConfigFileWriter.atomicWrite(path: p, text: "key-file: /etc/k\n", expected: "a\n")
        #expect(Self.status(p).st_mode & 0o7777 == 0o644)
    }

    @Test func aMissingFileIsAnError() throws {
        #expect(throws: ConfigWriteError.self) {
            try ConfigFileWriter.atomicWrite(path: "/nonexistent-\(getpid())/tcpaod.yaml", text: "x", expected: "")
        }
    }
}
