#!/usr/bin/env python3
"""tcpaod performance benchmark: ONE run, all modes side by side, the same tools for each.

Two namespace hosts (A 192.0.2.1, B 192.0.2.2) on a veth pair; both hosts, their gateways and
the traffic share this machine's cores. Modes:
  a  plain TCP
  b  the kernel's TCP-MD5 (RFC 2385; tcpbench sets TCP_MD5SIG on both ends)
  c  tcpaod passthrough on both hosts (same NFQUEUE I/O path, no TCP-AO work): the ceiling
  d  tcpaod, TCP-AO HMAC-SHA-1-96, on both hosts
  e  tcpaod, TCP-AO AES-128-CMAC-96, on both hosts
For each: bulk throughput (tcpbench bulk: bytes the server received / time; median of the
repetitions, which are interleaved across modes), 64-byte request/response latency p50/p99
(tcpbench rr), and whole-machine busy CPU seconds per GB moved. Then tcpaod's resident memory
with 10,000 and 100,000 idle flows, and optionally a soak run sampling its memory.

usage: scripts/bench [--json FILE] [--seconds 5] [--reps 3] [--rr-count 20000] [--modes abcdefg]
                     [--flows 10000,100000] [--soak SECONDS]
"""
import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
TCPAOD = os.environ.get("TCPAOD_BIN", os.path.join(ROOT, ".build", "release", "tcpaod"))
WORK = tempfile.mkdtemp(prefix="tcpaod-bench-")
A, B = "bench-a", "bench-b"
AIP, BIP = "192.0.2.1", "192.0.2.2"
PORT = 5201
MD5 = "tcp-md5 benchmark secret"
SECRET = "tcp-ao benchmark secret!"
MODES = {
    "a": "plain TCP",
    "b": "kernel TCP-MD5",
    "c": "tcpaod passthrough",
    "d": "tcpaod TCP-AO HMAC-SHA-1-96",
    "e": "tcpaod TCP-AO AES-128-CMAC-96",
    "f": "tcpaod HMAC-SHA-1-96, flow-state memory",
    "g": "f + conntrack active (no labels)",
}
# g is f with a counter-only `-m conntrack` rule in each host: the kernel tracks every packet
# as with flow-state: conntrack, but no label is read or written. d/g is what the labels cost,
# g/f what connection tracking itself costs on this bed (where nothing else enables it).
# d and e keep flow state in conntrack labels (flow-state: conntrack, the default); f is d with
# the state in memory only: d/f is what the state store costs.


def log(s):
    print(s, flush=True)


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, **kw)


def ns(name, args):
    return ["ip", "netns", "exec", name] + list(args)


def setup_net():
    for n in (A, B):
        run(["ip", "netns", "del", n])
        run(["ip", "netns", "add", n])
        run(ns(n, ["ip", "link", "set", "lo", "up"]))
    run(["ip", "link", "add", "ba", "netns", A, "type", "veth", "peer", "name", "bb", "netns", B])
    run(ns(A, ["ip", "addr", "add", AIP + "/24", "dev", "ba"]))
    run(ns(B, ["ip", "addr", "add", BIP + "/24", "dev", "bb"]))
    for n, d in ((A, "ba"), (B, "bb")):
        run(ns(n, ["ip", "link", "set", d, "up"]))
    run(ns(A, ["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"]))
    time.sleep(0.5)


def teardown_net():
    for n in (A, B):
        for pid in run(["ip", "netns", "pids", n]).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        run(["ip", "netns", "del", n])


def cpu_busy_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


HZ = os.sysconf("SC_CLK_TCK")


def config(name, mode, max_flows=65536, threads=1, extra=""):
    path = os.path.join(WORK, name + ".yaml")
    peer = BIP if name == "a" else AIP
    alg = "aes-128-cmac-96" if mode == "e" else "hmac-sha-1-96"
    extra += "passthrough: true\n" if mode == "c" else ("flow-state: memory\n" if mode in "fg" else "")
    with open(path, "w") as f:
        f.write("mode: host\nqueue: 100\nthreads: %d\nstats-file: %s/%s.stats.json\nstats-interval: 0\nmax-flows: %d\n%s"
                "key-chains:\n  - name: k\n    keys:\n      - { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: %s, key-string: \"%s\" }\n"
                "peers:\n  - { name: peer, prefix: %s/32, key-chain: k }\n"
                % (threads, WORK, name, max_flows, extra, alg, SECRET, peer))
    os.chmod(path, 0o600)
    return path


class Daemons:
    def __init__(self, mode, max_flows=65536, threads=1, extra=""):
        self.procs = []
        for name, n in (("a", A), ("b", B)):
            stats = os.path.join(WORK, name + ".stats.json")
            if os.path.exists(stats):
                os.unlink(stats)
            logf = open(os.path.join(WORK, name + ".log"), "w")
            p = subprocess.Popen(ns(n, [TCPAOD, "run", "--config", config(name, mode, max_flows, threads, extra)]), stdout=logf, stderr=subprocess.STDOUT)
            self.procs.append((name, p))
            for _ in range(100):
                if os.path.exists(stats):
                    break
                if p.poll() is not None:
                    raise SystemExit("tcpaod failed to start: " + open(logf.name).read())
                time.sleep(0.05)

    def pid(self, name):
        """The tcpaod process itself (ip netns exec execs it, so the Popen pid is tcpaod's)."""
        return dict(self.procs)[name].pid

    def stats(self, name):
        time.sleep(1.2)
        with open(os.path.join(WORK, name + ".stats.json")) as f:
            return json.load(f)

    def stop(self):
        for _, p in self.procs:
            p.send_signal(signal.SIGTERM)
        for _, p in self.procs:
            p.wait(20)


def tcpbench_server(md5):
    args = [os.path.join(WORK, "tcpbench"), "server", "--listen", BIP, "--port", str(PORT)]
    if md5:
        args += ["--md5", MD5, "--peer", AIP]
    p = subprocess.Popen(ns(B, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    return p


def client(args, md5, timeout):
    a = [os.path.join(WORK, "tcpbench")] + args + ["--connect", BIP, "--port", str(PORT)] + (["--md5", MD5] if md5 else [])
    r = run(ns(A, a), timeout=timeout)
    if r.returncode != 0:
        raise SystemExit("tcpbench %s failed: %s" % (args[0], r.stderr))
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure_mode(mode, seconds, rr_count, do_rr):
    md5 = mode == "b"
    d = Daemons(mode) if mode in "cdefg" else None
    if mode == "g":
        for n in (A, B):
            run(ns(n, ["iptables", "-t", "mangle", "-A", "OUTPUT", "-p", "tcp", "-m", "conntrack", "--ctstate", "ESTABLISHED"]))
    srv = tcpbench_server(md5)
    try:
        c0, t0 = cpu_busy_ticks(), time.time()
        bulk = client(["bulk", "--seconds", str(seconds)], md5, seconds + 60)
        cpu = (cpu_busy_ticks() - c0) / HZ
        bulk["cpu_s_per_gb"] = cpu / (bulk["bytes"] / 1e9)
        bulk["wall"] = time.time() - t0
        rr = client(["rr", "--count", str(rr_count), "--size", "64"], md5, 300) if do_rr else None
        drops = {}
        if d and mode in "defg":
            for name in ("a", "b"):
                c = d.stats(name)["counters"]["total"]
                drops.update({"%s %s" % (name, k): v for k, v in c.items() if k.startswith("dropped-") and v})
        return bulk, rr, drops
    finally:
        srv.kill()
        srv.wait()
        if d:
            d.stop()
        if mode == "g":
            for n in (A, B):
                run(ns(n, ["iptables", "-t", "mangle", "-D", "OUTPUT", "-p", "tcp", "-m", "conntrack", "--ctstate", "ESTABLISHED"]))


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        m = re.search(r"VmRSS:\s+(\d+) kB", f.read())
    return int(m.group(1)) * 1024


def memory(counts):
    """tcpaod's resident memory with N idle flows (TCP-AO HMAC-SHA-1-96, host A), each count
    measured with a fresh daemon: RSS with N established idle connections minus RSS with none."""
    out = []
    ports = ",".join(str(6000 + i) for i in range(4))
    # The server never accepts: connections wait in the accept queues (no descriptor each).
    run(ns(B, ["sysctl", "-qw", "net.core.somaxconn=65535", "net.ipv4.tcp_max_syn_backlog=65535"]))
    for n in counts:
        d = Daemons("d", max_flows=n + 10000)
        srv = subprocess.Popen(ns(B, [os.path.join(WORK, "idleconns"), "server", "--listen", BIP, "--ports", ports, "--backlog", "65535"]),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        srv.stdout.readline()
        try:
            time.sleep(1)
            base = rss_bytes(d.pid("a"))
            cli = subprocess.Popen(ns(A, [os.path.join(WORK, "idleconns"), "client", "--connect", BIP, "--ports", ports, "--count", str(n)]),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = cli.stdout.readline()
            if not line.startswith("READY"):
                raise SystemExit("idleconns: %s %s" % (line, cli.stderr.read()))
            time.sleep(2)
            st = d.stats("a")
            flows = sum(q["flows"] for q in st["queues"])
            rss = rss_bytes(d.pid("a"))
            per = (rss - base) / max(flows, 1)
            # Two keyed HMAC-SHA-1 contexts per flow (send and receive), each an inner and an
            # outer SHA_CTX (2 x 96 bytes) in a 208-byte malloc chunk.
            keyed = 2 * 208
            out.append({"idle_flows": flows, "rss_bytes": rss, "baseline_rss_bytes": base, "bytes_per_flow": per,
                        "keyed_context_bytes_per_flow": keyed, "beyond_keyed_contexts_bytes_per_flow": per - keyed})
            log("    %6d idle flows: tcpaod RSS %.1f MiB (%.1f MiB with none): %.0f bytes per flow, %.0f beyond the keyed contexts"
                % (flows, rss / 2**20, base / 2**20, per, per - keyed))
            cli.stdin.close()
            cli.wait(120)
        finally:
            srv.kill()
            d.stop()
    return out


def soak(seconds):
    """Memory over a long run: repeated bulk transfers (new connections each time, old ones
    lingering out), tcpaod's RSS sampled every 10 s."""
    d = Daemons("d")
    srv = tcpbench_server(False)
    samples = []
    t0 = time.time()
    try:
        while time.time() - t0 < seconds:
            client(["bulk", "--seconds", "4"], False, 120)
            client(["rr", "--count", "2000", "--size", "64"], False, 120)
            samples.append((round(time.time() - t0), rss_bytes(d.pid("a")), rss_bytes(d.pid("b"))))
            time.sleep(max(0, 10 - (time.time() - t0) % 10))
    finally:
        srv.kill()
        drops = {k: v for k, v in d.stats("a")["counters"]["total"].items() if k.startswith("dropped-") and v}
        d.stop()
    rss_a = [s[1] for s in samples]
    half = len(rss_a) // 2
    return {"seconds": seconds, "samples": samples, "rss_first_mib": rss_a[0] / 2**20, "rss_last_mib": rss_a[-1] / 2**20,
            "rss_max_mib": max(rss_a) / 2**20, "second_half_growth_mib": (max(rss_a[half:]) - min(rss_a[half:])) / 2**20, "drops": drops}


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for l in f:
            if l.startswith("model name"):
                model = l.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rr-count", type=int, default=20000)
    ap.add_argument("--modes", default="abcdefg")
    ap.add_argument("--flows", default="10000,100000")
    ap.add_argument("--soak", type=int, default=0)
    # The peers part (scripts/bench/peers.py): check/start/reload times and per-packet costs with N peers.
    ap.add_argument("--peers", default="", help="e.g. 1000,10000,50000")
    # --fleet runs the fleet benchmark (fleet.py) instead of the above; its own options:
    ap.add_argument("--fleet", action="store_true")
    ap.add_argument("--fleet-n", default="1000,10000,max")
    ap.add_argument("--fleet-seconds", type=int, default=10)
    ap.add_argument("--fleet-reps", type=int, default=1)
    ap.add_argument("--fleet-idle-seconds", type=int, default=30)
    ap.add_argument("--fleet-idle-n", type=int, default=0)
    # 2 workers per host, N connections between one host pair: queue-spread addresses vs connection.
    ap.add_argument("--fleet-spread-n", type=int, default=1000)
    o = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    for src, out in (("tcpbench.c", "tcpbench"), ("idleconns.c", "idleconns"), ("fleetload.c", "fleetload")):
        r = run(["gcc", "-O2", "-o", os.path.join(WORK, out), os.path.join(HERE, src)])
        if r.returncode:
            raise SystemExit(r.stderr)
    if o.fleet:
        import fleet
        return fleet.main(o, sys.modules[__name__])
    t_start = time.time()
    setup_net()
    result = {"machine": machine(), "settings": vars(o), "modes": {}}
    log("machine: %(cpu)s, %(cores)d cores, kernel %(kernel)s" % result["machine"])
    try:
        bulk = {m: [] for m in o.modes}
        rr, cpu, drops = {m: [] for m in o.modes}, {m: [] for m in o.modes}, {}
        for rep in range(o.reps):
            # Alternate the order from one repetition to the next, so slow drift of the machine
            # does not favour the modes that come first.
            for m in (o.modes if rep % 2 == 0 else o.modes[::-1]):
                b, r, dr = measure_mode(m, o.seconds, o.rr_count, True)
                bulk[m].append(b["gbit_per_s"])
                cpu[m].append(b["cpu_s_per_gb"])
                rr[m].append(r)
                if dr:
                    drops[m] = dr
                log("  rep %d %s %-30s %6.3f Gbit/s  %6.2f CPU s/GB%s" % (rep + 1, m, MODES[m], b["gbit_per_s"], b["cpu_s_per_gb"],
                                                                          "  rr p50 %.1f us p99 %.1f us" % (r["p50_us"], r["p99_us"]) if r else ""))
        for m in o.modes:
            result["modes"][m] = {"name": MODES[m], "bulk_gbit_per_s": statistics.median(bulk[m]), "bulk_runs": bulk[m],
                                  "bulk_min": min(bulk[m]), "bulk_max": max(bulk[m]),
                                  "cpu_s_per_gb": statistics.median(cpu[m]),
                                  "rr_p50_us": statistics.median(r["p50_us"] for r in rr[m]), "rr_p99_us": statistics.median(r["p99_us"] for r in rr[m]),
                                  "rr_runs": [(r["p50_us"], r["p99_us"]) for r in rr[m]], "drops": drops.get(m, {})}
        g = {m: result["modes"][m]["bulk_gbit_per_s"] for m in o.modes}
        ratios = {}
        for num, den in (("d", "b"), ("d", "c"), ("e", "b"), ("e", "c"), ("d", "f"), ("d", "g"), ("g", "f")):
            if num in g and den in g:
                ratios["%s/%s" % (num, den)] = g[num] / g[den]
        for num in ("d", "e"):
            if num in o.modes and "c" in o.modes:
                ratios["rr p50 %s/c" % num] = result["modes"][num]["rr_p50_us"] / result["modes"]["c"]["rr_p50_us"]
        for num, den in (("d", "f"), ("d", "g"), ("g", "f")):
            if num in o.modes and den in o.modes:
                ratios["rr p50 %s/%s" % (num, den)] = result["modes"][num]["rr_p50_us"] / result["modes"][den]["rr_p50_us"]
        result["ratios"] = ratios
        if o.peers:
            import peers as peerbench
            log("peers (one key chain per peer, tcpaod on host A):")
            result["peers"] = peerbench.scale([int(x) for x in o.peers.split(",")], TCPAOD, WORK, ns, run, A, B, BIP, log,
                                              os.environ.get("TCPAOD_MICROBENCH_BIN", os.path.join(os.path.dirname(TCPAOD), "tcpaod-microbench")))
        if o.flows:
            log("memory (tcpaod on host A, HMAC-SHA-1-96):")
            result["memory"] = memory([int(x) for x in o.flows.split(",")])
        if o.soak:
            log("soak: %d s of repeated transfers, sampling tcpaod's RSS" % o.soak)
            result["soak"] = soak(o.soak)
    finally:
        teardown_net()
    result["duration_s"] = round(time.time() - t_start)

    log("")
    log("%d repetitions per mode, interleaved, each a %d s bulk transfer and %d round trips; medians (bulk min-max)" % (o.reps, o.seconds, o.rr_count))
    log("%-34s %20s %10s %11s %11s" % ("mode", "bulk Gbit/s", "CPU s/GB", "rr p50 us", "rr p99 us"))
    for m in o.modes:
        r = result["modes"][m]
        log("%-34s %7.3f (%5.3f-%5.3f) %9.2f %11.1f %11.1f" % ("%s) %s" % (m, r["name"]), r["bulk_gbit_per_s"], r["bulk_min"], r["bulk_max"],
                                                                r["cpu_s_per_gb"], r["rr_p50_us"], r["rr_p99_us"]))
    log("ratios: " + ", ".join("%s = %.2f" % kv for kv in result["ratios"].items()))
    for mem in result.get("memory", []):
        log("memory: %d idle flows -> %.0f bytes per flow (%.0f beyond the keyed contexts)"
            % (mem["idle_flows"], mem["bytes_per_flow"], mem["beyond_keyed_contexts_bytes_per_flow"]))
    if "soak" in result:
        s = result["soak"]
        log("soak %d s: RSS first %.1f MiB, last %.1f MiB, max %.1f MiB; growth over the second half %.2f MiB"
            % (s["seconds"], s["rss_first_mib"], s["rss_last_mib"], s["rss_max_mib"], s["second_half_growth_mib"]))
    for m, dr in drops.items():
        log("WARNING: mode %s dropped segments: %s" % (m, dr))
    log("run took %d s" % result["duration_s"])
    if o.json:
        with open(o.json, "w") as f:
            json.dump(result, f, indent=2)
        log("JSON written to %s" % o.json)


if __name__ == "__main__":
    main()
