#!/usr/bin/env python3
"""tcpaod end-to-end tests: real packets through real NFQUEUE, between network namespaces,
with unmodified applications (socat, sshd/ssh, a plain Python TCP client) and independent
checks (tcpdump captures verified by `tcpaod verify-pcap` and by scapy.contrib.tcpao).

usage: e2e.py [-k SUBSTRING] [--list]        (root; TCPAOD_BIN=path to the tcpaod binary)

Topologies (documentation addresses only):
  two hosts   A 192.0.2.1 / 2001:db8:1::1  <-veth->  B 192.0.2.2 / 2001:db8:1::2
  gateway     A 192.0.2.1 <-> G 192.0.2.254 | 198.51.100.254 <-> H 198.51.100.1
              (and 2001:db8:1::/64, 2001:db8:2::/64); tcpaod host mode on A, gateway mode on G,
              H runs nothing: G protects it.
"""
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
TCPAOD = os.environ.get("TCPAOD_BIN", os.path.join(ROOT, ".build", "release", "tcpaod"))
ALGORITHMS = ["hmac-sha-1-96", "aes-128-cmac-96", "hmac-sha-256-96", "hmac-sha-256-128"]
SCAPY_NAMES = {"hmac-sha-1-96": "HMAC-SHA-1-96", "aes-128-cmac-96": "AES-128-CMAC-96"}
BIG = int(os.environ.get("E2E_BIG_BYTES", 200 * 1000 * 1000))
WORK = tempfile.mkdtemp(prefix="tcpaod-e2e-")
TAG = "t%d" % (os.getpid() % 10000)


def log(msg):
    print(msg, flush=True)


class Fail(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def sh(args, check_rc=True, timeout=60, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check_rc and r.returncode != 0:
        raise Fail("command failed (%d): %s\n%s%s" % (r.returncode, " ".join(args), r.stdout, r.stderr))
    return r


class NS:
    """A network namespace and the processes started in it."""

    def __init__(self, name):
        self.name = "%s-%s" % (TAG, name)
        self.procs = []
        sh(["ip", "netns", "add", self.name])
        self.run(["ip", "link", "set", "lo", "up"])

    def cmd(self, args):
        return ["ip", "netns", "exec", self.name] + list(args)

    def run(self, args, **kw):
        return sh(self.cmd(args), **kw)

    def popen(self, args, **kw):
        p = subprocess.Popen(self.cmd(args), **kw)
        self.procs.append(p)
        return p

    def mac(self, dev):
        return self.run(["cat", "/sys/class/net/%s/address" % dev]).stdout.strip()

    def rules(self):
        return self.run(["iptables", "-t", "mangle", "-S"]).stdout + self.run(["ip6tables", "-t", "mangle", "-S"]).stdout

    def established(self, port):
        return [l for l in self.run(["ss", "-Htn", "state", "established"]).stdout.splitlines() if (":%d " % port) in l + " "]

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        subprocess.run(["ip", "netns", "pids", self.name], capture_output=True)
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def link(a, adev, b, bdev, addrs_a, addrs_b):
    sh(["ip", "link", "add", adev, "netns", a.name, "type", "veth", "peer", "name", bdev, "netns", b.name])
    for ns, dev, addrs in ((a, adev, addrs_a), (b, bdev, addrs_b)):
        for ad in addrs:
            ns.run(["ip", "addr", "add", ad, "dev", dev] + (["nodad"] if ":" in ad else []))
        ns.run(["ip", "link", "set", dev, "up"])


class Topology:
    def __init__(self):
        self.nss = []

    def ns(self, name):
        n = NS(name)
        self.nss.append(n)
        return n

    def close(self):
        for n in self.nss:
            n.close()


def two_hosts(topo):
    a, b = topo.ns("a"), topo.ns("b")
    link(a, "va", b, "vb", ["192.0.2.1/24", "2001:db8:1::1/64"], ["192.0.2.2/24", "2001:db8:1::2/64"])
    return a, b


def gateway_topology(topo):
    a, g, h = topo.ns("a"), topo.ns("g"), topo.ns("h")
    link(a, "va", g, "ga", ["192.0.2.1/24", "2001:db8:1::1/64"], ["192.0.2.254/24", "2001:db8:1::fe/64"])
    link(g, "gh", h, "vh", ["198.51.100.254/24", "2001:db8:2::fe/64"], ["198.51.100.1/24", "2001:db8:2::1/64"])
    a.run(["ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.254"])
    a.run(["ip", "-6", "route", "add", "2001:db8:2::/64", "via", "2001:db8:1::fe"])
    h.run(["ip", "route", "add", "default", "via", "198.51.100.254"])
    h.run(["ip", "-6", "route", "add", "default", "via", "2001:db8:2::fe"])
    g.run(["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
    return a, g, h


# ---- configuration and the daemon ------------------------------------------------------------

def key_yaml(key_id, send_id, recv_id, alg, secret, extra=""):
    return ("      - { key-id: %d, send-id: %d, recv-id: %d, crypto-algorithm: %s, key-string: \"%s\"%s }\n"
            % (key_id, send_id, recv_id, alg, secret, extra))


def write_config(name, peers, keys, mode="host", threads=2, queue=100, extra=""):
    """peers: list of (name, prefix, ports or None). keys: YAML lines of the chain's keys."""
    path = os.path.join(WORK, name + ".yaml")
    stats = os.path.join(WORK, name + ".stats.json")
    body = "mode: %s\nqueue: %d\nthreads: %d\nstats-file: %s\nstats-interval: 0\n%s" % (mode, queue, threads, stats, extra)
    body += "key-chains:\n  - name: k\n    keys:\n" + "".join(keys)
    body += "peers:\n"
    for pname, prefix, ports in peers:
        body += "  - { name: %s, prefix: \"%s\", key-chain: k%s }\n" % (pname, prefix, ", ports: [%s]" % ", ".join(map(str, ports)) if ports else "")
    with open(path, "w") as f:
        f.write(body)
    os.chmod(path, 0o600)
    return path


class Daemon:
    def __init__(self, ns, config, name, env=None, start_timeout=15):
        self.ns, self.config, self.name = ns, config, name
        self.logpath = os.path.join(WORK, name + ".log")
        self.stats_path = config.replace(".yaml", ".stats.json")
        if os.path.exists(self.stats_path):
            os.unlink(self.stats_path)
        self.logf = open(self.logpath, "w")
        self.p = ns.popen([TCPAOD, "run", "--config", config], stdout=self.logf, stderr=subprocess.STDOUT,
                          env=dict(os.environ, **(env or {})))
        deadline = time.time() + start_timeout
        while time.time() < deadline:
            if os.path.exists(self.stats_path):
                return
            if self.p.poll() is not None:
                raise Fail("tcpaod %s exited (%d) at start:\n%s" % (name, self.p.returncode, self.log()))
            time.sleep(0.05)
        raise Fail("tcpaod %s did not start:\n%s" % (name, self.log()))

    def log(self):
        self.logf.flush()
        with open(self.logpath) as f:
            return f.read()

    def stats(self):
        """Counters as of now: waits for the daemon's next write of its stats file (every second)
        whose report was taken after this call (its `time` is in whole seconds)."""
        t = time.time()

        def fresh():
            try:
                with open(self.stats_path) as f:
                    st = json.load(f)
            except (OSError, ValueError):
                return None
            return st if st.get("time", 0) >= t + 1 else None
        return wait_for(fresh, "tcpaod %s to write its counters" % self.name, 30)

    def hup(self):
        self.p.send_signal(signal.SIGHUP)

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        rc = self.p.wait(20)
        check(rc == 0, "tcpaod %s exited %d on SIGTERM:\n%s" % (self.name, rc, self.log()))
        return rc


def counter(stats, name, peer=None):
    c = stats["counters"]
    return (c["peers"].get(peer, {}) if peer else c["total"]).get(name, 0)


_files = {}


def data_file(size):
    if size not in _files:
        path = os.path.join(WORK, "data-%d.bin" % size)
        h = hashlib.sha256()
        with open(path, "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 1 << 20))
                f.write(chunk)
                h.update(chunk)
                left -= len(chunk)
        _files[size] = (path, h.hexdigest())
    return _files[size]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def transfer(client_ns, server_ns, server_addr, port, size, timeout=180):
    """An unmodified socat client sends `size` random bytes to an unmodified socat server;
    returns (seconds, intact)."""
    src, digest = data_file(size)
    dst = os.path.join(WORK, "recv-%s-%d.bin" % (server_ns.name, port))
    v6 = ":" in server_addr
    listen = ("TCP6-LISTEN:%d,reuseaddr" if v6 else "TCP4-LISTEN:%d,reuseaddr") % port
    srv = server_ns.popen(["socat", "-u", listen, "OPEN:%s,creat,trunc" % dst], stderr=subprocess.PIPE)
    wait_for(lambda: srv.poll() is not None or server_ns.run(["ss", "-Hltn", "sport = :%d" % port]).stdout.strip(), "the socat server on port %d" % port, 15)
    target = ("TCP6:[%s]:%d" if v6 else "TCP4:%s:%d") % (server_addr, port)
    t0 = time.time()
    r = client_ns.run(["socat", "-u", "OPEN:%s" % src, target + ",connect-timeout=10"], check_rc=False, timeout=timeout)
    try:
        srv.wait(30)
    except subprocess.TimeoutExpired:
        srv.kill()
        raise Fail("the server did not see the end of the transfer")
    secs = time.time() - t0
    check(r.returncode == 0, "socat client failed: %s" % r.stderr)
    got = sha256(dst)
    os.unlink(dst)
    return secs, got == digest


class Capture:
    def __init__(self, ns, dev, filt="tcp"):
        self.path = os.path.join(WORK, "cap-%s-%s-%d.pcap" % (ns.name, dev, int(time.time() * 1000)))
        self.p = ns.popen(["tcpdump", "-i", dev, "-s", "0", "-B", "16384", "-U", "-w", self.path, filt],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 5
        while not os.path.exists(self.path) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)

    def stop(self):
        # libpcap's TPACKET_V3 ring hands a block to tcpdump only when it is full or its retire
        # timer (tcpdump's 1000 ms timeout) fires; a SIGINT before that loses the whole block, so
        # a short session (an ssh login on a fast machine) could leave an empty capture.
        time.sleep(1.3)
        self.p.send_signal(signal.SIGINT)
        err = self.p.communicate(timeout=10)[1].decode()
        m = re.search(r"(\d+) packets dropped by kernel", err)
        check(m is None or m.group(1) == "0", "tcpdump dropped packets: %s" % err)
        return self.path


def verify_pcap(config, path, strict=True):
    args = [TCPAOD, "verify-pcap", "--config", config, "--json"] + (["--strict"] if strict else []) + [path]
    r = sh(args, check_rc=False, timeout=300)
    out = json.loads(r.stdout)
    return r.returncode, out


def scapy_verify(path, secret, alg):
    r = sh([sys.executable, os.path.join(HERE, "ao_verify.py"), path, secret, SCAPY_NAMES[alg]], check_rc=False, timeout=300)
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1]), r.stdout


SECRET = "e2e shared secret 0123456789"


def pair_configs(a_ns_addrs, b_ns_addrs, alg, secret_a=SECRET, secret_b=SECRET, threads=2, extra=""):
    ka = [key_yaml(1, 1, 1, alg, secret_a)]
    kb = [key_yaml(1, 1, 1, alg, secret_b)]
    ca = write_config("a", [("b", "192.0.2.2/32", None), ("b6", "2001:db8:1::2/128", None)], ka, threads=threads, extra=extra)
    cb = write_config("b", [("a", "192.0.2.1/32", None), ("a6", "2001:db8:1::1/128", None)], kb, threads=threads, extra=extra)
    return ca, cb


# ---- the tests ---------------------------------------------------------------------------------

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


@test
def bulk_transfers_each_algorithm_ipv4_ipv6():
    """1. A 200 MB transfer between unmodified socat client and server arrives intact, over IPv4
    and IPv6, with each algorithm; every segment on the wire verifies (verify-pcap, strict) and
    none exceeds the MTU (MSS clamping)."""
    topo = Topology()
    try:
        a, b = two_hosts(topo)
        for alg in ALGORITHMS:
            ca, cb = pair_configs(None, None, alg)
            da, db = Daemon(a, ca, "a-" + alg), Daemon(b, cb, "b-" + alg)
            for addr in ("192.0.2.2", "2001:db8:1::2"):
                cap = Capture(a, "va", "tcp port 830") if alg == "hmac-sha-1-96" else None
                secs, intact = transfer(a, b, addr, 830, BIG)
                check(intact, "%s %s: the data arrived damaged" % (alg, addr))
                log("    %-17s %-14s %d MB in %.2f s (%.2f Gbit/s), sha256 equal" % (alg, addr, BIG // 1000000, secs, BIG * 8 / secs / 1e9))
                if cap:
                    rc, out = verify_pcap(ca, cap.stop())
                    seg = out["segments"]
                    check(rc == 0 and out["summary"]["failed"] == 0, "verify-pcap: %s" % out["line"])
                    check(len(seg) > BIG // 1500, "the capture is missing segments: %d" % len(seg))
                    mx = max(s["length"] for s in seg)
                    check(mx <= 1500, "a signed segment of %d bytes exceeds the 1500-byte MTU" % mx)
                    log("    capture on the wire: %s; largest packet %d bytes" % (out["line"], mx))
                    os.unlink(cap.path)
            sa, sb = da.stats(), db.stats()
            for s, who in ((sa, "A"), (sb, "B")):
                drops = {k: v for k, v in s["counters"]["total"].items() if k.startswith("dropped-") and v}
                check(not drops, "%s dropped segments: %s" % (who, drops))
                check(counter(s, "signed") > BIG // 1500 or counter(s, "verified") > BIG // 1500, "%s counted too little" % who)
            da.stop()
            db.stop()
            check("TCPAOD" not in a.rules() + b.rules(), "rules left behind after SIGTERM")
    finally:
        topo.close()


@test
def gateway_mode_protects_an_unmodified_host():
    """1 (gateway). tcpaod in gateway mode on G protects H, which runs nothing; A (host mode) talks
    to H: 200 MB intact both families, TCP-AO on the A-G link, none on the G-H link."""
    topo = Topology()
    try:
        a, g, h = gateway_topology(topo)
        alg = "aes-128-cmac-96"
        k = [key_yaml(1, 1, 1, alg, SECRET)]
        ca = write_config("a", [("h", "198.51.100.0/24", [830]), ("h6", "2001:db8:2::/64", [830])], k)
        cg = write_config("g", [("a", "192.0.2.0/24", [830]), ("a6", "2001:db8:1::/64", [830])], k, mode="gateway",
                          extra="protected-prefixes: [198.51.100.0/24, \"2001:db8:2::/64\"]\n")
        da, dg = Daemon(a, ca, "a"), Daemon(g, cg, "g")
        for addr in ("198.51.100.1", "2001:db8:2::1"):
            wire, inside = Capture(a, "va", "tcp port 830"), Capture(h, "vh", "tcp port 830")
            secs, intact = transfer(a, h, addr, 830, BIG)
            check(intact, "gateway %s: data damaged" % addr)
            rc, out = verify_pcap(ca, wire.stop())
            check(rc == 0, "A-G link: %s" % out["line"])
            rc2, out2 = verify_pcap(ca, inside.stop(), strict=False)
            noao = out2["summary"]["counts"].get("no-ao", 0)
            check(out2["summary"]["counts"].get("verified", 0) == 0 and noao > BIG // 1500,
                  "G-H link should carry plain TCP: %s" % out2["line"])
            log("    gateway %-14s %d MB in %.2f s; A-G: %s; G-H: %d segments without TCP-AO" % (addr, BIG // 1000000, secs, out["line"], noao))
            os.unlink(wire.path)
            os.unlink(inside.path)
        check(counter(dg.stats(), "verified") > 0, "G verified nothing")
        da.stop()
        dg.stop()
        check("TCPAOD" not in g.rules(), "gateway rules left behind")
    finally:
        topo.close()


@test
def ssh_session_on_netconf_port():
    """2. A real SSH session to sshd on port 830 runs a command and exits cleanly; 3. every
    segment of it carries a valid TCP-AO option (verify-pcap and scapy.contrib.tcpao)."""
    topo = Topology()
    try:
        a, b = two_hosts(topo)
        ca, cb = pair_configs(None, None, "hmac-sha-1-96")
        da, db = Daemon(a, ca, "a"), Daemon(b, cb, "b")
        d = os.path.join(WORK, "ssh")
        os.makedirs(d, exist_ok=True)
        for k in ("host", "id"):
            if not os.path.exists(os.path.join(d, k)):
                sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(d, k)])
        shutil.copy(os.path.join(d, "id.pub"), os.path.join(d, "authorized_keys"))
        with open(os.path.join(d, "sshd_config"), "w") as f:
            f.write(textwrap.dedent("""\
                Port 830
                ListenAddress 192.0.2.2
                HostKey %s/host
                AuthorizedKeysFile %s/authorized_keys
                PermitRootLogin prohibit-password
                PasswordAuthentication no
                KbdInteractiveAuthentication no
                UsePAM no
                StrictModes no
                PidFile %s/sshd.pid
                """ % (d, d, d)))
        os.makedirs("/run/sshd", exist_ok=True)
        b.popen(["/usr/sbin/sshd", "-D", "-e", "-f", os.path.join(d, "sshd_config")], stderr=subprocess.DEVNULL)
        time.sleep(0.7)
        cap = Capture(a, "va", "tcp port 830")
        r = a.run(["ssh", "-p", "830", "-i", os.path.join(d, "id"), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                   "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "root@192.0.2.2", "echo netconf-over-ssh; cat /proc/sys/kernel/hostname; exit 7"],
                  check_rc=False, timeout=60)
        path = cap.stop()
        check(r.returncode == 7 and "netconf-over-ssh" in r.stdout, "ssh session failed (%d): %s %s" % (r.returncode, r.stdout, r.stderr))
        log("    ssh -p 830: ran the command, exit status 7 passed through")
        rc, out = verify_pcap(ca, path)
        check(rc == 0, "verify-pcap: %s" % out["line"])
        src, res, text = scapy_verify(path, SECRET, "hmac-sha-1-96")
        check(src == 0 and res["valid"] == out["summary"]["counts"]["verified"], "scapy disagrees: %s" % text)
        log("    capture: verify-pcap %s; scapy.contrib.tcpao: %d valid, %d bad" % (out["line"], res["valid"], res["bad"]))
        da.stop()
        db.stop()
    finally:
        topo.close()


@test
def capture_checked_independently_with_scapy():
    """3. Every TCP segment of protected flows on the wire carries a valid AO option, checked by
    verify-pcap and, independently, by scapy's tcpao, for both RFC 5926 algorithms and both
    address families, options included and excluded."""
    topo = Topology()
    try:
        a, b = two_hosts(topo)
        for alg in ("hmac-sha-1-96", "aes-128-cmac-96"):
            for exclude in (False, True):
                extra = ", include-tcp-options: false" if exclude else ""
                k = [key_yaml(1, 1, 1, alg, SECRET, extra)]
                ca = write_config("a", [("b", "192.0.2.2/32", None), ("b6", "2001:db8:1::2/128", None)], k)
                cb = write_config("b", [("a", "192.0.2.1/32", None), ("a6", "2001:db8:1::1/128", None)], k)
                da, db = Daemon(a, ca, "a"), Daemon(b, cb, "b")
                cap = Capture(a, "va", "tcp port 830")
                for addr in ("192.0.2.2", "2001:db8:1::2"):
                    _, intact = transfer(a, b, addr, 830, 3 * 1000 * 1000)
                    check(intact, "damaged")
                path = cap.stop()
                rc, out = verify_pcap(ca, path)
                check(rc == 0, "verify-pcap: %s" % out["line"])
                args = [sys.executable, os.path.join(HERE, "ao_verify.py"), path, SECRET, SCAPY_NAMES[alg]] + (["--exclude-options"] if exclude else [])
                r = sh(args, check_rc=False, timeout=300)
                res = json.loads(r.stdout.strip().splitlines()[-1])
                check(r.returncode == 0 and res["valid"] == out["summary"]["counts"]["verified"], "scapy: %s" % r.stdout)
                log("    %-16s options %-8s: verify-pcap %s; scapy %d valid, 0 bad, 0 unsigned"
                    % (alg, "excluded" if exclude else "included", out["line"], res["valid"]))
                da.stop()
                db.stop()
    finally:
        topo.close()


@test
def wrong_key_never_connects():
    """4. Wrong key on one side: no connection is established, and the failures are counted
    (per peer and per key)."""
    topo = Topology()
    try:
        a, b = two_hosts(topo)
        ca, cb = pair_configs(None, None, "hmac-sha-1-96", secret_b="a different secret, wrong")
        da, db = Daemon(a, ca, "a"), Daemon(b, cb, "b")
        srv = b.popen(["socat", "-u", "TCP4-LISTEN:830,reuseaddr", "OPEN:/dev/null"], stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        r = a.run(["socat", "-u", "OPEN:/etc/hostname", "TCP4:192.0.2.2:830,connect-timeout=4"], check_rc=False, timeout=30)
        check(r.returncode != 0, "the connection succeeded with a wrong key")
        check(not b.established(830), "B has an established connection")
        s = db.stats()
        bad = counter(s, "dropped-bad-mac", "a")
        check(bad >= 1, "B did not count bad MACs: %s" % s["counters"]["peers"]["a"])
        check(s["counters"]["keys"]["a"]["1"]["bad-mac"] == bad, "per-key counter disagrees")
        check(s["synchronizedFlows"] == 0, "B tracks a connection")
        log("    connection refused by TCP-AO; B counted %d bad-mac drops for peer a, key 1" % bad)
        srv.kill()
        da.stop()
        db.stop()
    finally:
        topo.close()


ECHO_CLIENT = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], 830), timeout=5)
print("connected", flush=True)
ok = 0
end = time.time() + float(sys.argv[2])
i = 0
try:
    while time.time() < end:
        msg = ("ping %d\n" % i).encode()
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("closed by peer")
            got += chunk
        if got != msg:
            print("CORRUPT %r" % got, flush=True)
            sys.exit(3)
        ok += 1
        i += 1
        time.sleep(0.05)
    print("OK %d" % ok, flush=True)
except Exception as e:
    print("BROKEN after %d: %s" % (ok, e), flush=True)
    sys.exit(2)
"""

INJECT = r"""
import sys, time
from scapy.all import Ether, IP, TCP, ICMP, IPerror, TCPerror, Raw, sendp, sniff, conf
conf.verb = 0
dev, src_mac, dst_mac, b_ip, a_ip, kinds = sys.argv[1:7]
# Learn the connection's numbers from B's own segments to A (after B's tcpaod, on the wire).
pkts = sniff(iface=dev, filter="tcp and src host %s and src port 830" % b_ip, count=3, timeout=10)
if not pkts:
    print("no traffic seen"); sys.exit(1)
t = pkts[-1][TCP]
seq = t.seq + len(bytes(t.payload))
cport, ack = t.dport, t.ack
eth = Ether(src=src_mac, dst=dst_mac)
for kind in kinds.split(","):
    if kind == "rst":        # an in-window reset without TCP-AO
        p = eth / IP(src=b_ip, dst=a_ip) / TCP(sport=830, dport=cport, flags="R", seq=seq)
    elif kind == "rstack":   # ... and with ACK, exactly at the next sequence number
        p = eth / IP(src=b_ip, dst=a_ip) / TCP(sport=830, dport=cport, flags="RA", seq=seq, ack=ack)
    elif kind == "badmac":   # data with a TCP-AO option whose MAC is wrong
        p = eth / IP(src=b_ip, dst=a_ip) / TCP(sport=830, dport=cport, flags="PA", seq=seq, ack=ack,
                                                 options=[("AO", bytes([1, 1]) + b"\x42" * 12)]) / Raw(b"EVIL injected\n")
    elif kind == "icmp":     # port unreachable quoting A's segment: a hard error (RFC 5925 7.8)
        p = eth / IP(src=b_ip, dst=a_ip) / ICMP(type=3, code=3) / IPerror(src=a_ip, dst=b_ip) / TCPerror(sport=cport, dport=830, seq=ack)
    sendp(p, iface=dev)
    print("injected", kind, flush=True)
    time.sleep(0.2)
"""


def run_with_injection(a, b, kinds, seconds=5):
    """An unmodified echo server on B, a plain Python client on A; forged segments injected
    on the wire at B's side (AF_PACKET, past B's own netfilter). Returns the client's output."""
    srv = b.popen(["socat", "TCP4-LISTEN:830,reuseaddr,fork", "EXEC:cat"], stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    cli = a.popen([sys.executable, "-c", ECHO_CLIENT, "192.0.2.2", str(seconds)], stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    inj = b.run([sys.executable, "-c", INJECT, "vb", b.mac("vb"), a.mac("va"), "192.0.2.2", "192.0.2.1", kinds], check_rc=False, timeout=60)
    out = cli.communicate(timeout=seconds + 30)[0]
    srv.kill()
    check(inj.returncode == 0, "injection failed: %s %s" % (inj.stdout, inj.stderr))
    return cli.returncode, out


@test
def forged_segments_do_not_disturb_the_connection():
    """5. Forged segments injected on the wire (scapy) -- an in-window RST without AO, a data
    segment with a bad MAC, an ICMP port-unreachable -- do not disturb the running connection.
    Control: without tcpaod the same RST kills it."""
    topo = Topology()
    try:
        a, b = two_hosts(topo)
        rc, out = run_with_injection(a, b, "rstack")
        check(rc == 2 and "BROKEN" in out, "control failed: the forged RST did not reset an unprotected connection: %s" % out)
        log("    control without tcpaod: the forged RST reset the connection (%s)" % out.strip().splitlines()[-1])
        ca, cb = pair_configs(None, None, "hmac-sha-1-96")
        da, db = Daemon(a, ca, "a"), Daemon(b, cb, "b")
        rc, out = run_with_injection(a, b, "rst,rstack,badmac,icmp")
        check(rc == 0 and "OK" in out and "EVIL" not in out, "the connection was disturbed: %s" % out)
        s = da.stats()
        got = {k: counter(s, "dropped-" + k, "b") for k in ("missing-ao", "bad-mac")}
        got["icmp-hard-error"] = counter(s, "dropped-icmp-hard-error")
        check(got["missing-ao"] >= 2 and got["bad-mac"] >= 1 and got["icmp-hard-error"] >= 1, "not all forgeries were counted: %s" % got)
        log("    with tcpaod: connection intact (%s); A dropped %s" % (out.strip().splitlines()[-1], got))
        da.stop()
        db.stop()
    finally:
        topo.close()


PACED = r"""
import sys, time
path, rate = sys.argv[1], float(sys.argv[2])
out = sys.stdout.buffer
with open(path, "rb") as f:
    t0 = time.time(); sent = 0
    while True:
        chunk = f.read(65536)
        if not chunk: break
        out.write(chunk); out.flush(); sent += len(chunk)
        ahead = sent / rate - (time.time() - t0)
        if ahead > 0: time.sleep(ahead)
"""


@test
def key_rollover_during_a_transfer():
    """6. Key rollover during a transfer: a new key made preferred (SIGHUP, B then A) keeps the
    transfer alive and moves the KeyID on the wire to the new key, in both directions."""
    topo = Topology()
    try:
        a, b = two_hosts(topo)
        k1 = key_yaml(1, 1, 1, "hmac-sha-1-96", SECRET,
                      ", send-lifetime: { start-date-time: 2025-01-01T00:00:00Z, no-end-time: true }")
        ca = write_config("a", [("b", "192.0.2.2/32", None)], [k1])
        cb = write_config("b", [("a", "192.0.2.1/32", None)], [k1])
        da, db = Daemon(a, ca, "a"), Daemon(b, cb, "b")
        size = 30 * 1000 * 1000
        src, digest = data_file(size)
        dst = os.path.join(WORK, "rollover.bin")
        srv = b.popen(["socat", "-u", "TCP4-LISTEN:830,reuseaddr", "OPEN:%s,creat,trunc" % dst], stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        cap = Capture(a, "va", "tcp port 830")
        prod = subprocess.Popen(a.cmd(["sh", "-c", "%s -c '%s' %s %d | socat -u STDIN TCP4:192.0.2.2:830" % (sys.executable, PACED.replace("'", "'\\''"), src, size // 6)]))
        time.sleep(1.5)
        # The new key starts its send lifetime now: the newest valid key is preferred.
        k2 = key_yaml(2, 2, 2, "aes-128-cmac-96", "the next secret, rolled in",
                      ", send-lifetime: { start-date-time: %s, no-end-time: true }" % time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1)))
        write_config("b", [("a", "192.0.2.1/32", None)], [k1, k2])
        db.hup()
        time.sleep(1.5)
        write_config("a", [("b", "192.0.2.2/32", None)], [k1, k2])
        da.hup()
        rc = prod.wait(60)
        srv.wait(30)
        path = cap.stop()
        check(rc == 0, "the transfer failed during the rollover")
        check(sha256(dst) == digest, "data damaged during the rollover")
        rc, out = verify_pcap(ca, path)
        check(rc == 0, "verify-pcap: %s" % out["line"])
        runs = {}
        for s in out["segments"]:
            side = "a" if s["src"] == "192.0.2.1" else "b"
            r = runs.setdefault(side, [])
            if s.get("keyID") is not None and (not r or r[-1] != s["keyID"]):
                r.append(s["keyID"])
        check(runs.get("a") == [1, 2] and runs.get("b") == [1, 2], "KeyID on the wire did not move 1 -> 2 cleanly: %s" % runs)
        sa, sb = da.stats(), db.stats()
        for s, who in ((sa, "A"), (sb, "B")):
            drops = {k: v for k, v in s["counters"]["total"].items() if k.startswith("dropped-") and v}
            check(not drops, "%s dropped during the rollover: %s" % (who, drops))
        log("    30 MB paced transfer intact; KeyIDs on the wire A->B %s, B->A %s; %s; no drops" % (runs["a"], runs["b"], out["line"]))
        check("reloaded" in da.log() and "reloaded" in db.log(), "reload not logged")
        da.stop()
        db.stop()
    finally:
        topo.close()


SESSION = r"""
# Test applications for reload_sequence_keeps_every_connection (plain Python sockets):
#   sink HOST PORT PROGRESS RESULT      accept one connection, read to EOF, keep the byte count in
#                                      PROGRESS, then write "COUNT SHA256" to RESULT
#   source HOST PORT STOP RATE RESULT  send deterministic bytes at RATE bytes/s until the file
#                                      STOP exists, then write "COUNT SHA256" to RESULT and close
#   chat HOST PORT DIR                 an interactive session with an echo server: for N = 1, 2, ...
#                                      wait for DIR/go-N, send a line, expect it back, write
#                                      DIR/done-N; DIR/go-end closes it
import hashlib, os, socket, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
def put(path, text):
    with open(path + ".tmp", "w") as f: f.write(text)
    os.rename(path + ".tmp", path)
if mode == "sink":
    ls = socket.socket(fam); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); ls.bind((host, port)); ls.listen(1)
    put(sys.argv[4], "listening")
    c, _ = ls.accept(); h = hashlib.sha256(); n = 0; mark = 0
    while True:
        b = c.recv(1 << 16)
        if not b: break
        h.update(b); n += len(b)
        if n - mark >= 1 << 18: put(sys.argv[4], str(n)); mark = n
    put(sys.argv[4], str(n)); put(sys.argv[5], "%d %s" % (n, h.hexdigest()))
elif mode == "source":
    stop, rate = sys.argv[4], float(sys.argv[5])
    s = socket.create_connection((host, port), timeout=60); h = hashlib.sha256(); n = 0; i = 0; t0 = time.time()
    base = hashlib.sha256(b"tcpaod").digest() * 2048
    while not os.path.exists(stop):
        chunk = base[i % 4096:] + base[:i % 4096]; i += 1
        s.sendall(chunk); h.update(chunk); n += len(chunk)
        ahead = n / rate - (time.time() - t0)
        if ahead > 0: time.sleep(min(ahead, 0.2))
    s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
    put(sys.argv[6], "%d %s" % (n, h.hexdigest()))
elif mode == "chat":
    d = sys.argv[4]
    s = socket.create_connection((host, port), timeout=60); f = s.makefile("rwb"); k = 1
    while True:
        while not (os.path.exists("%s/go-%d" % (d, k)) or os.path.exists(d + "/go-end")): time.sleep(0.02)
        if os.path.exists("%s/go-%d" % (d, k)):
            line = ("request %d %s\n" % (k, "x" * (k * 97 % 800))).encode()
            f.write(line); f.flush()
            got = f.readline()
            put("%s/done-%d" % (d, k), "ok" if got == line else "echo mismatch: %r" % got[:80])
            k += 1
        else:
            break
    s.close()
"""


def wait_for(cond, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise Fail("timed out (%d s) waiting for %s" % (timeout, what))


def read_file(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


@test
def reload_sequence_keeps_every_connection():
    """6b. Both daemons reloaded through a sequence of key changes while a bulk transfer and an
    interactive session run (issue 9): a longer-MAC key made preferred (the established
    connections keep a key that fits their MSS), another key preferred, a key removed and its
    KeyID reused by a new key (different algorithm and secret) while the session is idle, a
    failed reload, the old keys removed. After every step the transfer makes progress and the
    session answers; both finish intact; no segment is dropped on either side."""
    topo = Topology()
    try:
        a, b = two_hosts(topo)
        base = int(time.time()) - 1000

        def k(key_id, send_id, alg, secret, start):
            t = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base + start))
            return key_yaml(key_id, send_id, send_id, alg, secret, ", send-lifetime: { start-date-time: %s, no-end-time: true }" % t)
        K1 = k(1, 1, "hmac-sha-1-96", "the first key of the sequence", 0)
        K2 = k(2, 2, "hmac-sha-256-128", "a longer MAC rolled in late", 10)
        K3 = k(3, 3, "aes-128-cmac-96", "the third key, cmac", 20)
        K4 = k(4, 2, "hmac-sha-256-96", "KeyID 2 again, another key", 30)
        peers_a, peers_b = [("b", "192.0.2.2/32", None)], [("a", "192.0.2.1/32", None)]
        ca, cb = write_config("a", peers_a, [K1]), write_config("b", peers_b, [K1])
        da, db = Daemon(a, ca, "a"), Daemon(b, cb, "b")
        app = os.path.join(WORK, "session.py")
        with open(app, "w") as f:
            f.write(SESSION)
        chat_dir = os.path.join(WORK, "chat")
        os.makedirs(chat_dir, exist_ok=True)
        progress, sink_res, src_res, stop = (os.path.join(WORK, n) for n in ("progress", "sink.res", "source.res", "stop"))
        cap_path = os.path.join(WORK, "reloads.pcap")
        cap = a.popen(["tcpdump", "-i", "va", "-s", "128", "-B", "16384", "-U", "-w", cap_path, "tcp"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: os.path.exists(cap_path), "tcpdump")
        sink = b.popen([sys.executable, app, "sink", "192.0.2.2", "830", progress, sink_res])
        echo = b.popen(["socat", "TCP4-LISTEN:9339,reuseaddr", "EXEC:cat"], stderr=subprocess.DEVNULL)
        wait_for(lambda: read_file(progress) == "listening" and b.run(["ss", "-Hltn", "sport = :9339"]).stdout.strip(), "the servers")
        src = a.popen([sys.executable, app, "source", "192.0.2.2", "830", stop, str(8 * 1000 * 1000), src_res])
        got = lambda: int(read_file(progress, "0").strip() or 0) if read_file(progress) != "listening" else 0
        steps = {"n": 0, "chat": 0, "reloads": {"a": 0, "b": 0}}
        chat = [None]

        def progresses(what):
            # The transfer moves on by 2 MB and the session answers (when open).
            start = got()
            wait_for(lambda: got() >= start + 2 * 1000 * 1000, "the bulk transfer to move on after %s" % what, 40)
            if chat[0] is not None:
                steps["chat"] += 1
                n = steps["chat"]
                open(os.path.join(chat_dir, "go-%d" % n), "w").close()
                res = wait_for(lambda: read_file(os.path.join(chat_dir, "done-%d" % n)), "the session to answer after %s" % what, 30)
                check(res == "ok", "interactive session after %s: %s" % (what, res))

        def reload(side, keys, expect_ok=True, text=None):
            d, name, peers = (da, "a", peers_a) if side == "a" else (db, "b", peers_b)
            if text is None:
                write_config(name, peers, keys)
            else:
                with open(d.config, "w") as f:
                    f.write(text)
            marker = "configuration reloaded" if expect_ok else "reload of"
            before = d.log().count(marker)
            d.hup()
            wait_for(lambda: d.log().count(marker) > before, "tcpaod %s to log `%s`" % (name, marker))

        progresses("the start")
        # 1. A key with a longer MAC (20-byte option) becomes preferred, B first, then A. The
        #    bulk connection reserved 16 bytes at its handshake: it stays on KeyID 1.
        reload("b", [K1, K2]); reload("a", [K1, K2]); progresses("HMAC-SHA-256-128 became preferred")
        # The session opens now: it reserves 20 bytes and uses KeyID 2 (K2).
        chat[0] = a.popen([sys.executable, app, "chat", "192.0.2.2", "9339", chat_dir])
        progresses("the session opened")
        # 2. K3 becomes preferred (fits both): both connections move to KeyID 3.
        reload("a", [K1, K2, K3]); reload("b", [K1, K2, K3]); progresses("AES-128-CMAC became preferred")
        # 3-4. While the session is idle: K2 removed, then KeyID 2 reused by K4 (another
        #      algorithm and secret), made preferred.
        idle_chat, chat[0] = chat[0], None
        reload("b", [K1, K3]); reload("a", [K1, K3]); progresses("KeyID 2 removed")
        reload("a", [K1, K3, K4]); reload("b", [K1, K3, K4]); chat[0] = idle_chat; progresses("KeyID 2 reused by another key")
        # 5. A reload that fails changes nothing.
        good_a = read_file(ca)
        check("send-id: 1," in good_a, "config layout changed")
        reload("a", None, expect_ok=False, text=good_a.replace("send-id: 1,", "send-id: 999,"))
        check("still running with the previous configuration" in da.log(), "the failed reload was not reported")
        progresses("a failed reload")
        # 6. The old keys go: only K4 is left.
        reload("b", [K4, K3]); reload("a", [K4]); reload("b", [K4]); progresses("the old keys were removed")
        open(stop, "w").close()
        wait_for(lambda: read_file(src_res) and read_file(sink_res), "the transfer to end", 60)
        check(read_file(src_res) == read_file(sink_res), "bulk data damaged: sent %s, received %s" % (read_file(src_res), read_file(sink_res)))
        open(os.path.join(chat_dir, "go-end"), "w").close()
        check(chat[0].wait(30) == 0, "the interactive session failed")
        time.sleep(1.2)  # libpcap hands a block over on its 1 s retire timer (see Capture.stop)
        cap.send_signal(signal.SIGINT)
        cap.communicate(timeout=10)
        # KeyIDs on the wire, per connection and direction, in order of appearance.
        txt = sh(["tcpdump", "-nn", "-v", "-r", cap_path], timeout=120).stdout
        runs = {}
        for line in txt.splitlines():
            m = re.search(r"(\d+\.\d+\.\d+\.\d+)\.(\d+) > (\d+\.\d+\.\d+\.\d+)\.(\d+):.*?keyid (\d+)", line)
            if not m:
                continue
            port = "830" if "830" in (m.group(2), m.group(4)) else "9339"
            key = "%s %s->" % (port, "A" if m.group(1) == "192.0.2.1" else "B")
            r = runs.setdefault(key, [])
            if not r or r[-1] != int(m.group(5)):
                r.append(int(m.group(5)))
        check(runs.get("830 A->") == [1, 3, 2] and runs.get("830 B->") == [1, 3, 2],
              "bulk connection KeyIDs (expected 1, then 3, then 2 = K4): %s" % runs)
        check(runs.get("9339 A->") == [2, 3, 2] and runs.get("9339 B->") == [2, 3, 2],
              "session KeyIDs (expected 2 = K2, then 3, then 2 = K4): %s" % runs)
        for d, who in ((da, "A"), (db, "B")):
            s = d.stats()
            drops = {k: v for k, v in s["counters"]["total"].items() if k.startswith("dropped-") and v}
            check(not drops, "%s dropped segments during the reload sequence: %s" % (who, drops))
        n, _ = read_file(sink_res).split()
        log("    %d MB bulk intact, session answered %d times; KeyIDs %s; no drops" % (int(n) // 1000000, steps["chat"], runs))
        da.stop()
        db.stop()
    finally:
        topo.close()


TRICKLE = r"""
import os, socket, sys, threading, time
def put(path, text):
    with open(path + ".tmp", "w") as f: f.write(text)
    os.rename(path + ".tmp", path)
mode, host, port, d = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if mode == "server":
    # Every connection counts its lines in d/conn-N.
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); ls.bind((host, port)); ls.listen(8)
    put(d + "/listening", "1")
    def serve(c, n):
        f = c.makefile("rb"); k = 0
        for line in f:
            k += 1; put("%s/conn-%d" % (d, n), str(k))
    n = 0
    while True:
        c, _ = ls.accept(); n += 1
        threading.Thread(target=serve, args=(c, n), daemon=True).start()
else:
    # A line every 20 ms until told to stop (or `count` lines); d/client-NAME says how far it got.
    name, count = sys.argv[5], int(sys.argv[6])
    try:
        s = socket.create_connection((host, port), timeout=10); s.settimeout(None); k = 0
        while (count == 0 or k < count) and not os.path.exists(d + "/stop"):
            k += 1; s.sendall(b"line %d\n" % k); put("%s/client-%s" % (d, name), str(k)); time.sleep(0.02)
        s.close(); put("%s/client-%s" % (d, name), "done %d" % k)
    except OSError as e:
        put("%s/client-%s" % (d, name), "error %s" % e)
"""


def start_sessions(a, b, tag):
    """A bulk transfer (deterministic bytes, until told to stop) and an interactive session
    from A to B, with the SESSION test applications. Returns a handle for progress checks."""
    app = os.path.join(WORK, "session.py")
    with open(app, "w") as f:
        f.write(SESSION)
    d = os.path.join(WORK, tag)
    os.makedirs(d, exist_ok=True)
    h = {"dir": d, "progress": os.path.join(d, "progress"), "sink": os.path.join(d, "sink.res"),
         "source": os.path.join(d, "source.res"), "stop": os.path.join(d, "stop"), "chat_dir": os.path.join(d, "chat"), "n": 0}
    os.makedirs(h["chat_dir"], exist_ok=True)
    b.popen([sys.executable, app, "sink", "192.0.2.2", "830", h["progress"], h["sink"]])
    b.popen(["socat", "TCP4-LISTEN:9339,reuseaddr", "EXEC:cat"], stderr=subprocess.DEVNULL)
    wait_for(lambda: read_file(h["progress"]) == "listening" and b.run(["ss", "-Hltn", "sport = :9339"]).stdout.strip(), "the servers")
    h["src"] = a.popen([sys.executable, app, "source", "192.0.2.2", "830", h["stop"], str(8 * 1000 * 1000), h["source"]])
    h["chat"] = a.popen([sys.executable, app, "chat", "192.0.2.2", "9339", h["chat_dir"]])
    return h


def received(h):
    t = read_file(h["progress"]).strip()
    return int(t) if t.isdigit() else 0


def sessions_progress(h, what, timeout=40):
    """The transfer moves on by 2 MB and the session answers; returns the seconds it took."""
    t0 = time.time()
    start = received(h)
    wait_for(lambda: received(h) >= start + 2 * 1000 * 1000, "the bulk transfer to move on after %s" % what, timeout)
    h["n"] += 1
    n = h["n"]
    open(os.path.join(h["chat_dir"], "go-%d" % n), "w").close()
    res = wait_for(lambda: read_file(os.path.join(h["chat_dir"], "done-%d" % n)), "the session to answer after %s" % what, timeout)
    check(res == "ok", "interactive session after %s: %s" % (what, res))
    return time.time() - t0


def finish_sessions(h):
    open(h["stop"], "w").close()
    wait_for(lambda: read_file(h["source"]) and read_file(h["sink"]), "the transfer to end", 60)
    check(read_file(h["source"]) == read_file(h["sink"]), "bulk data damaged: sent %s, received %s" % (read_file(h["source"]), read_file(h["sink"])))
    open(os.path.join(h["chat_dir"], "go-end"), "w").close()
    check(h["chat"].wait(30) == 0, "the interactive session failed")
    return int(read_file(h["sink"]).split()[0])


def stall_after(h, restart):
    """Restarts tcpaod with `restart()` and measures the stall: from the restart to the first
    2 MB delivered after it, and the session's next answer."""
    before = received(h)
    t0 = time.time()
    restart()
    wait_for(lambda: received(h) > before + 65536, "bytes to flow again after the restart", 60)
    stall = time.time() - t0
    sessions_progress(h, "the restart")
    return stall


@test
def restarts_keep_connections_through_conntrack_labels():
    """10. flow-state: conntrack (the default): tcpaod killed with SIGKILL and started again, and
    restarted with SIGTERM + start (keeping its rules), while a bulk transfer and an interactive
    session run: both carry on, restored from the connections' conntrack labels; the transfer
    arrives intact; the restored flows are counted."""
    topo = Topology()
    try:
        a, b = two_hosts(topo)
        k1 = key_yaml(1, 1, 1, "hmac-sha-1-96", SECRET)
        ca = write_config("a", [("b", "192.0.2.2/32", [830, 9339])], [k1])
        cb = write_config("b", [("a", "192.0.2.1/32", [830, 9339])], [k1])
        da, db = Daemon(a, ca, "a"), Daemon(b, cb, "b")
        check("flow state conntrack" in da.log(), "tcpaod does not keep flow state in conntrack here:\n%s" % da.log())
        h = start_sessions(a, b, "restarts")
        sessions_progress(h, "the start")

        def kill9():
            da.p.kill()
            da.p.wait(10)
            return Daemon(a, ca, "a2")
        holder = {}
        s1 = stall_after(h, lambda: holder.__setitem__("d", kill9()))
        d2 = holder["d"]
        s = d2.stats()
        check(counter(s, "flows-restored") >= 2, "the new tcpaod restored no flow: %s" % s["counters"]["total"])

        def term_restart():
            restart_stop(d2)
            return Daemon(a, ca, "a3")
        s2 = stall_after(h, lambda: holder.__setitem__("d", term_restart()))
        d3 = holder["d"]
        total = finish_sessions(h)
        s = d3.stats()
        check(counter(s, "flows-restored") >= 2, "the third tcpaod restored no flow: %s" % s["counters"]["total"])
        for d, who in ((d3, "A"), (db, "B")):
            st = d.stats()
            bad = {k: v for k, v in st["counters"]["total"].items() if k in ("dropped-bad-mac", "dropped-malformed", "restore-failed") and v}
            check(not bad, "%s: %s" % (who, bad))
        log("    %d MB intact across SIGKILL (stall %.2f s) and SIGTERM restart (stall %.2f s); flows restored from labels" % (total // 1000000, s1, s2))
        d3.stop()
        db.stop()
    finally:
        topo.close()


def restart_stop(d):
    """Stops a daemon for a restart (SIGUSR2): its rules stay, so nothing passes unsigned."""
    d.p.send_signal(signal.SIGUSR2)
    rc = d.p.wait(20)
    check(rc == 0, "tcpaod %s exited %d on SIGUSR2:\n%s" % (d.name, rc, d.log()))


def chat_port(ns, n_expected):
    ports = []
    for line in ns.run(["ss", "-Htn", "state", "established", "( dport = :9339 )"]).stdout.splitlines():
        m = re.search(r"192\.0\.2\.1:(\d+)", line)
        if m:
            ports.append(int(m.group(1)))
    return sorted(ports) if len(ports) >= n_expected else None


@test
def forged_and_expired_labels_deny_never_admit():
    """10. The conntrack label is a claim, not a credential: after a restart, a connection whose
    label was overwritten with a wrong ISN (conntrack tool) gets its segments dropped and counted
    (restore-failed, bad-mac), never accepted; a connection whose conntrack entry is gone
    (expired, deleted) gets counted `no-state` drops. tcpaod keeps running; a new connection works."""
    topo = Topology()
    try:
        a, b = two_hosts(topo)
        k1 = key_yaml(1, 1, 1, "hmac-sha-1-96", SECRET)
        ca = write_config("a", [("b", "192.0.2.2/32", [830, 9339])], [k1])
        cb = write_config("b", [("a", "192.0.2.1/32", [830, 9339])], [k1])
        da, db = Daemon(a, ca, "a"), Daemon(b, cb, "b")
        app = os.path.join(WORK, "session.py")
        with open(app, "w") as f:
            f.write(SESSION)
        b.popen(["socat", "TCP4-LISTEN:9339,reuseaddr,fork", "EXEC:cat"], stderr=subprocess.DEVNULL)
        wait_for(lambda: b.run(["ss", "-Hltn", "sport = :9339"]).stdout.strip(), "the echo server")
        dirs = [os.path.join(WORK, "chat-forged"), os.path.join(WORK, "chat-expired")]
        chats = []
        for d in dirs:
            os.makedirs(d, exist_ok=True)
            chats.append(a.popen([sys.executable, app, "chat", "192.0.2.2", "9339", d]))
            open(os.path.join(d, "go-1"), "w").close()
            check(wait_for(lambda: read_file(os.path.join(d, "done-1")), "a first answer") == "ok", "no first answer")
        ports = wait_for(lambda: chat_port(a, 2), "two sessions")
        # The state was written at the SYN-ACK: the entries on B carry tcpaod's label.
        ctl = os.path.join(HERE, "ctlabel.py")
        for p in ports:
            lab = b.run([sys.executable, ctl, "get", "192.0.2.1", str(p), "192.0.2.2", "9339"]).stdout.strip()
            check(lab and lab != "0" * 32, "no label on B's conntrack entry of port %d: %s" % (p, lab))
        # B's tcpaod dies; meanwhile its first connection's label is forged (the lowest bit of the
        # remote ISN, label bit 2 + 32 = 34 with offset 0) and the second's entry disappears.
        # (with ctlabel.py, a ctnetlink writer of its own: see its header for `conntrack -U`.)
        db.p.kill()
        db.p.wait(10)
        r = b.run([sys.executable, ctl, "flip", "192.0.2.1", str(ports[0]), "192.0.2.2", "9339", "34"], check_rc=False)
        check(r.returncode == 0, "could not forge the label: %s %s" % (r.stdout, r.stderr))
        r = b.run(["conntrack", "-D", "-p", "tcp", "--sport", str(ports[1]), "--dport", "9339"], check_rc=False)
        check(r.returncode == 0, "conntrack -D failed: %s %s" % (r.stdout, r.stderr))
        d2 = Daemon(b, cb, "b2")
        for d in dirs:
            open(os.path.join(d, "go-2"), "w").close()
        c = wait_for(lambda: (lambda s: s if counter(s, "restore-failed") >= 1 and counter(s, "dropped-no-state") >= 1 else None)(d2.stats()),
                     "the forged label to be refused and the expired flow to be counted", 60)
        for d in dirs:
            check(not read_file(os.path.join(d, "done-2")), "a session answered through a forged or missing label")
        check(d2.p.poll() is None, "tcpaod died")
        check(counter(c, "flows-restored") == 0, "a flow was restored from a forged or missing label: %s" % c["counters"]["total"])
        # A new connection works.
        newd = os.path.join(WORK, "chat-new")
        os.makedirs(newd, exist_ok=True)
        chats.append(a.popen([sys.executable, app, "chat", "192.0.2.2", "9339", newd]))
        open(os.path.join(newd, "go-1"), "w").close()
        check(wait_for(lambda: read_file(os.path.join(newd, "done-1")), "a new session's answer") == "ok", "the new session failed")
        tot = c["counters"]["total"]
        log("    forged label: restore-failed %d, bad-mac %d; expired entry: no-state %d; new connection fine" % (
            tot.get("restore-failed", 0), tot.get("dropped-bad-mac", 0), tot.get("dropped-no-state", 0)))
        d2.stop()
        da.stop()
    finally:
        topo.close()


@test
def memory_flow_state_behaves_as_before():
    """10. flow-state: memory: no conntrack rules or labels; a restart loses established
    connections (counted no-state), new ones work."""
    topo = Topology()
    try:
        a, b = two_hosts(topo)
        k1 = key_yaml(1, 1, 1, "hmac-sha-1-96", SECRET)
        ca = write_config("a", [("b", "192.0.2.2/32", [9339])], [k1], extra="flow-state: memory\n")
        cb = write_config("b", [("a", "192.0.2.1/32", [9339])], [k1], extra="flow-state: memory\n")
        da, db = Daemon(a, ca, "a"), Daemon(b, cb, "b")
        check("connlabel" not in a.rules(), "flow-state: memory installed connlabel rules:\n%s" % a.rules())
        app = os.path.join(WORK, "session.py")
        with open(app, "w") as f:
            f.write(SESSION)
        b.popen(["socat", "TCP4-LISTEN:9339,reuseaddr,fork", "EXEC:cat"], stderr=subprocess.DEVNULL)
        wait_for(lambda: b.run(["ss", "-Hltn", "sport = :9339"]).stdout.strip(), "the echo server")
        d = os.path.join(WORK, "chat-mem")
        os.makedirs(d, exist_ok=True)
        a.popen([sys.executable, app, "chat", "192.0.2.2", "9339", d])
        open(os.path.join(d, "go-1"), "w").close()
        check(wait_for(lambda: read_file(os.path.join(d, "done-1")), "an answer") == "ok", "no answer")
        restart_stop(da)
        d2 = Daemon(a, ca, "a2")
        open(os.path.join(d, "go-2"), "w").close()
        wait_for(lambda: counter(d2.stats(), "dropped-no-state") >= 1, "the lost connection's segments to be counted", 30)
        check(counter(d2.stats(), "flows-restored") == 0, "flows restored with flow-state: memory")
        nd = os.path.join(WORK, "chat-mem2")
        os.makedirs(nd, exist_ok=True)
        a.popen([sys.executable, app, "chat", "192.0.2.2", "9339", nd])
        open(os.path.join(nd, "go-1"), "w").close()
        check(wait_for(lambda: read_file(os.path.join(nd, "done-1")), "a new session's answer") == "ok", "the new session failed")
        log("    memory: the restart lost the connection (no-state counted), a new one works")
        d2.stop()
        db.stop()
    finally:
        topo.close()


@test
def restart_never_sends_unsigned_segments():
    """Issue 10: a restart fails closed. While a connection carries a line every 20 ms from A to
    B:830, A's tcpaod is (1) killed with SIGKILL and started again, (2) stopped for a restart
    (SIGUSR2) and started again, (3) stopped with SIGTERM under on-exit: keep-rules and started
    again; each new process binds its queues and takes the rules over in place (one jump per
    chain). A capture on B's side of the link holds not one segment between A and B:830
    without TCP-AO (option kind 29), and a new connection works afterwards. (The old
    connection may die: its state is not kept across restarts here.) The unit's ExecStopPost
    helper, `tcpaod rules --remove-unless-restarting`, removes the rules only for a systemd stop
    job; here, without systemd, it cannot tell and keeps them. A SIGTERM stop removes them."""
    topo = Topology()
    try:
        a, b = two_hosts(topo)
        ca, cb = pair_configs(None, None, "hmac-sha-1-96")
        da, db = Daemon(a, ca, "a"), Daemon(b, cb, "b")
        d = os.path.join(WORK, "trickle")
        os.makedirs(d, exist_ok=True)
        app = os.path.join(WORK, "trickle.py")
        with open(app, "w") as f:
            f.write(TRICKLE)
        cap = Capture(b, "vb", "tcp port 830")
        b.popen([sys.executable, app, "server", "192.0.2.2", "830", d])
        wait_for(lambda: os.path.exists(d + "/listening"), "the server")
        a.popen([sys.executable, app, "client", "192.0.2.2", "830", d, "trickle", "0"])
        lines = lambda n: int(read_file("%s/conn-%d" % (d, n), "0") or 0)
        wait_for(lambda: lines(1) >= 25, "the trickle to reach B")

        def packets(daemon):
            try:
                with open(daemon.stats_path) as f:
                    return counter(json.load(f), "packets")
            except (OSError, ValueError):
                return 0

        def jumps():
            v4 = a.run(["iptables", "-t", "mangle", "-S"]).stdout
            return v4.count("-j TCPAOD-OUT"), v4.count("-j TCPAOD-IN")

        # 1. SIGKILL, then a new process with the same configuration.
        da.p.send_signal(signal.SIGKILL)
        da.p.wait(10)
        check(jumps() == (1, 1), "rules gone after SIGKILL")
        da = Daemon(a, ca, "a-after-kill")
        check(jumps() == (1, 1), "after the takeover: jumps %s, expected one each" % (jumps(),))
        wait_for(lambda: packets(da) > 0, "the new tcpaod to see the trickle's segments")
        log("    SIGKILL, restarted: rules taken over in place (one jump each)")
        # 2. SIGUSR2 (stop for a restart): the rules stay; then a new process.
        da.p.send_signal(signal.SIGUSR2)
        check(da.p.wait(20) == 0, "SIGUSR2: exit status %s:\n%s" % (da.p.returncode, da.log()))
        check(jumps() == (1, 1) and "rules kept (SIGUSR2)" in da.log(), "SIGUSR2 did not keep the rules:\n%s" % da.log())
        # Without systemd the ExecStopPost helper cannot tell a stop from a restart: it keeps them.
        for result in ("success", "signal"):
            r = a.run([TCPAOD, "rules", "--config", ca, "--remove-unless-restarting"], env=dict(os.environ, SERVICE_RESULT=result))
            check("rules kept" in r.stdout and jumps() == (1, 1), "--remove-unless-restarting (%s): %s" % (result, r.stdout))
        log("    %s" % r.stdout.strip())
        da = Daemon(a, ca, "a-after-usr2")
        check(jumps() == (1, 1), "after the second takeover: jumps %s" % (jumps(),))
        before = packets(da)
        wait_for(lambda: packets(da) > before, "the new tcpaod to see segments")
        log("    SIGUSR2 (restart): rules kept, taken over by the next process")
        # 3. SIGTERM with on-exit: keep-rules (what the systemd unit does with --on-exit keep-rules).
        keep = write_config("a-keep", [("b", "192.0.2.2/32", None), ("b6", "2001:db8:1::2/128", None)],
                            [key_yaml(1, 1, 1, "hmac-sha-1-96", SECRET)], extra="on-exit: keep-rules\n")
        da.p.send_signal(signal.SIGUSR2)
        check(da.p.wait(20) == 0, "SIGUSR2: exit status %s" % da.p.returncode)
        da = Daemon(a, keep, "a-keep")
        da.stop()
        check(jumps() == (1, 1), "SIGTERM with on-exit: keep-rules removed the rules")
        da = Daemon(a, ca, "a-after-term")
        check(jumps() == (1, 1), "after the third takeover: jumps %s" % (jumps(),))
        before = packets(da)
        wait_for(lambda: packets(da) > before, "the new tcpaod to see segments")
        log("    SIGTERM with on-exit: keep-rules: rules kept, taken over by the next process")
        # A new connection works.
        a.popen([sys.executable, app, "client", "192.0.2.2", "830", d, "new", "40"])
        wait_for(lambda: read_file(d + "/client-new").startswith(("done", "error")), "the new connection", 30)
        check(read_file(d + "/client-new") == "done 40", "new connection: %s" % read_file(d + "/client-new"))
        wait_for(lambda: any(lines(n) == 40 for n in range(2, 6)), "B to receive the new connection's 40 lines")
        open(d + "/stop", "w").close()
        path = cap.stop()
        txt = sh(["tcpdump", "-nn", "-v", "-r", path], timeout=120).stdout
        segs = [l for l in txt.splitlines() if " > " in l and "Flags [" in l]
        mine = [l for l in segs if re.search(r"192\.0\.2\.1\.\d+ > 192\.0\.2\.2\.830:|192\.0\.2\.2\.830 > 192\.0\.2\.1\.\d+:", l)]
        unsigned = [l.strip() for l in mine if "tcp-ao" not in l]
        check(len(mine) >= 100, "too few segments captured (%d)" % len(mine))
        check(not unsigned, "%d segment(s) without TCP-AO on the wire, e.g.:\n%s" % (len(unsigned), "\n".join(unsigned[:5])))
        log("    %d segments between A and B:830 on the wire, every one with TCP-AO; first connection got %d lines (%s); new connection OK"
            % (len(mine), lines(1), read_file(d + "/client-trickle")))
        da.stop()
        check("TCPAOD" not in a.rules(), "SIGTERM (a stop) left the rules")
        db.stop()
    finally:
        topo.close()


@test
def bad_configuration_changes_nothing():
    """7. Bad config and unreadable key files give a clear message and a non-zero exit, and
    leave no rules behind; a second daemon on a bound queue is refused without touching the
    first one's rules."""
    topo = Topology()
    try:
        a, b = two_hosts(topo)
        good = write_config("a", [("b", "192.0.2.2/32", None)], [key_yaml(1, 1, 1, "hmac-sha-1-96", SECRET)])
        cases = []
        with open(good) as f:
            text = f.read()
        bad = os.path.join(WORK, "bad.yaml")
        with open(bad, "w") as f:
            f.write(text.replace("send-id: 1", "send-id: 999"))
        os.chmod(bad, 0o600)
        cases.append(("SendID out of range", bad, "bad.yaml:", "send-id"))
        keyfile = os.path.join(WORK, "k.key")
        with open(keyfile, "w") as f:
            f.write("a perfectly good secret\n")
        os.chmod(keyfile, 0o644)
        kf = os.path.join(WORK, "kf.yaml")
        with open(kf, "w") as f:
            f.write(text.replace('key-string: "%s"' % SECRET, "key-file: %s" % keyfile))
        os.chmod(kf, 0o600)
        cases.append(("world-readable key file", kf, "readable by every user", "chmod 600"))
        missing = os.path.join(WORK, "missing.yaml")
        with open(missing, "w") as f:
            f.write(text.replace('key-string: "%s"' % SECRET, "key-file: %s/nonexistent.key" % WORK))
        os.chmod(missing, 0o600)
        cases.append(("missing key file", missing, "does not exist", "key-file"))
        loose = os.path.join(WORK, "loose.yaml")
        shutil.copy(good, loose)
        os.chmod(loose, 0o644)
        cases.append(("world-readable config with secrets", loose, "readable by every user", "chmod 600"))
        for what, path, must1, must2 in cases:
            r = a.run([TCPAOD, "run", "--config", path], check_rc=False, timeout=30)
            msg = r.stderr.strip()
            check(r.returncode == 1 and must1 in msg and must2 in msg, "%s: exit %d, message: %s" % (what, r.returncode, msg))
            check("TCPAOD" not in a.rules(), "%s: rules left behind" % what)
            log("    %-36s exit 1: %s" % (what, msg.splitlines()[0][:150]))
        r = a.run([TCPAOD, "check", "--config", bad], check_rc=False)
        check(r.returncode == 1 and ":" in r.stderr, "tcpaod check did not fail")
        d1 = Daemon(a, good, "first")
        rules_before = a.rules()
        r = a.run([TCPAOD, "run", "--config", good], check_rc=False, timeout=30)
        check(r.returncode == 1 and "already bound" in r.stderr, "second daemon: %d %s" % (r.returncode, r.stderr))
        check(a.rules() == rules_before and "TCPAOD" in rules_before, "the second daemon touched the first one's rules")
        log("    second daemon on the same queues: exit 1: %s" % r.stderr.strip().splitlines()[0])
        d1.stop()
    finally:
        topo.close()


@test
def fails_closed_when_the_daemon_dies():
    """Fail closed: when tcpaod is killed (no clean stop) its rules stay and protected traffic
    stops instead of flowing unprotected; restarted, it protects new connections again.
    With on-exit: keep-rules a clean stop also keeps traffic blocked."""
    topo = Topology()
    try:
        a, b = two_hosts(topo)
        ca, cb = pair_configs(None, None, "hmac-sha-1-96")
        da, db = Daemon(a, ca, "a"), Daemon(b, cb, "b")
        _, intact = transfer(a, b, "192.0.2.2", 830, 100000)
        check(intact, "baseline transfer failed")
        db.p.send_signal(signal.SIGKILL)
        db.p.wait(10)
        check("TCPAOD" in b.rules(), "rules vanished with the daemon")
        srv = b.popen(["socat", "-u", "TCP4-LISTEN:830,reuseaddr", "OPEN:/dev/null"], stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        r = a.run(["socat", "-u", "OPEN:/etc/hostname", "TCP4:192.0.2.2:830,connect-timeout=3"], check_rc=False, timeout=30)
        srv.kill()
        check(r.returncode != 0, "traffic flowed while B's tcpaod was dead")
        log("    B's tcpaod killed: its rules stay, the connection attempt fails (fail closed)")
        db = Daemon(b, cb, "b-again")
        _, intact = transfer(a, b, "192.0.2.2", 830, 100000)
        check(intact, "no recovery after restart")
        log("    restarted: new connections are protected again")
        da.stop()
        db.stop()
        keep = pair_configs(None, None, "hmac-sha-1-96", extra="on-exit: keep-rules\n")[1]
        dk = Daemon(b, keep, "b-keep")
        dk.stop()
        check("TCPAOD" in b.rules(), "on-exit: keep-rules removed the rules")
        b.run([TCPAOD, "rules", "--config", keep, "--remove"])
        check("TCPAOD" not in b.rules(), "tcpaod rules --remove left rules")
        log("    on-exit: keep-rules keeps them across a clean stop; tcpaod rules --remove clears them")
    finally:
        topo.close()


@test
def both_firewall_backends():
    """Rules install and work with the nf_tables and the legacy iptables back ends."""
    topo = Topology()
    try:
        a, b = two_hosts(topo)
        for backend in ("iptables-nft", "iptables-legacy"):
            if not shutil.which(backend + "-restore"):
                raise Fail("%s-restore is not installed" % backend)
            ca, cb = pair_configs(None, None, "hmac-sha-1-96", extra="firewall: %s\n" % backend)
            da, db = Daemon(a, ca, "a-" + backend), Daemon(b, cb, "b-" + backend)
            listing = a.run([backend, "-t", "mangle", "-S"]).stdout
            check("TCPAOD-OUT" in listing, "%s: rules not visible" % backend)
            _, intact = transfer(a, b, "192.0.2.2", 830, 2000000)
            check(intact and counter(da.stats(), "signed") > 0, "%s: traffic not protected" % backend)
            da.stop()
            db.stop()
            check("TCPAOD" not in a.run([backend, "-t", "mangle", "-S"]).stdout, "%s: rules left" % backend)
            log("    %s: installed, protected a transfer, removed" % backend)
    finally:
        topo.close()


@test
def reload_replaces_rules_in_place():
    """SIGHUP with changed peers replaces tcpaod's chains in one iptables-restore transaction:
    the jumps stay (one each), IPv6 rules appear when an IPv6 peer is added, traffic to the new
    peer is protected at once; a reload with errors keeps everything as it was."""
    topo = Topology()
    try:
        a, b = two_hosts(topo)
        k = [key_yaml(1, 1, 1, "hmac-sha-1-96", SECRET)]
        ca = write_config("a", [("b", "192.0.2.2/32", [830])], k)
        cb = write_config("b", [("a", "192.0.2.1/32", None), ("a6", "2001:db8:1::1/128", None)], k)
        da, db = Daemon(a, ca, "a"), Daemon(b, cb, "b")
        check("TCPAOD" not in a.run(["ip6tables", "-t", "mangle", "-S"]).stdout, "IPv6 rules without an IPv6 peer")
        write_config("a", [("b", "192.0.2.2/32", [830, 9339]), ("b6", "2001:db8:1::2/128", None)], k)
        da.hup()
        time.sleep(1.5)
        v4, v6 = a.run(["iptables", "-t", "mangle", "-S"]).stdout, a.run(["ip6tables", "-t", "mangle", "-S"]).stdout
        check(v4.count("-j TCPAOD-OUT") == 1 and v4.count("-j TCPAOD-IN") == 1, "jumps duplicated or lost:\n%s" % v4)
        check("830,9339" in v4 and "2001:db8:1::2/128" in v6, "rules not replaced:\n%s\n%s" % (v4, v6))
        _, intact = transfer(a, b, "2001:db8:1::2", 9339, 500000)
        check(intact and counter(da.stats(), "signed", "b6") > 0, "the new IPv6 peer is not protected")
        with open(ca, "a") as f:
            f.write("bogus: 1\n")
        da.hup()
        time.sleep(1.5)
        check(a.run(["iptables", "-t", "mangle", "-S"]).stdout == v4, "a failed reload changed the rules")
        check("reload of" in da.log() and "failed" in da.log(), "the failed reload was not logged")
        log("    reload: chains refilled in place (one jump each), IPv6 rules added, new peer protected; a bad file changed nothing")
        da.stop()
        db.stop()
    finally:
        topo.close()


def fleet_config(name, n, real, keys, drop=()):
    """A fleet: n peers in 2001:db8:ffff::/48 (one /128 each), each with its own key chain
    (one MKT per peer pair), plus the `real` peers (name, prefix) on chain k."""
    path = os.path.join(WORK, name + ".yaml")
    stats = os.path.join(WORK, name + ".stats.json")
    out = ["mode: host", "queue: 100", "threads: 2", "stats-file: %s" % stats, "stats-interval: 0", "key-chains:",
           "  - name: k", "    keys:"] + [k.rstrip("\n") for k in keys]
    for i in range(n):
        if i not in drop:
            out.append("  - { name: k%d, keys: [ { key-id: 1, send-id: 1, recv-id: 1, crypto-algorithm: hmac-sha-1-96, key-string: \"device %d\" } ] }" % (i, i))
    out.append("peers:")
    out += ["  - { name: %s, prefix: \"%s\", key-chain: k }" % r for r in real]
    for i in range(n):
        if i not in drop:
            out.append("  - { name: dev%d, prefix: \"2001:db8:ffff::%x:%x/128\", key-chain: k%d }" % (i, (i + 1) >> 16, (i + 1) & 0xFFFF, i))
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    os.chmod(path, 0o600)
    return path


def ipsets(ns):
    """{name: number of entries} of the namespace's ipsets."""
    out = {}
    for name in ns.run(["ipset", "list", "-n"]).stdout.split():
        m = re.search(r"Number of entries: (\d+)", ns.run(["ipset", "list", "-t", name]).stdout)
        out[name] = int(m.group(1)) if m else -1
    return out


@test
def many_peers_load_fast_and_protect():
    """50,000 peers, each with its own key chain, plus the real peer: the daemon starts within a
    generous bound, matches the fleet with one ipset (two rules, not 100,000), signs and
    verifies a transfer to the real peer; a reload swaps the set's members in place; a stop
    removes the set with the rules."""
    if not shutil.which("ipset"):
        raise Fail("the ipset tool is missing (apt-get install ipset): tcpaod needs it for large groups of peers")
    n = 50000
    topo = Topology()
    try:
        a, b = two_hosts(topo)
        k = [key_yaml(1, 1, 1, "hmac-sha-1-96", SECRET)]
        real = [("b", "192.0.2.2/32"), ("b6", "2001:db8:1::2/128")]
        ca = fleet_config("a", n, real, k)
        cb = write_config("b", [("a", "192.0.2.1/32", None), ("a6", "2001:db8:1::1/128", None)], k)
        t0 = time.time()
        r = sh([TCPAOD, "check", "--config", ca], timeout=120)
        t_check = time.time() - t0
        check("%d peer(s)" % (n + 2) in r.stdout and "ipset" in r.stdout, "check output:\n%s" % r.stdout[:2000])
        t0 = time.time()
        da = Daemon(a, ca, "a", start_timeout=90)
        t_start = time.time() - t0
        db = Daemon(b, cb, "b")
        sets = ipsets(a)
        mine = [s for s in sets if s.startswith("tcpaod-6-")]
        check(len(mine) == 1 and sets[mine[0]] == n + 1, "expected one set of %d peers: %s" % (n + 1, sets))
        v6 = a.run(["ip6tables", "-t", "mangle", "-S"]).stdout
        check(v6.count("--match-set %s" % mine[0]) == 2 and v6.count("-j NFQUEUE") == 4, "rules:\n%s" % v6)
        _, intact = transfer(a, b, "2001:db8:1::2", 5001, 2000000)
        st = da.stats()
        check(intact and counter(st, "signed", "b6") > 0 and counter(st, "verified", "b6") > 0, "the real peer is not protected: %s" % st["counters"]["peers"].get("b6"))
        check(counter(db.stats(), "verified", "a6") > 0, "B verified nothing")
        # Reload without 1,000 fleet peers: the set's members change in place (swap), rules stay.
        fleet_config("a", n, real, k, drop=set(range(1000)))
        t0 = time.time()
        da.hup()
        wait_for(lambda: da.stats().get("reloads", 0) >= 1, "the reload", 90)
        t_reload = time.time() - t0
        sets = ipsets(a)
        check(sets.get(mine[0]) == n + 1 - 1000 and len([s for s in sets if s.startswith("tcpaod-6-")]) == 1, "after the reload: %s" % sets)
        v6 = a.run(["ip6tables", "-t", "mangle", "-S"]).stdout
        check(v6.count("-j TCPAOD-OUT") == 1 and v6.count("-j TCPAOD-IN") == 1, "jumps duplicated or lost:\n%s" % v6)
        _, intact = transfer(a, b, "2001:db8:1::2", 5002, 500000)
        check(intact, "transfer after the reload")
        da.stop()
        check(not [s for s in ipsets(a) if s.startswith("tcpaod")], "the set outlived the daemon: %s" % ipsets(a))
        check("TCPAOD" not in a.rules(), "rules left after the stop:\n%s" % a.rules())
        db.stop()
        log("    %d peers: check %.1f s, start %.1f s (to the first stats), reload %.1f s (to the stats' reload count); one ipset, 2 rules; transfer signed and verified"
            % (n + 2, t_check, t_start, t_reload))
    finally:
        topo.close()


@test
def systemd_unit_and_notify_protocol():
    """The unit passes `systemd-analyze verify`; Type=notify: READY=1 once the queues are bound and
    the rules installed, RELOADING=1 then READY=1 around SIGHUP, STOPPING=1 on SIGTERM."""
    unit = os.path.join(WORK, "tcpaod.service")
    with open(os.path.join(ROOT, "systemd", "tcpaod.service")) as f:
        text = f.read().replace("/usr/local/bin/tcpaod", TCPAOD)
    with open(unit, "w") as f:
        f.write(text)
    r = sh(["systemd-analyze", "verify", unit], check_rc=False)
    check(r.returncode == 0, "systemd-analyze verify: %s %s" % (r.stdout, r.stderr))
    log("    systemd-analyze verify systemd/tcpaod.service: OK")
    import socket
    topo = Topology()
    try:
        a, b = two_hosts(topo)
        ca, _ = pair_configs(None, None, "hmac-sha-1-96")
        path = os.path.join(WORK, "notify.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(path)
        s.settimeout(15)
        d = Daemon(a, ca, "notify", env={"NOTIFY_SOCKET": path})
        msgs = []

        def expect(word):
            while True:
                m = s.recv(4096).decode()
                msgs.append(m)
                if word in m.split("\n"):
                    return

        expect("READY=1")
        check("TCPAOD-OUT" in a.rules(), "READY=1 before the rules were installed")
        d.hup()
        expect("RELOADING=1")
        expect("READY=1")
        d.p.send_signal(signal.SIGTERM)
        expect("STOPPING=1")
        check(d.p.wait(20) == 0, "exit status")
        log("    notifications: %s" % " | ".join(m.replace("\n", " ") for m in msgs))
        s.close()
    finally:
        topo.close()

@test
def control_socket_status_flows_keys():
    """Live view ("Operate it"): two tcpaod instances in two namespaces with their own instance
    names (A by --instance, B by `instance:` in its file, with the instance's default stats
    file), each with its own control socket (mode 0600). A connection from A to B shows in
    `tcpaod flows --json` on both sides with its 4-tuple, KeyID and counters that move;
    `status --json` lists the queues with the kernel's drop counters; `keys --json` the keys,
    the preferred one, the connection using it; the text forms too; no secret anywhere. Bad
    requests over the raw socket get clear errors; another user is refused; an unknown
    instance and a stopped daemon are reported with the path and how to start it."""
    import socket as sk
    topo = Topology()
    ia, ib = "%s-ctl-a" % TAG, "%s-ctl-b" % TAG
    dirs = ["/run/tcpaod/" + ia, "/run/tcpaod/" + ib]
    try:
        a, b = two_hosts(topo)
        later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
        secret2 = "the second, later key of the chain"
        keys = [key_yaml(1, 1, 1, "hmac-sha-1-96", SECRET),
                key_yaml(2, 2, 2, "aes-128-cmac-96", secret2, ", send-lifetime: { start-date-time: %s, no-end-time: true }" % later)]
        ca = write_config("ctl-a", [("b", "192.0.2.2/32", [9339])], keys)
        cb = os.path.join(WORK, "ctl-b.yaml")
        with open(cb, "w") as f:
            f.write("mode: host\nqueue: 100\nthreads: 2\nstats-interval: 0\ninstance: %s\nkey-chains:\n  - name: k\n    keys:\n%s"
                    "peers:\n  - { name: a, prefix: \"192.0.2.1/32\", ports: [9339], key-chain: k }\n" % (ib, "".join(keys)))
        os.chmod(cb, 0o600)
        sock_a, sock_b = dirs[0] + "/control.sock", dirs[1] + "/control.sock"
        logs = {}
        procs = {}
        for ns, cfg, name, extra in ((a, ca, "a", ["--instance", ia]), (b, cb, "b", [])):
            logs[name] = open(os.path.join(WORK, "ctl-%s.log" % name), "w")
            procs[name] = ns.popen([TCPAOD, "run", "--config", cfg] + extra, stdout=logs[name], stderr=subprocess.STDOUT)

        def up(sock, name):
            if procs[name].poll() is not None:
                raise Fail("tcpaod %s exited: %s" % (name, read_file(logs[name].name)))
            return os.path.exists(sock)
        wait_for(lambda: up(sock_a, "a") and up(sock_b, "b"), "both control sockets")
        for sock in (sock_a, sock_b):
            st = os.stat(sock)
            check(st.st_mode & 0o777 == 0o600 and st.st_uid == 0, "%s: mode %o uid %d, expected 0600 root" % (sock, st.st_mode & 0o777, st.st_uid))

        def ctl(*args, rc=0):
            r = sh([TCPAOD] + list(args), check_rc=False)
            check(r.returncode == rc, "tcpaod %s: exit %d (expected %d): %s%s" % (" ".join(args), r.returncode, rc, r.stdout, r.stderr))
            out = r.stdout + r.stderr
            check(SECRET not in out and secret2 not in out, "a secret in the output of tcpaod %s" % " ".join(args))
            return r

        def js(*args):
            v = json.loads(ctl(*args).stdout)
            check(v["ok"] is True and v["version"] == 1, "%s: %s" % (args, v))
            return v

        # A connection A -> B:9339 (an echo server), driven line by line.
        app = os.path.join(WORK, "session.py")
        with open(app, "w") as f:
            f.write(SESSION)
        chat = os.path.join(WORK, "ctl-chat")
        os.makedirs(chat, exist_ok=True)
        b.popen(["socat", "TCP4-LISTEN:9339,reuseaddr", "EXEC:cat"], stderr=subprocess.DEVNULL)
        wait_for(lambda: b.run(["ss", "-Hltn", "sport = :9339"]).stdout.strip(), "the echo server")
        client = a.popen([sys.executable, app, "chat", "192.0.2.2", "9339", chat])
        n = [0]

        def exchange():
            n[0] += 1
            open(os.path.join(chat, "go-%d" % n[0]), "w").close()
            check(wait_for(lambda: read_file(os.path.join(chat, "done-%d" % n[0])), "the echo") == "ok", "the session failed")
        exchange()
        port = int(wait_for(lambda: re.findall(r"192\.0\.2\.1:(\d+)\s+192\.0\.2\.2:9339", a.run(["ss", "-Htn", "state", "established"]).stdout), "A's socket")[0])

        def flow(inst, remote_port):
            v = js("flows", "--instance", inst, "--json")
            m = [f for f in v["flows"] if f["remote_port"] == remote_port and f["phase"] == "established"]
            return m[0] if len(m) == 1 else None
        fa = wait_for(lambda: flow(ia, 9339), "A's flow in `tcpaod flows`")
        fb = wait_for(lambda: flow(ib, port), "B's flow in `tcpaod flows`")
        check((fa["local"], fa["local_port"], fa["remote"], fa["remote_port"]) == ("192.0.2.1", port, "192.0.2.2", 9339), "A's 4-tuple: %s" % fa)
        check((fb["local"], fb["local_port"], fb["remote"], fb["remote_port"]) == ("192.0.2.2", 9339, "192.0.2.1", port), "B's 4-tuple: %s" % fb)
        for f, who in ((fa, "A"), (fb, "B")):
            check(f["peer"] == ("b" if who == "A" else "a") and f["key_id"] == 1 and f["rnext_key_id"] == 1 and f["last_recv_key_id"] == 1, "%s's KeyIDs: %s" % (who, f))
            check(f["signed"] > 0 and f["verified"] > 0 and f["dropped"] == 0, "%s's counters: %s" % (who, f))
            check(isinstance(f["local_isn"], int) and isinstance(f["remote_isn"], int) and f["send_sne"] == 0 and f["age"] >= 0, "%s: %s" % (who, f))
        check(fa["local_isn"] == fb["remote_isn"] and fa["remote_isn"] == fb["local_isn"], "the ISNs do not match across the two sides: %s %s" % (fa, fb))
        # Counters move with the traffic.
        exchange()
        wait_for(lambda: (flow(ia, 9339) or {}).get("signed", 0) > fa["signed"] and (flow(ia, 9339) or {}).get("verified", 0) > fa["verified"],
                 "A's per-flow counters to move")
        txt = ctl("flows", "--instance", ia).stdout
        check(re.search(r"b\s+192\.0\.2\.1:%d\s+192\.0\.2\.2:9339\s+established\s" % port, txt) and "KEYID" in txt and "isn" not in txt.lower(),
              "flows (text):\n%s" % txt)
        check("1 connection(s) of peer b" in ctl("flows", "--instance", ia, "--peer", "b").stdout, "flows --peer b")
        r = ctl("flows", "--instance", ia, "--peer", "nobody", rc=2)
        check("no peer `nobody`" in r.stderr, "flows --peer nobody: %s" % r.stderr)
        log("    flows: A %s:%d -> %s:%d KeyID %d RNextKeyID %d signed %d verified %d; B sees the mirror (same ISNs)"
            % (fa["local"], fa["local_port"], fa["remote"], fa["remote_port"], fa["key_id"], fa["rnext_key_id"], fa["signed"], fa["verified"]))
        log("    " + txt.splitlines()[1])

        # status
        sa, sb = js("status", "--instance", ia, "--json"), js("status", "--socket", sock_b, "--json")
        check(sa["instance"] == ia and sb["instance"] == ib and sa["mode"] == "host" and sa["pid"] == procs["a"].pid, "status: %s" % sa)
        check(sa["config"]["file"] == ca and sa["config"]["reloads"] == 0 and sa["flows"] >= 1, "status config/flows: %s" % sa)
        check(sa["control_socket"] == sock_a and sa["stats_file"] == ca.replace(".yaml", ".stats.json"), "A's paths: %s" % sa)
        check(sb["stats_file"] == dirs[1] + "/stats.json", "B's default stats file: %s" % sb["stats_file"])
        wait_for(lambda: os.path.exists(dirs[1] + "/stats.json"), "B's stats file in its instance directory")
        check(sa["flow_state"]["store"] in ("conntrack", "memory") and sa["flow_state"]["reason"], "flow state: %s" % sa["flow_state"])
        check([q["queue"] for q in sa["queues"]] == [100, 101], "queues: %s" % sa["queues"])
        for q in sa["queues"]:
            check(q["kernel"] is not None and "queue_dropped" in q["kernel"] and "user_dropped" in q["kernel"], "kernel counters: %s" % q)
        check(sum(q["packets"] for q in sa["queues"]) > 0, "no packets counted: %s" % sa["queues"])
        txt = ctl("status", "--instance", ia).stdout
        check(("instance %s" % ia) in txt and "queue 100:" in txt and "queue_dropped" in txt and "flow state:" in txt, "status (text):\n%s" % txt)
        log("    status: " + txt.splitlines()[0])
        # keys
        ka = js("keys", "--instance", ia, "--json")
        chain = ka["chains"][0]
        k1, k2 = chain["keys"]
        check(k1["key_id"] == 1 and k1["preferred"] and k1["send_valid"] and k1["accept_valid"] and k1["connections"] >= 1, "key 1: %s" % k1)
        check(k1["pkt_signed"] > 0 and k1["pkt_good"] > 0 and k1["pkt_bad"] == 0, "key 1 counters: %s" % k1)
        check(k2["key_id"] == 2 and not k2["preferred"] and not k2["send_valid"] and k2["accept_valid"] and k2["connections"] == 0, "key 2: %s" % k2)
        p = ka["peers"][0]
        check(p["name"] == "b" and p["preferred_key_id"] == 1 and p["pkt_good"] > 0 and p["pkt_bad"] == 0 and p["pkt_key_not_found"] == 0
              and p["pkt_ao_required"] == 0 and p["pkt_dropped_icmp"] == 0, "peer counters: %s" % p)
        txt = ctl("keys", "--instance", ia).stdout
        check("PKT_GOOD" in txt and "not yet" in txt and "pkt_key_not_found" in txt, "keys (text):\n%s" % txt)
        log("    keys: key 1 preferred, %d connection(s), pkt_good %d; key 2 send not yet valid" % (k1["connections"], k1["pkt_good"]))
        st = json.loads(ctl("stats", "--instance", ia, "--json").stdout)
        check(st["counters"]["total"]["signed"] > 0, "stats over the socket: %s" % st["counters"]["total"])

        # The raw protocol, as a script speaks it.
        c = sk.socket(sk.AF_UNIX, sk.SOCK_STREAM)
        c.settimeout(10)
        c.connect(sock_a)
        f = c.makefile("rwb")
        answers = {}
        for name, req in (("junk", b"hello\n"), ("list", b"[1]\n"), ("noversion", b'{"command":"status"}\n'),
                          ("v2", b'{"version":2,"command":"status"}\n'), ("unknown", b'{"version":1,"command":"frob"}\n'),
                          ("badarg", b'{"version":1,"command":"flows","colour":1}\n'), ("good", b'{"version":1,"command":"status","id":7}\n')):
            f.write(req)
            f.flush()
            answers[name] = json.loads(f.readline())
        expect = {"junk": "bad-json", "list": "bad-request", "noversion": "bad-request", "v2": "unsupported-version",
                  "unknown": "unknown-command", "badarg": "bad-request"}
        for name, code in expect.items():
            v = answers[name]
            check(v["ok"] is False and v["code"] == code and v["error"], "%s: %s" % (name, v))
        check(answers["v2"]["versions"] == [1] and "version 1" in answers["v2"]["error"], "v2: %s" % answers["v2"])
        check(answers["good"]["ok"] is True and answers["good"]["id"] == 7 and answers["good"]["instance"] == ia,
              "status after bad requests: %s" % answers["good"])
        # A client that asks and hangs up before reading the answer is no harm.
        c2 = sk.socket(sk.AF_UNIX, sk.SOCK_STREAM)
        c2.connect(sock_a)
        c2.sendall(b'{"version":1,"command":"flows"}\n')
        c2.close()
        c.close()
        check(js("status", "--instance", ia, "--json")["config"]["reloads"] == 0, "bad requests changed something")
        log("    raw socket: %s" % "; ".join("%s -> %s" % (k, answers[k]["code"]) for k in expect))
        # Another user: refused by the socket's mode.
        r = sh(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", TCPAOD, "status", "--instance", ia], check_rc=False)
        check(r.returncode == 2 and "permission denied" in r.stderr and "root" in r.stderr, "as nobody: %d %s" % (r.returncode, r.stderr))
        log("    as nobody: %s" % r.stderr.strip())
        # An unknown instance; then a stopped one.
        r = ctl("status", "--instance", TAG + "-nope", rc=2)
        check("no tcpaod instance" in r.stderr and ia in r.stderr and ib in r.stderr, "unknown instance: %s" % r.stderr)
        log("    unknown instance: %s" % r.stderr.strip())
        open(os.path.join(chat, "go-end"), "w").close()
        client.wait(10)
        procs["a"].send_signal(signal.SIGTERM)
        check(procs["a"].wait(20) == 0, "A's exit status")
        check(not os.path.exists(sock_a), "A's control socket is left after its stop")
        r = ctl("status", "--instance", ia, rc=2)
        check("is not running" in r.stderr and sock_a in r.stderr and "tcpaod run --config FILE --instance %s" % ia in r.stderr, "stopped: %s" % r.stderr)
        log("    stopped: %s" % r.stderr.strip())
        check(js("status", "--instance", ib, "--json")["instance"] == ib, "B answers after A stopped")
        procs["b"].send_signal(signal.SIGTERM)
        check(procs["b"].wait(20) == 0, "B's exit status")
        check(not os.path.exists(sock_b), "B's control socket is left after its stop")
    finally:
        topo.close()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)



MANY = r"""
import selectors, socket, sys, time
# server HOST PORT: echo every connection.  client HOST PORT N ROUNDS OUT: N connections at once,
# each sends ROUNDS 100-byte messages and reads each echo; OUT gets "ok N" or the error.
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sel = selectors.DefaultSelector()
if mode == "server":
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); ls.bind((host, port)); ls.listen(1024)
    sel.register(ls, selectors.EVENT_READ)
    while True:
        for k, _ in sel.select():
            if k.fileobj is ls:
                c, _ = ls.accept(); c.setblocking(False); sel.register(c, selectors.EVENT_READ)
            else:
                try: d = k.fileobj.recv(65536)
                except OSError: d = b""
                if d: k.fileobj.sendall(d)
                else: sel.unregister(k.fileobj); k.fileobj.close()
else:
    n, rounds, out = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    try:
        conns = [socket.create_connection((host, port), timeout=20) for _ in range(n)]
        for r in range(rounds):
            for c in conns: c.sendall(b"x" * 100)
            for c in conns:
                got = 0
                while got < 100:
                    d = c.recv(100 - got)
                    if not d: raise OSError("connection closed")
                    got += len(d)
        for c in conns: c.close()
        open(out, "w").write("ok %d" % n)
    except Exception as e:
        open(out, "w").write("error %s" % e)
"""


@test
def connections_spread_over_both_queues():
    """Two queues serve many connections between ONE host pair (queue-spread: connection: HMARK
    over addresses and ports): both queues busy on both hosts, every echo intact. The HMARK mark
    never leaves tcpaod (tcpaod's verdict sets it back to 0: a later rule sees none), and
    packets the operator marked (both directions) keep their mark and are spread by address."""
    topo = Topology()
    try:
        a, b = two_hosts(topo)
        k = [key_yaml(1, 1, 1, "hmac-sha-1-96", SECRET)]
        ca = write_config("sp-a", [("b", "192.0.2.2/32", [830])], k, threads=2, extra="queue-spread: connection\n")
        cb = write_config("sp-b", [("a", "192.0.2.1/32", [830])], k, threads=2, extra="queue-spread: connection\n")
        da, db = Daemon(a, ca, "sp-a"), Daemon(b, cb, "sp-b")
        app = os.path.join(WORK, "many.py")
        with open(app, "w") as f:
            f.write(MANY)
        # Counters after tcpaod (filter runs after mangle): packets with an HMARK mark, and with
        # the operator's mark 7.
        for ns, chains in ((a, ("OUTPUT", "INPUT")), (b, ("INPUT", "OUTPUT"))):
            for ch in chains:
                ns.run(["iptables", "-A", ch, "-p", "tcp", "-m", "mark", "--mark", "0x74410000/0xffff0000"])
                ns.run(["iptables", "-A", ch, "-p", "tcp", "-m", "mark", "--mark", "7"])
        b.popen([sys.executable, app, "server", "192.0.2.2", "830"])
        wait_for(lambda: b.run(["ss", "-Hltn", "sport = :830"]).stdout.strip(), "the echo server")
        before = {n: {q["queue"]: q["packets"] for q in d.stats()["queues"]} for n, d in (("a", da), ("b", db))}
        out = os.path.join(WORK, "many.out")
        p = a.popen([sys.executable, app, "client", "192.0.2.2", "830", "200", "20", out])
        p.wait(timeout=120)
        res = read_file(out)
        check(res == "ok 200", "200 connections x 20 echoes: %s" % res)
        for n, d in (("a", da), ("b", db)):
            st = d.stats()
            per = {q["queue"]: q["packets"] - before[n].get(q["queue"], 0) for q in st["queues"]}
            total = sum(per.values())
            check(total > 200 * 40 and min(per.values()) > total * 0.25, "%s: the queues' shares are uneven: %s" % (n, per))
            log("    %s: packets per queue %s" % (n, per))
        def marked(ns, hmark):
            """Packets counted by the filter table's mark rules: HMARK's range, or mark 7."""
            want = "mark match 0x74410000/0xffff0000" if hmark else "mark match 0x7"
            lines = ns.run(["iptables", "-L", "-v", "-x", "-n"]).stdout.splitlines()
            return sum(int(l.split()[0]) for l in lines if l.rstrip().endswith(want))
        check(marked(a, True) == 0 and marked(b, True) == 0, "HMARK marks left tcpaod: A %d, B %d" % (marked(a, True), marked(b, True)))
        # The operator marks A's port-830 packets both ways before tcpaod (raw table): the mark
        # stays, and both directions are balanced by address (so they share a queue).
        a.run(["iptables", "-t", "raw", "-A", "OUTPUT", "-p", "tcp", "--dport", "830", "-j", "MARK", "--set-mark", "7"])
        a.run(["iptables", "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--sport", "830", "-j", "MARK", "--set-mark", "7"])
        p = a.popen([sys.executable, app, "client", "192.0.2.2", "830", "20", "5", out])
        p.wait(timeout=60)
        check(read_file(out) == "ok 20", "marked connections: %s" % read_file(out))
        check(marked(a, False) > 2 * 20 * 5 and marked(a, True) == 0, "the operator's mark: %d packets kept it, %d got an HMARK mark" % (marked(a, False), marked(a, True)))
        log("    200 connections between one host pair on 2 queues; HMARK marks after tcpaod: 0; the operator's mark 7 kept on %d packets" % marked(a, False))
        da.stop()
        db.stop()
        check("TCPAOD" not in a.rules() and "TCPAOD" not in b.rules(), "rules left behind")
    finally:
        topo.close()


@test
def runtime_key_management():
    """Runtime MKT management (`tcpaod key add|prefer|remove`) while a bulk transfer and an
    interactive session run from A to B: key 2 added on both ends (the KeyID on the wire stays
    1), preferred on both (it moves to 2 in both directions, verified in a capture; each
    connection's move logged), key 1 removed on both; the connections stay up and nothing is
    dropped. A writes each change back to its configuration file (comments and mode kept, the
    key as key-file); B's are runtime only (--runtime). Bad requests (unknown chain, empty, short
    or world-readable key, duplicate SendID, removing the last key or the key in use) are refused
    with the reason and change nothing (`keys --json`, A's file). SIGHUP: A's file already holds
    its keys; B's file's keys replace its runtime changes (logged)."""
    import socket as sk
    topo = Topology()
    insts = {"a": "%s-rk-a" % TAG, "b": "%s-rk-b" % TAG}
    dirs = ["/run/tcpaod/" + i for i in insts.values()]
    try:
        a, b = two_hosts(topo)
        secret2 = "the runtime key, rolled in by automation"
        k1 = key_yaml(1, 1, 1, "hmac-sha-1-96", SECRET)
        k2 = key_yaml(2, 2, 2, "aes-128-cmac-96", secret2)
        ca = write_config("rk-a", [("b", "192.0.2.2/32", None)], [k1], extra="instance: %s\n" % insts["a"])
        cb = write_config("rk-b", [("a", "192.0.2.1/32", None)], [k1], extra="instance: %s\n" % insts["b"])
        note = "# the operator's note: a write-back keeps this line\n"
        with open(ca) as f:
            text = f.read()
        with open(ca, "w") as f:
            f.write(note + text)
        os.chmod(ca, 0o640)
        da, db = Daemon(a, ca, "rk-a"), Daemon(b, cb, "rk-b")
        wait_for(lambda: all(os.path.exists(d + "/control.sock") for d in dirs), "both control sockets")

        def ctl(side, *args, rc=0, stdin=None):
            # B's key changes are runtime only; A's are written back to its file.
            more = ["--runtime"] if side == "b" and args[0] == "key" else []
            r = sh([TCPAOD] + list(args) + more + ["--instance", insts[side]], check_rc=False, input=stdin)
            check(r.returncode == rc, "tcpaod %s (%s): exit %d (expected %d): %s%s" % (" ".join(args), side, r.returncode, rc, r.stdout, r.stderr))
            out = r.stdout + r.stderr
            check(SECRET not in out and secret2 not in out and secret2.encode().hex() not in out, "a secret in the output of tcpaod %s" % " ".join(args))
            return r

        def keys(side):
            v = json.loads(ctl(side, "keys", "--json").stdout)
            return [(c["name"], [(k["key_id"], k["send_id"], k["recv_id"], k["algorithm"], k["send_lifetime"], k["accept_lifetime"], k["preferred"])
                                 for k in c["keys"]]) for c in v["chains"]], v["runtime_changes"]

        def flow_keys(side):
            v = json.loads(ctl(side, "flows", "--json").stdout)
            return sorted(set(f["key_id"] for f in v["flows"] if f["phase"] == "established"))

        kf = os.path.join(WORK, "rk-key2")
        with open(kf, "w") as f:
            f.write(secret2 + "\n")
        os.chmod(kf, 0o600)
        add2 = ["key", "add", "--chain", "k", "--key-id", "2", "--send-id", "2", "--recv-id", "2", "--algorithm", "aes-128-cmac-96"]
        h = start_sessions(a, b, "rk")
        cap = Capture(a, "va", "tcp port 9339")
        sessions_progress(h, "the start")
        check(flow_keys("a") == [1] and flow_keys("b") == [1], "KeyIDs at the start: %s %s" % (flow_keys("a"), flow_keys("b")))

        # Bad requests: refused with the reason, nothing changed.
        before = keys("a")
        bad = os.path.join(WORK, "rk-world-readable")
        with open(bad, "w") as f:
            f.write(secret2)
        os.chmod(bad, 0o644)
        refusals = [
            (["key", "add", "--chain", "nope", "--key-id", "2", "--send-id", "2", "--recv-id", "2", "--algorithm", "aes-128-cmac-96", "--key-file", kf], None, "no key chain `nope`"),
            (add2 + ["--key-file", bad], None, "readable by every user"),
            (add2 + ["--hex-stdin"], "\n", "the secret is empty"),
            (add2 + ["--hex-stdin"], "00112233\n", "a key added at runtime needs at least 8"),
            (["key", "add", "--chain", "k", "--key-id", "3", "--send-id", "1", "--recv-id", "3", "--algorithm", "hmac-sha-1-96", "--key-file", kf], None, "SendID 1 is also used"),
            (["key", "remove", "--chain", "k", "--key-id", "1"], None, "last key of chain `k`"),
            (["key", "prefer", "--chain", "k", "--key-id", "9"], None, "has no key 9"),
        ]
        for args, stdin, reason in refusals:
            r = ctl("a", *args, rc=1, stdin=stdin)
            check(reason in r.stderr, "tcpaod %s: expected %r in: %s" % (" ".join(args), reason, r.stderr))
            log("    refused: %s" % r.stderr.strip().splitlines()[0][:160])
        # The raw protocol: an empty secret is refused by the daemon itself.
        c = sk.socket(sk.AF_UNIX, sk.SOCK_STREAM)
        c.connect(dirs[0] + "/control.sock")
        c.sendall(b'{"version":1,"command":"key-add","chain":"k","key_id":2,"send_id":2,"recv_id":2,"algorithm":"aes-128-cmac-96","secret_hex":""}\n')
        v = json.loads(c.makefile("rb").readline())
        c.close()
        check(v["ok"] is False and v["code"] == "invalid-key" and "the secret is empty" in v["error"], "raw empty secret: %s" % v)
        check(keys("a") == before, "a refused request changed the keys: %s -> %s" % (before, keys("a")))
        with open(ca) as f:
            check(f.read() == note + text, "a refused request changed A's configuration file")

        # Add key 2 on both ends (B from stdin, A from a key file): accepted, not yet sending.
        r = ctl("b", *(add2 + ["--hex-stdin"]), stdin=secret2.encode().hex() + "\n")
        log("    B: " + r.stdout.strip())
        r = ctl("a", *(add2 + ["--key-file", kf]))
        log("    A: " + r.stdout.strip())
        check("added to chain k" in r.stdout and "sends with key 1" in r.stdout and "written to " + ca in r.stdout, "key add: %s" % r.stdout)
        sessions_progress(h, "key 2 was added")
        check(flow_keys("a") == [1] and flow_keys("b") == [1], "KeyIDs after the add: %s %s" % (flow_keys("a"), flow_keys("b")))
        # Key 1 is in use: its removal is refused with the reason.
        r = ctl("a", "key", "remove", "--chain", "k", "--key-id", "1", rc=1)
        check("in use" in r.stderr and "tcpaod key prefer" in r.stderr, "remove in use: %s" % r.stderr)
        log("    refused: %s" % r.stderr.strip()[:200])

        # Prefer key 2, B then A: every connection moves to it.
        ctl("b", "key", "prefer", "--chain", "k", "--key-id", "2")
        r = ctl("a", "key", "prefer", "--chain", "k", "--key-id", "2")
        log("    A: " + r.stdout.strip())
        sessions_progress(h, "key 2 was preferred")
        wait_for(lambda: flow_keys("a") == [2] and flow_keys("b") == [2], "the connections to move to key 2")
        # Each connection's move is logged (once a second, off the packet path): the peer's new
        # RNextKeyID, then the KeyID we send with.
        for d in (da, db):
            wait_for(lambda: "now sends with KeyID 2 (was 1): the peer's RNextKeyID" in d.log()
                     and "the peer moved to RNextKeyID 2 (was 1)" in d.log(), "%s to log the connections' key moves" % d.name)
        log("    " + next(l for l in da.log().splitlines() if "now sends with KeyID 2" in l).strip()[:220])

        # Remove key 1 on both ends.
        for side in ("a", "b"):
            ctl(side, "key", "remove", "--chain", "k", "--key-id", "1")
        sessions_progress(h, "key 1 was removed")
        ka, changes = keys("a")
        check([k[0] for k in ka[0][1]] == [2] and ka[0][1][0][6] and changes == [], "A's keys after the changes: %s %s" % (ka, changes))
        kb, changes = keys("b")
        check([k[0] for k in kb[0][1]] == [2] and kb[0][1][0][6] and len(changes) == 3, "B's keys after the changes: %s %s" % (kb, changes))
        log("    B's runtime changes: %s" % "; ".join(changes))
        # A's file: the note kept, the mode kept, key 1 gone, key 2 there as its key file; it
        # checks clean and holds no secret.
        with open(ca) as f:
            written = f.read()
        check(written.startswith(note) and os.stat(ca).st_mode & 0o777 == 0o640, "A's file lost its comment or mode: %o\n%s" % (os.stat(ca).st_mode, written))
        check("key-file: " + kf in written and "key-id: 1\n" not in written and secret2 not in written, "A's file after the changes:\n" + written)
        r = sh([TCPAOD, "check", "--config", ca], check_rc=False)
        check(r.returncode == 0, "tcpaod check of the written file: %s%s" % (r.stdout, r.stderr))
        log("    A's file after add, prefer, remove: %d lines, the comment kept, key 2 as key-file" % written.count("\n"))

        # SIGHUP: the file wins. A's holds its keys already; B's operator put key 2 in the file
        # too (key 1 comes back, key 2 stays preferred, being listed last).
        write_config("rk-b", [("a", "192.0.2.1/32", None)], [k1, k2], extra="instance: %s\n" % insts["b"])
        for d in (db, da):
            d.hup()
            wait_for(lambda: "configuration reloaded" in d.log(), "the reload of %s" % d.name)
        for side, d, ids, replaced in (("a", da, [2], False), ("b", db, [1, 2], True)):
            kk, changes = keys(side)
            check([k[0] for k in kk[0][1]] == ids and changes == [], "%s's keys after SIGHUP: %s %s" % (side, kk, changes))
            check(("replace 3 runtime key change(s)" in d.log()) == replaced, "%s: the runtime changes replaced by the reload: %s" % (side, replaced))
        sessions_progress(h, "the reload")
        check(flow_keys("a") == [2] and flow_keys("b") == [2], "KeyIDs after the reload: %s %s" % (flow_keys("a"), flow_keys("b")))
        total = finish_sessions(h)
        path = cap.stop()
        vcfg = write_config("rk-verify", [("b", "192.0.2.2/32", None)], [k1, k2])
        rc, out = verify_pcap(vcfg, path)
        check(rc == 0, "verify-pcap: %s" % out["line"])
        runs = {}
        for s in out["segments"]:
            side = "a" if s["src"] == "192.0.2.1" else "b"
            r = runs.setdefault(side, [])
            if s.get("keyID") is not None and (not r or r[-1] != s["keyID"]):
                r.append(s["keyID"])
        check(runs.get("a") == [1, 2] and runs.get("b") == [1, 2], "KeyID on the wire did not move 1 -> 2: %s" % runs)
        for d in (da, db):
            drops = {k: v for k, v in d.stats()["counters"]["total"].items() if k.startswith("dropped-") and v}
            check(not drops, "%s dropped: %s" % (d.name, drops))
            check(secret2 not in d.log() and secret2.encode().hex() not in d.log(), "a secret in %s's log" % d.name)
        check("key 2 (SendID 2, RecvID 2, aes-128-cmac-96) added to chain k" in da.log(), "the add is not logged")
        log("    %d MB through add, prefer, remove and a reload; KeyIDs on the wire A->B %s, B->A %s; %s; no drops"
            % (total // 1000000, runs["a"], runs["b"], out["line"]))
        da.stop()
        db.stop()
    finally:
        topo.close()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def run_tests(tests, args, title):
    """Runs `tests` in order (those whose name contains the `-k SUBSTRING` argument, if given);
    one PASS/FAIL line each, then a summary. Returns the exit status (1 when one failed or none
    ran)."""
    sel = args[args.index("-k") + 1] if "-k" in args else ""
    failed, ran = [], 0
    t_all = time.time()
    for t in tests:
        if sel and sel not in t.__name__:
            continue
        ran += 1
        log("-- %s" % t.__name__)
        t0 = time.time()
        try:
            t()
            log("PASS %s (%.1f s)" % (t.__name__, time.time() - t0))
        except Exception as e:
            failed.append(t.__name__)
            log("FAIL %s (%.1f s): %s" % (t.__name__, time.time() - t0, e))
            if not isinstance(e, Fail):
                traceback.print_exc()
    log("%s: %d passed, %d failed in %.0f s%s" % (title, ran - len(failed), len(failed), time.time() - t_all,
                                                  " (" + ", ".join(failed) + ")" if failed else ""))
    return 1 if failed or not ran else 0


def tier_main(tests, title, missing=lambda: None):
    """The command line of a tier's script (e2e.py, mgmt.py, metrics.py): `--list`, `-k
    SUBSTRING`; root, the tcpaod binary and `missing()` (what else the tier needs: None, or what
    is missing) checked first; this module's work directory removed at the end."""
    try:
        args = sys.argv[1:]
        if os.geteuid() != 0:
            print("the end-to-end tests need root (network namespaces, iptables)")
            return 1
        if "--list" in args:
            for t in tests:
                print(t.__name__)
            return 0
        if not os.access(TCPAOD, os.X_OK):
            print("no tcpaod binary at %s (swift build -c release, or TCPAOD_BIN=...)" % TCPAOD)
            return 1
        problem = missing()
        if problem:
            print(problem)
            return 1
        return run_tests(tests, args, title)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)


def main():
    return tier_main(TESTS, "end-to-end tests")


if __name__ == "__main__":
    sys.exit(main())
