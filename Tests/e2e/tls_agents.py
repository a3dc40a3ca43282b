#!/usr/bin/env python3
"""TCP-AO keys from TLS, end to end: the example agent pair of Tests/tlsagent/ao_tls_agent.py
(a TLS 1.3 client and server that, after their handshake, derive an MKT with the TLS exporter and
install it in their tcpaod for their own connection) through two real tcpaod instances, with
independent checks of the capture (Tests/tlsagent/ao_wire.py on scapy.contrib.tcpao, and
`tcpaod verify-pcap`) and a third party on the link that knows the default MKT.

usage: tls_agents.py [-k SUBSTRING] [--list]   (root; TCPAOD_BIN=path to the tcpaod binary;
       TLS_AGENT_PYTHON=a python3 with pyOpenSSL, default /usr/bin/python3 with python3-openssl)

Topology (from e2e.py, namespaces prefixed "tl<pid>-"):
  A 192.0.2.1  <-veth->  B 192.0.2.2, tcpaod in host mode on each (instances of their own, their
  control sockets in /run/tcpaod/<instance>/), key chain k: the default MKT, KeyID 1
  (hmac-sha-1-96), for the other host. B runs the agent server (TCP 4433) and plain echo servers
  (830, 831); A the agent client and plain echo clients.
"""
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import e2e  # noqa: E402  (its temporary directory, e2e.WORK, is ours too and removed at the end)
from e2e import (SECRET, Capture, Daemon, Fail, Topology, check, key_yaml, log, read_file, sh,  # noqa: E402
                 two_hosts, verify_pcap, wait_for, write_config)

e2e.TAG = "tl%d" % (os.getpid() % 100000)
WORK = e2e.WORK
TLSAGENT = os.path.join(e2e.ROOT, "Tests", "tlsagent")
AGENT = os.path.join(TLSAGENT, "ao_tls_agent.py")
AO_WIRE = os.path.join(TLSAGENT, "ao_wire.py")
AGENT_PY = os.environ.get("TLS_AGENT_PYTHON", "/usr/bin/python3")
DEFAULT_ALG = CONN_ALG = "hmac-sha-256-128"  # the same MAC length: see the note in ao_tls_agent.py
CONN_KEY_ID = 100
TLS_PORT = 4433
A_IP, B_IP = "192.0.2.1", "192.0.2.2"


def missing():
    r = subprocess.run([AGENT_PY, "-c", "from OpenSSL import SSL; SSL.Connection.export_keying_material"], capture_output=True, text=True)
    if r.returncode != 0:
        return "%s has no pyOpenSSL with export_keying_material (Debian: apt-get install python3-openssl): %s" % (AGENT_PY, r.stderr.strip()[-200:])
    r = subprocess.run([sys.executable, "-c", "import scapy.contrib.tcpao"], capture_output=True)
    if r.returncode != 0:
        return "%s has no scapy (pip install scapy)" % sys.executable
    for tool in ("openssl", "socat", "tcpdump", "ss"):
        if not shutil.which(tool):
            return "%s is not installed" % tool
    return None


# ---- the two hosts, their tcpaod, and what the tests ask of them --------------------------------

class Side:
    """One host: its namespace, its tcpaod (an instance of its own) and its control socket."""

    def __init__(self, ns, name, peer_name, peer_ip):
        self.ns, self.name = ns, name
        self.instance = "%s-%s" % (e2e.TAG, name)
        self.dir = "/run/tcpaod/" + self.instance
        self.sock = self.dir + "/control.sock"
        cfg = write_config(name, [(peer_name, peer_ip + "/32", None)], [key_yaml(1, 1, 1, DEFAULT_ALG, SECRET)],
                           extra="instance: %s\n" % self.instance)
        self.peer = peer_name
        self.daemon = Daemon(ns, cfg, name)
        wait_for(lambda: os.path.exists(self.sock), "%s's control socket %s" % (name, self.sock))

    def ctl(self, *args):
        r = sh([e2e.TCPAOD] + list(args) + ["--instance", self.instance, "--json"], check_rc=False)
        check(r.returncode == 0, "tcpaod %s (%s): exit %d: %s%s" % (" ".join(args), self.name, r.returncode, r.stdout, r.stderr))
        return json.loads(r.stdout)

    def raw(self, request):
        """One request over the raw control protocol (as the agents speak it)."""
        import socket as sk
        c = sk.socket(sk.AF_UNIX, sk.SOCK_STREAM)
        c.settimeout(10)
        c.connect(self.sock)
        c.sendall((json.dumps(request) + "\n").encode())
        line = c.makefile("rb").readline()
        c.close()
        return json.loads(line)

    def flow(self, remote_port=None, local_port=None):
        """The established flow with that remote (or local) port, or None."""
        m = [f for f in self.ctl("flows")["flows"] if f.get("phase") == "established"
             and (remote_port is None or f["remote_port"] == remote_port) and (local_port is None or f["local_port"] == local_port)]
        return m[0] if len(m) == 1 else None

    def drops(self):
        """tcpaod's drop counters for the peer, by reason (only those not zero)."""
        c = self.ctl("stats")["counters"]["peers"].get(self.peer, {})
        return {k[len("dropped-"):]: v for k, v in c.items() if k.startswith("dropped-") and v}

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def make_certificate():
    """A self-signed certificate for the server (P-256), made for this run."""
    cert, key = os.path.join(WORK, "server-cert.pem"), os.path.join(WORK, "server-key.pem")
    sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
        "-subj", "/CN=tcpaod-tls-agent-example", "-addext", "subjectAltName=IP:%s" % B_IP, "-keyout", key, "-out", cert])
    os.chmod(key, 0o600)
    return cert, key


def listening(ns, port):
    return ns.run(["ss", "-Hltn", "sport = :%d" % port]).stdout.strip()


def summary_of(p, what):
    """The agent's one-line JSON summary (its last line of output) and its exit status."""
    try:
        out, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise Fail("the %s agent did not finish: %s %s" % (what, out, err))
    lines = out.strip().splitlines()
    try:
        return json.loads(lines[-1]), p.returncode, err
    except (IndexError, ValueError):
        raise Fail("the %s agent printed no summary (exit %s): %s %s" % (what, p.returncode, out, err))


def not_exited(procs):
    """Fails as soon as one of the named processes has exited, with the output of each that has."""
    done = [(name, p) for name, p in procs.items() if p.poll() is not None]
    if done:
        msgs = []
        for name, p in done:
            out, err = p.communicate()
            msgs.append("the %s agent exited (%d) early: %s %s" % (name, p.returncode, out.strip(), err.strip()[-600:]))
        raise Fail("; ".join(msgs))


def runs_of(verified, port):
    """KeyID runs ([KeyID, count], ...) per direction of the connection to `port`."""
    m = [c for c in verified["connections"] if c["server"].endswith(":%d" % port)]
    check(len(m) == 1, "the capture has %d connections to port %d: %s" % (len(m), port, verified["connections"]))
    return m[0]["runs"]


# ---- the tests ---------------------------------------------------------------------------------

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def two_sides(topo, sides):
    """Two hosts, each with its tcpaod (default MKT for the other); the Sides are appended to
    `sides` as they start, so the caller's cleanup stops whatever started."""
    a_ns, b_ns = two_hosts(topo)
    a = Side(a_ns, "tls-a", "b", B_IP)
    sides.append(a)
    b = Side(b_ns, "tls-b", "a", A_IP)
    sides.append(b)
    return a_ns, b_ns, a, b


@test
def tls_exporter_moves_the_connection_to_its_own_mkt():
    """The agent pair, TLS 1.3 through tcpaod with the default MKT (KeyID 1), derives an MKT from
    the TLS exporter on each end (the same bytes) and installs it for its connection (KeyID 100):
    the connection moves to it in both directions; every segment verifies with one of the two
    MKTs (scapy and verify-pcap); a third party that knows the default MKT injects a correctly
    sequenced data segment and an RST signed with it: dropped (and counted) by tcpaod, the echo
    exchange unharmed -- while the same forger resets a plain connection that uses the default
    MKT (the control); the other connections of the peer keep the default MKT."""
    topo = Topology()
    sides = []
    try:
        a_ns, b_ns, a, b = two_sides(topo, sides)
        cert, key = make_certificate()
        default_mkt = "1:%s:%s" % (DEFAULT_ALG, SECRET.encode().hex())
        cap = Capture(a_ns, "va", "tcp")

        # Plain echo servers on B: 830 for a connection that runs through the whole test, 831 for
        # the control of the forger.
        for port in (830, 831):
            b_ns.popen(["socat", "TCP4-LISTEN:%d,reuseaddr,fork" % port, "EXEC:cat"], stderr=subprocess.DEVNULL)
            wait_for(lambda: listening(b_ns, port), "the echo server on port %d" % port)
        stop_plain = os.path.join(WORK, "stop-plain")
        plain = a_ns.popen([sys.executable, AO_WIRE, "echo-client", B_IP, "830", stop_plain], stdout=subprocess.PIPE, text=True)
        wait_for(lambda: a.flow(remote_port=830), "the plain connection to 830 in A's flows")

        # The control: the forger (on B's side of the link, knowing the default MKT) resets a
        # connection that uses the default MKT -- its segments are valid ones.
        trig, res = os.path.join(WORK, "forge-831"), os.path.join(WORK, "forge-831.json")
        forger = b_ns.popen([sys.executable, AO_WIRE, "forge", "vb", "831", "client", default_mkt, trig, res, "rstack"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: os.path.exists(trig + ".ready") or forger.poll() is not None, "the forger to listen")
        stop_ctl = os.path.join(WORK, "stop-831")
        # (A line every 0.3 s: the RST must come at the next sequence number exactly, RFC 5961 3.2, so
        # the forger waits for a quiet moment, and this leaves it some.)
        victim = a_ns.popen([sys.executable, AO_WIRE, "echo-client", B_IP, "831", stop_ctl, "0.3"], stdout=subprocess.PIPE, text=True)
        wait_for(lambda: (a.flow(remote_port=831) or {}).get("verified", 0) >= 6, "a few echoes on the control connection")
        drops0 = a.drops()
        open(trig, "w").close()
        wait_for(lambda: os.path.exists(res) or forger.poll() not in (None, 0), "the forger's result")
        sent = json.loads(read_file(res))
        check("sent" in sent, "the forger: %s %s" % (sent, forger.communicate()[0] if forger.poll() is not None else ""))
        try:
            out = victim.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            open(stop_ctl, "w").close()
            out = victim.communicate(timeout=15)[0]
            raise Fail("control: an RST signed with the default MKT did not reset a connection that uses it (%s; sent %s; A's drops %s -> %s)"
                       % (out.strip(), sent["sent"], drops0, a.drops()))
        check(victim.returncode == 2 and "reset" in out.lower(), "control: the forged RST did not reset the connection: %s" % out.strip())
        check(a.drops() == drops0, "control: A dropped the forger's segment: %s -> %s" % (drops0, a.drops()))
        log("    control: the forger's RST+ACK (KeyID 1, seq %d) reset the plain connection to 831 (%s); A dropped nothing"
            % (sent["sent"][0]["seq"], out.strip()))

        # The agents. The forger listens from before the connection's SYN (it learns the ISNs
        # from the wire, like any third party on the link).
        trig, res = os.path.join(WORK, "forge-tls"), os.path.join(WORK, "forge-tls.json")
        forger = b_ns.popen([sys.executable, AO_WIRE, "forge", "vb", str(TLS_PORT), "client", default_mkt, trig, res, "data,rstack"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: os.path.exists(trig + ".ready") or forger.poll() is not None, "the forger to listen")
        key_a, key_b = os.path.join(WORK, "mkt-a.hex"), os.path.join(WORK, "mkt-b.hex")
        common = ["--port", str(TLS_PORT), "--key-id", str(CONN_KEY_ID), "--algorithm", CONN_ALG, "--move-timeout", "30"]
        srv = b_ns.popen([AGENT_PY, AGENT, "server", "--listen", B_IP, "--cert", cert, "--key", key, "--control", b.sock,
                          "--write-key", key_b] + common, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        agents = {"server": srv}
        wait_for(lambda: not_exited(agents) or listening(b_ns, TLS_PORT), "the agent server to listen")
        cli = a_ns.popen([AGENT_PY, AGENT, "client", "--connect", B_IP, "--pin", cert, "--control", a.sock, "--seconds", "8",
                          "--write-key", key_a] + common, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        agents["client"] = cli

        # The exporter: both ends derived the same 32 bytes (written before the key-add).
        def keys_written():
            if os.path.exists(key_a) and os.path.exists(key_b) and read_file(key_a) and read_file(key_b):
                return True
            not_exited(agents)
        wait_for(keys_written, "both agents to derive their MKT")
        for path in (key_a, key_b):
            check(os.stat(path).st_mode & 0o777 == 0o600, "%s: mode %o" % (path, os.stat(path).st_mode & 0o777))
        mkt = read_file(key_a).strip()
        check(re.fullmatch(r"[0-9a-f]{64}", mkt) is not None, "A's MKT is not 32 bytes of hex")
        check(read_file(key_b).strip() == mkt, "the two ends exported different bytes")
        check(mkt != SECRET.encode().hex(), "the exported MKT is the default one")
        log("    TLS 1.3 through tcpaod (default MKT, KeyID 1); both ends exported the same 32-byte MKT")

        # The move: both tcpaod send with KeyID 100 and last verified a KeyID-100 segment.
        def moved():
            not_exited(agents)
            fa, fb = a.flow(remote_port=TLS_PORT), b.flow(local_port=TLS_PORT)
            if fa and fb and all(f["key_id"] == CONN_KEY_ID and f["last_recv_key_id"] == CONN_KEY_ID for f in (fa, fb)):
                return fa, fb
        fa, fb = wait_for(moved, "the TLS connection to move to KeyID %d on both tcpaod" % CONN_KEY_ID, 40)
        log("    moved: A KeyID %d RNextKeyID %d last received %d; B KeyID %d RNextKeyID %d last received %d"
            % (fa["key_id"], fa["rnext_key_id"], fa["last_recv_key_id"], fb["key_id"], fb["rnext_key_id"], fb["last_recv_key_id"]))
        # (c) the other connection of the same peer keeps the default MKT.
        for side in (a, b):
            f = side.flow(remote_port=830) if side is a else side.flow(local_port=830)
            check(f and f["key_id"] == 1 and f["last_recv_key_id"] == 1, "%s: the plain connection's KeyIDs: %s" % (side.name, f))

        # (b) The third party injects, signed with the default MKT, into the moved connection.
        drops0, flow0 = a.drops(), a.flow(remote_port=TLS_PORT)
        open(trig, "w").close()
        wait_for(lambda: os.path.exists(res) or forger.poll() not in (None, 0), "the forger's result")
        sent = json.loads(read_file(res))
        check("sent" in sent, "the forger: %s %s" % (sent, forger.communicate()[0] if forger.poll() is not None else ""))
        check(cli.poll() is None, "the agents finished before the injection (raise --seconds)")

        def counted():
            d = a.drops()
            n = sum(d.values()) - sum(drops0.values())
            return (d, n) if n >= len(sent["sent"]) else None
        d, n = wait_for(counted, "A's tcpaod to count the %d forged segments as dropped" % len(sent["sent"]))
        grew = {k: v - drops0.get(k, 0) for k, v in d.items() if v != drops0.get(k, 0)}
        f = a.flow(remote_port=TLS_PORT)
        log("    injected %s (KeyID 1, seq %d): A dropped them: %s; flow's dropped %s -> %s"
            % ("+".join(s["kind"] for s in sent["sent"]), sent["sent"][0]["seq"], grew, flow0.get("dropped"), (f or {}).get("dropped")))

        cs, crc, cerr = summary_of(cli, "client")
        ss_, src, serr = summary_of(srv, "server")
        check(crc == 0 and cs["moved"] and cs["echoes_ok"] and cs["echoes_after_move"] > 0, "client: %s %s" % (cs, cerr[-600:]))
        check(src == 0 and ss_["moved"], "server: %s %s" % (ss_, serr[-600:]))
        check(cs["mkt_fingerprint"] == ss_["mkt_fingerprint"], "the summaries' MKT fingerprints differ")
        for s in (cs, ss_):
            after = s.get("key_ids_after") or {}
            check((s.get("key_ids_before") or {}).get("send") == 1 and after.get("send") == CONN_KEY_ID
                  and after.get("last_recv") == CONN_KEY_ID, "%s's KeyIDs: %s" % (s["role"], s))
            check(mkt not in json.dumps(s), "the MKT in the %s's summary" % s["role"])
        log("    client: %s" % json.dumps(cs, sort_keys=True))
        log("    server: %s" % json.dumps(ss_, sort_keys=True))
        open(stop_plain, "w").close()
        out = plain.communicate(timeout=20)[0]
        check(plain.returncode == 0 and out.startswith("OK"), "the plain connection: %s" % out)
        path = cap.stop()

        # (a) The capture, by scapy: every segment verifies with the MKT its KeyID names.
        r = sh([sys.executable, AO_WIRE, "verify", path, default_mkt, "%d:%s:%s" % (CONN_KEY_ID, CONN_ALG, mkt)], check_rc=False, timeout=300)
        v = json.loads(r.stdout.strip().splitlines()[-1])
        check(r.returncode == 0, "scapy: not every segment verifies: %s" % {k: v[k] for k in ("valid", "bad", "missing", "unknown_key", "failures")})
        tls = runs_of(v, TLS_PORT)
        check(tls["client"] and [k for k, _ in tls["client"]] == [1, CONN_KEY_ID], "A -> B on %d: KeyID runs %s" % (TLS_PORT, tls["client"]))
        srv_runs = tls["server"]
        check(srv_runs and srv_runs[0][0] == 1 and srv_runs[1][0] == CONN_KEY_ID, "B -> A on %d: KeyID runs %s" % (TLS_PORT, srv_runs))
        late = sum(c for k, c in srv_runs[2:] if k == 1)
        check(late == len(sent["sent"]) and all(k in (1, CONN_KEY_ID) for k, _ in srv_runs),
              "B -> A after the move: %d KeyID-1 segments on the wire, %d injected: %s" % (late, len(sent["sent"]), srv_runs))
        for port in (830, 831):
            r_ = runs_of(v, port)
            check([k for k, _ in r_["client"]] == [1] and [k for k, _ in r_["server"]] == [1], "port %d: KeyID runs %s" % (port, r_))
        log("    scapy: %d segments valid; on %d A->B %s, B->A %s (the KeyID-1 run after the move: the %d injected); 830 %s"
            % (v["valid"], TLS_PORT, tls["client"], srv_runs, late, runs_of(v, 830)))
        # ... and by tcpaod verify-pcap, with both MKTs in a key chain.
        vcfg = write_config("tls-verify", [("b", B_IP + "/32", None)], [
            key_yaml(1, 1, 1, DEFAULT_ALG, SECRET),
            "      - { key-id: %d, send-id: %d, recv-id: %d, crypto-algorithm: %s, hexadecimal-string: \"%s\" }\n"
            % (CONN_KEY_ID, CONN_KEY_ID, CONN_KEY_ID, CONN_ALG, mkt)])
        rc, out = verify_pcap(vcfg, path)
        check(rc == 0, "verify-pcap: %s" % out.get("line"))
        log("    verify-pcap: %s" % out.get("line"))
        for side in (a, b):
            check(mkt not in side.daemon.log(), "the MKT in %s's log" % side.name)
        a.daemon.stop()
        b.daemon.stop()
    finally:
        topo.close()
        for s in sides:
            s.close()


@test
def key_add_for_a_missing_connection_is_refused():
    """key-add for a connection that tcpaod does not track is refused with a clear error and
    changes nothing (keys, flows, the running connection's KeyIDs)."""
    topo = Topology()
    sides = []
    try:
        a_ns, b_ns, a, b = two_sides(topo, sides)
        b_ns.popen(["socat", "TCP4-LISTEN:830,reuseaddr,fork", "EXEC:cat"], stderr=subprocess.DEVNULL)
        wait_for(lambda: listening(b_ns, 830), "the echo server")
        stop = os.path.join(WORK, "stop-neg")
        plain = a_ns.popen([sys.executable, AO_WIRE, "echo-client", B_IP, "830", stop], stdout=subprocess.PIPE, text=True)
        f0 = wait_for(lambda: a.flow(remote_port=830), "the plain connection in A's flows")
        keys0 = a.ctl("keys")
        keys0.pop("time", None)
        answer = a.raw({"version": 1, "command": "key-add",
                        "connection": {"local": A_IP, "local_port": 40000, "remote": B_IP, "remote_port": TLS_PORT},
                        "send_id": CONN_KEY_ID, "recv_id": CONN_KEY_ID, "algorithm": CONN_ALG, "secret_hex": "ab" * 32})
        log("    answer: %s" % json.dumps(answer, sort_keys=True))
        check(answer.get("ok") is False and answer.get("code") and answer.get("error"), "not refused: %s" % answer)
        err = answer["error"]
        check(not re.search(r"unknown argument|no argument", err), "refused, but as a request tcpaod does not understand: %s" % answer)
        check("40000" in err or "no connection" in err.lower() or "not found" in err.lower(), "the error does not name the connection: %s" % err)
        check("ab" * 32 not in json.dumps(answer), "the secret in the answer")
        keys1 = a.ctl("keys")
        keys1.pop("time", None)
        # The chains' keys (the per-peer counters move with the traffic) and the runtime changes.
        for k in (keys0, keys1):
            k.pop("peers", None)
            for c in k.get("chains", []):
                for key in c.get("keys", []):
                    for n in list(key):
                        if n.startswith("pkt_"):
                            key.pop(n)
        check(keys1 == keys0, "the keys changed: %s -> %s" % (keys0, keys1))
        f1 = a.flow(remote_port=830)
        check(f1 and (f1["key_id"], f1["rnext_key_id"], f1["last_recv_key_id"]) == (f0["key_id"], f0["rnext_key_id"], f0["last_recv_key_id"]),
              "the running connection's KeyIDs changed: %s -> %s" % (f0, f1))
        check(not [f for f in a.ctl("flows")["flows"] if f["local_port"] == 40000], "a flow for the refused connection appeared")
        open(stop, "w").close()
        out = plain.communicate(timeout=20)[0]
        check(plain.returncode == 0, "the plain connection: %s" % out)
        a.daemon.stop()
        b.daemon.stop()
    finally:
        topo.close()
        for s in sides:
            s.close()


def main():
    return e2e.tier_main(TESTS, "TLS agent tests", missing)


if __name__ == "__main__":
    sys.exit(main())
