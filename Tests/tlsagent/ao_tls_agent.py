#!/usr/bin/python3
"""An example agent pair: TCP-AO keys from TLS (opportunistic TCP-AO with TLS).

usage: ao_tls_agent.py server --listen ADDR --port PORT --cert CERT.pem --key KEY.pem --control SOCK [options]
       ao_tls_agent.py client --connect ADDR --port PORT --pin CERT.pem --control SOCK [options]
options: --key-id N (100)  --algorithm ALG (hmac-sha-256-128)  --seconds N (5, client)
         --move-timeout S (20)  --write-key FILE (test only)

What it shows. A TLS 1.3 client and server talk through tcpaod (host mode on each end), whose
key chain for the other host holds a default MKT (the same for every connection of that peer).
The TCP connection starts, and the TLS handshake runs, under the default MKT. After the
handshake each end derives 32 bytes with the TLS exporter (RFC 8446 7.5, label
"EXPORTER-tcp-ao-example", no context) and gives them to its own tcpaod, over its control
socket, as an MKT for this one connection (`key-add` with `connection`: the socket's own 4-tuple)
with a fresh KeyID. tcpaod then advertises the new RecvID as RNextKeyID, moves to the new MKT once
the peer advertises it too (RFC 5925 7.5), and from then on accepts only the connection's MKT on
it. The agent waits for that move (tcpaod's `flows`: KeyID in use and last received KeyID both
the new one), then exchanges application data (a numbered line every 100 ms, echoed and checked)
and prints a one-line JSON summary: moved or not, the KeyIDs before and after, the echoes.
Whoever knows only the default MKT (every host that shares that peer's key chain, a leaked
configuration file) can no longer inject into this connection; only the two TLS endpoints know
the exported secret.

What it is not. An example, not a product: one connection per run, the server serves once; no
rekeying after the first move; no fallback policy (if the move does not happen the agent says so
and exits non-zero; a real deployment decides whether the default MKT is acceptable); the
certificate is self-signed and pinned by file; the KeyID is fixed by the command line; the agent
must run as a user who may use tcpaod's control socket (root); it does not remove the key at the
end (tcpaod forgets a connection's MKTs with the connection). TLS itself already protects the
application's bytes; what the exported MKT adds is TCP-level protection (RSTs, injected
segments) that a holder of the default MKT cannot forge.

The algorithm. Give the connection's MKT the same MAC length as the default MKT the connection
started with (hmac-sha-256-128 on both here): tcpaod lowers the MSS at the handshake for the
longest TCP-AO option of the peer's chain, so a running connection cannot take a key whose option
is longer; tcpaod refuses such a connection MKT with the reason (RFC 5925 7.6).

Needs pyOpenSSL (Debian: python3-openssl, for /usr/bin/python3): Python's ssl module has no TLS
exporter. The secret is never printed or logged; --write-key (for the tests, which check the
capture independently) writes it in hex to a new file of mode 0600.
"""
import argparse
import hashlib
import ipaddress
import json
import os
import select
import socket
import sys
import time

from OpenSSL import SSL, crypto

LABEL = b"EXPORTER-tcp-ao-example"
MKT_BYTES = 32


class AgentError(Exception):
    pass


# ---- tcpaod's control socket (one JSON object per line each way) -----------------------------

def control(path, request, timeout=10):
    """One request, one answer. Raises AgentError with tcpaod's own code and error text."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall((json.dumps(dict({"version": 1}, **request)) + "\n").encode())
        line = s.makefile("rb").readline()
    except OSError as e:
        raise AgentError("tcpaod's control socket %s: %s" % (path, e))
    finally:
        s.close()
    if not line:
        raise AgentError("tcpaod closed its control socket %s without an answer to %s" % (path, request["command"]))
    answer = json.loads(line)
    if answer.get("ok") is not True:
        raise AgentError("tcpaod refused %s (%s): %s" % (request["command"], answer.get("code"), answer.get("error")))
    return answer


def four_tuple(sock):
    """The connection as tcpaod names it: "local" is this host's end (getsockname), "remote"
    the peer's (getpeername)."""
    loc, rem = sock.getsockname(), sock.getpeername()
    return {"local": loc[0], "local_port": loc[1], "remote": rem[0], "remote_port": rem[1]}


def same_addr(a, b):
    return ipaddress.ip_address(a) == ipaddress.ip_address(b)


def find_flow(path, conn):
    for f in control(path, {"command": "flows"})["flows"]:
        if (f["local_port"] == conn["local_port"] and f["remote_port"] == conn["remote_port"]
                and same_addr(f["local"], conn["local"]) and same_addr(f["remote"], conn["remote"])):
            return f
    return None


def key_ids(flow):
    return {"send": flow.get("key_id"), "rnext": flow.get("rnext_key_id"), "last_recv": flow.get("last_recv_key_id")} if flow else None


# ---- the MKT from TLS -------------------------------------------------------------------------

def derive_mkt(conn):
    # RFC 8446 7.5 (TLS 1.3's exporter, the interface of RFC 5705): both ends of this TLS
    # connection get the same bytes, and only they do (they come from the handshake's secrets).
    # No context: the label alone names this use, and in TLS 1.3 an absent context and an empty
    # one give the same output, so there is nothing for the two ends to agree on besides the label.
    mkt = conn.export_keying_material(LABEL, MKT_BYTES)
    if len(mkt) != MKT_BYTES:
        raise AgentError("the TLS exporter gave %d bytes" % len(mkt))
    return mkt


def mkt_fingerprint(mkt):
    """A name for the MKT that both ends can compare in their summaries; not the key."""
    return hashlib.sha256(b"tcp-ao-example fingerprint\0" + mkt).hexdigest()[:16]


def write_key(path, mkt):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(mkt.hex() + "\n")


def install(args, conn, mkt):
    # The KeyID: the same SendID and RecvID on both ends (each end's SendID is the other's
    # RecvID). It must differ from every KeyID of the peer's default key chain: RFC 5925 3.1
    # wants the MKTs of one connection told apart by their IDs, and a segment with the default
    # MKT's KeyID must never be verified with this one (or the other way round).
    return control(args.control, {"command": "key-add", "connection": conn, "send_id": args.key_id,
                                  "recv_id": args.key_id, "algorithm": args.algorithm, "secret_hex": mkt.hex()})


class Mover:
    """Waits for tcpaod to have moved this connection to its own MKT: it sends with it (KeyID ==
    SendID) and the peer's last segment verified with it (last received KeyID == RecvID). Needs
    traffic both ways meanwhile (the peer's RNextKeyID tells tcpaod to switch)."""

    def __init__(self, args, conn, summary):
        self.args, self.conn, self.summary = args, conn, summary
        self.deadline = time.monotonic() + args.move_timeout
        self.t0 = time.monotonic()
        self.moved_after = None
        self.last = None

    def poll(self):
        if self.moved_after is not None:
            return True
        f = find_flow(self.args.control, self.conn)
        self.last = key_ids(f)
        if f and f["key_id"] == self.args.key_id and f["last_recv_key_id"] == self.args.key_id:
            self.moved_after = time.monotonic() - self.t0
            self.summary.update(moved=True, moved_after_s=round(self.moved_after, 3), key_ids_after=self.last)
            return True
        if time.monotonic() > self.deadline:
            if f is None:
                raise AgentError("tcpaod (%s) lists no flow %s:%d -> %s:%d" % (self.args.control, self.conn["local"], self.conn["local_port"],
                                                                             self.conn["remote"], self.conn["remote_port"]))
            raise AgentError("the connection did not move to its own MKT within %g s: tcpaod sends with KeyID %s (want %d), "
                             "last received KeyID %s (want %d), advertises RNextKeyID %s; is the peer's agent running, "
                             "and did its tcpaod accept the key?" % (self.args.move_timeout, f["key_id"], self.args.key_id,
                                                                     f["last_recv_key_id"], self.args.key_id, f["rnext_key_id"]))
        return False


# ---- TLS 1.3 over a plain socket --------------------------------------------------------------

def context(server, args):
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET)
    if server:
        ctx.use_certificate_file(args.cert)
        ctx.use_privatekey_file(args.key)
        ctx.check_privatekey()
    else:
        # The pinned certificate is the only trust anchor, and the peer's must be exactly it.
        ctx.load_verify_locations(args.pin)
        ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))
    return ctx


def pinned_digest(path):
    with open(path, "rb") as f:
        return crypto.load_certificate(crypto.FILETYPE_PEM, f.read()).digest("sha256")


class Lines:
    """Line-oriented reads over a blocking pyOpenSSL connection, with a timeout."""

    def __init__(self, tls, sock):
        self.tls, self.sock, self.buf = tls, sock, b""

    def readline(self, timeout):
        """A line, b"" at the end of the stream, None when nothing came within `timeout`."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            if self.tls.pending() == 0:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                    return None
            try:
                chunk = self.tls.recv(4096)
            except SSL.WantReadError:
                continue
            except SSL.ZeroReturnError:
                chunk = b""
            except SSL.SysCallError as e:
                if e.args and e.args[0] == -1:  # EOF without close_notify
                    chunk = b""
                else:
                    raise
            if not chunk:
                rest, self.buf = self.buf, b""
                return rest
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"


def handshake(tls):
    tls.do_handshake()
    if tls.get_protocol_version_name() != "TLSv1.3":
        raise AgentError("negotiated %s, not TLS 1.3" % tls.get_protocol_version_name())


def after_handshake(args, tls, sock, summary):
    conn = four_tuple(sock)
    summary["connection"] = conn
    summary["tls"] = {"version": tls.get_protocol_version_name(), "cipher": tls.get_cipher_name()}
    mkt = derive_mkt(tls)
    summary["mkt_fingerprint"] = mkt_fingerprint(mkt)
    if args.write_key:
        write_key(args.write_key, mkt)
    summary["key_ids_before"] = key_ids(find_flow(args.control, conn))
    install(args, conn, mkt)
    summary["installed"] = True
    return Mover(args, conn, summary)


# ---- the two roles ----------------------------------------------------------------------------

def run_server(args, summary):
    fam = socket.AF_INET6 if ":" in args.listen else socket.AF_INET
    ls = socket.socket(fam, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((args.listen, args.port))
    ls.listen(1)
    print("listening on %s port %d" % (args.listen, args.port), file=sys.stderr, flush=True)
    ls.settimeout(args.accept_timeout)
    try:
        sock, _ = ls.accept()
    except socket.timeout:
        raise AgentError("no client within %g s" % args.accept_timeout)
    ls.close()
    sock.settimeout(None)
    tls = SSL.Connection(context(True, args), sock)
    tls.set_accept_state()
    handshake(tls)
    mover = after_handshake(args, tls, sock, summary)
    lines, echoed = Lines(tls, sock), 0
    idle_limit = args.move_timeout + 30
    last_line = time.monotonic()
    while True:
        line = lines.readline(0.1)
        if line == b"":
            break
        if line is not None:
            tls.sendall(line)
            echoed += 1
            last_line = time.monotonic()
        elif time.monotonic() - last_line > idle_limit:
            raise AgentError("the client sent nothing for %g s" % idle_limit)
        if mover.moved_after is None:
            mover.poll()
    summary["echoed"] = echoed
    finish(args, mover, summary)
    try:
        tls.shutdown()
    except SSL.Error:
        pass
    sock.close()


def run_client(args, summary):
    sock = socket.create_connection((args.connect, args.port), timeout=10)
    sock.settimeout(None)
    tls = SSL.Connection(context(False, args), sock)
    tls.set_connect_state()
    handshake(tls)
    if tls.get_peer_certificate().digest("sha256") != pinned_digest(args.pin):
        raise AgentError("the server's certificate is not the pinned one")
    mover = after_handshake(args, tls, sock, summary)
    lines = Lines(tls, sock)
    n = ok_before = ok_after = 0
    end = None

    def ping():
        nonlocal n
        n += 1
        msg = ("line %d\n" % n).encode()
        tls.sendall(msg)
        got = lines.readline(10)
        if got != msg:
            raise AgentError("echo %d: expected %r, got %r" % (n, msg, got))
    # Lines go back and forth while tcpaod moves the connection (the move needs segments both
    # ways); then for --seconds more once both ends use the connection's MKT.
    while end is None or time.monotonic() < end:
        ping()
        if end is None:
            ok_before += 1
            if mover.poll():
                end = time.monotonic() + args.seconds
        else:
            ok_after += 1
        time.sleep(0.1)
    summary["echoes_while_moving"], summary["echoes_after_move"] = ok_before, ok_after
    summary["echoes_ok"] = True
    finish(args, mover, summary)
    tls.shutdown()
    sock.close()


def finish(args, mover, summary):
    if mover.moved_after is None:
        mover.poll()  # raises with what did not happen once past the deadline
        raise AgentError("the connection ended before it moved to its own MKT (KeyIDs %s)" % mover.last)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="role", required=True)
    for role in ("server", "client"):
        s = sub.add_parser(role)
        if role == "server":
            s.add_argument("--listen", required=True)
            s.add_argument("--cert", required=True)
            s.add_argument("--key", required=True)
            s.add_argument("--accept-timeout", type=float, default=60)
        else:
            s.add_argument("--connect", required=True)
            s.add_argument("--pin", required=True, help="the server's certificate (PEM)")
            s.add_argument("--seconds", type=float, default=5, help="echo this long after the move")
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--control", default="/run/tcpaod/control.sock")
        s.add_argument("--key-id", type=int, default=100, help="SendID = RecvID of the connection's MKT (0..255, "
                       "not one of the default key chain's)")
        s.add_argument("--algorithm", default="hmac-sha-256-128", help="of the connection's MKT; give it the MAC length "
                       "of the default MKT (see the note at the top)")
        s.add_argument("--move-timeout", type=float, default=20)
        s.add_argument("--write-key", help="test only: write the derived MKT (hex) to this new 0600 file")
    args = p.parse_args()
    if not 0 <= args.key_id <= 255:
        p.error("--key-id must be 0..255")
    summary = {"role": args.role, "moved": False, "installed": False}
    rc = 0
    try:
        (run_server if args.role == "server" else run_client)(args, summary)
    except (AgentError, SSL.Error, OSError) as e:
        summary["error"] = "%s%s" % ("" if isinstance(e, AgentError) else type(e).__name__ + ": ", e)
        rc = 1
    if args.role == "client":
        summary.setdefault("echoes_ok", False)
    print(json.dumps(summary, sort_keys=True), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
