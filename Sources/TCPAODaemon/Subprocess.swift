import CSysShim
import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Runs the firewall tools (iptables, ipset, systemctl): posix_spawn and a blocking waitpid.
/// Foundation's `Process.waitUntilExit` polls its run loop every 50 ms, which cost 60 ms per
/// tool run; a start at 50,000 peers runs seven of them, a reload three.
enum Subprocess {
    /// `tool args...` through /usr/bin/env (PATH lookup), with `input` on its standard input;
    /// its exit status (127 when it could not start, 128 + N when killed by signal N) and its
    /// standard output and error together, trimmed.
    static func run(_ tool: String, _ args: [String], input: String? = nil) -> (Int32, String) {
        // A tool that exits before reading all of its input must give EPIPE, not kill us.
        _ = ignoreSIGPIPE
        // Close-on-exec from the start: no tool started meanwhile by another thread keeps a
        // pipe end open (which would hold off the end of the output).
        var inFds: [Int32] = [-1, -1], outFds: [Int32] = [-1, -1]
        guard tcpaod_pipe_cloexec(&inFds) == 0 else { return (127, "\(tool): pipe: \(Sys.describe(Int(errno)))") }
        guard tcpaod_pipe_cloexec(&outFds) == 0 else {
            let e = errno
            close(inFds[0]); close(inFds[1])
            return (127, "\(tool): pipe: \(Sys.describe(Int(e)))")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // dup2 onto 0, 1, 2 clears close-on-exec there; the pipes' own ends close at exec.
        posix_spawn_file_actions_adddup2(&actions, inFds[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outFds[1], 1)
        posix_spawn_file_actions_adddup2(&actions, outFds[1], 2)
        // Nothing else of the daemon's (netlink sockets, a control client) reaches the tool.
        _ = tcpaod_spawn_closefrom(&actions, 3)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        // The daemon ignores and blocks signals it handles through dispatch sources: the tool
        // starts with every signal at its default and none blocked.
        var all = sigset_t(), none = sigset_t()
        sigfillset(&all)
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setsigmask(&attr, &none)
        // Its own process group: a Ctrl-C meant for a foreground `tcpaod run` does not kill an
        // iptables-restore half-way through the clean-up that follows it.
        posix_spawnattr_setpgroup(&attr, 0)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP))

        let argv = (["/usr/bin/env", tool] + args).map { strdup($0) }
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = (argv + [nil]).withUnsafeBufferPointer { a in
            posix_spawn(&pid, "/usr/bin/env", &actions, &attr, a.baseAddress!, environ)
        }
        close(inFds[0])
        close(outFds[1])
        guard rc == 0 else {
            close(inFds[1]); close(outFds[0])
            return (127, "\(tool): /usr/bin/env could not be started: \(Sys.describe(Int(rc)))")
        }
        // The input (an ipset restore of 50,000 members is megabytes) is written by a thread of
        // its own while the output is read, so that neither side waits for the other with a
        // full pipe.
        let written = DispatchSemaphore(value: 0)
        let inFd = inFds[1]
        if let input {
            Thread {
                defer { written.signal() }
                var bytes = Array(input.utf8)
                bytes.withUnsafeMutableBytes { b in
                    var off = 0
                    while off < b.count {
                        let n = write(inFd, b.baseAddress! + off, b.count - off)
                        if n > 0 { off += n } else if n < 0 && errno == EINTR { continue } else { break }
                    }
                }
                close(inFd)
            }.start()
        } else {
            close(inFd)
            written.signal()
        }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(outFds[0], $0.baseAddress!, $0.count) }
            if n > 0 { out += buf[0..<n] } else if n < 0 && errno == EINTR { continue } else { break }
        }
        close(outFds[0])
        written.wait()
        var status: Int32 = 0
        var w: pid_t
        repeat { w = waitpid(pid, &status, 0) } while w < 0 && errno == EINTR
        guard w == pid else { return (127, "\(tool): waitpid: \(Sys.describe(Int(errno)))") }
        // WIFEXITED / WEXITSTATUS / WTERMSIG, which Swift does not import (macros).
        let signal = status & 0x7f
        let code: Int32 = signal == 0 ? (status >> 8) & 0xff : 128 + signal
        let text = String(decoding: out, as: UTF8.self)
        return (code, text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    private static let ignoreSIGPIPE: Void = { _ = signal(SIGPIPE, SIG_IGN) }()
}
