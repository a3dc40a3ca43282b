#!/usr/bin/env python3
"""tcpaod under a real systemd: the shipped unit (systemd/tcpaod.service) and the built binary in a
Debian bookworm container booted by systemd-nspawn (systemd 252 as PID 1), inside a network
namespace joined by a veth link to a peer namespace that runs tcpaod directly.

What it shows (issue 12, "systemd for real"; issue 10, `systemctl restart` keeps connections):
  - `systemctl start` returns (the unit is active) only after READY=1: the rules are installed
    and the queues bound by then; the start leaves no warning in the journal;
  - `systemd-analyze security tcpaod`: exposure 2.0 or lower;
  - a bulk transfer and an interactive session between the peer and the container's namespace
    carry on across `systemctl reload`, `systemctl restart` (flows restored from conntrack
    labels) and a watchdog restart after one packet worker is frozen (ptrace: one thread
    stopped, the others run); the bytes arrive intact; a capture of the whole run holds no
    segment without a valid MAC (`tcpaod verify-pcap --strict`);
  - STATUS= carries a counter summary; `journalctl -u tcpaod` shows the start, the reload, the
    restarts and the stop; `systemctl stop` removes the rules.

usage: systemd_real.py          (root; TCPAOD_BIN=path to the tcpaod binary)
The container's root file system is made once with mmdebstrap (~40 s, ~220 MB) and cached in
/var/cache/tcpaod-nspawn; each run boots it with a volatile overlay, so the cache stays clean.
"""
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402  (namespaces, configurations, sessions, captures)
from e2e import Fail, check, log, sh, wait_for, read_file  # noqa: E402

ROOT = e2e.ROOT
TCPAOD = e2e.TCPAOD
CACHE = "/var/cache/tcpaod-nspawn"
PACKAGES = ["systemd", "systemd-sysv", "dbus", "iproute2", "iptables", "libnetfilter-queue1",
            "libmnl0", "libssl3", "kmod", "procps"]
MIRROR = os.environ.get("TCPAOD_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def rootfs():
    """The cached container root file system (made once per package list)."""
    tag = hashlib.sha256((" ".join(PACKAGES) + MIRROR).encode()).hexdigest()[:12]
    path = os.path.join(CACHE, "bookworm-" + tag)
    if os.path.exists(os.path.join(path, ".tcpaod-complete")):
        return path
    os.makedirs(CACHE, exist_ok=True)
    # One builder at a time (two first runs at once would remove each other's tree).
    lock = open(os.path.join(CACHE, ".lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    if os.path.exists(os.path.join(path, ".tcpaod-complete")):
        return path
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    log("    making the container's root file system (mmdebstrap, once): %s" % path)
    t0 = time.time()
    sh(["mmdebstrap", "--quiet", "--variant=minbase", "--include=" + ",".join(PACKAGES), "bookworm", tmp, MIRROR],
       timeout=900)
    open(os.path.join(tmp, ".tcpaod-complete"), "w").close()
    shutil.rmtree(path, ignore_errors=True)
    os.rename(tmp, path)
    log("    root file system ready in %.0f s" % (time.time() - t0))
    return path


def swift_runtime_dir():
    """The directory holding the Swift runtime the binary links (bound read-only into the container)."""
    out = sh(["ldd", TCPAOD]).stdout
    m = re.search(r"libswiftCore\.so => (\S+)/libswiftCore\.so", out)
    return m.group(1) if m else None


class Container:
    """A booted systemd-nspawn container in network namespace `ns`."""

    def __init__(self, ns, name, binds=None):
        """binds: systemd-nspawn --bind options; by default the built binary at
        /usr/local/bin/tcpaod and the Swift runtime it links (Tests/e2e/package.py: none)."""
        self.name = name
        if binds is None:
            binds = ["--bind-ro=%s:/usr/local/bin/tcpaod" % os.path.realpath(TCPAOD)]
            rt = swift_runtime_dir()
            if rt:
                binds.append("--bind-ro=%s" % rt)
        self.logpath = os.path.join(e2e.WORK, name + ".console.log")
        self.logf = open(self.logpath, "w")
        self.p = subprocess.Popen(
            ["systemd-nspawn", "-D", rootfs(), "-M", name, "-b", "--register=no", "--keep-unit",
             "--network-namespace-path=/run/netns/" + ns.name, "--capability=CAP_NET_ADMIN",
             "--console=passive", "--volatile=overlay"] + binds,
            stdout=self.logf, stderr=subprocess.STDOUT)
        self.leader = None

        def booted():
            if self.p.poll() is not None:
                raise Fail("systemd-nspawn exited (%d):\n%s" % (self.p.returncode, read_file(self.logpath)))
            if self.leader is None:
                kids = sh(["pgrep", "-P", str(self.p.pid)], check_rc=False).stdout.split()
                if not kids:
                    return False
                self.leader = kids[0]
            r = self.run(["systemctl", "is-system-running"], check_rc=False)
            return r.stdout.strip() in ("running", "degraded")
        wait_for(booted, "the container's systemd to finish booting", 120)

    def cmd(self, args):
        return ["nsenter", "-t", self.leader, "-a", "--"] + list(args)

    def run(self, args, **kw):
        return sh(self.cmd(args), **kw)

    def put(self, path, data, mode=0o600):
        d = os.path.dirname(path)
        subprocess.run(self.cmd(["sh", "-c", "umask 077; mkdir -p '%s' && cat > '%s' && chmod %o '%s'" % (d, path, mode, path)]),
                       input=data.encode() if isinstance(data, str) else data, check=True, timeout=30)

    def systemctl(self, *args, timeout=90):
        return self.run(["systemctl"] + list(args), timeout=timeout)

    def show(self, prop):
        return self.run(["systemctl", "show", "-p", prop, "--value", "tcpaod"]).stdout.strip()

    def journal(self):
        return self.run(["journalctl", "-u", "tcpaod", "--no-pager", "-o", "short-monotonic"]).stdout

    def close(self):
        if self.p.poll() is None and self.leader:
            subprocess.run(self.cmd(["systemctl", "poweroff"]), capture_output=True, timeout=30)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                pass
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)
        self.logf.close()


# ---- freezing one thread (a stuck packet worker) -----------------------------------------------

FREEZER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
tid = int(sys.argv[1])
for req in (0x4206, 0x4207):  # PTRACE_SEIZE, PTRACE_INTERRUPT: this thread stops, the others run
    if libc.ptrace(req, tid, None, None) != 0:
        print("ptrace(%#x, %d): %s" % (req, tid, os.strerror(ctypes.get_errno())), flush=True); sys.exit(1)
print("frozen", flush=True)
sys.stdin.read()  # until the test closes the pipe; exiting detaches (the kernel lets the thread go)
"""


class FrozenThread:
    """One thread of a process stopped by a tracer process (ptrace SEIZE + INTERRUPT), the
    process's other threads running. thaw() ends the tracer: the thread runs again, and a signal
    already sent to its process (systemd's SIGABRT) acts, as it would on a real stuck thread.
    (The tracer is a process of its own so that its end releases and reaps the thread cleanly.)"""

    def __init__(self, tid):
        self.p = subprocess.Popen([sys.executable, "-c", FREEZER, str(tid)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline().strip()
        if line != "frozen":
            self.thaw()
            raise Fail("cannot freeze thread %d: %s" % (tid, line or "the tracer ended"))

    def thaw(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)


def host_pid_of(container, pid_in_container):
    """The host PID of a process of the container: same PID namespace as the container's init,
    and its last NSpid is the PID the container sees."""
    pidns = os.readlink("/proc/%s/ns/pid" % container.leader)
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink("/proc/%s/ns/pid" % p) != pidns:
                continue
            with open("/proc/%s/status" % p) as f:
                nspid = next((l.split()[1:] for l in f if l.startswith("NSpid:")), [])
        except OSError:
            continue
        if nspid and nspid[-1] == str(pid_in_container):
            return int(p)
    return None


def worker_threads(host_pid):
    """The TIDs of tcpaod's packet workers (threads named tcpaod-q<N>)."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % host_pid):
        try:
            with open("/proc/%d/task/%s/comm" % (host_pid, tid)) as f:
                name = f.read().strip()
        except OSError:
            continue
        if name.startswith("tcpaod-q"):
            out[name] = int(tid)
    return out


# ---- the scenario --------------------------------------------------------------------------------

def total_counter(c, name):
    """A counter of the service's tcpaod, from its stats file (rewritten every second)."""
    import json
    r = c.run(["cat", "/run/tcpaod/stats.json"], check_rc=False)
    try:
        return json.loads(r.stdout)["counters"]["total"].get(name, 0)
    except (ValueError, KeyError):
        return 0


def jumps(ns):
    v4 = ns.run(["iptables", "-t", "mangle", "-S"]).stdout
    return v4.count("-j TCPAOD-OUT"), v4.count("-j TCPAOD-IN")


def bound_queues(ns):
    """NFQUEUE numbers bound in this network namespace (/proc/net/netfilter/nfnetlink_queue)."""
    txt = ns.run(["cat", "/proc/net/netfilter/nfnetlink_queue"], check_rc=False).stdout
    return sorted(int(l.split()[0]) for l in txt.splitlines() if l.strip())


def systemd_unit_under_real_systemd():
    topo = e2e.Topology()
    container = None
    try:
        a, b = e2e.two_hosts(topo)
        container = Container(b, "tcpaod-%s" % e2e.TAG)
        log("    container booted: %s" % container.run(["systemctl", "--version"]).stdout.splitlines()[0])
        unit = read_file(os.path.join(ROOT, "systemd", "tcpaod.service"))
        container.put("/etc/systemd/system/tcpaod.service", unit, 0o644)
        k1 = e2e.key_yaml(1, 1, 1, "hmac-sha-1-96", e2e.SECRET)
        conf_b = ("mode: host\nqueue: 100\nthreads: 2\nstats-interval: 0\nkey-chains:\n  - name: k\n    keys:\n" + k1 +
                  "peers:\n  - { name: a, prefix: 192.0.2.1/32, ports: [830, 9339], key-chain: k }\n")
        container.run(["install", "-d", "-m", "0700", "/etc/tcpaod"])
        container.put("/etc/tcpaod/tcpaod.yaml", conf_b)
        container.systemctl("daemon-reload")

        # Start: active only once READY=1 was sent, i.e. rules installed and queues bound.
        t0 = time.time()
        container.systemctl("start", "tcpaod")
        started = time.time() - t0
        state = container.show("ActiveState")
        rules, queues = jumps(b), bound_queues(b)
        check(state == "active", "after systemctl start: %s" % state)
        check(rules == (1, 1), "systemctl start returned before the rules were installed: jumps %s" % (rules,))
        check(queues == [100, 101], "systemctl start returned before the queues were bound: %s" % queues)
        log("    systemctl start: active in %.2f s, rules installed and queues %s bound by then" % (started, queues))
        j = container.journal()
        noisy = [l for l in j.splitlines() if re.search(r"warn|fail|error|errno|denied", l, re.I)]
        check(not noisy, "warnings in the journal at a normal start:\n%s" % "\n".join(noisy))
        sec = container.run(["systemd-analyze", "security", "tcpaod", "--no-pager"]).stdout
        m = re.search(r"Overall exposure level for tcpaod\.service: ([0-9.]+)", sec)
        check(m is not None, "systemd-analyze security: %s" % sec[-500:])
        check(float(m.group(1)) <= 2.0, "exposure %s > 2.0:\n%s" % (m.group(1), "\n".join(l for l in sec.splitlines() if "✗" in l)))
        log("    journal clean at start; systemd-analyze security: exposure %s" % m.group(1))

        # The peer runs tcpaod itself; a capture on its link sees everything between them.
        ca = e2e.write_config("a", [("b", "192.0.2.2/32", [830, 9339])], [k1])
        da = e2e.Daemon(a, ca, "a")
        cap = e2e.Capture(a, "va", "tcp port 830 or tcp port 9339")
        h = e2e.start_sessions(a, b, "systemd")
        e2e.sessions_progress(h, "the start")

        container.systemctl("reload", "tcpaod")
        check(container.show("ActiveState") == "active", "after reload: %s" % container.show("ActiveState"))
        e2e.sessions_progress(h, "systemctl reload")
        log("    systemctl reload: connections carry on")

        # Another instance in the same namespace (its own queue, no rules): its control socket
        # under /run/tcpaod/x/ must outlive the unit's restarts (RuntimeDirectoryPreserve=yes).
        other = ("mode: host\ninstance: x\nqueue: 120\nthreads: 1\nstats-interval: 0\nkey-chains:\n  - name: k\n    keys:\n" + k1 +
                 "peers:\n  - { name: far, prefix: 203.0.113.1/32, ports: [830], key-chain: k }\n")
        container.put("/etc/tcpaod/x.yaml", other)
        xlog = open(os.path.join(e2e.WORK, "instance-x.log"), "w")
        xproc = subprocess.Popen(container.cmd(["/usr/local/bin/tcpaod", "run", "--config", "/etc/tcpaod/x.yaml", "--no-rules"]),
                                 stdout=xlog, stderr=subprocess.STDOUT)
        x_up = lambda: container.run(["/usr/local/bin/tcpaod", "status", "--instance", "x"], check_rc=False).returncode == 0
        wait_for(x_up, "the other instance's control socket", 30)

        pid0 = container.show("MainPID")
        stall = e2e.stall_after(h, lambda: container.systemctl("restart", "tcpaod"))
        check(x_up(), "the unit's restart removed the other instance's control socket (/run/tcpaod/x/control.sock)")
        xproc.terminate()
        xproc.wait(20)
        pid1 = container.show("MainPID")
        check(pid1 != pid0, "systemctl restart did not start a new process")
        check(jumps(b) == (1, 1), "after the restart: jumps %s" % (jumps(b),))
        wait_for(lambda: total_counter(container, "flows-restored") >= 2, "the restarted tcpaod to count its restored flows", 30)
        restored = total_counter(container, "flows-restored")
        log("    systemctl restart: connections carry on (stall %.2f s), %d flows restored from conntrack labels" % (stall, restored))

        # STATUS= gets the counter summary every 5 s (the first a second after the start).
        def summary():
            t = container.show("StatusText")
            return t if re.search(r"\d+ flows?", t) and "verified" in t else None
        status = wait_for(summary, "STATUS= with a counter summary", 15)
        log("    STATUS=: %s" % status)

        # A stuck packet worker: one worker thread frozen; the watchdog stops being fed and
        # systemd restarts the service; the connections carry on.
        wd = container.show("WatchdogUSec")
        check(wd not in ("", "0", "infinity"), "no WatchdogSec in the unit (WatchdogUSec=%s)" % wd)
        restarts0 = int(container.show("NRestarts") or 0)
        hp = host_pid_of(container, pid1)
        check(hp is not None, "cannot find tcpaod's host PID")
        workers = worker_threads(hp)
        check(len(workers) == 2, "worker threads not named tcpaod-q<N>: %s" % workers)
        name, tid = sorted(workers.items())[0]
        t0 = time.time()

        def frozen_and_restarted():
            frozen = FrozenThread(tid)
            try:
                # A stuck worker is still killable: once systemd gives up on it (SIGABRT), the
                # thread is let go so that the signal can act, as it would on a real stuck thread.
                wait_for(lambda: "Watchdog timeout" in container.journal(), "systemd's watchdog to fire", 60)
            finally:
                frozen.thaw()
            wait_for(lambda: int(container.show("NRestarts") or 0) > restarts0 and container.show("ActiveState") == "active",
                     "systemd to restart tcpaod after its worker %s froze" % name, 120)
        stall2 = e2e.stall_after(h, frozen_and_restarted)
        log("    worker %s frozen: watchdog restart after %.1f s (WatchdogSec %s), connections carry on (stall %.1f s)"
            % (name, time.time() - t0, wd, stall2))

        total = e2e.finish_sessions(h)
        container.systemctl("stop", "tcpaod")
        check(container.show("ActiveState") in ("inactive", "failed") and jumps(b) == (0, 0),
              "systemctl stop: state %s, jumps %s" % (container.show("ActiveState"), jumps(b)))
        log("    systemctl stop: rules removed")
        j = container.journal()
        for what, pattern in (("start", r"tcpaod running"), ("reload", r"reload"), ("restart", r"rules kept"),
                              ("watchdog", r"[Ww]atchdog timeout"), ("stop", r"rules removed|Stopped tcpaod")):
            check(re.search(pattern, j), "the journal does not show the %s (%s):\n%s" % (what, pattern, j[-3000:]))
        log("    journalctl -u tcpaod shows start, reload, restart, watchdog restart and stop")
        da.stop()
        path = cap.stop()
        rc, out = e2e.verify_pcap(ca, path, strict=True)
        check(rc == 0, "verify-pcap --strict: %s" % out["line"])
        log("    %d MB intact; capture: %s" % (total // 1000000, out["line"]))
    except Exception:
        if container and container.leader:
            log("    the journal's end:\n" + "\n".join("      " + l for l in container.journal().splitlines()[-40:]))
        raise
    finally:
        if container:
            container.close()
        topo.close()


def main():
    if os.geteuid() != 0:
        print("needs root (systemd-nspawn, network namespaces)")
        return 1
    for tool in ("systemd-nspawn", "mmdebstrap", "nsenter"):
        if not shutil.which(tool):
            print("missing %s (scripts/deps test installs it)" % tool)
            return 1
    log("-- systemd_unit_under_real_systemd")
    t0 = time.time()
    try:
        systemd_unit_under_real_systemd()
        log("PASS systemd_unit_under_real_systemd (%.1f s)" % (time.time() - t0))
        return 0
    except Exception as ex:
        log("FAIL systemd_unit_under_real_systemd (%.1f s): %s" % (time.time() - t0, ex))
        if not isinstance(ex, Fail):
            import traceback
            traceback.print_exc()
        return 1
    finally:
        shutil.rmtree(e2e.WORK, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
