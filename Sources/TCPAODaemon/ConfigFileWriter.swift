import Foundation
#if canImport(Glibc)
import Glibc
#endif

// Writing the configuration file back (runtime key changes, `ConfigFileEdit`): all or nothing.
//
// `atomicWrite` replaces the file only if it still holds exactly the text the edit was made
// from (byte for byte: content, not mtime and size, which an editor can keep or a coarse clock
// can hide), so a change made on disk since tcpaod read it is never overwritten; the caller
// then says to reload first. The new text goes to a temporary file in the same directory
// (`.NAME.tcpaod-XXXXXX`), which takes the original's owner, group and mode, is fsynced, then
// renamed over the original (atomic: a reader sees the old file or the new one, never a part),
// and the directory is fsynced (the rename survives a crash). A symbolic link is followed: the
// file it points to is replaced, the link stays. Extended attributes and ACLs are not copied.
// The content is checked twice, before writing and just before the rename; an edit made in the
// microseconds between the second check and the rename is not detected (editors take no lock).

public struct ConfigWriteError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var fix: String

    public init(_ message: String, fix: String) {
        self.message = message
        self.fix = fix
    }

    public var description: String { "\(message) (fix: \(fix))" }
}

public enum ConfigFileWriter {
    /// The file's text (UTF-8), as `atomicWrite` compares it.
    public static func contents(path: String) throws(ConfigWriteError) -> String {
        var bytes = try readFile(path).bytes
        defer { for i in bytes.indices { bytes[i] = 0 } }
        guard let s = String(validating: bytes, as: UTF8.self) else {
            throw ConfigWriteError("\(path) is not UTF-8 text", fix: "save it as UTF-8")
        }
        return s
    }

    /// Replaces the file at `path` with `text` if it still holds `expected`. `holdsSecrets`: the
    /// new text has inline secrets (hexadecimal-string, key-string), refused when every user
    /// may read the file (the loader would refuse to load it). Throws with the file unchanged,
    /// except for the last step (the directory's fsync), whose error says so.
    public static func atomicWrite(path: String, text: String, expected: String, holdsSecrets: Bool = false) throws(ConfigWriteError) {
        guard let real = realpath(path, nil) else {
            throw ConfigWriteError("the configuration file \(path) cannot be found (\(errorText()))", fix: "check the path given with --config")
        }
        let target = String(cString: real)
        free(real)
        let dir = (target as NSString).deletingLastPathComponent
        let name = (target as NSString).lastPathComponent
        let changed = ConfigWriteError("the configuration file \(target) changed on disk since tcpaod read it; nothing was written",
                                       fix: "reload it first (systemctl reload tcpaod, or SIGHUP), then repeat the key change; or make the change with --runtime")
        var old = try readFile(target)
        var want = Array(expected.utf8)
        defer {
            for i in old.bytes.indices { old.bytes[i] = 0 }
            for i in want.indices { want[i] = 0 }
        }
        guard old.bytes == want else { throw changed }
        let mode = old.stat.st_mode & 0o7777
        if holdsSecrets && mode & 0o004 != 0 {
            throw ConfigWriteError("the configuration file \(target) would hold a secret and is readable by every user; nothing was written",
                                   fix: "chmod 600 \(target), or give the key as a key file")
        }

        var template = Array("\(dir.isEmpty ? "." : dir)/.\(name).tcpaod-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else {
            throw ConfigWriteError("cannot create a temporary file in \(dir) (\(errorText()))", fix: "tcpaod needs write access to the configuration file's directory; or use --runtime")
        }
        let temp = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var done = false
        defer { if !done { unlink(temp) } }
        var bytes = Array(text.utf8)
        defer { for i in bytes.indices { bytes[i] = 0 } }
        do throws(ConfigWriteError) {
            var st = stat()
            guard fstat(fd, &st) == 0 else { throw ConfigWriteError("cannot examine \(temp) (\(errorText()))", fix: "check the file system") }
            if st.st_uid != old.stat.st_uid || st.st_gid != old.stat.st_gid {
                guard fchown(fd, old.stat.st_uid, old.stat.st_gid) == 0 else {
                    throw ConfigWriteError("cannot give the new file the owner of \(target) (uid \(old.stat.st_uid), gid \(old.stat.st_gid)): \(errorText()); nothing was written",
                                           fix: "run tcpaod as root, or make its user the file's owner; or use --runtime")
                }
            }
            guard fchmod(fd, mode) == 0 else { throw ConfigWriteError("cannot set the mode of \(temp) (\(errorText()))", fix: "check the file system") }
            var off = 0
            while off < bytes.count {
                let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + off, $0.count - off) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw ConfigWriteError("cannot write \(temp) (\(errorText())); nothing was written", fix: "check the free space of \(dir)") }
                off += n
            }
            guard fsync(fd) == 0 else { throw ConfigWriteError("cannot sync \(temp) (\(errorText())); nothing was written", fix: "check the file system") }
        } catch {
            close(fd)
            throw error
        }
        guard close(fd) == 0 else { throw ConfigWriteError("cannot write \(temp) (\(errorText())); nothing was written", fix: "check the file system") }
        // Once more, as late as possible.
        var again = try readFile(target)
        let same = again.bytes == want
        for i in again.bytes.indices { again.bytes[i] = 0 }
        guard same else { throw changed }
        guard rename(temp, target) == 0 else {
            throw ConfigWriteError("cannot replace \(target) (\(errorText())); nothing was written", fix: "tcpaod needs write access to \(dir); or use --runtime")
        }
        done = true
        let d = open(dir.isEmpty ? "." : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard d >= 0 else { throw ConfigWriteError("\(target) was replaced, but its directory could not be opened to sync it (\(errorText()))", fix: "run sync") }
        defer { close(d) }
        if fsync(d) != 0 && errno != EINVAL {
            throw ConfigWriteError("\(target) was replaced, but its directory could not be synced (\(errorText())): a crash now could bring the old file back", fix: "run sync")
        }
    }

    /// A regular file's bytes (the caller wipes them) and its status.
    static func readFile(_ path: String) throws(ConfigWriteError) -> (bytes: [UInt8], stat: stat) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ConfigWriteError("cannot open \(path) (\(errorText()))", fix: "check the path given with --config and its mode") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
            throw ConfigWriteError("\(path) is not a regular file", fix: "give the configuration file's path")
        }
        var out: [UInt8] = []
        out.reserveCapacity(Int(st.st_size))
        var buf = [UInt8](repeating: 0, count: 65536)
        defer { for i in buf.indices { buf[i] = 0 } }
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else {
                for i in out.indices { out[i] = 0 }
                throw ConfigWriteError("cannot read \(path) (\(errorText()))", fix: "check its mode")
            }
            if n == 0 { break }
            out.append(contentsOf: buf[0..<n])
        }
        return (out, st)
    }

    static func errorText() -> String { String(cString: strerror(errno)) }
}
