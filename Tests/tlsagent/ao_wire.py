#!/usr/bin/env python3
"""Test helpers for the TLS agent pair (Tests/e2e/tls_agents.py), on scapy.contrib.tcpao: they
share no code with tcpaod.

usage: ao_wire.py verify CAPTURE.pcap KEYID:ALGORITHM:HEX...
         Checks every TCP segment of the capture: each connection is followed from its SYN, the
         MKT is chosen by the segment's KeyID (SendID = RecvID here), the traffic key derived and
         the MAC checked. Prints one JSON line: totals, failures, and per connection and
         direction the runs of KeyIDs as [KeyID, count] pairs. Exit 0 when every segment of a
         connection seen from its SYN verifies.
       ao_wire.py forge IFACE PORT TOWARD KEYID:ALGORITHM:HEX TRIGGER RESULT KINDS
         A third party on the link that knows only that MKT: sniffs the connection to or from
         PORT from its SYN (ISNs, sequence numbers, Ethernet addresses), writes TRIGGER + ".ready"
         once listening; when TRIGGER exists, waits for a quiet moment and sends, as the end
         opposite TOWARD (client|server), correctly sequenced segments signed with that MKT:
         KINDS, comma-separated, of data (a data segment) and rstack (RST+ACK), each at the
         next sequence number (after the forgeries before it). Writes what it sent to RESULT (JSON).
       ao_wire.py echo-client HOST PORT STOP [INTERVAL]
         A plain TCP echo client: a numbered line every INTERVAL s (0.1), each echo checked, until the file
         STOP exists; prints "OK n", or "BROKEN after n: why" (exit 2), or "CORRUPT" (exit 3).
ALGORITHM: hmac-sha-1-96, aes-128-cmac-96, hmac-sha-256-128 (as tcpaod names them).
"""
import hashlib
import hmac
import json
import os
import select
import socket
import sys
import time

from scapy.all import IP, IPv6, TCP, Ether, Raw, conf, rdpcap
from scapy.contrib import tcpao

conf.verb = 0


class HMAC_SHA256_128(tcpao.TCPAOAlg):
    """tcpaod's (and Linux's "hmac(sha256)") HMAC-SHA-256 with a 128-bit MAC: the KDF of RFC 5926
    3.1.1 with HMAC-SHA-256 (Output_Length 256 bits), the MAC truncated to 16 bytes."""

    @classmethod
    def kdf(cls, master_key, context):
        return hmac.new(master_key, b"\x01TCP-AO" + context + b"\x01\x00", hashlib.sha256).digest()

    @classmethod
    def mac(cls, traffic_key, message):
        return hmac.new(traffic_key, message, hashlib.sha256).digest()[:16]

    maclen = 16


def alg(name):
    return HMAC_SHA256_128() if name == "hmac-sha-256-128" else tcpao.get_alg(name.upper())


def parse_keys(specs):
    keys = {}
    for spec in specs:
        kid, name, hexkey = spec.split(":", 2)
        keys[int(kid)] = (alg(name), bytes.fromhex(hexkey))
    return keys


def ao_option(t):
    for name, value in t.options:
        if name in ("AO", 29):
            return bytes(value)
    return None


def sne_for(ref, seq):
    ref_seq, ref_sne = ref
    if ((seq - ref_seq) & 0xFFFFFFFF) >= 0x80000000:
        return (ref_sne - 1) & 0xFFFFFFFF if seq > ref_seq else ref_sne
    return (ref_sne + 1) & 0xFFFFFFFF if seq < ref_seq else ref_sne


def endpoints(p):
    ipl = p[IP] if IP in p else p[IPv6]
    t = p[TCP]
    return (ipl.src, t.sport), (ipl.dst, t.dport)


def verify(path, keys):
    conns, order = {}, []
    tot = {"valid": 0, "bad": 0, "missing": 0, "unknown_key": 0, "nostate": 0}
    failures = []
    for i, p in enumerate(rdpcap(path), 1):
        if TCP not in p:
            continue
        t = p[TCP]
        a, b = endpoints(p)
        key = tuple(sorted([a, b]))
        syn, ackf = t.flags & 0x02, t.flags & 0x10
        if syn and not ackf:
            conns[key] = {"client": a, "server": b, "isn": {a: t.seq}, "ref": {a: (t.seq, 0)}, "runs": {"client": [], "server": []}}
            order.append(key)
        elif syn and key in conns:
            conns[key]["isn"][a] = t.seq
            conns[key]["ref"][a] = (t.seq, 0)
        c = conns.get(key)
        if c is None or a not in c["isn"] or (not (syn and not ackf) and b not in c["isn"]):
            tot["nostate"] += 1
            continue
        opt = ao_option(t)
        if opt is None:
            tot["missing"] += 1
            failures.append("frame %d: no TCP-AO option" % i)
            continue
        side = "client" if a == c["client"] else "server"
        runs = c["runs"][side]
        if runs and runs[-1][0] == opt[0]:
            runs[-1][1] += 1
        else:
            runs.append([opt[0], 1])
        if opt[0] not in keys:
            tot["unknown_key"] += 1
            failures.append("frame %d: KeyID %d, no such MKT" % (i, opt[0]))
            continue
        al, secret = keys[opt[0]]
        disn = 0 if (syn and not ackf) else c["isn"][b]
        tk = tcpao.calc_tcpao_traffic_key(p, al, secret, c["isn"][a], disn)
        sne = 0 if syn else sne_for(c["ref"][a], t.seq)
        if tcpao.calc_tcpao_mac(p, al, tk, sne=sne) == opt[2:]:
            tot["valid"] += 1
            r = c["ref"][a]
            if (sne << 32 | t.seq) > (r[1] << 32 | r[0]):
                c["ref"][a] = (t.seq, sne)
        else:
            tot["bad"] += 1
            failures.append("frame %d: bad MAC (KeyID %d)" % (i, opt[0]))
    out = dict(tot, failures=failures[:20], connections=[
        {"client": "%s:%d" % conns[k]["client"], "server": "%s:%d" % conns[k]["server"], "runs": conns[k]["runs"]} for k in order])
    print(json.dumps(out))
    return 0 if tot["valid"] and not (tot["bad"] or tot["missing"] or tot["unknown_key"]) else 1


def sign(pkt, al, tk, kid):
    """Adds a TCP-AO option (KeyID = RNextKeyID = kid). Not scapy's sign_tcpao: that one MACs the
    MAC (its calc_tcpao_mac already returns the MAC, which it then passes to alg.mac again)."""
    pkt[TCP].options = [("AO", bytes([kid, kid]) + b"\0" * al.maclen)]
    mac = tcpao.calc_tcpao_mac(pkt, al, tk)
    pkt[TCP].options = [("AO", bytes([kid, kid]) + mac)]


def forge(iface, port, toward, keyspec, trigger, result, kinds):
    (kid, (al, secret)), = parse_keys([keyspec]).items()
    sock = conf.L2listen(iface=iface, filter="tcp port %d" % port)
    out = conf.L2socket(iface=iface)  # opened now: at the quiet moment, sending takes no time
    open(trigger + ".ready", "w").close()
    isn, last, frame, last_time = {}, {}, {}, 0.0
    client = None
    while True:
        if select.select([sock], [], [], 0.02)[0]:
            p = sock.recv()
            if p is not None and TCP in p and (IP in p or IPv6 in p):
                t = p[TCP]
                a, b = endpoints(p)
                if t.flags & 0x02 and not t.flags & 0x10:
                    client, isn, last = a, {a: t.seq}, {}
                elif t.flags & 0x02 and client is not None:
                    isn[a] = t.seq
                if client is not None and a in isn:
                    side = "client" if a == client else "server"
                    nxt = (t.seq + len(bytes(t.payload)) + (1 if t.flags & 0x03 else 0)) & 0xFFFFFFFF
                    last[side] = {"src": a, "dst": b, "next": nxt, "ack": t.ack, "v6": IPv6 in p}
                    frame[side] = (p[Ether].src, p[Ether].dst) if Ether in p else None
                    last_time = time.monotonic()
        if os.path.exists(trigger) and time.monotonic() - last_time > 0.04:
            break
    me = "server" if toward == "client" else "client"   # the end we pretend to be
    if me not in last or len(isn) != 2:
        json.dump({"error": "saw no connection on port %d (ISNs %s, segments from %s)" % (port, isn, list(last))}, open(result, "w"))
        return 1
    s = last[me]
    (src, sport), (dst, dport) = s["src"], s["dst"]
    sent = []
    for kind in kinds.split(","):
        ipl = IPv6(src=src, dst=dst) if s["v6"] else IP(src=src, dst=dst)
        if kind == "data":
            pkt = ipl / TCP(sport=sport, dport=dport, flags="PA", seq=s["next"], ack=s["ack"], window=502) / Raw(b"EVIL forged with the default MKT\n")
        elif kind == "rstack":
            pkt = ipl / TCP(sport=sport, dport=dport, flags="RA", seq=s["next"], ack=s["ack"], window=0)
        else:
            raise SystemExit("unknown kind %s" % kind)
        tk = tcpao.calc_tcpao_traffic_key(pkt, al, secret, isn[s["src"]], isn[s["dst"]])
        sign(pkt, al, tk, kid)
        esrc, edst = frame[me]
        out.send(Ether(src=esrc, dst=edst) / pkt)
        sent.append({"kind": kind, "src": "%s:%d" % (src, sport), "dst": "%s:%d" % (dst, dport), "seq": s["next"], "ack": s["ack"], "key_id": kid})
        s["next"] = (s["next"] + len(bytes(pkt[TCP].payload))) & 0xFFFFFFFF  # the next forgery follows this one
    with open(result + ".tmp", "w") as f:
        json.dump({"sent": sent}, f)
    os.rename(result + ".tmp", result)
    return 0


def echo_client(host, port, stop, interval=0.1):
    s = socket.create_connection((host, port), timeout=10)
    f = s.makefile("rwb")
    n = 0
    try:
        while not os.path.exists(stop):
            msg = ("plain %d\n" % n).encode()
            f.write(msg)
            f.flush()
            got = f.readline()
            if not got:
                raise ConnectionError("closed by the peer")
            if got != msg:
                print("CORRUPT after %d: %r" % (n, got[:80]), flush=True)
                return 3
            n += 1
            time.sleep(interval)
    except OSError as e:
        print("BROKEN after %d: %s" % (n, e), flush=True)
        return 2
    s.close()
    print("OK %d" % n, flush=True)
    return 0


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "verify":
        return verify(args[0], parse_keys(args[1:]))
    if cmd == "forge":
        return forge(args[0], int(args[1]), args[2], args[3], args[4], args[5], args[6])
    if cmd == "echo-client":
        return echo_client(args[0], int(args[1]), args[2], *map(float, args[3:4]))
    raise SystemExit(__doc__)


if __name__ == "__main__":
    sys.exit(main())
