import Foundation
import Testing
@testable import TCPAODaemon
#if canImport(Glibc)
import Glibc
#endif

/// The firewall tools' runner (posix_spawn, blocking waitpid): status, output, input, signals.
@Suite struct SubprocessTests {
    @Test func statusAndOutput() {
        #expect(Subprocess.run("sh", ["-c", "echo out; echo err >&2; exit 3"]) == (3, "out\nerr"))
        #expect(Subprocess.run("true", []).0 == 0)
        let missing = Subprocess.run("tcpaod-no-such-tool", [])
        #expect(missing.0 == 127 && missing.1.contains("No such file"))
    }

    /// Megabytes in and out at once (an ipset restore of 50,000 members): neither side blocks.
    @Test func largeInputWhileReadingOutput() {
        let line = String(repeating: "x", count: 99) + "\n"
        let input = String(repeating: line, count: 40_000)
        let (rc, out) = Subprocess.run("cat", [], input: input)
        #expect(rc == 0 && out.utf8.count == input.utf8.count - 1)
        // A tool that stops reading early: EPIPE for the writer, not a dead test process.
        #expect(Subprocess.run("head", ["-c", "10"], input: input) == (0, "xxxxxxxxxx"))
    }

    /// The daemon ignores signals it handles through dispatch sources; a tool starts with
    /// them at their default (a killed tool reports 128 + N).
    @Test func signalsAtTheirDefault() {
        // SIGUSR2 (the daemon's "stop for a restart"): nothing else in the test process uses it.
        let old = signal(SIGUSR2, SIG_IGN)
        defer { signal(SIGUSR2, old) }
        #expect(Subprocess.run("sh", ["-c", "kill -USR2 $$; echo survived"]).0 == 128 + SIGUSR2)
        // Its own process group, and none of our descriptors (one opened here, not
        // close-on-exec, as libmnl's netlink sockets are not).
        let fd = open("/dev/null", O_RDONLY)
        defer { close(fd) }
        let (rc, out) = Subprocess.run("sh", ["-c", "ps -o pgid= -p $$; ls /proc/$$/fd"])
        let lines = out.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        #expect(rc == 0 && fd > 2 && lines.count > 3)
        #expect(lines.first != "\(getpgrp())")
        #expect(!lines.dropFirst().contains("\(fd)"), "\(lines)")
    }
}
