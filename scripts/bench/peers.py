#!/usr/bin/env python3
"""Writes a tcpaod configuration with N peers, each with its own key chain of one or two keys
(the applicability draft's one MKT per peer pair): the bulk are IPv6 hosts in 2001:db8:ffff::/48
(documentation range, RFC 3849), plus optional real peers.

usage: scripts/bench/peers.py N OUT.yaml [--mode host|gateway] [--real NAME=PREFIX ...]
       [--extra "yaml lines"] [--ports 179,830]
"""
import argparse
import os


def bulk_prefix(i):
    # 2001:db8:ffff::/48 split into /128s: host i+1 (never the all-zero address).
    n = i + 1
    return "2001:db8:ffff::%x:%x/128" % (n >> 16, n & 0xFFFF)


def write(n, path, mode="host", real=(), extra="", ports=None, secret="tcp-ao peers benchmark!"):
    """`real`: [(name, prefix)] peers to put first (they share chain `k-real`)."""
    lines = ["mode: %s" % mode]
    if extra:
        lines += extra.rstrip("\n").split("\n")
    lines.append("key-chains:")
    if real:
        lines.append("  - name: k-real\n    keys:\n      - { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: hmac-sha-1-96, key-string: \"%s\" }" % secret)
    for i in range(n):
        lines.append("  - name: k%d" % i)
        lines.append("    keys:")
        lines.append("      - { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: hmac-sha-1-96, key-string: \"peer %d key one\" }" % i)
        if i % 2:
            lines.append("      - { key-id: 2, send-id: 2, recv-id: 2, crypto-algorithm: aes-128-cmac-96, key-string: \"peer %d key two\" }" % i)
    lines.append("peers:")
    pm = ", ports: [%s]" % ports if ports else ""
    for name, prefix in real:
        lines.append("  - { name: %s, prefix: %s, key-chain: k-real }" % (name, prefix))
    for i in range(n):
        lines.append("  - { name: dev%d, prefix: %s, key-chain: k%d%s }" % (i, bulk_prefix(i), i, pm))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


# ---- the benchmark's peers part (scripts/bench/run --peers 1000,10000,50000) -------------------
#
# Per N, on the benchmark's host A (bench.py's two namespaces): `tcpaod check` time, the daemon's
# start to READY=1 and a SIGHUP reload (RELOADING=1 to READY=1, the sd_notify protocol on a socket
# of ours), the number of NFQUEUE rules and the kernel's per-packet cost of the rules (UDP round
# trip A-B matched by no peer, so it walks every tcpaod rule); then the engine's per-lookup cost
# at 10 vs 50,000 peers from tcpaod-microbench.


def udp_rtt_us(b, ns, run, a_ns, b_ns, b_ip, count=2000):
    """Median UDP round trip A -> B (a small echo server in B), microseconds."""
    import subprocess
    import sys
    import time
    srv = subprocess.Popen(ns(b_ns, [sys.executable, "-c", "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('%s',9999))\n"
                                     "while True:\n d,a=s.recvfrom(64);s.sendto(d,a)\n" % b_ip]))
    time.sleep(0.5)
    cli = ("import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(5);t=[]\n"
           "for i in range(%d):\n t0=time.perf_counter();s.sendto(b'x',('%s',9999));s.recvfrom(64);t.append(time.perf_counter()-t0)\n"
           "t.sort();print(t[len(t)//2]*1e6)\n" % (count, b_ip))
    try:
        return float(run(ns(a_ns, [sys.executable, "-c", cli]), timeout=600).stdout.strip())
    finally:
        srv.kill()
        srv.wait()


def scale(counts, tcpaod, work, ns, run, a_ns, b_ns, b_ip, log, microbench=None, reps=3):
    import signal
    import socket
    import statistics
    import subprocess
    import time
    rows = []
    base = udp_rtt_us(None, ns, run, a_ns, b_ns, b_ip)
    log("    UDP round trip A-B with no rules: %.1f us" % base)
    for n in counts:
        cfg = write(n, os.path.join(work, "peers-%d.yaml" % n),
                    extra="queue: 100\nthreads: 1\nstats-file: %s/peers.stats.json\nstats-interval: 0" % work)
        # Each time measured `reps` times (a shared 2-core machine is noisy): median and range.
        checks, starts, reloads, stops = [], [], [], []
        for _ in range(reps):
            t0 = time.time()
            r = run([tcpaod, "check", "--config", cfg], timeout=600)
            checks.append(time.time() - t0)
            if r.returncode:
                raise SystemExit("tcpaod check failed: " + r.stdout[-2000:] + r.stderr[-2000:])
        path = os.path.join(work, "notify.sock")
        rules = rtt = None
        for rep in range(reps):
            if os.path.exists(path):
                os.unlink(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(path)
            sock.settimeout(600)

            def wait(word):
                while word not in sock.recv(4096).decode():
                    pass
            logf = open(os.path.join(work, "peers-%d.log" % n), "w")
            t0 = time.time()
            p = subprocess.Popen(ns(a_ns, [tcpaod, "run", "--config", cfg]), env=dict(os.environ, NOTIFY_SOCKET=path),
                                 stdout=logf, stderr=subprocess.STDOUT)
            try:
                wait("READY=1")
                starts.append(time.time() - t0)
                if rep == 0:
                    rules = run(ns(a_ns, ["ip6tables", "-t", "mangle", "-S"])).stdout.count("-j NFQUEUE")
                    rtt = udp_rtt_us(None, ns, run, a_ns, b_ns, b_ip)
                time.sleep(1)
                t0 = time.time()
                p.send_signal(signal.SIGHUP)
                wait("RELOADING=1")
                wait("READY=1")
                reloads.append(time.time() - t0)
            finally:
                t0 = time.time()
                p.send_signal(signal.SIGTERM)
                p.wait(120)
                stops.append(time.time() - t0)
                sock.close()
                logf.close()

        def rng(v):
            return "" if len(v) < 2 else " (%.2f-%.2f)" % (min(v), max(v))
        t_check, t_start, t_reload, t_stop = (statistics.median(v) for v in (checks, starts, reloads, stops))
        row = {"peers": n, "check_s": t_check, "start_to_ready_s": t_start, "reload_s": t_reload, "stop_s": t_stop,
               "check_all_s": checks, "start_all_s": starts, "reload_all_s": reloads, "reps": reps,
               "nfqueue_rules_v6": rules, "udp_rtt_us": rtt, "udp_rtt_no_rules_us": base}
        rows.append(row)
        log("    %6d peers: check %.2f s%s, start to READY %.2f s%s, SIGHUP reload %.2f s%s, stop %.2f s; %d NFQUEUE rules; UDP round trip %.1f us (%.1f without rules)"
            % (n, t_check, rng(checks), t_start, rng(starts), t_reload, rng(reloads), t_stop, rules, rtt, base))
    table = None
    if microbench and os.access(microbench, os.X_OK):
        r = run([microbench, "200000"], timeout=900)
        table = r.stdout[r.stdout.find("peer lookup (EngineConfig"):].split("\n\n")[0]
        for line in table.splitlines():
            log("    " + line)
    else:
        log("    (no tcpaod-microbench at %s: swift build -c release --product tcpaod-microbench, for the per-lookup figures)" % microbench)
    return {"rows": rows, "lookup_table": table}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("out")
    ap.add_argument("--mode", default="host")
    ap.add_argument("--real", action="append", default=[], help="NAME=PREFIX")
    ap.add_argument("--extra", default="")
    ap.add_argument("--ports", default=None)
    o = ap.parse_args()
    write(o.n, o.out, o.mode, [tuple(r.split("=", 1)) for r in o.real], o.extra, o.ports)
