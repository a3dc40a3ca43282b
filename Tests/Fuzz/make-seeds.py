#!/usr/bin/env python3
"""Regenerates the committed seed corpus, Tests/Fuzz/corpus/<target>/.

    scripts/fuzz --build-only && python3 Tests/Fuzz/make-seeds.py

Seeds of each target = the packets the harness's own setup exchanges (dumped by the target
binaries with FUZZ_DUMP_SEEDS; for netlink, NetlinkTarget.swift's hand-built NFQUEUE
messages), the RFC 9235 test vectors' packets, and the hand-made malformed
cases below. Every seed starts with the target's mode byte (see the target's source).
"""
import json, os, shutil, struct, subprocess, sys, tempfile

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
corpus = os.path.join(root, "Tests", "Fuzz", "corpus")


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


V4A, V4B = bytes([10, 0, 0, 1]), bytes([192, 0, 2, 2])
V6A = bytes.fromhex("20010db8000000000000000000000001")
V6B = bytes.fromhex("20010db8000000000000000000000002")


def tcp(src, dst, sport=830, dport=40000, seq=5001, ack=1014, flags=0x10, opts=b"", payload=b"", doff=None):
    hl = 20 + len(opts)
    d = (doff if doff is not None else hl // 4) << 4
    h = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, d, flags, 64240, 0, 0) + opts
    seg = h + payload
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(seg))
    else:
        pseudo = src + dst + struct.pack("!IxxxB", len(seg), 6)
    c = csum(pseudo + seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def ipv4(payload, src=V4B, dst=V4A, proto=6, ihl=5, total=None, frag=0x4000, extra=b""):
    t = total if total is not None else 20 + len(extra) + len(payload)
    h = struct.pack("!BBHHHBBH", 0x40 | ihl, 0, t, 0x1234, frag, 64, proto, 0) + src + dst + extra
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload


def ipv6(payload, nxt=6, src=V6B, dst=V6A, plen=None):
    p = plen if plen is not None else len(payload)
    return struct.pack("!IHBB", 0x60000000, p, nxt, 64) + src + dst + payload


def ext(nxt, body6=b"\0" * 6, units=0):
    """An IPv6 extension header: next header, length in 8-byte units beyond the first 8."""
    return bytes([nxt, units]) + body6 + b"\0" * (8 * units)


TS = bytes([1, 1, 8, 10]) + struct.pack("!II", 1001, 1000)
AO16 = bytes([29, 16, 1, 1]) + b"\x5a" * 12


def malformed():
    base = tcp(V4B, V4A, opts=TS)
    s = {}
    s["trunc-v4-1"] = bytes([0x45])
    s["trunc-v4-19"] = ipv4(base)[:19]
    s["v4-ihl-too-big"] = ipv4(base, ihl=15)[:40]
    s["v4-ihl-too-small"] = ipv4(base, ihl=4)
    s["v4-total-too-big"] = ipv4(base, total=1500)
    s["v4-total-below-ihl"] = ipv4(base, total=12)
    s["v4-trailing-padding"] = ipv4(base) + b"\0" * 6
    s["v4-ip-options"] = ipv4(base, ihl=6, extra=bytes([1, 1, 1, 0]))
    s["v4-fragment-mf"] = ipv4(base, frag=0x2000)
    s["v4-fragment-offset"] = ipv4(base, frag=0x0010)
    s["bad-version"] = bytes([0x55]) + ipv4(base)[1:]
    s["udp"] = ipv4(b"\x00\x35\x00\x35\x00\x08\x00\x00", proto=17)
    s["tcp-doff-4"] = ipv4(tcp(V4B, V4A, doff=4))
    s["tcp-doff-15-short"] = ipv4(tcp(V4B, V4A, opts=TS, doff=15))
    s["tcp-truncated-header"] = ipv4(tcp(V4B, V4A)[:12])
    s["opt-len-0"] = ipv4(tcp(V4B, V4A, opts=bytes([8, 0, 0, 0])))
    s["opt-len-1"] = ipv4(tcp(V4B, V4A, opts=bytes([8, 1, 0, 0])))
    s["opt-overrun"] = ipv4(tcp(V4B, V4A, opts=bytes([1, 1, 8, 10, 0, 0, 0, 0])))
    s["opt-kind-at-end"] = ipv4(tcp(V4B, V4A, opts=bytes([1, 1, 1, 8])))
    s["opt-eol-then-garbage"] = ipv4(tcp(V4B, V4A, opts=bytes([1, 0, 29, 99])))
    s["mss-len-3"] = ipv4(tcp(V4B, V4A, flags=0x02, opts=bytes([2, 3, 5, 1])))
    s["sack-odd-len"] = ipv4(tcp(V4B, V4A, opts=bytes([1, 1, 5, 7, 0, 0, 0, 1, 0, 0, 0, 1])))
    s["ao-len-2"] = ipv4(tcp(V4B, V4A, opts=bytes([29, 2, 1, 1])))
    s["ao-len-3"] = ipv4(tcp(V4B, V4A, opts=bytes([29, 3, 1, 1])))
    s["ao-len-4"] = ipv4(tcp(V4B, V4A, opts=bytes([29, 4, 1, 1])))
    s["ao-len-10"] = ipv4(tcp(V4B, V4A, opts=bytes([29, 10, 1, 1]) + b"\x5a" * 6 + b"\1\1"))
    s["ao-len-overrun"] = ipv4(tcp(V4B, V4A, opts=bytes([29, 40, 1, 1]) + b"\x5a" * 12))
    s["ao-duplicate"] = ipv4(tcp(V4B, V4A, opts=AO16 + AO16))
    s["ao-with-md5"] = ipv4(tcp(V4B, V4A, opts=AO16 + bytes([19, 18]) + b"\0" * 16 + b"\1\1"))
    s["md5-only"] = ipv4(tcp(V4B, V4A, opts=bytes([19, 18]) + b"\0" * 16 + b"\1\1"))
    s["ao-unknown-keyid"] = ipv4(tcp(V4B, V4A, opts=bytes([29, 16, 99, 1]) + b"\x5a" * 12))
    s["ao-no-state"] = ipv4(tcp(V4B, V4A, sport=1234, opts=AO16))
    s["ao-syn-bad-mac"] = ipv4(tcp(V4B, V4A, sport=1235, flags=0x02, opts=bytes([2, 4, 5, 0xB4]) + AO16))
    s["v6-trunc-39"] = ipv6(tcp(V6B, V6A))[:39]
    s["v6-plen-too-big"] = ipv6(tcp(V6B, V6A), plen=1000)
    s["v6-jumbogram"] = ipv6(ext(6) + tcp(V6B, V6A), nxt=0, plen=0)
    s["v6-ext-chain"] = ipv6(ext(60) + ext(43, bytes([0, 0, 0, 0, 0, 0])) + ext(6, units=1) + tcp(V6B, V6A, sport=9339, dport=40001, opts=TS), nxt=0)
    s["v6-routing-segleft"] = ipv6(ext(6, bytes([0, 2, 0, 0, 0, 0])) + tcp(V6B, V6A), nxt=43)
    s["v6-ext-overrun"] = ipv6(ext(6, units=9) + tcp(V6B, V6A), nxt=60)
    s["v6-fragment"] = ipv6(ext(6) + tcp(V6B, V6A), nxt=44)
    s["v6-esp"] = ipv6(b"\0" * 16, nxt=50)
    s["v6-no-next"] = ipv6(b"", nxt=59)
    quoted = ipv4(tcp(V4A, V4B, sport=40000, dport=830, seq=1014, ack=5001), src=V4A, dst=V4B)[:28]
    s["icmp4-frag-needed"] = ipv4(bytes([3, 4, 0, 0, 0, 0, 5, 0xDC]) + quoted, src=bytes([192, 0, 2, 1]), proto=1)
    s["icmp4-short-quote"] = ipv4(bytes([3, 3, 0, 0, 0, 0, 0, 0]) + quoted[:20], src=bytes([192, 0, 2, 1]), proto=1)
    s["icmp4-echo"] = ipv4(bytes([8, 0, 0, 0, 0, 1, 0, 1]), proto=1)
    q6 = ipv6(tcp(V6A, V6B, sport=40001, dport=9339), src=V6A, dst=V6B)[:48]
    s["icmp6-admin-prohibited"] = ipv6(bytes([1, 1, 0, 0, 0, 0, 0, 0]) + q6, nxt=58)
    s["icmp6-echo"] = ipv6(bytes([128, 0, 0, 0, 0, 1, 0, 1]), nxt=58)
    return s


def main():
    tmp = tempfile.mkdtemp()
    dumped = {}
    for t in ("parse", "ingress", "egress"):
        d = os.path.join(tmp, t)
        env = dict(os.environ, FUZZ_DUMP_SEEDS=d, SWIFT_BACKTRACE="enable=no")
        subprocess.run([os.path.join(root, ".build-fuzz", "fuzz-" + t)], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dumped[t] = {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))}
    vectors = json.load(open(os.path.join(root, "Tests", "TCPAOTests", "Resources", "rfc9235.json")))["vectors"]
    rfc = {"rfc9235-" + v["section"]: bytes.fromhex(v["packet_hex"]) for v in vectors}
    bad = malformed()
    # Mode bytes: parse 0x00 (12-byte MAC, 64 bytes of room); ingress 0x00 raw, 0x01 pipe;
    # egress 0x08 (64 bytes of room, then the peer's ingress).
    for t in ("parse", "ingress", "egress"):
        d = os.path.join(corpus, t)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        seeds = dict(dumped[t])
        mode = {"parse": 0x00, "ingress": 0x00, "egress": 0x08}[t]
        extra = dict(rfc)
        if t == "parse":
            # The parser needs the signed packets only (the unsigned ones are egress's).
            seeds = {n: b for n, b in seeds.items() if n.startswith("wire-")}
            extra.update(bad)
        else:
            # The engines see the malformed cases that get past the parser.
            extra.update({n: b for n, b in bad.items() if n.startswith(("ao-", "md5", "icmp", "v6-ext-chain", "v4-ip-options", "v4-trailing", "udp"))})
        for n, p in extra.items():
            seeds[n] = bytes([mode]) + p
        for n, b in seeds.items():
            open(os.path.join(d, n), "wb").write(b)
        print("%s: %d seeds, %d bytes" % (t, len(seeds), sum(len(b) for b in seeds.values())))
    # netlink: the hand-built NFQUEUE messages of NetlinkTarget.swift.
    d = os.path.join(corpus, "netlink")
    shutil.rmtree(d, ignore_errors=True)
    env = dict(os.environ, FUZZ_DUMP_SEEDS=d, SWIFT_BACKTRACE="enable=no")
    subprocess.run([os.path.join(root, ".build-fuzz", "fuzz-netlink")], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print("netlink: %d seeds" % len(os.listdir(d)))
    shutil.rmtree(tmp)


if __name__ == "__main__":
    sys.exit(main())
