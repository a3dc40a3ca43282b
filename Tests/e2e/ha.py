#!/usr/bin/env python3
"""Gateway failover on conntrackd + keepalived (issue 10): two tcpaod gateways in gateway mode
with the shipped configuration (config/examples/ha/), a TCP-AO client and a protected server,
all in network namespaces. A paced bulk transfer and an interactive session run through gw1;
gw1 is killed (its tcpaod with SIGKILL, its links down); keepalived moves both virtual
addresses to gw2, whose notify script commits conntrackd's external cache (the conntrack
entries replicated from gw1, their labels carrying tcpaod's per-connection TCP-AO state); both
connections go on through gw2. Checks: the transfer arrives intact (sha256 at both ends), the
session answers after the failover, `tcpaod verify-pcap --strict` verifies every segment
captured at the client, and reports the stall measured in that capture.

usage: ha.py [--demo] [--keep] [--clean]    (root; TCPAOD_BIN = the tcpaod binary)
  --demo   narrate (scripts/demo-ha); the checks are the same
  --keep   leave the namespaces and daemons running (fixed names ha-*; ha.py --clean removes)
Environment: HA_BYTES (default 200 MB), HA_RATE (bytes/s of the paced transfer, default 4 MB/s),
HA_FAILOVER_AT (bytes delivered before gw1 is killed, default a quarter of HA_BYTES), HA_KILL=tcpaod
(kill only gw1's tcpaod, links up: keepalived's track script must hand the addresses over).
Exit 0 when every check passed, 1 otherwise. Prints PASS/FAIL lines.

Topology (documentation addresses only):
  client 192.0.2.10 --[bridge]-- ext0 gw1 192.0.2.2 / gw2 192.0.2.3, VIP 192.0.2.1
  server 198.51.100.10 --[bridge]-- int0 gw1 198.51.100.2 / gw2 198.51.100.3, VIP 198.51.100.1
  sync0 gw1 203.0.113.1 <-> gw2 203.0.113.2 (conntrackd, FTFW over unicast UDP)
  The two bridges live in a namespace of their own (sw). tcpaod: host mode on the client
  (it signs and verifies its own socket), gateway mode on gw1 and gw2; the server runs nothing.
"""
import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
EXAMPLES = os.path.join(ROOT, "config", "examples", "ha")
TCPAOD = os.environ.get("TCPAOD_BIN", os.path.join(ROOT, ".build", "release", "tcpaod"))
BYTES = int(os.environ.get("HA_BYTES", 200 * 1000 * 1000))
RATE = int(os.environ.get("HA_RATE", 4 * 1000 * 1000))
FAILOVER_AT = int(os.environ.get("HA_FAILOVER_AT", BYTES // 4))
CLIENT, SERVER = "192.0.2.10", "198.51.100.10"
VIP_EXT, VIP_INT = "192.0.2.1", "198.51.100.1"
BULK_PORT, CHAT_PORT = 830, 9339
KILL = os.environ.get("HA_KILL", "all")   # all: tcpaod and the links; tcpaod: only tcpaod
PROBE_BIT = 127
ROLES = ("sw", "client", "gw1", "gw2", "server")


class Fail(AssertionError):
    pass


def now():
    return time.time()


def sh(args, check=True, timeout=60, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise Fail("command failed (%d): %s\n%s%s" % (r.returncode, " ".join(args), r.stdout, r.stderr))
    return r


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def wait_for(cond, what, timeout=30, interval=0.05):
    deadline = now() + timeout
    while True:
        v = cond()
        if v:
            return v
        if now() > deadline:
            raise Fail("timed out (%d s) waiting for %s" % (timeout, what))
        time.sleep(interval)


# ---- the applications (unmodified TCP: they know nothing about TCP-AO) ----------------------

APPS = r'''
import hashlib, json, os, socket, sys, time
def put(path, text):
    with open(path + ".tmp", "w") as f: f.write(text)
    os.replace(path + ".tmp", path)
mode = sys.argv[1]
if mode == "sink":          # sink PORT PROGRESS RESULT: counts and hashes what arrives
    port, progress, result = int(sys.argv[2]), sys.argv[3], sys.argv[4]
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port)); ls.listen(1); put(progress, "listening")
    c, _ = ls.accept(); h = hashlib.sha256(); n = 0; mark = 0
    while True:
        d = c.recv(1 << 20)
        if not d: break
        h.update(d); n += len(d)
        if n - mark >= 256 * 1024: put(progress, "%d %.6f" % (n, time.time())); mark = n
    put(progress, "%d %.6f" % (n, time.time()))
    put(result, json.dumps({"bytes": n, "sha256": h.hexdigest()})); c.close()
elif mode == "source":      # source HOST PORT SIZE RATE RESULT: random bytes, paced, hashed
    host, port, size, rate, result = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    s = socket.create_connection((host, port), timeout=10); s.settimeout(None)
    h = hashlib.sha256(); sent = 0; t0 = time.time()
    while sent < size:
        chunk = os.urandom(min(64 * 1024, size - sent))
        h.update(chunk); s.sendall(chunk); sent += len(chunk)
        ahead = t0 + sent / rate - time.time()
        if ahead > 0: time.sleep(ahead)      # pacing, not waiting for anything
    s.shutdown(socket.SHUT_WR)
    while s.recv(4096): pass
    put(result, json.dumps({"bytes": sent, "sha256": h.hexdigest(), "seconds": time.time() - t0}))
elif mode == "echo":        # echo PORT READY
    port, ready = int(sys.argv[2]), sys.argv[3]
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port)); ls.listen(1); put(ready, "listening")
    c, _ = ls.accept()
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
elif mode == "chat":        # chat HOST PORT STOP LOG: a request every 0.2 s, each answered
    host, port, stop, logp = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    s = socket.create_connection((host, port), timeout=10); s.settimeout(120)
    f = s.makefile("rwb"); k = 0; log = open(logp, "a", buffering=1)
    while not os.path.exists(stop):
        k += 1
        line = ("request %d %s\n" % (k, "x" * (k * 97 % 600))).encode()
        t0 = time.time(); f.write(line); f.flush(); got = f.readline(); t1 = time.time()
        log.write("%d %.6f %.6f %s\n" % (k, t0, t1, "ok" if got == line else "mismatch"))
        if got != line: break
        ahead = t0 + 0.2 - time.time()
        if ahead > 0: time.sleep(ahead)      # the session's pace
    s.close(); log.write("end\n")
'''


# ---- namespaces and processes ---------------------------------------------------------------

class Lab:
    def __init__(self, prefix, work, narrate):
        self.prefix, self.work, self.narrate = prefix, work, narrate
        self.ns = {r: "%s-%s" % (prefix, r) for r in ROLES}
        self.procs = {}
        self.results = []

    # output
    def say(self, msg):
        print(("\n== %s" % msg) if self.narrate else ("   %s" % msg), flush=True)

    def info(self, msg):
        print("   " + msg, flush=True)

    def check(self, cond, what, detail=""):
        self.results.append((bool(cond), what))
        print("%s %s%s" % ("PASS" if cond else "FAIL", what, (": " + detail) if detail else ""), flush=True)
        return cond

    # namespaces
    def cmd(self, role, args):
        return ["ip", "netns", "exec", self.ns[role]] + list(args)

    def run(self, role, args, **kw):
        return sh(self.cmd(role, args), **kw)

    def start(self, name, role, args, log=None):
        out = open(log or os.path.join(self.work, name + ".out"), "w")
        p = subprocess.Popen(self.cmd(role, args), stdout=out, stderr=subprocess.STDOUT)
        self.procs[name] = p
        return p

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def clean(self):
        clean_namespaces(self.prefix)


def clean_namespaces(prefix):
    for r in ROLES:
        ns = "%s-%s" % (prefix, r)
        if subprocess.run(["ip", "netns", "pids", ns], capture_output=True).returncode != 0:
            continue
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), sig)
                except OSError:
                    pass
            deadline = now() + 3
            while pids and now() < deadline:
                if not subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                    break
                time.sleep(0.05)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def topology(lab):
    for r in ROLES:
        sh(["ip", "netns", "add", lab.ns[r]])
        lab.run(r, ["ip", "link", "set", "lo", "up"])
    for br in ("bre", "bri"):
        lab.run("sw", ["ip", "link", "add", br, "type", "bridge", "mcast_snooping", "0"])
        lab.run("sw", ["ip", "link", "set", br, "up"])

    def port(role, dev, swdev, br, addrs):
        sh(["ip", "link", "add", dev, "netns", lab.ns[role], "type", "veth", "peer", "name", swdev, "netns", lab.ns["sw"]])
        lab.run("sw", ["ip", "link", "set", swdev, "master", br, "up"])
        for a in addrs:
            lab.run(role, ["ip", "addr", "add", a, "dev", dev])
        lab.run(role, ["ip", "link", "set", dev, "up"])

    port("client", "eth0", "cl", "bre", ["%s/24" % CLIENT])
    port("server", "eth0", "sv", "bri", ["%s/24" % SERVER])
    for n in (1, 2):
        g = "gw%d" % n
        port(g, "ext0", "g%de" % n, "bre", ["192.0.2.%d/24" % (n + 1)])
        port(g, "int0", "g%di" % n, "bri", ["198.51.100.%d/24" % (n + 1)])
        lab.run(g, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    sh(["ip", "link", "add", "sync0", "netns", lab.ns["gw1"], "type", "veth", "peer", "name", "sync0", "netns", lab.ns["gw2"]])
    for n in (1, 2):
        lab.run("gw%d" % n, ["ip", "addr", "add", "203.0.113.%d/30" % n, "dev", "sync0"])
        lab.run("gw%d" % n, ["ip", "link", "set", "sync0", "up"])
    lab.run("client", ["ip", "route", "add", "198.51.100.0/24", "via", VIP_EXT])
    lab.run("server", ["ip", "route", "add", "default", "via", VIP_INT])


# ---- configuration: the shipped examples, with this run's paths and a fresh key -------------

def configure(lab):
    secret = os.urandom(24).hex()
    ex = lambda name: read(os.path.join(EXAMPLES, name))
    cfg = {}
    # keepalived runs scripts as root only from paths no other user can write (script
    # security): copy them out of the source tree, which a user may own.
    bindir = lab.path("bin")
    os.makedirs(bindir, mode=0o755, exist_ok=True)
    for name in ("tcpaod-ha-notify", "tcpaod-ha-check"):
        with open(os.path.join(bindir, name), "w") as f:
            f.write(ex(name))
        os.chmod(os.path.join(bindir, name), 0o755)
    for n in (1, 2):
        g = "gw%d" % n
        d = lab.path(g)
        os.makedirs(d, mode=0o700, exist_ok=True)
        stats = os.path.join(d, "stats.json")
        y = ex("tcpaod.yaml").replace("/run/tcpaod/stats.json", stats)
        y = re.sub(r'key-string: "[^"]*"', 'key-string: "%s"' % secret, y)
        c = ex("conntrackd-gw%d.conf" % n)
        for old, new in (("/var/log/conntrackd.log", "conntrackd.log"), ("/var/lock/conntrackd.lock", "conntrackd.lock"),
                         ("/var/run/conntrackd.ctl", "conntrackd.ctl")):
            c = c.replace(old, os.path.join(d, new))
        k = ex("keepalived.conf")
        k = k.replace("/etc/keepalived/", bindir + "/").replace("/run/tcpaod/stats.json", stats)
        k = k.replace("/etc/conntrackd/conntrackd.conf", "%s %s" % (os.path.join(d, "conntrackd.conf"), os.path.join(d, "notify.log")))
        files = {"tcpaod.yaml": y, "conntrackd.conf": c, "keepalived.conf": k}
        for name, text in files.items():
            left = [m for line in text.splitlines() for m in re.findall(r"(?<![\w.-])(?:/etc|/var|/run)/\S+", line.split("#")[0])]
            if left:  # the example's paths changed: this run would touch the host's files
                raise Fail("%s: path(s) not mapped to this run's directory: %s" % (name, ", ".join(left)))
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
            os.chmod(os.path.join(d, name), 0o600)
        cfg[g] = d
    # The client: host mode, the same key, the protected prefix behind the gateways as its peer.
    cd = lab.path("client")
    os.makedirs(cd, mode=0o700, exist_ok=True)
    chain = re.search(r"^key-chains:\n(?:[ #].*\n|\n)*", ex("tcpaod.yaml"), re.M).group(0)
    chain = re.sub(r'key-string: "[^"]*"', 'key-string: "%s"' % secret, chain)
    client = ("mode: host\nqueue: 100\nthreads: 2\nstats-file: %s\nstats-interval: 0\n%s"
              "peers:\n  - { name: servers, prefix: 198.51.100.0/24, ports: [%d, %d], key-chain: mgmt }\n"
              % (os.path.join(cd, "stats.json"), chain, BULK_PORT, CHAT_PORT))
    with open(os.path.join(cd, "tcpaod.yaml"), "w") as f:
        f.write(client)
    os.chmod(os.path.join(cd, "tcpaod.yaml"), 0o600)
    cfg["client"] = cd
    for r in ("gw1", "client"):
        sh([TCPAOD, "check", "--config", os.path.join(cfg[r], "tcpaod.yaml")])
    return cfg


def start_tcpaod(lab, role, d):
    stats = os.path.join(d, "stats.json")
    p = lab.start("tcpaod-" + role, role, [TCPAOD, "run", "--config", os.path.join(d, "tcpaod.yaml")],
                  log=os.path.join(d, "tcpaod.log"))

    def up():
        if p.poll() is not None:
            raise Fail("tcpaod on %s exited %d:\n%s" % (role, p.returncode, read(os.path.join(d, "tcpaod.log"))))
        return os.path.exists(stats)
    wait_for(up, "tcpaod on %s to start" % role, 20)
    return p


def conntrack_named(lab, role, args):
    """`conntrack ARGS` in `role`'s namespace, label bits named bN (see labels())."""
    d = lab.path("etc-overlay")
    if not os.path.exists(d):
        os.makedirs(os.path.join(d, "u", "xtables"))
        os.makedirs(os.path.join(d, "w"))
        with open(os.path.join(d, "u", "xtables", "connlabel.conf"), "w") as f:
            f.write("".join("%d b%d\n" % (i, i) for i in range(128)))
    script = ("mount --make-rprivate / && mount -t overlay overlay -o lowerdir=/etc,upperdir=%s/u,workdir=%s/w /etc && "
              "exec ip netns exec %s conntrack %s" % (d, d, lab.ns[role], args))
    return sh(["unshare", "-m", "sh", "-c", script], check=False)


def labels(lab, role, port):
    """The conntrack label bits of the entry of the connection to `port` in `role`'s namespace
    (None: no entry). `conntrack -o labels` prints bits by their names from
    /etc/xtables/connlabel.conf only: name them bN in a private mount namespace over an overlay
    of /etc, so the host's /etc is untouched."""
    out = conntrack_named(lab, role, "-L -f ipv4 -p tcp --dport %d -o labels" % port).stdout
    for line in out.splitlines():
        if "dport=%d " % port in line:
            m = re.search(r"labels=(\S+)", line)
            return frozenset(int(b[1:]) for b in m.group(1).split(",")) if m else frozenset()
    return None


def bits(b):
    if b is None:
        return "no entry"
    b = b - {PROBE_BIT}
    return "%d label bits set" % len(b) if b else "no label"


def vips(lab, g):
    out = lab.run(g, ["ip", "-4", "-o", "addr", "show"], check=False).stdout
    return (" %s/" % VIP_EXT) in out and (" %s/" % VIP_INT) in out


def notify_log(d):
    return read(os.path.join(d, "notify.log"))


def last_state(d):
    lines = [l for l in notify_log(d).splitlines() if l.split()[-1:] in (["done"], ["committed"])]
    return lines[-1].split()[2].rstrip(":") if lines else None


def start_gateway(lab, g, d):
    start_tcpaod(lab, g, d)
    rules = lab.run(g, ["iptables", "-t", "mangle", "-S"]).stdout
    lab.check("-m connlabel" in rules, "%s: tcpaod's rules reserve conntrack label space (-m connlabel)" % g)
    conf = os.path.join(d, "conntrackd.conf")
    p = lab.start("conntrackd-" + g, g, ["conntrackd", "-C", conf], log=os.path.join(d, "conntrackd.out"))

    def ctd_up():
        if p.poll() is not None:
            raise Fail("conntrackd on %s exited %d:\n%s%s" % (g, p.returncode, read(os.path.join(d, "conntrackd.out")),
                                                               read(os.path.join(d, "conntrackd.log"))))
        return lab.run(g, ["conntrackd", "-C", conf, "-s"], check=False).returncode == 0
    wait_for(ctd_up, "conntrackd on %s" % g, 20)
    lab.start("keepalived-" + g, g, ["keepalived", "--dont-fork", "--log-console", "--log-detail", "--no-syslog", "--vrrp",
                                     "--config-id", g, "--use-file", os.path.join(d, "keepalived.conf"),
                                     "--pid", os.path.join(d, "keepalived.pid"), "--vrrp_pid", os.path.join(d, "vrrp.pid"),
                                     "--checkers_pid", os.path.join(d, "checkers.pid")],
              log=os.path.join(d, "keepalived.log"))


# ---- capture analysis (plain pcap, Ethernet, IPv4) --------------------------------------------

def segments(path):
    """(time, sport, dport, seq, ack, payload length, flags) of every IPv4 TCP segment."""
    out = []
    with open(path, "rb") as f:
        head = f.read(24)
        magic = struct.unpack("<I", head[:4])[0]
        endian, scale = {0xa1b2c3d4: ("<", 1e-6), 0xa1b23c4d: ("<", 1e-9), 0xd4c3b2a1: (">", 1e-6), 0x4d3cb2a1: (">", 1e-9)}[magic]
        rec = struct.Struct(endian + "IIII")
        while True:
            h = f.read(16)
            if len(h) < 16:
                break
            sec, frac, incl, _ = rec.unpack(h)
            pkt = f.read(incl)
            if len(pkt) < 54 or pkt[12:14] != b"\x08\x00" or pkt[23] != 6:
                continue
            ihl = (pkt[14] & 15) * 4
            total = struct.unpack(">H", pkt[16:18])[0]
            t = 14 + ihl
            sport, dport, seq, ack, off, flags = struct.unpack(">HHIIBB", pkt[t:t + 14])
            out.append((sec + frac * scale, sport, dport, seq, ack, total - ihl - (off >> 4) * 4, flags))
    return out


def stall(segs, port, t_kill):
    """For the connection to `port`: the longest time around the failover in which the server
    acknowledged no new data (from, to), and the client's first retransmission in that time."""
    max_end, last_ack, ack_times, retx = None, None, [], []
    for t, sp, dp, seq, ack, ln, fl in segs:
        if dp == port and ln > 0:
            end = (seq + ln) & 0xffffffff
            if max_end is None or 0 < ((end - max_end) & 0xffffffff) < 0x80000000:
                max_end = end
            elif t >= t_kill - 1:
                retx.append(t)
        elif sp == port and fl & 0x10:
            if last_ack is None or 0 < ((ack - last_ack) & 0xffffffff) < 0x80000000:
                ack_times.append(t)
                last_ack = ack
    gaps = [(b - a, a, b) for a, b in zip(ack_times, ack_times[1:]) if b >= t_kill]
    if not gaps:
        return None, None, None
    gap = max(gaps)
    first_retx = next((t for t in retx if gap[1] <= t <= gap[2]), None)
    return first_retx, gap[2], gap


# ---- the scenario ---------------------------------------------------------------------------

def scenario(lab):
    lab.say("namespaces: client, gw1, gw2, server, and the two LAN bridges (sw); sync link gw1-gw2")
    topology(lab)
    cfg = configure(lab)
    lab.info("configuration: %s (tcpaod.yaml, conntrackd-gw1/2.conf, keepalived.conf, notify and check scripts)" % EXAMPLES)
    lab.info("this run's copies: %s/{gw1,gw2,client}" % lab.work)

    lab.say("tcpaod (gateway mode), conntrackd (FTFW) and keepalived on gw1, then on gw2; tcpaod (host mode) on the client")
    start_gateway(lab, "gw1", cfg["gw1"])
    wait_for(lambda: vips(lab, "gw1") and last_state(cfg["gw1"]) == "primary", "gw1 to become VRRP master", 30)
    start_gateway(lab, "gw2", cfg["gw2"])
    wait_for(lambda: last_state(cfg["gw2"]) == "backup", "gw2 to become VRRP backup", 30)
    lab.check(vips(lab, "gw1") and not vips(lab, "gw2"), "gw1 is master (holds %s and %s), gw2 backup" % (VIP_EXT, VIP_INT))
    start_tcpaod(lab, "client", cfg["client"])

    lab.say("servers on %s; capture on the client's link; a %d MB transfer paced at %.1f MB/s (port %d) and an "
            "interactive session (port %d) through gw1" % (SERVER, BYTES // 1000000, RATE / 1e6, BULK_PORT, CHAT_PORT))
    apps = lab.path("apps.py")
    with open(apps, "w") as f:
        f.write(APPS)
    progress, sink_res, src_res = lab.path("sink.progress"), lab.path("sink.json"), lab.path("source.json")
    echo_ready, chat_stop, chat_log = lab.path("echo.ready"), lab.path("chat.stop"), lab.path("chat.log")
    lab.start("sink", "server", [sys.executable, apps, "sink", str(BULK_PORT), progress, sink_res])
    lab.start("echo", "server", [sys.executable, apps, "echo", str(CHAT_PORT), echo_ready])
    wait_for(lambda: read(progress) == "listening" and read(echo_ready) == "listening", "the servers")
    cap_path = lab.path("client.pcap")
    cap = lab.start("tcpdump", "client", ["tcpdump", "-i", "eth0", "-s", "0", "-B", "65536", "--immediate-mode", "-U",
                                          "-w", cap_path, "tcp"], log=lab.path("tcpdump.out"))
    wait_for(lambda: "listening on" in read(lab.path("tcpdump.out")), "tcpdump")
    lab.start("source", "client", [sys.executable, apps, "source", SERVER, str(BULK_PORT), str(BYTES), str(RATE), src_res])
    lab.start("chat", "client", [sys.executable, apps, "chat", SERVER, str(CHAT_PORT), chat_stop, chat_log])

    def delivered():
        v = read(progress).split()
        return (int(v[0]), float(v[1])) if len(v) == 2 else (0, 0.0)

    def chats():
        return [l.split() for l in read(chat_log).splitlines() if len(l.split()) == 4]

    wait_for(lambda: delivered()[0] >= FAILOVER_AT and len(chats()) >= 5, "%d MB delivered through gw1" % (FAILOVER_AT // 1000000),
             FAILOVER_AT / RATE * 3 + 30)
    t_ready = now()
    ctd2 = ["conntrackd", "-C", os.path.join(cfg["gw2"], "conntrackd.conf")]

    def replicated():
        ext = lab.run("gw2", ctd2 + ["-e"], check=False).stdout
        return all(re.search(r"ESTABLISHED.*dport=%d\b.*" % p, ext) for p in (BULK_PORT, CHAT_PORT)) and ext
    ext = wait_for(replicated, "both connections in gw2's external cache", 20)
    lab.check(True, "both connections replicated to gw2's external cache (conntrackd)")
    if lab.narrate:
        for l in ext.splitlines():
            if "dport=%d" % BULK_PORT in l or "dport=%d" % CHAT_PORT in l:
                lab.info("gw2 external cache: " + re.sub(r"\s+", " ", l.strip())[:150])
    gw1_labels = {p: labels(lab, "gw1", p) for p in (BULK_PORT, CHAT_PORT)}
    lab.check(all(gw1_labels.values()), "gw1 keeps the TCP-AO state in the conntrack labels (port %d: %s, port %d: %s)"
              % (BULK_PORT, bits(gw1_labels[BULK_PORT]), CHAT_PORT, bits(gw1_labels[CHAT_PORT])))
    # A probe bit outside tcpaod's label bits (it writes only its own, with a mask): shows conntrackd
    # carries labels to gw2 whatever tcpaod does. Wait until gw2 has received both updates.
    def updated():
        m = re.search(r"cache external:.*?connections updated:\s+(\d+)", lab.run("gw2", ctd2 + ["-s"], check=False).stdout, re.S)
        return int(m.group(1)) if m else 0
    m = re.search(r"label bits (\d+)-(\d+)", read(os.path.join(cfg["gw1"], "tcpaod.log")))
    lo, hi = (int(m.group(1)), int(m.group(2))) if m else (0, 127)
    global PROBE_BIT
    PROBE_BIT = 127 if hi < 127 else (lo - 1 if lo > 0 else None)
    n0 = updated()
    for p in (BULK_PORT, CHAT_PORT) if PROBE_BIT is not None else ():
        conntrack_named(lab, "gw1", "-U -f ipv4 -p tcp --dport %d --label-add b%d" % (p, PROBE_BIT))
    if PROBE_BIT is not None:
        wait_for(lambda: updated() >= n0 + 2, "gw2's conntrackd to receive the label updates", 10)
    gw1_labels = {p: labels(lab, "gw1", p) for p in (BULK_PORT, CHAT_PORT)}

    lab.check(vips(lab, "gw1") and not vips(lab, "gw2"), "gw1 is still master before the failure")
    if KILL == "tcpaod":
        lab.say("gw1's tcpaod gets SIGKILL (its links stay up: keepalived's track script notices)")
    else:
        lab.say("gw1 dies: its tcpaod gets SIGKILL and its three links go down")
    before, _ = delivered()
    t_kill = now()
    lab.procs["tcpaod-gw1"].kill()
    for dev in ("ext0", "int0", "sync0") if KILL != "tcpaod" else ():
        lab.run("gw1", ["ip", "link", "set", dev, "down"])
    lab.info("at %.1f MB delivered (%.1f s after the failover point was reached)" % (before / 1e6, t_kill - t_ready))
    wait_for(lambda: vips(lab, "gw2"), "gw2 to take over the virtual addresses", 30)
    t_vip = now()
    wait_for(lambda: "committed" in notify_log(cfg["gw2"]), "gw2's notify script to commit conntrackd's external cache", 30)
    commits = [l for l in notify_log(cfg["gw2"]).splitlines() if "primary" in l]
    t_commit = float([l for l in commits if "conntrackd -c " in l][-1].split()[0])
    for l in commits:
        lab.info("gw2 notify: " + l.split(None, 1)[1])
    lab.info("VIPs on gw2 %.2f s after the kill; external cache committed %.2f s after it" % (t_vip - t_kill, t_commit - t_kill))
    gw2_labels = {p: labels(lab, "gw2", p) for p in (BULK_PORT, CHAT_PORT)}
    if PROBE_BIT is not None:
        lab.check(all(PROBE_BIT in (b or ()) for b in gw2_labels.values()), "conntrackd carried the labels to gw2 (probe bit %d)" % PROBE_BIT)
    lab.check(all(b and b - {PROBE_BIT} for b in gw2_labels.values()) and gw2_labels == gw1_labels,
              "gw2's committed conntrack entries carry gw1's labels (port %d: %s, port %d: %s)"
              % (BULK_PORT, bits(gw2_labels[BULK_PORT]), CHAT_PORT, bits(gw2_labels[CHAT_PORT])))

    went_on = True
    try:
        resumed = wait_for(lambda: delivered()[0] > before + 1000000 and delivered(), "the transfer to go on through gw2", 60)
        lab.check(True, "the transfer goes on through gw2 (%.1f MB delivered %.2f s after the kill)" % (resumed[0] / 1e6, resumed[1] - t_kill))
        answered = wait_for(lambda: [c for c in chats() if float(c[1]) > t_commit and c[3] == "ok"], "the session to answer through gw2", 60)
        lab.check(True, "the session answers through gw2 (request %s answered %.2f s after the kill)"
                  % (answered[0][0], float(answered[0][2]) - t_kill))
    except Fail as e:
        went_on = False
        lab.check(False, "both connections go on through gw2", str(e))
    if went_on:
        lab.say("the rest of the transfer through gw2")
        remaining = (BYTES - resumed[0]) / RATE
        wait_for(lambda: read(sink_res) and read(src_res), "the transfer to finish", remaining * 3 + 60, 0.2)
        sink, src = json.loads(read(sink_res)), json.loads(read(src_res))
        lab.check(sink["bytes"] == BYTES and sink["sha256"] == src["sha256"], "transfer intact: %d bytes, sha256 %s at both ends"
                  % (sink["bytes"], sink["sha256"][:16]), "" if sink["sha256"] == src["sha256"] else "sent %s" % src["sha256"][:16])
        open(chat_stop, "w").close()
        wait_for(lambda: read(chat_log).endswith("end\n") or lab.procs["chat"].poll() is not None, "the session to end", 60)
        cs = chats()
        after = [c for c in cs if float(c[1]) > t_commit]
        lab.check(cs and all(c[3] == "ok" for c in cs) and len(after) >= 3,
                  "interactive session: %d requests all answered, %d after the failover, longest round trip %.2f s"
                  % (len(cs), len(after), max(float(c[2]) - float(c[1]) for c in cs)))
    else:
        for name in ("source", "chat"):
            lab.procs[name].kill()
    stats = lambda g: json.loads(read(os.path.join(cfg[g], "stats.json")) or "{}").get("counters", {}).get("total", {})
    try:  # tcpaod writes its counters every second
        wait_for(lambda: stats("gw2").get("flows-restored", 0) >= 2, "gw2's counters", 5, 0.2)
    except Fail:
        pass
    s2 = stats("gw2")
    lab.check(s2.get("flows-restored", 0) >= 2, "gw2's tcpaod restored both flows from their conntrack labels (flows-restored %d, "
              "restore-failed %d)" % (s2.get("flows-restored", 0), s2.get("restore-failed", 0)))
    for g in ("gw1", "gw2"):
        lab.info("%s tcpaod counters: %s" % (g, ", ".join("%s %s" % kv for kv in sorted(stats(g).items()) if kv[1])[:300]))

    # Stop the capture once everything has been written (immediate mode: the file grows with
    # every packet; the connections have ended, so it stops growing).
    size = [-1]

    def settled():
        s = os.path.getsize(cap_path)
        done, size[0] = s == size[0], s
        return done
    wait_for(settled, "the capture to settle", 30, 0.5)
    cap.send_signal(signal.SIGINT)
    cap.wait(30)
    m = re.search(r"(\d+) packets dropped by kernel", read(lab.path("tcpdump.out")))
    lab.check(m is not None and m.group(1) == "0", "capture complete (%s)" % (m.group(0) if m else "no tcpdump summary"))

    lab.say("every segment captured at the client, checked with tcpaod verify-pcap --strict")
    r = sh([TCPAOD, "verify-pcap", "--config", os.path.join(cfg["client"], "tcpaod.yaml"), "--strict", "--quiet", cap_path],
           check=False, timeout=600)
    line = (r.stdout.strip().splitlines() or [r.stderr.strip()])[-1]
    lab.check(r.returncode == 0, "verify-pcap: " + line)

    segs = segments(cap_path)
    retx, resume, gap = stall(segs, BULK_PORT, t_kill)
    lab.say("failover timeline (relative to the kill, from the capture at the client)")
    lab.info("%-25s %+.2f s" % ("gw2 holds the VIPs", t_vip - t_kill))
    lab.info("%-25s %+.2f s" % ("external cache committed", t_commit - t_kill))
    if gap:
        lab.info("%-25s %+.2f s" % ("last data acked before", gap[1] - t_kill))
    if retx:
        lab.info("%-25s %+.2f s" % ("first retransmission", retx - t_kill))
    if resume:
        lab.info("%-25s %+.2f s" % ("first new data acked", resume - t_kill))
    if gap and retx:
        lab.info("stall: %.2f s from the first retransmission to the first new data acknowledged (%.2f s without "
                 "new data acknowledged)" % (resume - retx, gap[0]))
    cretx, cresume, cgap = stall(segs, CHAT_PORT, t_kill)
    if cgap:
        lab.info("session: longest time with no new data acknowledged: %.2f s" % cgap[0])
    return {"vip": t_vip - t_kill, "commit": t_commit - t_kill, "retx": retx and retx - t_kill,
            "resume": resume and resume - t_kill, "gap": gap and gap[0]}


def main():
    args = sys.argv[1:]
    narrate, keep = "--demo" in args, "--keep" in args
    if "--clean" in args:
        clean_namespaces("ha")
        print("ha namespaces removed")
        return 0
    if os.geteuid() != 0:
        print("ha.py: run as root", file=sys.stderr)
        return 2
    if not os.access(TCPAOD, os.X_OK):
        print("FAIL ha: no tcpaod binary at %s (swift build -c release, or TCPAOD_BIN)" % TCPAOD)
        return 1
    import shutil
    missing = [t for t in ("keepalived", "conntrackd", "conntrack", "tcpdump", "unshare") if not shutil.which(t)]
    if missing:
        print("FAIL ha: missing %s (Debian: apt-get install keepalived conntrackd conntrack tcpdump)" % ", ".join(missing))
        return 1
    prefix = "ha" if keep or narrate else "ha%d" % (os.getpid() % 100000)
    clean_namespaces(prefix)
    work = tempfile.mkdtemp(prefix="tcpaod-ha-")
    os.chmod(work, 0o700)
    lab = Lab(prefix, work, narrate)
    t0 = now()
    ok = False
    try:
        scenario(lab)
        ok = all(r[0] for r in lab.results)
    except Fail as e:
        lab.check(False, "failover scenario", str(e))
    except Exception as e:  # noqa: BLE001 (report, then clean up)
        import traceback
        traceback.print_exc()
        lab.check(False, "failover scenario", repr(e))
    finally:
        if not ok:
            for g in ("gw1", "gw2", "client"):
                for name in ("tcpaod.log", "notify.log", "keepalived.log", "conntrackd.log"):
                    text = read(os.path.join(work, g, name))
                    if text:
                        print("---- %s %s (last lines)\n%s" % (g, name, "\n".join(text.splitlines()[-25:])))
        if keep:
            print("\nleft running: namespaces %s; files in %s; remove with: %s --clean" % (
                ", ".join(lab.ns.values()), work, sys.argv[0]))
        else:
            lab.clean()
            if ok:
                subprocess.run(["rm", "-rf", work])
            else:
                print("files kept in %s" % work)
    print("%s ha: gateway failover mid-transfer (%.0f s)" % ("PASS" if ok else "FAIL", now() - t0), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
