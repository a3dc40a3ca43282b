#!/usr/bin/env python3
"""tcpaod's Prometheus metrics end to end: a real Prometheus server (Debian's `prometheus`)
scrapes a real tcpaod every second, both inside one network namespace; real transfers between
two namespaces, each protected by its tcpaod; Prometheus's HTTP API is then asked with PromQL
and its answers compared with what tcpaod itself reports (`tcpaod stats --json`, `tcpaod
status --json` over the control socket).

usage: metrics.py [-k SUBSTRING] [--list]     (root; TCPAOD_BIN=path to the tcpaod binary)

Topology (from e2e.py, namespaces prefixed "mx<pid>-"):
  A 192.0.2.1 / 2001:db8:1::1  <-veth->  B 192.0.2.2 / 2001:db8:1::2
  tcpaod on A with metrics on 127.0.0.1:9477, Prometheus on A's 127.0.0.1:9090 scraping it;
  tcpaod on B with metrics on [::1]:9477.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import e2e  # noqa: E402  (its temporary directory, e2e.WORK, is ours too and removed at the end)
from e2e import Daemon, Fail, Topology, check, key_yaml, log, read_file, wait_for, write_config  # noqa: E402

e2e.TAG = "mx%d" % (os.getpid() % 100000)
WORK = e2e.WORK
PROMETHEUS = os.environ.get("PROMETHEUS_BIN", "/usr/bin/prometheus")
SECRET = "metrics e2e shared secret 0123456789"
SECRET2 = "the metrics test's second key, sent later"

# One HTTP request from inside a namespace (Python's http.client: any status, the headers, the
# body), printed as JSON.
HTTP = textwrap.dedent(r"""
    import http.client, json, sys
    host, port, method, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request(method, path)
    r = c.getresponse()
    body = r.read().decode("utf-8", "replace")
    print(json.dumps({"status": r.status, "headers": {k.lower(): v for k, v in r.getheaders()}, "body": body}))
""")


def http(ns, host, port, path, method="GET"):
    r = ns.run([sys.executable, "-c", HTTP, host, str(port), method, path], check_rc=False, timeout=30)
    if r.returncode != 0:
        raise Fail("HTTP %s http://%s:%d%s from %s failed: %s" % (method, host, port, path, ns.name, r.stderr.strip()[-400:]))
    return json.loads(r.stdout)


def parse_exposition(text):
    """{(name, frozenset(labels)): value} and {name: type} of the text format."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            types[name] = typ
            continue
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        labels = {}
        if "{" in head:
            name, rest = head.split("{", 1)
            rest = rest[:-1]
            while rest:
                k, rest = rest.split("=\"", 1)
                v, i = "", 0
                while rest[i] != '"':
                    if rest[i] == "\\":
                        i += 1
                    v += rest[i]
                    i += 1
                labels[k] = v
                rest = rest[i + 1:].lstrip(",")
        else:
            name = head
        samples[(name, frozenset(labels.items()))] = float(value)
    return samples, types


class Prometheus:
    """Debian's prometheus in a namespace, its own storage in the test's directory, scraping
    `target` every second; nothing in the host's namespace."""

    def __init__(self, ns, target, listen="127.0.0.1:9090"):
        self.ns, self.listen = ns, listen
        self.host, self.port = listen.rsplit(":", 1)[0], int(listen.rsplit(":", 1)[1])
        self.dir = os.path.join(WORK, "prometheus")
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        self.config = os.path.join(self.dir, "prometheus.yml")
        with open(self.config, "w") as f:
            f.write(textwrap.dedent("""\
                global:
                  scrape_interval: 1s
                  scrape_timeout: 1s
                  evaluation_interval: 1s
                scrape_configs:
                  - job_name: tcpaod
                    static_configs:
                      - targets: ["%s"]
                """ % target))
        self.out = os.path.join(self.dir, "prometheus.log")
        self.f = open(self.out, "w")
        self.p = ns.popen([PROMETHEUS, "--config.file=" + self.config, "--storage.tsdb.path=" + os.path.join(self.dir, "data"),
                           "--web.listen-address=" + listen, "--storage.tsdb.retention.time=1h", "--log.level=info"],
                          stdout=self.f, stderr=subprocess.STDOUT)
        wait_for(lambda: self.ready(), "Prometheus to be ready on %s" % listen, 90)

    def ready(self):
        if self.p.poll() is not None:
            raise Fail("prometheus exited (%d):\n%s" % (self.p.returncode, read_file(self.out)[-3000:]))
        try:
            return http(self.ns, self.host, self.port, "/-/ready")["status"] == 200
        except Fail:
            return False

    def api(self, path):
        r = http(self.ns, self.host, self.port, path)
        check(r["status"] == 200, "Prometheus %s: HTTP %d %s" % (path, r["status"], r["body"][:400]))
        v = json.loads(r["body"])
        check(v["status"] == "success", "Prometheus %s: %s" % (path, v))
        return v["data"]

    def query(self, promql):
        """The instant vector of `promql` now: [(labels, value)]."""
        from urllib.parse import quote
        d = self.api("/api/v1/query?query=" + quote(promql))
        check(d["resultType"] in ("vector", "scalar"), "%s: %s" % (promql, d))
        if d["resultType"] == "scalar":
            return [({}, float(d["result"][1]))]
        return [(r["metric"], float(r["value"][1])) for r in d["result"]]

    def scalar(self, promql):
        r = self.query(promql)
        return r[0][1] if len(r) == 1 else None

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise Fail("prometheus did not stop within 30 s")


def ctl(*args):
    r = e2e.sh([e2e.TCPAOD] + list(args), check_rc=False)
    check(r.returncode == 0, "tcpaod %s: exit %d: %s%s" % (" ".join(args), r.returncode, r.stdout, r.stderr))
    check(SECRET not in r.stdout + r.stderr and SECRET2 not in r.stdout + r.stderr, "a secret in tcpaod %s" % " ".join(args))
    return json.loads(r.stdout)


def configs(listen_a, inst_a, inst_b):
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
    keys = [key_yaml(1, 1, 1, "hmac-sha-256-128", SECRET),
            key_yaml(2, 2, 2, "aes-128-cmac-96", SECRET2, ", send-lifetime: { start-date-time: %s, no-end-time: true }" % later)]
    ca = write_config("mx-a", [("b", "192.0.2.2/32", [5001, 5002, 5003]), ("b6", "2001:db8:1::2/128", [5001, 5002, 5003])], keys,
                      extra="instance: %s\nmetrics: { listen: %s }\n" % (inst_a, listen_a))
    cb = write_config("mx-b", [("a", "192.0.2.1/32", [5001, 5002, 5003]), ("a6", "2001:db8:1::1/128", [5001, 5002, 5003])], keys,
                      extra="instance: %s\nmetrics:\n  listen: \"[::1]:9477\"\n" % inst_b)
    return ca, cb


def settled(prom, what, promql, from_tcpaod, timeout=60):
    """Waits until tcpaod's own count is unchanged over two reads more than a scrape apart and
    Prometheus's latest sample equals it; returns the value."""
    last = [None, 0.0]

    def same():
        v = from_tcpaod()
        now = time.time()
        if v != last[0]:
            last[0], last[1] = v, now
            return False
        if now - last[1] < 2.5:  # unchanged for more than two scrape intervals
            return False
        p = prom.scalar(promql)
        return p is not None and p == v and v
    try:
        return wait_for(same, "%s: Prometheus's %s to equal tcpaod's" % (what, promql), timeout)
    except Fail:
        raise Fail("%s: Prometheus's `%s` = %s, tcpaod's = %s (after %d s)" % (what, promql, prom.scalar(promql), from_tcpaod(), timeout))


# ---- the tests --------------------------------------------------------------------------------

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


@test
def prometheus_scrapes_tcpaod():
    """A real Prometheus scrapes tcpaod's /metrics every second while unmodified socat clients
    transfer data A -> B over IPv4 and IPv6, then B -> A after a reload (SIGHUP) that also
    changes metrics.listen (which changes on restart only). Once the traffic has ended,
    PromQL `sum(tcpaod_segments_verified_total)`, `..._signed_total` and
    `sum(tcpaod_packets_total)` equal tcpaod's own `stats --json` and `status --json`; no
    counter went back across the reload (`resets()` is 0); the series carry the labels peer,
    key, reason, queue; the exposition has the process metrics and no secret; other paths get
    404, other methods 405; B's endpoint answers on [::1]."""
    topo = Topology()
    inst_a, inst_b = "%s-a" % e2e.TAG, "%s-b" % e2e.TAG
    prom = None
    try:
        a, b = e2e.two_hosts(topo)
        ca, cb = configs("127.0.0.1:9477", inst_a, inst_b)
        da, db = Daemon(a, ca, "mx-a"), Daemon(b, cb, "mx-b")
        wait_for(lambda: "metrics: http://127.0.0.1:9477/metrics" in da.log(), "A's metrics endpoint")
        wait_for(lambda: "metrics: http://[::1]:9477/metrics" in db.log(), "B's metrics endpoint")
        check(ctl("status", "--instance", inst_a, "--json")["metrics"] == "http://127.0.0.1:9477/metrics", "status shows the endpoint")

        # The endpoint itself.
        r = http(a, "127.0.0.1", 9477, "/metrics")
        check(r["status"] == 200 and r["headers"]["content-type"].startswith("text/plain; version=0.0.4"), "GET /metrics: %s" % r["status"])
        samples, types = parse_exposition(r["body"])
        names = set(n for n, _ in samples)
        for n in ["tcpaod_segments_signed_total", "tcpaod_segments_verified_total", "tcpaod_segments_dropped_total",
                  "tcpaod_packets_total", "tcpaod_queue_dropped_total", "tcpaod_flows", "tcpaod_flows_restored_total",
                  "tcpaod_reloads_total", "tcpaod_config_load_timestamp_seconds", "tcpaod_build_info",
                  "process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds"]:
            check(n in names, "%s missing from /metrics" % n)
        for n, t in types.items():
            check((t == "counter") == n.endswith("_total"), "%s is a %s" % (n, t))
        check(SECRET not in r["body"] and SECRET2 not in r["body"], "a secret in /metrics")
        for path, method, status in (("/", "GET", 404), ("/metrics/x", "GET", 404), ("/stats", "GET", 404),
                                     ("/metrics", "POST", 405), ("/metrics", "DELETE", 405)):
            got = http(a, "127.0.0.1", 9477, path, method)
            check(got["status"] == status, "%s %s: HTTP %d, expected %d" % (method, path, got["status"], status))
        check(http(a, "127.0.0.1", 9477, "/metrics", "POST")["headers"].get("allow") == "GET, HEAD", "405 without Allow")
        check(http(b, "::1", 9477, "/metrics")["status"] == 200, "B's [::1]:9477")
        log("    /metrics: %d series, %d families; 404 and 405 for the rest; B answers on [::1]:9477; no secret" % (len(samples), len(types)))

        # Prometheus, in A, scraping A's tcpaod.
        t0 = time.time()
        prom = Prometheus(a, "127.0.0.1:9477")
        wait_for(lambda: prom.scalar('up{job="tcpaod"}') == 1, "Prometheus to scrape tcpaod (up == 1)", 60)
        log("    Prometheus %s ready and scraping in %.1f s" % (e2e.sh([PROMETHEUS, "--version"]).stdout.split()[2], time.time() - t0))

        # Traffic A -> B, IPv4 and IPv6.
        for addr, port in (("192.0.2.2", 5001), ("2001:db8:1::2", 5002)):
            secs, ok = e2e.transfer(a, b, addr, port, 20 * 1000 * 1000)
            check(ok, "transfer to %s corrupted" % addr)
        # A reload, which also asks for another metrics address: that one changes on restart only.
        with open(ca) as f:
            text = f.read()
        with open(ca, "w") as f:
            f.write(text.replace("127.0.0.1:9477", "127.0.0.1:9478"))
        da.hup()
        wait_for(lambda: "metrics change only on restart" in da.log() and "configuration reloaded" in da.log(), "the reload")
        check(http(a, "127.0.0.1", 9477, "/metrics")["status"] == 200, "the endpoint moved on reload")
        # Traffic B -> A after the reload.
        secs, ok = e2e.transfer(b, a, "192.0.2.1", 5003, 20 * 1000 * 1000)
        check(ok, "transfer B -> A corrupted")

        def stats():
            return ctl("stats", "--instance", inst_a, "--json")["counters"]["total"]

        def status_packets():
            return sum(q["packets"] for q in ctl("status", "--instance", inst_a, "--json")["queues"])

        verified = settled(prom, "verified", "sum(tcpaod_segments_verified_total)", lambda: stats()["verified"])
        signed = settled(prom, "signed", "sum(tcpaod_segments_signed_total)", lambda: stats()["signed"])
        packets = settled(prom, "packets", "sum(tcpaod_packets_total)", status_packets)
        check(verified > 1000 and signed > 1000, "too little traffic counted: verified %d, signed %d" % (verified, signed))
        dropped = prom.scalar("sum(tcpaod_segments_dropped_total)")
        st = stats()
        check(dropped == sum(v for k, v in st.items() if k.startswith("dropped-")), "drops: Prometheus %s, tcpaod %s" % (dropped, st))
        log("    after the traffic: Prometheus = tcpaod: verified %d, signed %d, packets %d, dropped %d" % (verified, signed, packets, dropped))

        # Per peer and key, per queue; monotonic across the reload.
        per_peer = {m["peer"]: v for m, v in prom.query("sum by (peer) (tcpaod_segments_verified_total)")}
        st_peers = ctl("stats", "--instance", inst_a, "--json")["counters"]["peers"]
        for p in ("b", "b6"):
            check(per_peer.get(p) == st_peers[p]["verified"], "peer %s: Prometheus %s, tcpaod %s" % (p, per_peer.get(p), st_peers[p]["verified"]))
        check(per_peer["b"] > 0 and per_peer["b6"] > 0, "IPv4 and IPv6 peers both verified: %s" % per_peer)
        series = prom.query("tcpaod_segments_verified_total")
        check(all(set(m) >= {"peer", "key", "job", "instance"} for m, _ in series), "labels: %s" % [m for m, _ in series])
        check({m["key"] for m, _ in series} == {"1", "2"}, "keys: %s" % [m for m, _ in series])
        queues = {m["queue"] for m, _ in prom.query("tcpaod_packets_total")}
        check(queues == {"100", "101"}, "queues: %s" % queues)
        check({m["queue"] for m, _ in prom.query("tcpaod_queue_dropped_total")} == {"100", "101"}, "kernel queue counters")
        reasons = {m["reason"] for m, _ in prom.query("tcpaod_segments_dropped_total")}
        check({"bad-mac", "missing-ao", "unknown-key-id"} <= reasons, "reasons: %s" % reasons)
        check(prom.scalar("tcpaod_reloads_total") == 1, "tcpaod_reloads_total after one reload")
        check(prom.scalar("tcpaod_config_last_reload_successful") == 1, "last reload successful")
        resets = prom.scalar('sum(resets(tcpaod_segments_verified_total[10m])) + sum(resets(tcpaod_segments_signed_total[10m]))'
                             ' + sum(resets(tcpaod_packets_total[10m]))')
        check(resets == 0, "counters went back across the reload: resets() = %s" % resets)
        before = prom.scalar('max_over_time(sum(tcpaod_segments_verified_total)[10m:1s])')
        check(before == verified, "the largest verified count seen (%s) is the last (%s)" % (before, verified))
        rss = prom.scalar('process_resident_memory_bytes{job="tcpaod"}')
        start = prom.scalar('process_start_time_seconds{job="tcpaod"}')
        check(rss and rss > 1e6 and start and abs(start - da_start(da)) < 5, "process metrics: rss %s, start %s" % (rss, start))
        labels = prom.api("/api/v1/labels")
        values = []
        for l in labels:
            values += prom.api("/api/v1/label/%s/values" % l)
        check(not any(SECRET in v or SECRET2 in v for v in values), "a secret among Prometheus's label values")
        log("    per peer (b, b6) and key (1, 2), queues 100-101, kernel drops, drop reasons; no reset across the reload; "
            "process rss %.1f MB; %d label names, no secret" % (rss / 1e6, len(labels)))

        # A failed reload shows.
        with open(ca, "w") as f:
            f.write(text.replace("mode: host", "mode: sideways"))
        da.hup()
        wait_for(lambda: prom.scalar("tcpaod_config_last_reload_successful") == 0, "tcpaod_config_last_reload_successful == 0 after a bad reload")
        check(prom.scalar("tcpaod_reloads_total") == 1, "a failed reload counted as a reload")
        log("    a failed reload: tcpaod_config_last_reload_successful 0, tcpaod_reloads_total stays 1")
        prom.stop()
        prom = None
        da.stop()
        db.stop()
    finally:
        if prom is not None and prom.p.poll() is None:
            prom.p.kill()
        topo.close()


def da_start(d):
    """The daemon's start (epoch seconds), from /proc (its pid inside `ip netns exec` is the
    exec'd tcpaod's)."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/%d/stat" % d.p.pid) as f:
        start = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        btime = int(next(l for l in f if l.startswith("btime")).split()[1])
    return btime + start / ticks


def main():
    def missing():
        if not os.access(PROMETHEUS, os.X_OK):
            return "no prometheus at %s (scripts/deps test installs Debian's prometheus)" % PROMETHEUS
        return None
    return e2e.tier_main(TESTS, "metrics end-to-end tests", missing)


if __name__ == "__main__":
    sys.exit(main())
