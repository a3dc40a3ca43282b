#!/usr/bin/env python3
"""The tcpaod demo (run it with scripts/demo, which installs the dependencies and builds first).

The applicability draft's deployment (draft-applicability-tcp-ao-netconf-gnmi), on network
namespaces: a management station and a device, each running tcpaod in host mode with the shipped
example configurations (config/examples/nms.yaml and device.yaml: TCP-AO required on 830 and
9339, an MKT unique to the pair, two MKTs whose lifetimes overlap by 24 hours), with random
secrets and the dates moved so that the hand-over to the second MKT is a week away.

  nms     198.51.100.10  2001:db8:100::10   ncclient and pygnmi (the NMS's clients)
  device  192.0.2.2      2001:db8:1::2      netconfd behind sshd on 830, a gNMI target on 9339
  third   198.51.100.66                     an on-path attacker (scapy)
  all three on one Ethernet segment (a bridge that floods every frame, so the third host sees
  the sessions' segments).

Then: a NETCONF session (hello, get-config, edit-config, get of what was set; kept open) and a
gNMI subscription (a sample every second) run at the same time; the third host injects the
draft's negative cases into them (a segment with an unknown KeyID, one with a wrong MAC) and a
forged in-window RST without TCP-AO; the device's and the NMS's tcpaod drop and count them and
both sessions carry on; the second MKT becomes preferred (the hand-over moved to now on both
ends, SIGHUP) while the stream runs, with no missed update; the NETCONF session is used again.
A capture of the whole run shows option kind 29 on both ports, and `tcpaod verify-pcap` checks
every segment's MAC.

usage: scripts/demo [--keep]        (root)
"""
import datetime
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
TCPAOD = os.path.join(ROOT, ".build", "release", "tcpaod")
LAB = os.path.join(ROOT, "Tests", "mgmt", "lab.py")
sys.path.insert(0, os.path.join(ROOT, "Tests", "mgmt"))
import lab  # noqa: E402  (the venv's python, the device and client commands)

DIR = os.environ.get("TCPAOD_DEMO_DIR", "/tmp/tcpaod-demo")
NS = {"nms": "demo-nms", "device": "demo-device", "third": "demo-third", "lan": "demo-lan"}
NMS4, NMS6, DEV4, DEV6, THIRD4 = "198.51.100.10", "2001:db8:100::10", "192.0.2.2", "2001:db8:1::2", "198.51.100.66"
HANDOVER = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)  # in config/examples
T0 = time.time()
procs = []


def say(title):
    print("\n\033[1m== %s\033[0m" % title, flush=True)


def out(text):
    for line in str(text).rstrip("\n").splitlines():
        print("   " + line, flush=True)


class DemoFailed(Exception):
    pass


def run(args, ns=None, check=True, timeout=60, **kw):
    if ns:
        args = ["ip", "netns", "exec", NS[ns]] + list(args)
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise DemoFailed("failed (%d): %s\n%s%s" % (r.returncode, " ".join(args), r.stdout, r.stderr))
    return r


def start(args, ns, logname):
    f = open(os.path.join(DIR, logname), "w")
    p = subprocess.Popen(["ip", "netns", "exec", NS[ns]] + list(args), stdout=f, stderr=subprocess.STDOUT)
    p.logname = logname
    procs.append(p)
    return p


def log_of(name):
    try:
        with open(os.path.join(DIR, name)) as f:
            return f.read()
    except OSError:
        return ""


def wait_for(cond, what, timeout=60, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            raise DemoFailed("%s: the process ended (%d) first:\n%s" % (what, proc.returncode, log_of(proc.logname)[-2000:]))
        time.sleep(0.1)
    raise DemoFailed("timed out after %d s waiting for %s" % (timeout, what))


def clean():
    for ns in NS.values():
        if subprocess.run(["ip", "netns", "pids", ns], capture_output=True).returncode != 0:
            continue
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), sig)
                except OSError:
                    pass
            if pids and sig == signal.SIGTERM:
                end = time.time() + 3
                while time.time() < end and subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                    time.sleep(0.1)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# ---- topology and configuration ------------------------------------------------------------

def topology():
    for ns in NS.values():
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "set", "lo", "up"], ns=[k for k, v in NS.items() if v == ns][0])
    # One Ethernet segment: a bridge that forgets every address at once floods every frame (a hub).
    run(["ip", "link", "add", "br0", "type", "bridge", "ageing_time", "0"], ns="lan")
    run(["ip", "link", "set", "br0", "up"], ns="lan")
    hosts = {"nms": ([NMS4 + "/24", NMS6 + "/64"], ["192.0.2.0/24", "2001:db8:1::/64"]),
             "device": ([DEV4 + "/24", DEV6 + "/64"], ["198.51.100.0/24", "2001:db8:100::/64"]),
             "third": ([THIRD4 + "/24"], [])}
    for name, (addrs, onlink) in hosts.items():
        dev = name[:3] + "0"
        run(["ip", "link", "add", dev, "netns", NS[name], "type", "veth", "peer", "name", "p-" + name, "netns", NS["lan"]])
        run(["ip", "link", "set", "p-" + name, "master", "br0", "up"], ns="lan")
        for a in addrs:
            run(["ip", "addr", "add", a, "dev", dev] + (["nodad"] if ":" in a else []), ns=name)
        run(["ip", "link", "set", dev, "up"], ns=name)
        for pfx in onlink:  # the other subnet is on the same segment
            run(["ip"] + (["-6"] if ":" in pfx else []) + ["route", "add", pfx, "dev", dev], ns=name)


def shift_dates(text, delta):
    def sub(m):
        t = datetime.datetime.strptime(m.group(0), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
        return (t + delta).strftime("%Y-%m-%dT%H:%M:%SZ")
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", sub, text)


def write_configs(keys, handover):
    """config/examples/{nms,device}.yaml with the demo's secrets, the hand-over to key 2 at
    `handover`, and per-host stats files."""
    delta = handover - HANDOVER
    paths = {}
    for host, example in (("nms", "nms.yaml"), ("device", "device.yaml")):
        with open(os.path.join(ROOT, "config", "examples", example)) as f:
            text = f.read()
        for k, secret in keys.items():
            text = text.replace('key-string: "REPLACE ME: dev1 key %d"' % k, 'hexadecimal-string: "%s"' % secret)
        # The other device's placeholders (tcpaod refuses them): secrets of the NMS's own.
        text = re.sub(r'key-string: "REPLACE ME: [^"]*"', lambda m: 'hexadecimal-string: "%s"' % secrets.token_hex(16), text)
        text = shift_dates(text, delta)
        text += "\n# demo: one instance per host (control socket /run/tcpaod/%s/), its stats file\ninstance: %s\nstats-file: %s/%s.stats.json\nstats-interval: 0\n" % (host, host, DIR, host)
        path = os.path.join(DIR, host + ".yaml")
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.chmod(path + ".tmp", 0o600)
        os.rename(path + ".tmp", path)
        paths[host] = path
    return paths


def stats(host):
    try:
        with open(os.path.join(DIR, host + ".stats.json")) as f:
            return json.load(f)["counters"]
    except (OSError, ValueError, KeyError):
        return {"total": {}, "peers": {}, "keys": {}}


def total(host, name):
    return stats(host)["total"].get(name, 0)


def key_counter(host, peer, key, name):
    """Per-key counters of the stats file (peer name -> key id -> counter)."""
    keys = stats(host).get("keys", {})
    return keys.get(peer, {}).get(str(key), {}).get(name, 0)


# ---- the attacker ------------------------------------------------------------------------

ATTACK = r'''
import json, os, sys, time
from scapy.all import AsyncSniffer, Ether, IP, TCP, Raw, sendp, conf
conf.verb = 0
iface, ctl = sys.argv[1], sys.argv[2]
last = {}   # (src, sport, dst, dport) -> the latest segment seen

def seen(p):
    if IP in p and TCP in p:
        last[(p[IP].src, p[TCP].sport, p[IP].dst, p[TCP].dport)] = p

sn = AsyncSniffer(iface=iface, filter="tcp", prn=seen, store=False)
sn.start()
open(ctl + "/sniffing", "w").close()
while not os.path.exists(ctl + "/go"):
    time.sleep(0.05)
wanted = json.load(open(ctl + "/go"))
done = []
for w in wanted:
    src, sport, dst, dport = w["src"], w["sport"], w["dst"], w["dport"]
    p = last.get((src, sport, dst, dport))
    if p is None:
        done.append({"kind": w["kind"], "error": "no segment of %s:%d > %s:%d seen" % (src, sport, dst, dport)}); continue
    t = p[TCP]
    seq = (t.seq + len(bytes(t.payload))) & 0xffffffff
    eth = Ether(src=p[Ether].src, dst=p[Ether].dst)
    if w["kind"] == "rst":
        seg = TCP(sport=sport, dport=dport, flags="RA", seq=seq, ack=t.ack)
        desc = "RST+ACK, no TCP-AO, seq %d (the next expected)" % seq
    else:
        mac = os.urandom(12)
        seg = TCP(sport=sport, dport=dport, flags="PA", seq=seq, ack=t.ack, window=t.window,
                  options=[(29, bytes([w["keyid"], w["keyid"]]) + mac)]) / Raw(b"\x00" * 48)
        desc = "48 bytes of data in window, TCP-AO KeyID %d with a random MAC" % w["keyid"]
    sendp(eth / IP(src=src, dst=dst) / seg, iface=iface)
    done.append({"kind": w["kind"], "sent": "%s:%d > %s:%d: %s" % (src, sport, dst, dport, desc)})
sn.stop()
json.dump(done, open(ctl + "/done.tmp", "w")); os.rename(ctl + "/done.tmp", ctl + "/done")
'''


def connections(port):
    """(local, lport, remote, rport) of the NMS's established connections to the device's port."""
    txt = run(["ss", "-Htn", "state", "established", "dport = :%d" % port], ns="nms").stdout
    res = []
    for line in txt.splitlines():
        f = line.split()
        if len(f) >= 4:
            (la, lp), (ra, rp) = f[-2].rsplit(":", 1), f[-1].rsplit(":", 1)
            plain = lambda a: a.strip("[]").replace("::ffff:", "")  # v4-mapped (a dual-stack socket)
            res.append((plain(la), int(lp), plain(ra), int(rp)))
    return res


# ---- the demo --------------------------------------------------------------------------------

def demo():
    py = lab.PYTHON
    say("three hosts on one Ethernet segment: demo-nms (%s, %s), demo-device (%s, %s), demo-third (%s)"
        % (NMS4, NMS6, DEV4, DEV6, THIRD4))
    topology()

    say("configuration: config/examples/nms.yaml and device.yaml, with random secrets, the hand-over a week away")
    keys = {1: secrets.token_hex(16), 2: secrets.token_hex(16)}
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    conf = write_configs(keys, now + datetime.timedelta(days=7))
    r = run([TCPAOD, "check", "--config", conf["nms"]])
    out("\n".join(l for l in r.stdout.splitlines() if "dev1" in l or "OK:" in l))
    if r.stderr.strip():
        out(r.stderr)

    say("tcpaod on both hosts (host mode), the device's NETCONF and gNMI servers, a capture on the NMS's link")
    for host in ("nms", "device"):
        start([TCPAOD, "run", "--config", conf[host]], host, host + ".log")
    for host in ("nms", "device"):
        wait_for(lambda: os.path.exists(os.path.join(DIR, host + ".stats.json")), "tcpaod on %s" % host, 30, procs[-1 if host == "device" else -2])
    out(next(l for l in log_of("nms.log").splitlines() if "tcpaod running" in l))
    workdir = os.path.join(DIR, "device")
    dev = start(lab.device_cmd(workdir, [DEV4, DEV6]), "device", "device-servers.log")
    wait_for(lambda: "ready" in log_of("device-servers.log"), "netconfd+sshd on 830 and the gNMI target on 9339", 90, dev)
    out("device: netconfd behind sshd on %s:830 and [%s]:830, gNMI target (TLS) on 9339" % (DEV4, DEV6))
    cap_path = os.path.join(DIR, "wire.pcap")
    tcpdump = start(["tcpdump", "-i", "nms0", "-s", "0", "-U", "-w", cap_path, "tcp port 830 or tcp port 9339"], "nms", "tcpdump.log")
    wait_for(lambda: "listening on" in log_of("tcpdump.log"), "tcpdump", 20, tcpdump)
    ctl = os.path.join(DIR, "attack")
    os.makedirs(ctl)
    with open(os.path.join(DIR, "attack.py"), "w") as f:
        f.write(ATTACK)
    attacker = start([sys.executable, os.path.join(DIR, "attack.py"), "thi0", ctl], "third", "attack.log")
    wait_for(lambda: os.path.exists(ctl + "/sniffing"), "the third host's sniffer", 30, attacker)

    say("a gNMI subscription (STREAM, a sample every second) and a NETCONF session, at the same time")
    stop_stream = os.path.join(DIR, "stop-stream")
    resume = os.path.join(DIR, "resume-netconf")
    report = os.path.join(DIR, "gnmi-report.json")
    gnmi = start([py, LAB, "gnmi-subscribe", "--host", DEV4, "--ca", workdir + "/ca.pem", "--seconds", "110",
                  "--until", stop_stream, "--report", report], "nms", "gnmi.log")
    netconf = start([py, LAB, "netconf", "--host", DEV4, "--workdir", workdir, "--value", "demo-device",
                     "--idle-until", resume, "--idle", "100"], "nms", "netconf.log")

    def updates():
        try:
            with open(report) as f:
                return json.load(f).get("updates", 0)
        except (OSError, ValueError):
            return 0
    wait_for(lambda: "netconf: idle" in log_of("netconf.log"), "the NETCONF session's first RPCs", 60, netconf)
    out("\n".join(l for l in log_of("netconf.log").splitlines() if l.startswith("netconf:")))
    wait_for(lambda: updates() >= 3, "3 gNMI updates", 60, gnmi)
    out("gnmi: stream open, %d updates so far" % updates())
    r = run([py, LAB, "gnmi-check", "--host", DEV6, "--ca", workdir + "/ca.pem"], ns="nms", timeout=120, check=False)
    out("\n".join(l for l in r.stdout.splitlines() if l.startswith("gnmi")) + ("" if r.returncode == 0 else "\nFAILED"))
    if r.returncode != 0:
        raise DemoFailed("gNMI over IPv6 failed:\n%s" % r.stdout[-2000:])

    say("the third host injects the draft's negative cases and a forged RST into the live sessions")
    nc = connections(830)
    gn = connections(9339)
    if not nc or not gn:
        raise DemoFailed("no NETCONF or gNMI connection found: %s %s" % (nc, gn))
    (l4, lp, r4, rp), (g4, gp, gr, grp) = nc[0], gn[0]
    before = {"device": dict(stats("device")["total"]), "nms": dict(stats("nms")["total"])}
    attack = [{"kind": "wrong-keyid", "src": l4, "sport": lp, "dst": r4, "dport": rp, "keyid": 77},
              {"kind": "wrong-mac", "src": l4, "sport": lp, "dst": r4, "dport": rp, "keyid": 1},
              {"kind": "rst", "src": gr, "sport": grp, "dst": g4, "dport": gp}]
    with open(ctl + "/go.tmp", "w") as f:
        json.dump(attack, f)
    os.rename(ctl + "/go.tmp", ctl + "/go")
    wait_for(lambda: os.path.exists(ctl + "/done"), "the injection", 30, attacker)
    for d in json.load(open(ctl + "/done")):
        if "error" in d:
            raise DemoFailed("injection %s: %s" % (d["kind"], d["error"]))
        out("%-11s %s" % (d["kind"] + ":", d["sent"]))

    def grew(host, name):
        return total(host, name) > before[host].get(name, 0)
    wait_for(lambda: grew("device", "dropped-unknown-key-id") and grew("device", "dropped-bad-mac") and grew("nms", "dropped-missing-ao"),
             "both tcpaods to count the injected segments", 30)
    out("device's tcpaod: dropped-unknown-key-id %d, dropped-bad-mac %d;  NMS's tcpaod: dropped-missing-ao %d" % (
        total("device", "dropped-unknown-key-id"), total("device", "dropped-bad-mac"), total("nms", "dropped-missing-ao")))
    n = updates()
    wait_for(lambda: updates() >= n + 3, "3 more gNMI updates after the injection", 30, gnmi)
    out("gnmi: stream carries on (%d updates)" % updates())

    say("key rotation mid-stream: the hand-over to the second MKT moved to now on both ends, SIGHUP")
    write_configs(keys, datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) - datetime.timedelta(seconds=1))
    r = run([TCPAOD, "check", "--config", conf["nms"]])
    out("\n".join(l for l in r.stdout.splitlines() if "chain dev1" in l))
    for p in procs[:2]:
        p.send_signal(signal.SIGHUP)
    wait_for(lambda: key_counter("nms", "dev1-v4", 2, "signed") > 0 and key_counter("device", "nms-v4", 2, "signed") > 0
             and key_counter("nms", "dev1-v4", 2, "verified") > 0 and key_counter("device", "nms-v4", 2, "verified") > 0,
             "both ends to sign and verify with key 2", 30)
    n = updates()
    wait_for(lambda: updates() >= n + 3, "3 more gNMI updates after the rotation", 30, gnmi)
    out("both ends now sign with key 2 (SendID 2); gnmi: %d updates" % updates())

    say("the NETCONF session, idle since its first RPCs, is used again; the stream ends")
    open(resume, "w").close()
    if netconf.wait(60) != 0:
        raise DemoFailed("the NETCONF session failed:\n%s" % log_of("netconf.log"))
    out("\n".join(l for l in log_of("netconf.log").splitlines() if "after-idle" in l or "close" in l))
    open(stop_stream, "w").close()
    if gnmi.wait(60) != 0:
        raise DemoFailed("the gNMI subscription failed:\n%s" % log_of("gnmi.log"))
    with open(report) as f:
        g = json.load(f)
    out("gnmi: %d updates in %.0f s, largest gap %.2f s, %d late, %d missed" % (g["updates"], g["seconds"], g["max_gap"], g["late"], g["missed"]))

    say("the capture: option kind 29 on both ports; tcpaod verify-pcap checks every MAC")
    time.sleep(1.2)  # tcpdump -U hands over a full block or one per second: let the last one out
    tcpdump.send_signal(signal.SIGINT)
    tcpdump.wait(10)
    txt = run(["tcpdump", "-nn", "-v", "-r", cap_path], timeout=120).stdout
    for port in (830, 9339):
        m = re.search(r"\S+ > \S+\.%d: Flags \[[^]]*\].*?tcp-ao keyid \d+ rnextkeyid \d+ mac 0x[0-9a-f]+" % port, txt)
        out(m.group(0) if m else "NO TCP-AO SEEN ON PORT %d" % port)
    r = run([TCPAOD, "verify-pcap", "--config", conf["nms"], "--json", cap_path], check=False, timeout=120)
    v = json.loads(r.stdout)
    out("verify-pcap: %s" % v["line"])
    ids = {}
    for s in v["segments"]:
        if s.get("keyID") is not None and s["result"] == "verified":
            port = min(s["srcPort"], s["dstPort"])
            ids.setdefault(port, set()).add(s["keyID"])
    out("KeyIDs on the wire, verified: %s" % ", ".join("port %d: %s" % (p, sorted(k)) for p, k in sorted(ids.items())))
    others = {k: n for k, n in v["summary"]["counts"].items() if k != "verified" and n}
    out("not verified: %s: exactly the three injected segments" % ", ".join("%s %d" % kv for kv in sorted(others.items()))
        if others == {"bad-mac": 1, "no-ao": 1, "unknown-key-id": 1} else "not verified: %s (expected only the three injected segments)" % others)

    say("summary")
    ok = (g["ok"] and g["late"] == 0 and g["missed"] == 0 and ids.get(830) == {1, 2} and ids.get(9339) == {1, 2}
          and others == {"bad-mac": 1, "no-ao": 1, "unknown-key-id": 1})
    out("NETCONF (830, over SSH): hello, get-config, edit-config, get; idle through the attacks and the rotation; used again: OK")
    out("gNMI (9339, over TLS): %d samples, none missed or late, through the attacks and the rotation: %s" % (g["updates"], "OK" if g["ok"] else "FAILED"))
    out("negative cases: unknown KeyID and wrong MAC dropped by the device, forged RST dropped by the NMS; sessions unharmed")
    out("rotation: KeyID 1 -> 2 on both ports; the capture: %d segments verified, the 3 injected ones not" % v["summary"]["counts"].get("verified", 0))
    out("took %.0f s" % (time.time() - T0))
    if not ok:
        raise DemoFailed("the summary does not add up: gnmi %s, KeyIDs %s, not verified %s" % (g, ids, others))


def main():
    keep = "--keep" in sys.argv
    clean()
    shutil.rmtree(DIR, ignore_errors=True)
    os.makedirs(DIR)
    os.chmod(DIR, 0o700)
    try:
        demo()
        rc = 0
    except DemoFailed as e:
        print("\nDEMO FAILED: %s\n(logs in %s)" % (e, DIR), flush=True)
        rc = 1
    if keep:
        say("left running; logs and capture in %s; clean up with scripts/demo --clean" % DIR)
    else:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        clean()
    return rc


if __name__ == "__main__":
    if sys.argv[1:2] == ["--clean"]:
        clean()
        print("demo cleaned up")
        sys.exit(0)
    sys.exit(main())
