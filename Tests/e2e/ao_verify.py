#!/usr/bin/env python3
"""Independent TCP-AO check of a capture with scapy.contrib.tcpao (RFC 5925/5926 as written by
Leonard Crestez for the Linux TCP-AO work), sharing no code with tcpaod.

usage: ao_verify.py CAPTURE.pcap SECRET ALGORITHM [--exclude-options]
       ALGORITHM: HMAC-SHA-1-96 | AES-128-CMAC-96
Follows each connection from its SYN, derives the traffic keys, infers the SNE, and checks every
TCP segment's MAC. Prints a summary; exit 0 only if every segment carries a valid TCP-AO option.
Also prints the sequence of KeyIDs seen per direction (for the rollover test) as JSON on the
last line.
"""
import json
import sys

from scapy.all import IP, IPv6, TCP, rdpcap
from scapy.contrib import tcpao


def sne_for(ref, seq):
    """Windowed SNE inference (RFC 9187): the extension that puts seq closest to the reference."""
    ref_seq, ref_sne = ref
    if ((seq - ref_seq) & 0xFFFFFFFF) >= 0x80000000:  # before the reference
        return (ref_sne - 1) & 0xFFFFFFFF if seq > ref_seq else ref_sne
    return (ref_sne + 1) & 0xFFFFFFFF if seq < ref_seq else ref_sne


def ao_option(tcp):
    for name, value in tcp.options:
        if name == "AO" or name == 29:
            return value if isinstance(value, (bytes, bytearray)) else bytes(value)
    return None


def main():
    path, secret, alg_name = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
    include_options = "--exclude-options" not in sys.argv
    alg = tcpao.get_alg(alg_name)
    conns = {}
    ok = bad = missing = nostate = 0
    keyids = {"client": [], "server": []}
    failures = []
    for i, p in enumerate(rdpcap(path), 1):
        if TCP not in p:
            continue
        t = p[TCP]
        ipl = p[IP] if IP in p else p[IPv6]
        a, b = (ipl.src, t.sport), (ipl.dst, t.dport)
        key = tuple(sorted([a, b]))
        syn, ackf = t.flags & 0x02, t.flags & 0x10
        if syn and not ackf:
            conns[key] = {"client": a, "isn": {a: t.seq}, "ref": {a: (t.seq, 0)}}
        elif syn and key in conns:
            conns[key]["isn"][a] = t.seq
            conns[key]["ref"][a] = (t.seq, 0)
        opt = ao_option(t)
        if opt is None:
            missing += 1
            failures.append(f"frame {i}: no TCP-AO option")
            continue
        c = conns.get(key)
        if c is None or a not in c["isn"] or (not (syn and not ackf) and b not in c["isn"]):
            nostate += 1
            continue
        side = "client" if a == c["client"] else "server"
        keyids[side].append(opt[0])
        disn = 0 if (syn and not ackf) else c["isn"][b]
        tk = tcpao.calc_tcpao_traffic_key(p, alg, secret, c["isn"][a], disn)
        sne = 0 if syn else sne_for(c["ref"][a], t.seq)
        mac = tcpao.calc_tcpao_mac(p, alg, tk, include_options=include_options, sne=sne)
        if mac == bytes(opt[2:]):
            ok += 1
            r = c["ref"][a]
            if (sne << 32 | t.seq) > (r[1] << 32 | r[0]):
                c["ref"][a] = (t.seq, sne)
        else:
            bad += 1
            failures.append(f"frame {i}: bad MAC (keyid {opt[0]})")
    for f in failures[:10]:
        print(f)
    print(f"scapy tcpao: {ok} valid, {bad} bad MAC, {missing} without TCP-AO, {nostate} without state")
    runs = {s: [k for j, k in enumerate(v) if j == 0 or v[j - 1] != k] for s, v in keyids.items()}
    print(json.dumps({"valid": ok, "bad": bad, "missing": missing, "nostate": nostate, "keyid_runs": runs}))
    sys.exit(0 if ok > 0 and bad == 0 and missing == 0 and nostate == 0 else 1)


if __name__ == "__main__":
    main()
