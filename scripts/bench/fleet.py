"""The fleet benchmark (`scripts/bench/run --fleet`): tens of thousands of management sessions,
tcpaod against the kernel, on bench.py's two-namespace bed, in ONE run.

Modes (bench.py's letters): a plain TCP, b kernel TCP-MD5 (TCP_MD5SIG both ends), c tcpaod
passthrough, d tcpaod TCP-AO HMAC-SHA-1-96, e tcpaod TCP-AO AES-128-CMAC-96 (d and e with the
default flow-state: conntrack, as in bench.py). Host A (192.0.2.1) is the fleet of devices, host
B (192.0.2.2) the collector; the traffic is fleetload.c's, the same tool for every mode.

  telemetry fan-in  N connections (--fleet-n, default 1000,10000,max), each sending a 300-byte
                    update a second, spread evenly over the second; measured over
                    --fleet-seconds after a 2 s warm-up. Per mode and N: CPU seconds per 100,000
                    updates of the two tcpaod processes (utime+stime from /proc/PID/stat) and of
                    the kernel (see CPU below), update latency p50/p99 (the collector subtracts
                    the CLOCK_MONOTONIC time stamped in each update; both namespaces share the
                    clock), tcpaod's RSS (host A; host B in the JSON).
                    "max": the largest N up to 50,000 that the bed sustains in the heaviest mode
                    (e), found first by a probe: all connections established, >= 98% of the due
                    updates sent and >= 98% of those received in the window, update p99 <= 250 ms
                    (no retransmission timeouts to speak of). The probe starts at 50,000 and
                    lowers N from what got through; it prints why each step stopped.
  churn             connect, 64-byte request, 64-byte answer, close (FIN from the client), 4 in
                    flight, for --fleet-seconds: connections/s, setup p50/p99 (connect() to
                    writable), CPU per 1,000 connections.
  idle              modes c, d, e: N max idle connections held for --fleet-idle-seconds; tcpaod's
                    CPU with them minus its CPU with none over as long (both measured from
                    /proc/PID/task/*/schedstat, ns resolution), per flow and hour; and resident
                    memory per established flow: (RSS with N) - (RSS with none), over N.

Every (mode, N) cell and every churn cell gets fresh tcpaod daemons (max-flows 131072, above
the largest N and the flows a churn cell leaves lingering) and a fresh collector on a port of its
own (no TIME_WAIT from an earlier cell is in the way); modes alternate their order from one N (and
repetition) to the next so that drift does not favour the modes that come first.

CPU: "tcpaod" is the two daemons' user+system time, which includes the kernel work done in their
own system calls (NFQUEUE receive, verdicts: reinjecting a packet runs the TCP stack in the
sendmsg). "kernel" is the machine's system+irq+softirq time (/proc/stat) over the window minus
the daemons' system time: the TCP stacks, TCP-MD5, and the NFQUEUE enqueue work done in softirq or
in the load generator's system calls. "total" is the two added; it does not count the load
generator's user time (reported apart as "generator"). The machine is shared by everything, so
compare within one run.

Sysctls set in the namespaces: A net.ipv4.tcp_tw_reuse=1 (churn reuses client ports in
TIME_WAIT; bench.py already widens A's ip_local_port_range to 1024-65535), B net.core.somaxconn
and net.ipv4.tcp_max_syn_backlog 65535. fleetload raises its own RLIMIT_NOFILE.
"""
import os
import select
import statistics
import subprocess
import time

# TCPAOD_FLEET_MODES (e.g. "cdf": with f, flow-state memory) narrows or widens the modes for an
# experiment; ratios whose modes did not run are left out.
FLEET_MODES = os.environ.get("TCPAOD_FLEET_MODES", "abcde")
TCPAOD_MODES = "cde"  # the idle measurement's modes
DAEMON_MODES = "cdefg"  # bench.py's modes that run tcpaod
MAX_FLOWS = 131072
N_CAP = 50000
SUSTAIN = {"sent": 0.98, "received": 0.98, "p99_us": 250000}


class Lines:
    """Line reader over a process's stdout with timeouts (os.read + select; no buffering
    surprises)."""

    def __init__(self, proc):
        self.p, self.fd, self.buf = proc, proc.stdout.fileno(), b""

    def readline(self, timeout):
        end = time.time() + timeout
        while b"\n" not in self.buf:
            left = end - time.time()
            if left <= 0:
                raise TimeoutError("no line within %d s" % timeout)
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    line, self.buf = self.buf, b""
                    return line.decode()
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


def proc_times(pid):
    """(utime, stime, cutime, cstime) seconds of a process (all its threads; c* = reaped
    children), and whether it is a kernel thread; None if it is gone."""
    try:
        with open("/proc/%s/stat" % pid) as f:
            v = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # v[0] is field 3 (state): ppid field 4 = v[1], flags field 9 = v[6], utime field 14 = v[11]
    kthread = bool(int(v[6]) & 0x00200000)  # PF_KTHREAD
    return (int(v[11]) / HZ, int(v[12]) / HZ, int(v[13]) / HZ, int(v[14]) / HZ, kthread)


def netns_inode(pid):
    try:
        return os.stat("/proc/%s/ns/net" % pid).st_ino
    except OSError:
        return None


def proc_sched_ns(pid):
    """CPU time of all live threads in ns (schedstat), for the idle measurement."""
    t = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                t += int(f.read().split()[0])
        except OSError:
            pass
    return t


def kernel_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return {"system": v[2] / HZ, "irq": v[5] / HZ, "softirq": v[6] / HZ, "busy": (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / HZ}


BED_NS = set()  # the namespaces' inodes (set by main)


class CPU:
    """A snapshot of the machine's CPU (/proc/stat) and of every process's (/proc/PID/stat);
    `delta` splits it: tcpaod (the daemons' user+system), kernel (the machine's
    system+irq+softirq minus the daemons' system time and minus the system time of user-space
    processes outside the bed, reaped children included: another session's compiler must not
    count as this bed's kernel work; kernel threads such as ksoftirqd stay in), generator (the
    load generator's processes in the namespaces, user+system; their system time is in kernel
    too), other (user-space processes outside the bed, alive at both ends of the window).
    Per-process times are the kernel's scaled utime/stime, /proc/stat is tick-based (250 Hz
    here): both approximate; windows of seconds with thousands of updates keep that small."""

    def __init__(self, daemons):
        self.daemons = set(daemons)
        self.k = kernel_ticks()
        self.p = {}
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                t = proc_times(pid)
                if t:
                    self.p[int(pid)] = t + (netns_inode(pid) in BED_NS,)
        self.t = time.time()

    def delta(self, start):
        tu = ts = gu = gs = ou = os_ = 0.0
        for pid, t in self.p.items():
            s = start.p.get(pid, (0, 0, 0, 0, t[4], t[5]))
            d = [t[i] - s[i] for i in range(4)]
            if pid in self.daemons:
                tu += d[0]
                ts += d[1]
            elif t[4]:
                continue  # kernel thread: its time is kernel work (softirq, workqueues)
            elif t[5]:
                gu += d[0] + d[2]
                gs += d[1] + d[3]
            elif pid in start.p:
                # Live processes only: a reaped child's cstime is its whole life, not the window.
                # (So a process outside the bed that starts and ends within the window leaves its
                # system time in "kernel": noise, large only while something else runs.)
                ou += d[0]
                os_ += d[1]
        ksys = sum(self.k[x] - start.k[x] for x in ("system", "irq", "softirq"))
        kernel = max(0.0, ksys - ts - os_)
        return {"seconds": self.t - start.t, "tcpaod_user": tu, "tcpaod_sys": ts, "tcpaod": tu + ts,
                "kernel": kernel, "total": tu + ts + kernel, "generator": gu + gs, "generator_sys": gs,
                "other_user_space": ou + os_, "machine_busy": self.k["busy"] - start.k["busy"],
                "machine_system_irq_softirq": ksys}


class Fleet:
    def __init__(self, o, bench):
        self.o, self.b = o, bench
        self.port = 7000
        self.tool = os.path.join(bench.WORK, "fleetload")
        # tcpaod's workers per host and how the rules spread connections over them (the spread
        # part sets them; the rest of the fleet runs one worker per host, like bench.py).
        self.threads, self.queue_spread = 1, None

    def log(self, s):
        self.b.log(s)

    def next_port(self):
        self.port += 1
        return self.port

    # -------------------------------------------------------------- processes

    def server(self, mode, port):
        args = [self.tool, "server", "--listen", self.b.BIP, "--port", str(port)]
        if mode == "b":
            args += ["--md5", self.b.MD5, "--peer", self.b.AIP]
        p = subprocess.Popen(self.b.ns(self.b.B, args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        lines = Lines(p)
        if lines.readline(10) != "LISTENING":
            raise SystemExit("fleetload server did not start")
        return p, lines

    def server_report(self, srv):
        p, lines = srv
        p.stdin.write(b"report\n")
        p.stdin.flush()
        import json
        return json.loads(lines.readline(30))

    def server_cmd(self, srv, cmd):
        srv[0].stdin.write(cmd.encode() + b"\n")
        srv[0].stdin.flush()

    def client(self, mode, port, args):
        a = [self.tool] + args + ["--connect", self.b.BIP, "--port", str(port)]
        if mode == "b":
            a += ["--md5", self.b.MD5]
        p = subprocess.Popen(self.b.ns(self.b.A, a), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        return p, Lines(p)

    @staticmethod
    def finish(p, timeout=120):
        try:
            p.stdin.close()
        except OSError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def daemons(self, mode):
        if mode not in DAEMON_MODES:
            return None
        extra = "queue-spread: %s\n" % self.queue_spread if self.queue_spread else ""
        return self.b.Daemons(mode, max_flows=MAX_FLOWS, threads=self.threads, extra=extra)

    def daemon_counters(self, d):
        """Drops and evictions from the daemons' stats files (written every second)."""
        import json
        out = {}
        for name in ("a", "b"):
            try:
                with open(os.path.join(self.b.WORK, name + ".stats.json")) as f:
                    c = json.load(f)["counters"]["total"]
            except (OSError, ValueError, KeyError):
                continue
            out.update({"%s %s" % (name, k): v for k, v in c.items()
                        if v and (k.startswith("dropped-") or k in ("flows-evicted",))})
        return out

    def queue_packets(self):
        """Packets per queue of each host's tcpaod (its stats file, written every second)."""
        import json
        out = {}
        for name in ("a", "b"):
            try:
                with open(os.path.join(self.b.WORK, name + ".stats.json")) as f:
                    out[name] = {str(q["queue"]): q["packets"] for q in json.load(f)["queues"]}
            except (OSError, ValueError, KeyError):
                pass
        return out

    # -------------------------------------------------------------- telemetry

    def telemetry(self, mode, n, seconds, warmup=2):
        import json
        d = self.daemons(mode)
        port = self.next_port()
        srv = self.server(mode, port)
        cli = None
        try:
            pids = [d.pid("a"), d.pid("b")] if d else []
            base_rss = self.b.rss_bytes(pids[0]) if d else 0
            rate = 5000
            cli = self.client(mode, port, ["telemetry", "--count", str(n), "--seconds", str(seconds),
                                           "--warmup", str(warmup), "--rate", str(rate)])
            p, lines = cli
            line = lines.readline(n / rate + 120)
            if not line.startswith("CONNECTED "):
                raise SystemExit("fleetload telemetry: %r %s" % (line, p.stderr.read().decode()))
            conn = json.loads(line.split(" ", 1)[1])
            if lines.readline(warmup + 30) != "START":
                raise SystemExit("fleetload telemetry: no START")
            c0 = CPU(pids)
            self.server_cmd(srv, "reset")
            line = lines.readline(seconds + 60)
            c1 = CPU(pids)
            rep = self.server_report(srv)
            if not line.startswith("END "):
                raise SystemExit("fleetload telemetry: %r" % line)
            end = json.loads(line.split(" ", 1)[1])
            cpu = c1.delta(c0)
            rss = [self.b.rss_bytes(x) for x in pids]
            upd = max(rep["updates"], 1)
            r = {"n": n, "established": conn["established"], "connect_failed": conn["failed"],
                 "connect_seconds": conn["seconds"], "connect_first_error": conn["first_error"],
                 "due": end["due"], "sent": end["sent"], "late": end["late"], "send_errors": end["errors"],
                 "connection_errors": end["connection_errors"], "first_error": end["first_error"],
                 "received": rep["updates"], "p50_us": rep["p50_us"], "p99_us": rep["p99_us"], "max_us": rep["max_us"],
                 "updates_per_s": rep["updates"] / cpu["seconds"], "cpu": cpu,
                 "tcpaod_cpu_s_per_100k": cpu["tcpaod"] / upd * 1e5, "kernel_cpu_s_per_100k": cpu["kernel"] / upd * 1e5,
                 "total_cpu_s_per_100k": cpu["total"] / upd * 1e5, "generator_cpu_s_per_100k": cpu["generator"] / upd * 1e5}
            if d:
                time.sleep(1.2)  # the stats files' next write has the window's packets
                r.update({"tcpaod_rss_bytes": rss[0], "tcpaod_rss_b_bytes": rss[1], "tcpaod_base_rss_bytes": base_rss,
                          "rss_per_flow_bytes": (rss[0] - base_rss) / max(conn["established"], 1),
                          "daemon_counters": self.daemon_counters(d), "queue_packets": self.queue_packets()})
            r["sustained"], r["why_not"] = self.sustained(r)
            return r
        finally:
            if cli:
                self.finish(cli[0])
            self.finish(srv[0], 30)
            if d:
                d.stop()

    @staticmethod
    def sustained(r):
        why = []
        if r["connect_failed"] or r["established"] < r["n"]:
            why.append("%d of %d connections failed (%s)" % (r["n"] - r["established"], r["n"], r["connect_first_error"] or "?"))
        if r["due"] and r["sent"] < SUSTAIN["sent"] * r["due"]:
            why.append("the client sent %d of %d due updates (%d late: previous one still queued)" % (r["sent"], r["due"], r["late"]))
        if r["sent"] and r["received"] < SUSTAIN["received"] * r["sent"]:
            why.append("the collector received %d of %d updates sent" % (r["received"], r["sent"]))
        if r["p99_us"] > SUSTAIN["p99_us"]:
            why.append("update latency p99 %.0f ms > %.0f ms" % (r["p99_us"] / 1000, SUSTAIN["p99_us"] / 1000))
        if r["connection_errors"]:
            why.append("%d connections lost (%s)" % (r["connection_errors"], r["first_error"]))
        return not why, "; ".join(why)

    def probe_max(self, seconds):
        """The largest N <= 50,000 that mode e (the heaviest) sustains."""
        steps = []
        n = N_CAP
        for _ in range(4):
            r = self.telemetry("e", n, seconds)
            steps.append({k: r[k] for k in ("n", "established", "sent", "received", "p50_us", "p99_us", "updates_per_s", "sustained", "why_not")})
            self.log("  probe N=%d (mode e): %s; %d updates/s received, p50 %.1f ms, p99 %.1f ms"
                     % (n, "sustained" if r["sustained"] else "NOT sustained: " + r["why_not"], r["updates_per_s"],
                        r["p50_us"] / 1000, r["p99_us"] / 1000))
            if r["sustained"]:
                return n, steps
            # Lower N to what got through (updates/s = N when sustained), with 15% headroom.
            got = min(r["established"], r["updates_per_s"])
            n2 = int(min(n * 0.8, got * 0.85)) // 1000 * 1000
            n = max(n2, 1000)
        self.log("  probe: no N sustained in 4 steps; using the last, %d" % n)
        return n, steps

    # -------------------------------------------------------------- churn

    def churn(self, mode, seconds):
        import json
        d = self.daemons(mode)
        port = self.next_port()
        srv = self.server(mode, port)
        try:
            pids = [d.pid("a"), d.pid("b")] if d else []
            p, lines = self.client(mode, port, ["churn", "--seconds", str(seconds), "--inflight", "4"])
            c0 = CPU(pids)
            line = lines.readline(seconds + 120)
            c1 = CPU(pids)
            if not line.startswith("{"):
                self.finish(p)
                raise SystemExit("fleetload churn (mode %s): %r %s" % (mode, line, p.stderr.read().decode()))
            self.finish(p)
            r = json.loads(line)
            cpu = c1.delta(c0)
            k = max(r["connections"], 1) / 1000
            r.update({"cpu": cpu, "tcpaod_cpu_ms_per_conn": cpu["tcpaod"] / k, "kernel_cpu_ms_per_conn": cpu["kernel"] / k,
                      "total_cpu_ms_per_conn": cpu["total"] / k})
            if d:
                r["daemon_counters"] = self.daemon_counters(d)
            return r
        finally:
            self.finish(srv[0], 30)
            if d:
                d.stop()

    # -------------------------------------------------------------- idle

    def idle(self, mode, n, seconds):
        import json
        d = self.daemons(mode)
        port = self.next_port()
        srv = self.server(mode, port)
        cli = None
        try:
            pids = [d.pid("a"), d.pid("b")]
            time.sleep(1)
            base_rss = self.b.rss_bytes(pids[0])
            s0, t0 = sum(proc_sched_ns(x) for x in pids), time.time()
            time.sleep(seconds)
            s1, t1 = sum(proc_sched_ns(x) for x in pids), time.time()
            cli = self.client(mode, port, ["idle", "--count", str(n), "--rate", "5000"])
            line = cli[1].readline(n / 5000 + 120)
            if not line.startswith("CONNECTED "):
                raise SystemExit("fleetload idle: %r %s" % (line, cli[0].stderr.read().decode()))
            conn = json.loads(line.split(" ", 1)[1])
            time.sleep(3)  # let the handshakes' last packets and the stats settle
            rss = self.b.rss_bytes(pids[0])
            s2, t2 = sum(proc_sched_ns(x) for x in pids), time.time()
            time.sleep(seconds)
            s3, t3 = sum(proc_sched_ns(x) for x in pids), time.time()
            est = max(conn["established"], 1)
            none_s = (s1 - s0) / 1e9 / (t1 - t0)  # CPU s per s, two daemons, no flows
            with_s = (s3 - s2) / 1e9 / (t3 - t2)
            return {"n": n, "established": conn["established"], "seconds": seconds,
                    "cpu_per_s_no_flows": none_s, "cpu_per_s_with_flows": with_s,
                    "cpu_s_per_flow_hour": (with_s - none_s) * 3600 / est,
                    "cpu_s_per_hour_no_flows": none_s * 3600, "cpu_s_per_hour_with_flows": with_s * 3600,
                    "rss_bytes": rss, "base_rss_bytes": base_rss, "rss_per_flow_bytes": (rss - base_rss) / est,
                    "daemon_counters": self.daemon_counters(d)}
        finally:
            if cli:
                self.finish(cli[0])
            self.finish(srv[0], 30)
            d.stop()


def med(runs, key):
    v = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(v) if v else None


def main(o, bench):
    """Runs the fleet benchmark on bench.py's bed (fleetload already compiled into bench.WORK);
    prints the table and writes the JSON ({"machine", "settings", "fleet"})."""
    import json
    global HZ
    HZ = bench.HZ
    f = Fleet(o, bench)
    t_start = time.time()
    secs = o.fleet_seconds
    modes = FLEET_MODES
    result = {"machine": bench.machine(), "settings": vars(o), "fleet": {}}
    out = result["fleet"]
    f.log("machine: %(cpu)s, %(cores)d cores, kernel %(kernel)s" % result["machine"])
    f.log("fleet: tcpaod %s" % bench.TCPAOD)
    bench.setup_net()
    for n in (bench.A, bench.B):
        BED_NS.add(os.stat("/run/netns/" + n).st_ino)
    bench.run(bench.ns(bench.A, ["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]))
    bench.run(bench.ns(bench.B, ["sysctl", "-qw", "net.core.somaxconn=65535", "net.ipv4.tcp_max_syn_backlog=65535"]))
    try:
        ns_ = []
        for x in o.fleet_n.split(","):
            if x.strip() == "max":
                f.log("finding the largest N the bed sustains (up to %d), mode e:" % N_CAP)
                nmax, steps = f.probe_max(max(5, min(secs, 8)))
                out["n_max"], out["probe"] = nmax, steps
                ns_.append(nmax)
            else:
                ns_.append(int(x))
        ns_ = sorted(set(ns_))
        out["n"] = ns_
        tele = {n: {m: [] for m in modes} for n in ns_}
        churn = {m: [] for m in modes}
        turn = 0
        for rep in range(o.fleet_reps):
            for n in ns_:
                for m in (modes if turn % 2 == 0 else modes[::-1]):
                    r = f.telemetry(m, n, secs)
                    tele[n][m].append(r)
                    f.log("  rep %d N=%-6d %s %-30s %7.0f upd/s  CPU s/100k: tcpaod %6.2f kernel %6.2f total %6.2f  p50 %8.1f us p99 %9.1f us%s%s"
                          % (rep + 1, n, m, bench.MODES[m], r["updates_per_s"], r["tcpaod_cpu_s_per_100k"], r["kernel_cpu_s_per_100k"],
                             r["total_cpu_s_per_100k"], r["p50_us"], r["p99_us"],
                             "  RSS %.1f MiB" % (r["tcpaod_rss_bytes"] / 2**20) if "tcpaod_rss_bytes" in r else "",
                             "" if r["sustained"] else "  NOT SUSTAINED: " + r["why_not"]))
                turn += 1
            for m in (modes if turn % 2 == 0 else modes[::-1]):
                r = f.churn(m, secs)
                churn[m].append(r)
                f.log("  rep %d churn %s %-30s %8.0f conn/s  setup p50 %7.1f us p99 %8.1f us  CPU ms/conn: tcpaod %.3f total %.3f%s"
                      % (rep + 1, m, bench.MODES[m], r["conn_per_s"], r["setup_p50_us"], r["setup_p99_us"],
                         r["tcpaod_cpu_ms_per_conn"], r["total_cpu_ms_per_conn"],
                         "  failures %d (%s)" % (r["failures"], r["first_error"]) if r["failures"] else ""))
            turn += 1
        # Two workers per host, N connections between ONE host pair (mode d): spread by address
        # (one queue does all) against by connection (HMARK: both queues busy).
        spread = {}
        if o.fleet_spread_n:
            f.threads = 2
            for qs in ("addresses", "connection"):
                f.queue_spread = qs
                r = f.telemetry("d", o.fleet_spread_n, secs)
                q = r.get("queue_packets", {})
                shares = {h: {k: v / max(sum(p.values()), 1) for k, v in p.items()} for h, p in q.items()}
                spread[qs] = {"updates_per_s": r["updates_per_s"], "tcpaod_cpu_s_per_100k": r["tcpaod_cpu_s_per_100k"],
                              "total_cpu_s_per_100k": r["total_cpu_s_per_100k"], "p50_us": r["p50_us"], "p99_us": r["p99_us"],
                              "queue_packets": q, "queue_shares": shares, "sustained": r["sustained"]}
                f.log("  spread %-10s 2 workers, N=%d, mode d: %7.0f upd/s  CPU s/100k total %6.2f  p99 %9.1f us  packets per queue A %s B %s"
                      % (qs, o.fleet_spread_n, r["updates_per_s"], r["total_cpu_s_per_100k"], r["p99_us"],
                         q.get("a"), q.get("b")))
            f.threads, f.queue_spread = 1, None
        out["spread"] = spread
        idle = {}
        nidle = o.fleet_idle_n or max(ns_)
        if o.fleet_idle_seconds > 0:
            for m in TCPAOD_MODES:
                r = f.idle(m, nidle, o.fleet_idle_seconds)
                idle[m] = r
                f.log("  idle %s %-30s %d flows: %.0f bytes RSS per flow; CPU %.4f s/h with none, %.4f s/h with them: %.2e s per flow per hour"
                      % (m, bench.MODES[m], r["established"], r["rss_per_flow_bytes"], r["cpu_s_per_hour_no_flows"],
                         r["cpu_s_per_hour_with_flows"], r["cpu_s_per_flow_hour"]))
    finally:
        bench.teardown_net()

    # ------------------------------------------------------------------ summary
    keys = ("updates_per_s", "tcpaod_cpu_s_per_100k", "kernel_cpu_s_per_100k", "total_cpu_s_per_100k",
            "generator_cpu_s_per_100k", "p50_us", "p99_us", "tcpaod_rss_bytes", "rss_per_flow_bytes")
    out["telemetry"] = {str(n): {m: dict({k: med(tele[n][m], k) for k in keys}, name=bench.MODES[m],
                                         sustained=all(r["sustained"] for r in tele[n][m]),
                                         why_not=[r["why_not"] for r in tele[n][m] if r["why_not"]], runs=tele[n][m])
                                 for m in modes} for n in ns_}
    ckeys = ("conn_per_s", "setup_p50_us", "setup_p99_us", "transaction_p50_us", "transaction_p99_us",
             "tcpaod_cpu_ms_per_conn", "kernel_cpu_ms_per_conn", "total_cpu_ms_per_conn")
    out["churn"] = {m: dict({k: med(churn[m], k) for k in ckeys}, name=bench.MODES[m], runs=churn[m]) for m in modes}
    out["idle"] = idle
    nl = str(max(ns_))
    T, C = out["telemetry"][nl], out["churn"]
    ratios = {}

    def div(x, y):
        return x / y if x is not None and y else float("nan")

    for num in ("d", "e"):
        if not all(m in modes for m in "abc" + num):
            continue
        for what in ("total", "tcpaod"):
            ratios["telemetry %s CPU/update %s/c at N=%s" % (what, num, nl)] = div(T[num]["%s_cpu_s_per_100k" % what], T["c"]["%s_cpu_s_per_100k" % what])
        ratios["telemetry total CPU/update %s/b (MD5) at N=%s" % (num, nl)] = div(T[num]["total_cpu_s_per_100k"], T["b"]["total_cpu_s_per_100k"])
        ratios["telemetry total CPU/update %s/a (plain) at N=%s" % (num, nl)] = div(T[num]["total_cpu_s_per_100k"], T["a"]["total_cpu_s_per_100k"])
        for den in ("c", "b", "a"):
            ratios["churn conn/s %s/%s" % (num, den)] = div(C[num]["conn_per_s"], C[den]["conn_per_s"])
    out["ratios"] = ratios
    out["duration_s"] = round(time.time() - t_start)
    result["duration_s"] = out["duration_s"]

    log = f.log
    log("")
    log("fleet: %d repetition(s), modes interleaved; telemetry window %d s after 2 s warm-up; medians" % (o.fleet_reps, secs))
    if "probe" in out:
        log("largest N sustained (mode e, up to %d): %d%s" % (N_CAP, out["n_max"], "" if out["n_max"] == N_CAP else
            " (" + "; ".join("N=%d: %s" % (s["n"], s["why_not"]) for s in out["probe"] if not s["sustained"]) + ")"))
    log("%-7s %-32s %9s %8s %8s %8s %10s %10s %9s" % ("N", "mode", "upd/s", "tcpaod", "kernel", "total", "p50 us", "p99 us", "RSS MiB"))
    log("%-7s %-32s %9s %26s" % ("", "", "", "CPU s per 100k updates"))
    for n in ns_:
        for m in modes:
            r = out["telemetry"][str(n)][m]
            log("%-7d %-32s %9.0f %8.2f %8.2f %8.2f %10.1f %10.1f %9s%s"
                % (n, "%s) %s" % (m, r["name"]), r["updates_per_s"], r["tcpaod_cpu_s_per_100k"], r["kernel_cpu_s_per_100k"],
                   r["total_cpu_s_per_100k"], r["p50_us"], r["p99_us"],
                   "%.1f" % (r["tcpaod_rss_bytes"] / 2**20) if r["tcpaod_rss_bytes"] else "-",
                   "" if r["sustained"] else "  NOT SUSTAINED"))
    log("")
    log("%-32s %9s %11s %11s %14s %14s" % ("churn mode", "conn/s", "setup p50", "setup p99", "tcpaod ms/conn", "total ms/conn"))
    for m in modes:
        r = C[m]
        log("%-32s %9.0f %9.1f us %9.1f us %14.3f %14.3f" % ("%s) %s" % (m, r["name"]), r["conn_per_s"], r["setup_p50_us"],
                                                        r["setup_p99_us"], r["tcpaod_cpu_ms_per_conn"], r["total_cpu_ms_per_conn"]))
    for m, r in idle.items():
        log("idle %s) %s: %d flows, %.0f bytes RSS per established flow (host A), CPU per idle flow per hour %.2e s "
            "(daemons: %.3f s/h with no flows, %.3f s/h with %d)" % (m, bench.MODES[m], r["established"], r["rss_per_flow_bytes"],
                                                                   r["cpu_s_per_flow_hour"], r["cpu_s_per_hour_no_flows"],
                                                                   r["cpu_s_per_hour_with_flows"], r["established"]))
    for qs, r in out["spread"].items():
        sh = r["queue_shares"]
        log("spread %-10s 2 workers per host, %d connections between one host pair (mode d): %.0f upd/s, total CPU %.2f s/100k, "
            "p99 %.1f us; share of packets per queue: A %s, B %s"
            % (qs, o.fleet_spread_n, r["updates_per_s"], r["total_cpu_s_per_100k"], r["p99_us"],
               " / ".join("%.0f%%" % (100 * v) for v in sh.get("a", {}).values()),
               " / ".join("%.0f%%" % (100 * v) for v in sh.get("b", {}).values())))
    log("ratios: " + ", ".join("%s = %.2f" % kv for kv in ratios.items()))
    for n in ns_:
        for m in modes:
            for r in tele[n][m]:
                if r.get("daemon_counters"):
                    log("WARNING: N=%d mode %s tcpaod counters: %s" % (n, m, r["daemon_counters"]))
    for m in modes:
        for r in churn[m]:
            if r.get("daemon_counters"):
                log("NOTE: churn mode %s tcpaod counters: %s" % (m, r["daemon_counters"]))
    log("fleet run took %d s" % out["duration_s"])
    if o.json:
        with open(o.json, "w") as fh:
            json.dump(result, fh, indent=2)
        log("JSON written to %s" % o.json)


HZ = os.sysconf("SC_CLK_TCK")
