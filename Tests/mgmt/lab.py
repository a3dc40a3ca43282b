#!/usr/bin/env python3
"""Real NETCONF and gNMI test equipment for tcpaod (used by Tests/e2e/mgmt.py and the demo).

What it is: a "device" made of real, unmodified management software - yuma123's netconfd behind
OpenSSH's sshd on port 830 (RFC 6242), and a small gNMI target (gnmi_target.py, grpcio over real
TLS) on port 9339 - and clients that drive them with ncclient and pygnmi, with bounded waits and
short, checkable output. Everything runs in the network namespaces the caller made; nothing is
started in the host's namespace and nothing is installed or left outside the work directory
(netconfd gets a private, empty /root in its own mount namespace, since it insists on creating
~/.yuma; sshd needs /run/sshd, which is created if missing, as the openssh-server package does).
What it is not: a router. The YANG module (tcpaod-lab.yang) and the gNMI data (the namespace's
interface counters, values stored by Set) exist only to be read, written and streamed. NETCONF
logs in as root with an ed25519 key made for each run (sshd accepts that key only, on the device's
addresses only); netconfd's --superuser is root, so there is no access control to test.

Library: VENV / PYTHON (the venv made by `scripts/deps mgmt`), device_cmd(), client_cmd().
CLI (run with the venv's python; as root):
  lab.py device --workdir DIR --addr 192.0.2.2 --addr 2001:db8:1::2
        inside the device's namespace (ip netns exec): makes a CA and a server certificate (SANs:
        the addresses), an ssh host key and a client key, starts netconfd, sshd and the gNMI
        target, waits until 830 and 9339 listen on every address, prints "ready {json}" and stays
        in the foreground until SIGTERM/SIGINT, then stops them all. Exit 1 with a message if
        something does not start, or if a child dies while it runs.
  lab.py netconf --host H --workdir DIR [--idle S [--idle-until FILE]] [--value V] [--timeout T]
        hello, get-config, edit-config (tcpaod-lab hostname and an interface description), get
        (checks the value), optionally idles S seconds then get and edit-config again on the
        same session; one line per step, then a JSON line.
  lab.py gnmi-check --host H --ca DIR/ca.pem [--timeout T]
        Capabilities, Get (interface counters), Set then Get (/system/config/hostname), a ONCE
        and a POLL subscription; one line per step, then a JSON line.
  lab.py gnmi-subscribe --host H --ca DIR/ca.pem --seconds N [--interval 1] [--max-gap 2]
                        [--until FILE] [--report FILE] [--verbose]
        a STREAM/SAMPLE subscription to every interface's counters for N seconds; records each
        update's arrival and timestamp (--until: ends early once that file exists); FILE (JSON) is rewritten after every update, so callers
        can wait for the stream to run; fails if a gap between updates exceeds --max-gap, if
        updates were missed (gaps in the target's timestamps), or if the stream broke.
Every client has a hard deadline (a watchdog ends it with exit 3 and a message): nothing hangs.
Exit status: 0 ok, 1 a check failed, 2 usage, 3 deadline.
"""
import argparse
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.environ.get("TCPAOD_MGMT_VENV", "/var/cache/tcpaod-mgmt/venv")
PYTHON = os.path.join(VENV, "bin", "python")
NETCONF_PORT, GNMI_PORT = 830, 9339
LAB_NS = "urn:example:tcpaod-lab"
COUNTERS_PATH = "/interfaces/interface[name=*]/state/counters"


# ---- library (standard library only: importable from the system python) ----------------------

def python():
    if not os.access(PYTHON, os.X_OK):
        raise RuntimeError("no management venv at %s: run scripts/deps mgmt" % VENV)
    return PYTHON


def device_cmd(workdir, addrs):
    return [python(), os.path.join(HERE, "lab.py"), "device", "--workdir", workdir] + \
        [x for a in addrs for x in ("--addr", a)]


def client_cmd(sub, *args):
    return [python(), os.path.join(HERE, "lab.py"), sub] + [str(a) for a in args]


def say(msg):
    print(msg, flush=True)


def fail(msg, code=1):
    print("lab: %s" % msg, file=sys.stderr, flush=True)
    sys.exit(code)


def watchdog(seconds, what):
    """Ends the process after `seconds`, whatever it is blocked in (a hung connect, a stream that
    stopped): the JSON line says so."""
    def fire():
        print("%s: DEADLINE: no result after %.0f s" % (what, seconds), flush=True)
        print(json.dumps({"ok": False, "error": "deadline of %.0f s exceeded" % seconds}), flush=True)
        os._exit(3)
    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()
    return t


# ---- the device ---------------------------------------------------------------------------------

def make_certs(d, addrs):
    """A CA and a server certificate for the addresses (EC P-256, valid from an hour ago for a
    week), written as ca.pem, server.pem, server.key."""
    import datetime
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    now = datetime.datetime.now(datetime.timezone.utc)
    nb, na = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tcpaod lab CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(nb).not_valid_after(na)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("lab-device")] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addrs]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lab-device")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(nb).not_valid_after(na)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM

    def write(name, data, mode=0o644):
        path = os.path.join(d, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
    write("ca.pem", ca.public_bytes(pem))
    write("server.pem", cert.public_bytes(pem))
    write("server.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), 0o600)


def listening(port, addrs):
    out = subprocess.run(["ss", "-Hltn", "sport = :%d" % port], capture_output=True, text=True).stdout
    have = set(l.split()[3] for l in out.splitlines() if len(l.split()) > 3)
    # grpc binds an IPv4 address with an IPv6 socket: [::ffff:192.0.2.2]:9339
    return all(("[%s]:%d" % (a, port) in have) if ":" in a else
               ("%s:%d" % (a, port) in have or "[::ffff:%s]:%d" % (a, port) in have) for a in addrs)


def descendants(pid):
    kids = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open("/proc/%s/stat" % p) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(p))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def stop_all(children):
    """SIGTERM each child and its descendants (by pid), SIGKILL what is left after 5 s."""
    pids = []
    for name, p in children:
        if p.poll() is None:
            pids += [p.pid] + descendants(p.pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + 5
    for name, p in children:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for name, p in children:
        try:
            p.wait(2)
        except subprocess.TimeoutExpired:
            pass


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def cmd_device(a):
    d = os.path.abspath(a.workdir)
    os.makedirs(d, mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    for tool in ("/usr/sbin/netconfd", "/usr/sbin/netconf-subsystem", "/usr/sbin/sshd", "ssh-keygen", "unshare", "ss"):
        if not shutil.which(tool):
            fail("%s is not installed: run scripts/deps mgmt" % tool)
    addrs = a.addr
    t0 = time.time()
    make_certs(d, addrs)
    for name in ("ssh_host_ed25519_key", "client_ed25519"):
        for suffix in ("", ".pub"):
            if os.path.exists(os.path.join(d, name + suffix)):
                os.unlink(os.path.join(d, name + suffix))
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tcpaod-lab", "-f", os.path.join(d, name)], check=True)
    shutil.copy(os.path.join(d, "client_ed25519.pub"), os.path.join(d, "authorized_keys"))
    sock = os.path.join(d, "ncxserver.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    with open(os.path.join(d, "sshd_config"), "w") as f:
        f.write("# sshd for tcpaod's NETCONF lab device (Tests/mgmt/lab.py): port 830, the device's\n"
                "# addresses only, root with the key made for this run only.\n"
                "Port %d\n%s"
                "HostKey %s/ssh_host_ed25519_key\nPidFile %s/sshd.pid\nAuthorizedKeysFile %s/authorized_keys\n"
                "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPrintMotd no\n"
                "AllowTcpForwarding no\nX11Forwarding no\nAllowAgentForwarding no\nPermitTunnel no\n"
                "LogLevel VERBOSE\n"
                "Subsystem netconf /usr/sbin/netconf-subsystem --ncxserver-sockname=%d@%s\n"
                % (NETCONF_PORT, "".join("ListenAddress %s\n" % x for x in addrs), d, d, d, NETCONF_PORT, sock))
    with open(os.path.join(d, "netconfd.conf"), "w") as f:
        f.write("# empty: every netconfd parameter is on its command line (Tests/mgmt/lab.py)\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    for port in (NETCONF_PORT, GNMI_PORT):
        busy = subprocess.run(["ss", "-Hltn", "sport = :%d" % port], capture_output=True, text=True).stdout.strip()
        if busy:
            fail("port %d is already in use in this network namespace:\n%s" % (port, busy))

    children = []
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())

    def start(name, args, **kw):
        out = open(os.path.join(d, name + ".out"), "w")
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
        children.append((name, p))
        return p

    def wait(what, cond, p, log, timeout=30, bad=None):
        deadline = time.time() + timeout
        while time.time() < deadline and not stopping.is_set():
            if cond():
                return
            if bad and re.search(bad, tail(log, 50)):
                stop_all(children)
                fail("%s failed at start:\n%s" % (what, tail(log)))
            if p.poll() is not None:
                stop_all(children)
                fail("%s exited (%s) at start:\n%s" % (what, p.returncode, tail(log) or tail(os.path.join(d, what + ".out"))))
            time.sleep(0.05)
        stop_all(children)
        fail("%s did not start within %d s:\n%s" % (what, timeout, tail(log)) if not stopping.is_set() else "stopped while starting")

    def unix_ok(path):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return True
        except OSError:
            return False
        finally:
            s.close()

    # netconfd: its own socket; a private empty home (tmpfs over root's home in a mount namespace
    # of its own) because it creates ~/.yuma from the password database whatever $HOME says.
    home = pwd.getpwuid(0).pw_dir
    if (d + "/").startswith(home.rstrip("/") + "/"):
        stop_all(children)
        fail("the work directory must not be under %s (netconfd gets a private, empty one)" % home)
    nc_log = os.path.join(d, "netconfd.log")
    netconfd = ["/usr/sbin/netconfd", "--config=%s/netconfd.conf" % d, "--target=running", "--superuser=root",
                "--port=%d" % NETCONF_PORT, "--no-startup", "--idle-timeout=0", "--ncxserver-sockname=%s" % sock,
                "--module=%s" % os.path.join(HERE, "tcpaod-lab.yang"), "--log=%s" % nc_log, "--log-level=info"]
    p = start("netconfd", ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           'mount -t tmpfs -o mode=0700,size=8m tcpaod-lab "$0" && exec "$@"', home] + netconfd,
              env=dict(os.environ, HOME=home))
    wait("netconfd", lambda: unix_ok(sock), p, nc_log)

    cfg = os.path.join(d, "sshd_config")
    r = subprocess.run(["/usr/sbin/sshd", "-t", "-f", cfg], capture_output=True, text=True)
    if r.returncode != 0:
        stop_all(children)
        fail("sshd rejects %s: %s" % (cfg, r.stderr.strip()))
    sshd_log = os.path.join(d, "sshd.log")
    p = start("sshd", ["/usr/sbin/sshd", "-D", "-f", cfg, "-E", sshd_log])
    wait("sshd", lambda: listening(NETCONF_PORT, addrs), p, sshd_log, bad=r"Bind to port \d+ on \S+ failed")

    gnmi_log = os.path.join(d, "gnmi.out")
    p = start("gnmi", [sys.executable, "-u", os.path.join(HERE, "gnmi_target.py"), "--port", str(GNMI_PORT),
                       "--cert", os.path.join(d, "server.pem"), "--key", os.path.join(d, "server.key")] +
              [x for ad in addrs for x in ("--addr", ad)])
    wait("gnmi", lambda: "listening " in tail(gnmi_log) and listening(GNMI_PORT, addrs), p, gnmi_log)

    info = {"workdir": d, "addrs": addrs, "netconf": NETCONF_PORT, "gnmi": GNMI_PORT,
            "ca": os.path.join(d, "ca.pem"), "client_key": os.path.join(d, "client_ed25519"),
            "pids": {n: p.pid for n, p in children}, "seconds": round(time.time() - t0, 2)}
    say("ready %s" % json.dumps(info))
    died = None
    while not stopping.wait(0.2):
        died = next(((n, p.returncode) for n, p in children if p.poll() is not None), None)
        if died:
            break
    stop_all(children)
    if os.path.exists(sock):
        os.unlink(sock)
    if died:
        fail("%s died (exit %s); stopped the others:\n%s" % (died[0], died[1], tail(os.path.join(d, died[0] + ".out"))))
    say("stopped")
    return 0


# ---- NETCONF client -------------------------------------------------------------------------

def cmd_netconf(a):
    watchdog(a.deadline or (3 * a.timeout + a.idle + 60), "netconf")
    import logging
    logging.basicConfig(level=logging.CRITICAL)
    from ncclient import manager
    from ncclient.xml_ import to_ele
    res = {"ok": False, "host": a.host, "port": a.port, "steps": []}
    value = a.value or "lab-%d" % os.getpid()
    t_start = time.time()
    step = ["connect"]
    flt = ("subtree", '<lab xmlns="%s"/>' % LAB_NS)

    def hostname(reply):
        got = reply.data_ele.xpath("//lab:lab/lab:hostname/text()", namespaces={"lab": LAB_NS})
        return got[0] if got else None

    def edit(v):
        cfg = ('<config><lab xmlns="%s"><hostname>%s</hostname><description>set over NETCONF at %s</description>'
               '<interface><name>lab0</name><description>edited by lab.py (%s)</description></interface></lab></config>'
               % (LAB_NS, v, time.strftime("%H:%M:%S"), v))
        m.edit_config(target="running", config=to_ele(cfg))

    def done(what, t0):
        res["steps"].append(what)
        say("netconf: %-12s ok (%.2f s)%s" % (step[0], time.time() - t0, ": " + what if what else ""))

    m = None
    try:
        hostkey = None
        if a.workdir:
            with open(os.path.join(a.workdir, "ssh_host_ed25519_key.pub")) as f:
                hostkey = f.read().split()[1]
        key = a.key or os.path.join(a.workdir, "client_ed25519")
        t0 = time.time()
        try:
            sock = socket.create_connection((a.host, a.port), timeout=a.timeout)
        except OSError as e:
            raise RuntimeError("could not connect to %s port %d: no TCP connection within %d s (%s)"
                               % (a.host, a.port, a.timeout, e or "timed out"))
        try:
            m = manager.connect(host=a.host, port=a.port, sock=sock, username=a.user, key_filename=key,
                                hostkey_verify=hostkey is not None, hostkey_b64=hostkey,
                                allow_agent=False, look_for_keys=False, timeout=a.timeout)
        except Exception as e:
            raise RuntimeError("could not connect to %s port %d: TCP connects, but SSH/NETCONF fails: %s: %s"
                               % (a.host, a.port, type(e).__name__, e or "timed out"))
        caps = list(m.server_capabilities)
        lab = any(LAB_NS in c for c in caps)
        res.update(session_id=m.session_id, capabilities=len(caps), lab_module=lab)
        done("hello: session-id %s, %d server capabilities%s" % (m.session_id, len(caps), ", tcpaod-lab announced" if lab else ""), t0)
        if not lab:
            raise RuntimeError("the server does not announce the tcpaod-lab module")
        step[0] = "get-config"
        t0 = time.time()
        r = m.get_config(source="running", filter=flt)
        done("%d bytes, hostname %s" % (len(r.data_xml), hostname(r) or "(not set)"), t0)
        step[0] = "edit-config"
        t0 = time.time()
        edit(value)
        done("hostname := %s" % value, t0)
        step[0] = "get"
        t0 = time.time()
        got = hostname(m.get(filter=flt))
        if got != value:
            raise RuntimeError("get returned hostname %r, expected %r" % (got, value))
        done("hostname is %s" % got, t0)
        if a.idle > 0:
            step[0] = "idle"
            t0 = time.time()
            if a.idle_until:
                say("netconf: idle         until %s appears (at most %d s) on session-id %s" % (a.idle_until, a.idle, m.session_id))
                while time.time() - t0 < a.idle and not os.path.exists(a.idle_until):
                    time.sleep(0.1)
            else:
                say("netconf: idle         %d s on session-id %s" % (a.idle, m.session_id))
                time.sleep(a.idle)
            res["idle"] = round(time.time() - t0, 1)
            step[0] = "get-after-idle"
            t0 = time.time()
            got = hostname(m.get_config(source="running", filter=flt))
            if got != value:
                raise RuntimeError("after the idle time get-config returned hostname %r, expected %r" % (got, value))
            done("same session-id %s, hostname still %s" % (m.session_id, got), t0)
            step[0] = "edit-after-idle"
            t0 = time.time()
            edit(value + "-2")
            got = hostname(m.get(filter=flt))
            if got != value + "-2":
                raise RuntimeError("after the idle time get returned hostname %r, expected %r" % (got, value + "-2"))
            done("hostname := %s, read back" % got, t0)
        step[0] = "close"
        t0 = time.time()
        m.close_session()
        done("", t0)
        res["ok"] = True
    except Exception as e:
        res["error"] = "%s: %s" % (step[0], e)
        say("netconf: FAILED at %s: %s" % (step[0], e))
    res["seconds"] = round(time.time() - t_start, 2)
    say(json.dumps(res))
    return 0 if res["ok"] else 1


# ---- gNMI clients ---------------------------------------------------------------------------

def gnmi_client(a):
    import logging
    logging.basicConfig(level=logging.CRITICAL)
    from pygnmi.client import gNMIclient
    host = a.host if ":" not in a.host or a.host.startswith("[") else "[%s]" % a.host  # pygnmi wants [v6]
    c = gNMIclient(target=(host, a.port), username="lab", password="lab", path_cert=a.ca, gnmi_timeout=a.timeout)
    t0 = time.time()
    try:
        c.connect()
    except Exception as e:
        # pygnmi waits twice (the second time with other TLS ciphers); say which layer failed
        try:
            socket.create_connection((a.host, a.port), timeout=3).close()
            why = "TCP connects, but no TLS/gRPC channel (certificate?)"
        except OSError as te:
            why = "no TCP connection (%s)" % (te or "timed out")
        raise RuntimeError("could not connect to %s port %d within %d s: %s (%s%s)"
                           % (a.host, a.port, 2 * a.timeout, why, type(e).__name__, ": %s" % e if str(e) else ""))
    say("gnmi: %-14s ok (%.2f s): TLS verified with %s" % ("connect", time.time() - t0, os.path.basename(a.ca)))
    return c, time.time() - t0


def counters(update_list):
    """{path: value} of the counter leaves in a pygnmi update list."""
    return {u["path"].lstrip("/"): u["val"] for u in update_list if "/counters/" in (u.get("path") or "")}


def cmd_gnmi_check(a):
    watchdog(a.deadline or (2 * a.timeout + 60), "gnmi")
    res = {"ok": False, "host": a.host, "port": a.port, "steps": []}
    step = ["connect"]
    t_start = time.time()

    def done(what, t0):
        res["steps"].append("%s: %s" % (step[0], what))
        say("gnmi: %-14s ok (%.2f s): %s" % (step[0], time.time() - t0, what))

    def sub_rounds(sub, n, what):
        out = []
        for _ in range(n):
            try:
                out.append(sub.get_update(timeout=a.timeout))
            except TimeoutError:
                raise RuntimeError("%s: no update within %d s (%s)" % (what, a.timeout, sub.error or "stream open"))
        return out

    c = None
    try:
        c, secs = gnmi_client(a)
        res["connect_seconds"] = round(secs, 2)
        step[0] = "capabilities"
        t0 = time.time()
        caps = c.capabilities()
        if not caps or caps.get("gnmi_version") != "0.8.0" or "json" not in caps.get("supported_encodings", []):
            raise RuntimeError("unexpected capabilities: %s" % caps)
        done("gNMI %s, %d models, encodings %s" % (caps["gnmi_version"], len(caps.get("supported_models", [])),
                                                   ",".join(caps["supported_encodings"])), t0)
        step[0] = "get"
        t0 = time.time()
        r = c.get(path=[COUNTERS_PATH])
        got = counters(r["notification"][0]["update"])
        ifaces = sorted(set(re.search(r"name=([^\]]+)", p).group(1) for p in got))
        moving = {p: v for p, v in got.items() if p.endswith("in-octets") and v > 0}
        if not got or not all(isinstance(v, int) for v in got.values()) or not moving:
            raise RuntimeError("no counters (or none moving) in %s" % r)
        done("%d counters of interfaces %s; in-octets %s" % (len(got), ",".join(ifaces),
                                                             ", ".join("%s" % v for v in moving.values())), t0)
        step[0] = "set"
        t0 = time.time()
        value = a.value or "gnmi-%d" % os.getpid()
        r = c.set(update=[("/system/config/hostname", value)])
        ops = [x.get("op") for x in r.get("response", [])]
        if ops != ["UPDATE"]:
            raise RuntimeError("Set answered %s" % r)
        done("/system/config/hostname := %s" % value, t0)
        step[0] = "get-after-set"
        t0 = time.time()
        r = c.get(path=["/system/config/hostname"])
        got = r["notification"][0]["update"][0]["val"]
        if got != value:
            raise RuntimeError("Get returned %r, expected %r" % (got, value))
        done("/system/config/hostname is %s" % got, t0)
        sub_req = {"subscription": [{"path": COUNTERS_PATH}], "encoding": "json"}
        step[0] = "subscribe-once"
        t0 = time.time()
        sub = c.subscribe2(subscribe=dict(sub_req, mode="once"))
        n = 0
        while True:
            u = sub_rounds(sub, 1, "ONCE")[0]
            if "sync_response" in u:
                break
            n += len(u["update"]["update"])
        sub.close()
        if not n:
            raise RuntimeError("ONCE delivered no values")
        done("%d values, then sync_response" % n, t0)
        step[0] = "subscribe-poll"
        t0 = time.time()
        sub = c.subscribe2(subscribe=dict(sub_req, mode="poll"))
        rounds = sub_rounds(sub, 3, "POLL")  # the initial round, then one per Poll
        sub.close()
        stamps = [r["update"]["timestamp"] for r in rounds]
        octets = [sum(v for p, v in counters(r["update"]["update"]).items() if p.endswith("out-octets")) for r in rounds]
        if stamps != sorted(set(stamps)) or octets != sorted(octets):
            raise RuntimeError("POLL rounds not fresh: timestamps %s, out-octets %s" % (stamps, octets))
        done("%d rounds, each fresh (out-octets %s)" % (len(rounds), " -> ".join(map(str, octets))), t0)
        res["ok"] = True
    except Exception as e:
        res["error"] = "%s: %s" % (step[0], e)
        say("gnmi: FAILED at %s: %s" % (step[0], e))
    finally:
        if c is not None:
            c.close()
    res["seconds"] = round(time.time() - t_start, 2)
    say(json.dumps(res))
    return 0 if res["ok"] else 1


def cmd_gnmi_subscribe(a):
    watchdog(a.deadline or (a.seconds + 2 * a.timeout + 60), "gnmi-subscribe")
    res = {"ok": False, "host": a.host, "port": a.port, "interval": a.interval, "max_gap_allowed": a.max_gap,
           "updates": 0, "max_gap": 0.0, "late": 0, "missed": 0, "running": False}

    def report():
        if a.report:
            tmp = a.report + ".tmp"
            with open(tmp, "w") as f:
                json.dump(res, f)
            os.rename(tmp, a.report)

    report()
    c = sub = None
    t_start = time.time()
    try:
        c, secs = gnmi_client(a)
        res["connect_seconds"] = round(secs, 2)
        req = {"mode": "stream", "encoding": "json",
               "subscription": [{"path": COUNTERS_PATH, "mode": "sample", "sample_interval": int(a.interval * 1e9)}]}
        sub = c.subscribe2(subscribe=req)
        try:
            first = sub.get_update(timeout=a.timeout)  # the initial values, up to sync_response
        except TimeoutError:
            raise RuntimeError("no initial update within %d s (%s)" % (a.timeout, sub.error or "stream open"))
        base = counters(first["update"]["update"])
        say("gnmi-subscribe: stream to %s:%d open: %d counters, sampling every %g s for %d s"
            % (a.host, a.port, len(base), a.interval, a.seconds))
        res["running"] = True
        t0 = last = time.monotonic()
        last_ts = None
        res["started"] = time.time()
        report()
        wait = max(3 * a.max_gap, 10)
        while time.monotonic() - t0 < a.seconds and not (a.until and os.path.exists(a.until)):
            try:
                u = sub.get_update(timeout=wait)
            except TimeoutError:
                raise RuntimeError("the stream stopped: no update for %d s after %d updates (%s)"
                                   % (wait, res["updates"], sub.error or "no error from gRPC"))
            if u is None or "update" not in u:
                continue
            now = time.monotonic()
            ts = u["update"]["timestamp"]
            gap = now - last
            last = now
            res["updates"] += 1
            res["max_gap"] = round(max(res["max_gap"], gap), 3)
            if gap > a.max_gap:
                res["late"] += 1
                say("gnmi-subscribe: LATE update %d: %.2f s after the previous one" % (res["updates"], gap))
            if last_ts is not None:
                skipped = round((ts - last_ts) / 1e9 / a.interval) - 1
                if skipped > 0:
                    res["missed"] += skipped
                    say("gnmi-subscribe: %d update(s) MISSED before update %d (timestamps %.3f s apart)"
                        % (skipped, res["updates"], (ts - last_ts) / 1e9))
            last_ts = ts
            cur = counters(u["update"]["update"])
            res["out_octets"] = sum(v for p, v in cur.items() if p.endswith("out-octets"))
            res["last_update"] = time.time()
            if a.verbose:
                say("gnmi-subscribe: update %d, gap %.3f s, %d values" % (res["updates"], gap, len(cur)))
            report()
        moved = res.get("out_octets", 0) - sum(v for p, v in base.items() if p.endswith("out-octets"))
        res["out_octets_moved"] = moved
        sub.close()
        sub._subscribe_thread.join(a.timeout)
        if sub._subscribe_thread.is_alive():
            raise RuntimeError("the target did not end the stream after the client's half-close")
        sub = None
        expected = int(min(a.seconds, time.monotonic() - t0) / a.interval)
        res["ok"] = res["late"] == 0 and res["missed"] == 0 and res["updates"] >= expected - 1 and moved > 0
        if not res["ok"]:
            res["error"] = "%d updates (expected about %d), %d late, %d missed, out-octets moved %d" % (
                res["updates"], expected, res["late"], res["missed"], moved)
    except Exception as e:
        res["error"] = str(e)
    finally:
        res["running"] = False
        res["seconds"] = round(time.time() - t_start, 2)
        if sub is not None:
            sub.close()
        if c is not None:
            c.close()
    say("gnmi-subscribe: %s: %d updates in %.0f s, max gap %.2f s, %d late, %d missed%s" % (
        "ok" if res["ok"] else "FAILED", res["updates"], res["seconds"], res["max_gap"], res["late"], res["missed"],
        "" if res["ok"] else ": " + res.get("error", "")))
    report()
    say(json.dumps(res))
    return 0 if res["ok"] else 1


def main():
    ap = argparse.ArgumentParser(description="tcpaod's NETCONF and gNMI test equipment (see the module docstring)")
    sp = ap.add_subparsers(dest="cmd", required=True)
    p = sp.add_parser("device", help="run netconfd+sshd and the gNMI target in this namespace")
    p.add_argument("--workdir", required=True)
    p.add_argument("--addr", action="append", required=True)
    p.set_defaults(fn=cmd_device)
    p = sp.add_parser("netconf", help="a NETCONF session (ncclient)")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=NETCONF_PORT)
    p.add_argument("--workdir", help="the device's work directory (client key, host key)")
    p.add_argument("--key", help="client private key (default WORKDIR/client_ed25519)")
    p.add_argument("--user", default="root")
    p.add_argument("--value", help="hostname to set (default lab-PID)")
    p.add_argument("--idle", type=float, default=0, help="idle seconds before the last RPCs on the same session")
    p.add_argument("--idle-until", help="end the idle time early once this file exists")
    p.add_argument("--timeout", type=int, default=15, help="connect and RPC timeout (s)")
    p.add_argument("--deadline", type=float, help="hard limit for the whole run (s)")
    p.set_defaults(fn=cmd_netconf)
    for name, fn in (("gnmi-check", cmd_gnmi_check), ("gnmi-subscribe", cmd_gnmi_subscribe)):
        p = sp.add_parser(name)
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, default=GNMI_PORT)
        p.add_argument("--ca", required=True, help="the device's CA certificate (WORKDIR/ca.pem)")
        p.add_argument("--timeout", type=int, default=10, help="connect and per-answer timeout (s)")
        p.add_argument("--deadline", type=float, help="hard limit for the whole run (s)")
        p.set_defaults(fn=fn)
        if name == "gnmi-check":
            p.add_argument("--value", help="hostname to Set (default gnmi-PID)")
        else:
            p.add_argument("--seconds", type=float, required=True)
            p.add_argument("--interval", type=float, default=1.0)
            p.add_argument("--max-gap", type=float, default=2.0)
            p.add_argument("--until", help="end the stream early once this file exists (checked at each update)")
            p.add_argument("--report", help="JSON file rewritten after every update")
            p.add_argument("--verbose", action="store_true", help="a line per update")
    a = ap.parse_args()
    if a.cmd != "device" and a.cmd != "netconf" and a.host.startswith("["):
        a.host = a.host.strip("[]")
    if a.cmd == "netconf" and not (a.workdir or a.key):
        ap.error("netconf needs --workdir or --key")
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
