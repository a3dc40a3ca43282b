#!/usr/bin/env python3
"""Reads or flips one conntrack label bit of a TCP connection over ctnetlink (test equipment).

usage: ctlabel.py get  SRC SPORT DST DPORT        prints the 128 label bits as 32 hex digits
       ctlabel.py flip SRC SPORT DST DPORT BIT    flips label bit BIT (only that bit: a mask)

`conntrack -U --label-add/--label-del` (conntrack-tools 1.4.7) fails with "Operation not
supported" here unless given `-f ipv4` (the error comes from the IPv6 half of its dump); the
end-to-end tests forge labels with this small independent writer instead: IPCTNL_MSG_CT_GET / IPCTNL_MSG_CT_NEW (no NLM_F_CREATE) with CTA_LABELS and
CTA_LABELS_MASK, as linux/netfilter/nfnetlink_conntrack.h defines them. IPv4 only.
"""
import os
import socket
import struct
import sys

NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
CT_NEW, CT_GET = (1 << 8) | 0, (1 << 8) | 1       # NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_*
CTA_TUPLE_ORIG, CTA_LABELS, CTA_LABELS_MASK = 1, 22, 23
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
NLA_F_NESTED = 0x8000


def attr(t, payload):
    a = struct.pack("=HH", 4 + len(payload), t) + payload
    return a + b"\0" * (-len(a) % 4)


def tuple_attr(src, sport, dst, dport):
    ip = attr(CTA_IP_V4_SRC, socket.inet_aton(src)) + attr(CTA_IP_V4_DST, socket.inet_aton(dst))
    proto = attr(CTA_PROTO_NUM, b"\x06") + attr(CTA_PROTO_SRC_PORT, struct.pack(">H", sport)) + \
        attr(CTA_PROTO_DST_PORT, struct.pack(">H", dport))
    return attr(CTA_TUPLE_ORIG | NLA_F_NESTED, attr(CTA_TUPLE_IP | NLA_F_NESTED, ip) + attr(CTA_TUPLE_PROTO | NLA_F_NESTED, proto))


def request(s, mtype, flags, body, seq):
    msg = struct.pack("=BBH", socket.AF_INET, 0, 0) + body      # struct nfgenmsg
    s.send(struct.pack("=IHHII", 16 + len(msg), mtype, flags, seq, 0) + msg)
    while True:
        data = s.recv(65536)
        length, t, _, rseq, _ = struct.unpack_from("=IHHII", data)
        if rseq != seq:
            continue
        if t == NLMSG_ERROR:
            err = struct.unpack_from("=i", data, 16)[0]
            if err:
                raise OSError(-err, "ctnetlink: " + os.strerror(-err))
            return None
        return data[:length]


def labels_of(reply):
    off = 20                                                    # nlmsghdr + nfgenmsg
    while off + 4 <= len(reply):
        alen, t = struct.unpack_from("=HH", reply, off)
        if alen < 4:
            break
        if t & 0x3FFF == CTA_LABELS:
            return bytes(reply[off + 4:off + alen]).ljust(16, b"\0")[:16]
        off += (alen + 3) & ~3
    return b"\0" * 16


def main():
    op, src, sport, dst, dport = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.settimeout(2)
    t = tuple_attr(src, sport, dst, dport)
    cur = labels_of(request(s, CT_GET, NLM_F_REQUEST, t, 1))
    if op == "get":
        print(cur.hex())
        return 0
    bit = int(sys.argv[6])
    mask = bytearray(16)
    mask[bit // 8] = 1 << (bit % 8)
    new = bytearray(cur)
    new[bit // 8] ^= 1 << (bit % 8)
    # The kernel keeps the bits outside the mask and XORs in what is sent (nf_connlabels_replace):
    # send only the masked bits.
    value = bytes(n & m for n, m in zip(new, mask))
    request(s, CT_NEW, NLM_F_REQUEST | NLM_F_ACK, t + attr(CTA_LABELS, value) + attr(CTA_LABELS_MASK, bytes(mask)), 2)
    after = labels_of(request(s, CT_GET, NLM_F_REQUEST, t, 3))
    print("%s -> %s" % (cur.hex(), after.hex()))
    return 0 if after == bytes(new) else 1


if __name__ == "__main__":
    sys.exit(main())
