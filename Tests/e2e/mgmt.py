#!/usr/bin/env python3
"""tcpaod end-to-end tests with real management protocols: NETCONF (yuma123 netconfd behind
OpenSSH sshd, port 830, driven by ncclient) and gNMI (a grpcio target over TLS, port 9339,
driven by pygnmi), all unmodified, protected by real tcpaod daemons (Tests/mgmt/lab.py is the
test equipment; `scripts/deps mgmt` installs it).

usage: mgmt.py [-k SUBSTRING] [--list]     (root; TCPAOD_BIN=path to the tcpaod binary)
  E2E_MGMT_LONG_SECONDS  length of the long-run stream (default 180; e.g. 60 for a local run)

Topologies and helpers (namespaces, tcpaod configurations and daemons, captures, verify-pcap)
come from e2e.py, imported as a module; its namespaces get this run's prefix "mg<pid>-":
  two hosts   NMS 192.0.2.1 / 2001:db8:1::1  <-veth->  device 192.0.2.2 / 2001:db8:1::2
  gateway     NMS 192.0.2.1 <-> G 192.0.2.254 | 198.51.100.254 <-> device 198.51.100.1
              (and 2001:db8:1::/64, 2001:db8:2::/64); tcpaod host mode on the NMS, gateway mode
              on G; the device runs nothing but its management software.
"""
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "mgmt"))
import e2e  # noqa: E402  (its temporary directory, e2e.WORK, is ours too and removed at the end)
import lab  # noqa: E402
from e2e import Capture, Daemon, Fail, Topology, check, counter, key_yaml, log, verify_pcap, wait_for, write_config  # noqa: E402

e2e.TAG = "mg%d" % (os.getpid() % 100000)
WORK = e2e.WORK
LONG = max(30, int(os.environ.get("E2E_MGMT_LONG_SECONDS", 180)))  # the timeline needs 30 s at least
SECRET = "mgmt e2e shared secret 0123456789"
PORTS = [830, 9339]
NMS4, NMS6 = "192.0.2.1", "2001:db8:1::1"


def key_at(key_id, alg, secret, start):
    """A key whose send lifetime starts at `start` (epoch seconds): the newest valid key is the
    preferred one."""
    t = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
    return key_yaml(key_id, key_id, key_id, alg, secret, ", send-lifetime: { start-date-time: %s, no-end-time: true }" % t)


def host_configs(keys_nms, keys_dev):
    cn = write_config("nms", [("dev", "192.0.2.2/32", PORTS), ("dev6", "2001:db8:1::2/128", PORTS)], keys_nms)
    cd = write_config("dev", [("nms", "192.0.2.1/32", PORTS), ("nms6", "2001:db8:1::1/128", PORTS)], keys_dev)
    return cn, cd


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def stats_now(d):
    """The counters the daemon wrote last (it rewrites the file every second, atomically)."""
    return read_json(d.stats_path) or {"counters": {"total": {}, "peers": {}, "keys": {}}}


def drops(d):
    s = d.stats()
    return {k: v for k, v in s["counters"]["total"].items() if k.startswith("dropped-") and v}


class Lab:
    """`lab.py device` in a namespace: netconfd + sshd on 830 and the gNMI target on 9339."""

    def __init__(self, ns, addrs, name="lab"):
        self.ns, self.addrs = ns, addrs
        self.dir = os.path.join(WORK, name)
        self.out = os.path.join(WORK, name + ".out")
        self.f = open(self.out, "w")
        self.p = ns.popen(lab.device_cmd(self.dir, addrs), stdout=self.f, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "ready " in self.text() or self.p.poll() is not None, "the lab device to start", 60)
        except Fail:
            raise Fail("the lab device did not start within 60 s:\n%s" % self.text())
        check(self.p.poll() is None, "the lab device failed to start (exit %s):\n%s" % (self.p.returncode, self.text()))
        self.info = json.loads(self.text().split("ready ", 1)[1].splitlines()[0])
        self.ca = self.info["ca"]

    def text(self):
        self.f.flush()
        return e2e.read_file(self.out)

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        rc = self.p.wait(30)
        check(rc == 0 and "stopped" in self.text(), "the lab device did not stop cleanly (exit %s):\n%s" % (rc, self.text()))


def client(ns, sub, *args, timeout=120):
    """Runs a lab.py client in a namespace; returns (exit status, its JSON result, its output, seconds)."""
    t0 = time.time()
    r = ns.run(lab.client_cmd(sub, *args), check_rc=False, timeout=timeout)
    secs = time.time() - t0
    lines = r.stdout.strip().splitlines()
    try:
        res = json.loads(lines[-1]) if lines else {}
    except ValueError:
        res = {}
    return r.returncode, res, r.stdout + r.stderr, secs


def run_clients(nms, lab_, host, stream_seconds=4):
    """NETCONF session, gNMI checks and a short stream against `host`; every step must pass."""
    rc, res, out, secs = client(nms, "netconf", "--host", host, "--workdir", lab_.dir, "--timeout", 15)
    check(rc == 0 and res.get("ok"), "NETCONF to %s failed (exit %d):\n%s" % (host, rc, out))
    log("    %-14s NETCONF  %s; get-config, edit-config, get checked (%.1f s)" % (host, res["steps"][0], secs))
    rc, res, out, secs = client(nms, "gnmi-check", "--host", host, "--ca", lab_.ca, "--timeout", 10)
    check(rc == 0 and res.get("ok"), "gNMI checks against %s failed (exit %d):\n%s" % (host, rc, out))
    log("    %-14s gNMI     Capabilities, Get, Set+Get, ONCE, POLL over TLS (%.1f s): %s" % (host, secs, res["steps"][1]))
    rc, res, out, secs = client(nms, "gnmi-subscribe", "--host", host, "--ca", lab_.ca, "--seconds", stream_seconds,
                                "--interval", 1, "--max-gap", 2, timeout=stream_seconds + 90)
    check(rc == 0 and res.get("ok"), "gNMI stream from %s failed (exit %d):\n%s" % (host, rc, out))
    log("    %-14s gNMI     STREAM/SAMPLE 1 s: %d updates in %d s, max gap %.2f s, none late or missed"
        % (host, res["updates"], stream_seconds, res["max_gap"]))


def check_wire(config, path, what):
    """Every segment of the capture verifies (strict); both ports are there."""
    rc, out = verify_pcap(config, path)
    check(rc == 0 and out["summary"]["failed"] == 0, "%s: verify-pcap: %s" % (what, out["line"]))
    segs = out["segments"]
    per_port = {p: sum(1 for s in segs if p in (s["srcPort"], s["dstPort"])) for p in PORTS}
    no_key = [s for s in segs if s.get("keyID") is None]
    check(all(per_port.values()), "%s: no segments of port(s) %s in the capture" % (what, [p for p, n in per_port.items() if not n]))
    check(not no_key, "%s: %d segment(s) without TCP-AO" % (what, len(no_key)))
    fams = sorted(set("IPv6" if ":" in s["src"] else "IPv4" for s in segs))
    log("    capture on the wire: %s; every segment carries option kind 29 (port 830: %d, port 9339: %d; %s)"
        % (out["line"], per_port[830], per_port[9339], " and ".join(fams)))
    return out


# ---- the tests --------------------------------------------------------------------------------

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


@test
def lab_equipment_without_tcpaod():
    """0. The test equipment on its own, no tcpaod: NETCONF, the gNMI checks and a short stream
    over IPv4 and IPv6 (so a failure below is tcpaod's, not the lab's); the gNMI client refuses
    a target whose certificate another CA signed (the TLS is real)."""
    topo = Topology()
    try:
        nms, dev = e2e.two_hosts(topo)
        lab_ = Lab(dev, ["192.0.2.2", "2001:db8:1::2"])
        log("    device ready in %.1f s: netconfd+sshd on 830, gNMI target on 9339 (TLS), both addresses" % lab_.info["seconds"])
        for host in ("192.0.2.2", "2001:db8:1::2"):
            run_clients(nms, lab_, host, stream_seconds=3)
        other = os.path.join(WORK, "other-ca")
        e2e.sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                "-subj", "/CN=another CA", "-keyout", other + ".key", "-out", other + ".pem"])
        rc, res, out, secs = client(nms, "gnmi-check", "--host", "192.0.2.2", "--ca", other + ".pem", "--timeout", 2)
        check(rc == 1 and "TCP connects, but no TLS" in res.get("error", ""), "a certificate of another CA was accepted:\n%s" % out)
        log("    with another CA's certificate the gNMI client refuses the target (%.1f s)" % secs)
        lab_.stop()
    finally:
        topo.close()


@test
def host_mode_netconf_and_gnmi_ipv4_ipv6():
    """a. tcpaod in host mode on the NMS and on the device: a NETCONF session (hello,
    get-config, edit-config, get), the gNMI checks (Capabilities, Get, Set then Get, ONCE, POLL)
    and a short STREAM subscription work over IPv4 and IPv6; every captured segment of ports 830
    and 9339 carries TCP-AO and verifies (verify-pcap --strict); no drops."""
    topo = Topology()
    try:
        nms, dev = e2e.two_hosts(topo)
        k = [key_yaml(1, 1, 1, "hmac-sha-1-96", SECRET)]
        cn, cd = host_configs(k, k)
        dn, dd = Daemon(nms, cn, "nms"), Daemon(dev, cd, "dev")
        lab_ = Lab(dev, ["192.0.2.2", "2001:db8:1::2"])
        cap = Capture(nms, "va", "tcp port 830 or tcp port 9339")
        for host in ("192.0.2.2", "2001:db8:1::2"):
            run_clients(nms, lab_, host)
        check_wire(cn, cap.stop(), "NMS-device link")
        for d, who in ((dn, "NMS"), (dd, "device")):
            dr = drops(d)
            check(not dr, "%s's tcpaod dropped segments: %s" % (who, dr))
        s = dd.stats()
        log("    device's tcpaod: verified %d, signed %d (peers nms %d, nms6 %d); no drops" % (
            counter(s, "verified"), counter(s, "signed"), counter(s, "signed", "nms"), counter(s, "signed", "nms6")))
        lab_.stop()
        dn.stop()
        dd.stop()
    finally:
        topo.close()


@test
def gateway_protects_an_unmodified_device_ipv4_ipv6():
    """b. The same through a tcpaod gateway: the NMS runs tcpaod in host mode, G runs it in
    gateway mode in front of the device, which runs only netconfd/sshd and the gNMI target.
    TCP-AO on the NMS-G link (every segment verifies), plain TCP on the G-device link."""
    topo = Topology()
    try:
        nms, g, dev = e2e.gateway_topology(topo)
        k = [key_yaml(1, 1, 1, "aes-128-cmac-96", SECRET)]
        cn = write_config("nms", [("dev", "198.51.100.0/24", PORTS), ("dev6", "2001:db8:2::/64", PORTS)], k)
        cg = write_config("g", [("nms", "192.0.2.0/24", PORTS), ("nms6", "2001:db8:1::/64", PORTS)], k, mode="gateway",
                          extra="protected-prefixes: [198.51.100.0/24, \"2001:db8:2::/64\"]\n")
        dn, dg = Daemon(nms, cn, "nms"), Daemon(g, cg, "g")
        lab_ = Lab(dev, ["198.51.100.1", "2001:db8:2::1"])
        wire = Capture(nms, "va", "tcp port 830 or tcp port 9339")
        inside = Capture(dev, "vh", "tcp port 830 or tcp port 9339")
        for host in ("198.51.100.1", "2001:db8:2::1"):
            run_clients(nms, lab_, host)
        check_wire(cn, wire.stop(), "NMS-G link")
        rc, out = verify_pcap(cn, inside.stop(), strict=False)
        noao = out["summary"]["counts"].get("no-ao", 0)
        check(out["summary"]["counts"].get("verified", 0) == 0 and noao > 0, "G-device link should carry plain TCP: %s" % out["line"])
        log("    G-device link: %d segments, none with TCP-AO (the device runs no tcpaod)" % noao)
        for d, who in ((dn, "NMS"), (dg, "gateway")):
            dr = drops(d)
            check(not dr, "%s's tcpaod dropped segments: %s" % (who, dr))
        s = dg.stats()
        log("    gateway: verified %d, signed %d; no drops" % (counter(s, "verified"), counter(s, "signed")))
        lab_.stop()
        dn.stop()
        dg.stop()
    finally:
        topo.close()


@test
def long_stream_and_idle_session_across_two_key_rotations():
    """c. A gNMI STREAM (IPv6, 1 s samples) runs E2E_MGMT_LONG_SECONDS (180 s) while a NETCONF
    session (IPv4) idles two thirds of it and is then used again; meanwhile key 2, then key 3
    becomes preferred (the config rewritten with a key whose send lifetime starts now, SIGHUP,
    device first, then NMS). No update is missed or later than 2 s, the NETCONF session works after
    its idle time; the KeyID on the wire moves 1 -> 2 -> 3 on the stream's connection (both
    directions) and from 1 to 3 on the session's; every segment verifies; no drops."""
    topo = Topology()
    try:
        nms, dev = e2e.two_hosts(topo)
        base = int(time.time()) - 1000
        K1 = key_at(1, "hmac-sha-1-96", "mgmt rotation key one", base)
        cn, cd = host_configs([K1], [K1])
        dn, dd = Daemon(nms, cn, "nms"), Daemon(dev, cd, "dev")
        lab_ = Lab(dev, ["192.0.2.2", "2001:db8:1::2"])
        cap = Capture(nms, "va", "tcp port 830 or tcp port 9339")
        idle = int(LONG * 2 / 3)
        report = os.path.join(WORK, "stream.json")
        sub_out, nc_out = os.path.join(WORK, "stream.out"), os.path.join(WORK, "netconf.out")
        t0 = time.time()
        with open(sub_out, "w") as so, open(nc_out, "w") as no:
            stream = nms.popen(lab.client_cmd("gnmi-subscribe", "--host", "2001:db8:1::2", "--ca", lab_.ca, "--seconds", LONG,
                                              "--interval", 1, "--max-gap", 2, "--report", report),
                               stdout=so, stderr=subprocess.STDOUT)
            session = nms.popen(lab.client_cmd("netconf", "--host", "192.0.2.2", "--workdir", lab_.dir, "--idle", idle,
                                               "--timeout", 15), stdout=no, stderr=subprocess.STDOUT)
        updates = lambda: (read_json(report) or {}).get("updates", 0)

        def alive():
            for p, what, out in ((stream, "gNMI stream", sub_out), (session, "NETCONF session", nc_out)):
                if p.poll() is not None and p.returncode != 0:
                    raise Fail("the %s failed early (exit %d):\n%s" % (what, p.returncode, e2e.read_file(out)))
            return True

        wait_for(lambda: alive() and (read_json(report) or {}).get("running"), "the gNMI stream to run", 60)
        wait_for(lambda: alive() and "idle " in e2e.read_file(nc_out), "the NETCONF session to go idle", 60)
        log("    stream running (IPv6), NETCONF session idle for %d s (IPv4); stream %d s in all" % (idle, LONG))

        def reload(d, name, keys):
            peers = [("dev", "192.0.2.2/32", PORTS), ("dev6", "2001:db8:1::2/128", PORTS)] if name == "nms" else \
                    [("nms", "192.0.2.1/32", PORTS), ("nms6", "2001:db8:1::1/128", PORTS)]
            write_config(name, peers, keys)
            before = d.log().count("configuration reloaded")
            d.hup()
            wait_for(lambda: d.log().count("configuration reloaded") > before, "tcpaod %s to reload" % name)

        def signed_with(d, key_id):
            keys = stats_now(d)["counters"].get("keys", {})
            return sum(v.get(str(key_id), {}).get("signed", 0) for v in keys.values())

        keys = [K1]
        for n, at in ((2, 0.3), (3, 0.6)):
            wait_for(lambda: alive() and updates() >= int(LONG * at), "%d stream updates" % int(LONG * at), LONG)
            keys = keys + [key_at(n, "aes-128-cmac-96" if n == 2 else "hmac-sha-1-96", "mgmt rotation key %d" % n, int(time.time()) - 1)]
            reload(dd, "dev", keys)
            reload(dn, "nms", keys)
            wait_for(lambda: alive() and signed_with(dn, n) > 0 and signed_with(dd, n) > 0, "both ends to sign with key %d" % n, 20)
            log("    t=%3.0f s: key %d preferred (device, then NMS reloaded); both ends sign with it (stream at %d updates)"
                % (time.time() - t0, n, updates()))
        try:
            stream.wait(LONG + 120)
            session.wait(max(30, idle + 120 - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            raise Fail("a client did not finish:\n%s\n%s" % (e2e.read_file(sub_out), e2e.read_file(nc_out)))
        res_s = json.loads(e2e.read_file(sub_out).strip().splitlines()[-1])
        res_n = json.loads(e2e.read_file(nc_out).strip().splitlines()[-1])
        check(stream.returncode == 0 and res_s["ok"], "the gNMI stream failed:\n%s" % e2e.read_file(sub_out))
        check(session.returncode == 0 and res_n["ok"], "the NETCONF session failed:\n%s" % e2e.read_file(nc_out))
        log("    gNMI stream: %d updates in %.0f s, max gap %.2f s, %d late, %d missed"
            % (res_s["updates"], res_s["seconds"], res_s["max_gap"], res_s["late"], res_s["missed"]))
        log("    NETCONF: after %d s idle, same session-id %s answered get-config and edit-config" % (idle, res_n["session_id"]))
        out = check_wire(cn, cap.stop(), "NMS-device link")
        runs = {}
        for s in out["segments"]:
            port = 830 if 830 in (s["srcPort"], s["dstPort"]) else 9339
            side = "NMS->" if s["src"] in (NMS4, NMS6) else "dev->"
            conn = s["srcPort"] if side == "NMS->" else s["dstPort"]
            r = runs.setdefault((port, conn, side), [])
            if s.get("keyID") is not None and (not r or r[-1] != s["keyID"]):
                r.append(s["keyID"])
        stream_runs = {k: v for k, v in runs.items() if k[0] == 9339}
        session_runs = {k: v for k, v in runs.items() if k[0] == 830}
        check(len(stream_runs) == 2 and all(v == [1, 2, 3] for v in stream_runs.values()),
              "KeyIDs of the stream's connection did not move 1 -> 2 -> 3: %s" % stream_runs)
        check(len(session_runs) == 2 and all(v[0] == 1 and v[-1] == 3 and v == sorted(v) for v in session_runs.values()),
              "KeyIDs of the NETCONF connection did not move from 1 to 3: %s" % session_runs)
        log("    KeyIDs on the wire: gNMI %s; NETCONF %s" % (
            ", ".join("%s %s" % (k[2], v) for k, v in sorted(stream_runs.items())),
            ", ".join("%s %s" % (k[2], v) for k, v in sorted(session_runs.items()))))
        for d, who in ((dn, "NMS"), (dd, "device")):
            dr = drops(d)
            check(not dr, "%s's tcpaod dropped segments: %s" % (who, dr))
        lab_.stop()
        dn.stop()
        dd.stop()
    finally:
        topo.close()


@test
def wrong_key_fails_fast_and_counts_bad_macs():
    """d. The device's tcpaod has another secret: the NETCONF client (IPv4) and the gNMI client
    (IPv6) each fail with a clear connection error well within 60 s, nothing is established on
    the device, and its tcpaod counts the bad MACs (dropped-bad-mac, per peer and per key)."""
    topo = Topology()
    try:
        nms, dev = e2e.two_hosts(topo)
        cn, cd = host_configs([key_yaml(1, 1, 1, "hmac-sha-1-96", SECRET)],
                              [key_yaml(1, 1, 1, "hmac-sha-1-96", "not the NMS's secret")])
        dn, dd = Daemon(nms, cn, "nms"), Daemon(dev, cd, "dev")
        lab_ = Lab(dev, ["192.0.2.2", "2001:db8:1::2"])
        outs = {n: os.path.join(WORK, n + ".out") for n in ("netconf", "gnmi")}
        t0 = time.time()
        procs = {}
        with open(outs["netconf"], "w") as f1, open(outs["gnmi"], "w") as f2:
            procs["netconf"] = nms.popen(lab.client_cmd("netconf", "--host", "192.0.2.2", "--workdir", lab_.dir, "--timeout", 10),
                                         stdout=f1, stderr=subprocess.STDOUT)
            procs["gnmi"] = nms.popen(lab.client_cmd("gnmi-check", "--host", "2001:db8:1::2", "--ca", lab_.ca, "--timeout", 10),
                                      stdout=f2, stderr=subprocess.STDOUT)
        for name, p in procs.items():
            try:
                p.wait(60 - (time.time() - t0))
            except subprocess.TimeoutExpired:
                raise Fail("the %s client still runs after 60 s with a wrong key" % name)
            secs = time.time() - t0
            text = e2e.read_file(outs[name])
            res = json.loads(text.strip().splitlines()[-1])
            check(p.returncode == 1 and not res["ok"] and "could not connect" in res.get("error", ""),
                  "the %s client should fail with a connection error (exit %d):\n%s" % (name, p.returncode, text))
            log("    %-7s failed after %4.1f s: %s" % (name, secs, res["error"][:150]))
        check(not dev.established(830) and not dev.established(9339), "the device has an established connection")
        s = dd.stats()
        bad4, bad6 = counter(s, "dropped-bad-mac", "nms"), counter(s, "dropped-bad-mac", "nms6")
        check(bad4 > 0 and bad6 > 0, "the device's tcpaod did not count bad MACs: %s" % s["counters"]["peers"])
        check(s["counters"]["keys"]["nms"]["1"]["bad-mac"] == bad4, "per-key bad-mac counter disagrees")
        log("    device's tcpaod: dropped-bad-mac %d (peer nms, key 1), %d (peer nms6); nothing established" % (bad4, bad6))
        lab_.stop()
        dn.stop()
        dd.stop()
    finally:
        topo.close()


def main():
    def missing():
        try:
            lab.python()
        except RuntimeError as e:
            return str(e)
        return None
    return e2e.tier_main(TESTS, "management end-to-end tests", missing)


if __name__ == "__main__":
    sys.exit(main())
