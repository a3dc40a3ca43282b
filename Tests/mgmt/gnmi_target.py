#!/usr/bin/env python3
"""A small gNMI target for tcpaod's end-to-end tests (test equipment, not a product).

What it is: a gRPC server (grpcio) built on the gNMI 0.8 stubs that pygnmi ships
(pygnmi.spec.v080.gnmi_pb2 / gnmi_pb2_grpc), over real TLS (a certificate made by
Tests/mgmt/lab.py, with the device's IPv4 and IPv6 addresses as SANs), serving
  Capabilities;
  Get       of the namespace's real interface counters, read from /proc/net/dev at every request:
            /interfaces/interface[name=X]/state/counters/{in,out}-{octets,pkts,errors,discards},
            /interfaces/interface[name=X]/state/{name,mtu,oper-status}, /system/state/current-datetime,
            and of whatever Set stored (e.g. /system/config/hostname);
  Set       update / replace / delete of configuration leaves (kept in memory; any path without a
            "state" element; JSON objects are stored as leaves; lists are refused);
  Subscribe ONCE; POLL (initial data, then one round per Poll message, each ended by
            sync_response); STREAM with SAMPLE / TARGET_DEFINED (sample_interval honoured, default
            1 s; late ticks are skipped, never bunched, so a stall shows as a gap in the
            timestamps) and ON_CHANGE (checked every second); updates_only and suppress_redundant.
            A stream ends when the client half-closes it (pygnmi's close() only half-closes).
What it is not: an OpenConfig implementation. No schema validation, no authentication of the
client (metadata is ignored, the client is not asked for a certificate), no aliases, no
heartbeat_interval, no persistence. Wildcards: "*" as an element name or key value.

usage: gnmi_target.py --addr 192.0.2.2 --addr 2001:db8:1::2 [--port 9339] --cert C --key K
Prints "listening ADDR:PORT ..." on stdout once bound; one line per RPC on stderr.
"""
import argparse
import datetime
import json
import queue
import signal
import sys
import threading
import time
from concurrent import futures

import grpc
from pygnmi.spec.v080 import gnmi_pb2 as pb
from pygnmi.spec.v080 import gnmi_pb2_grpc as pb_grpc

COUNTERS = [  # /proc/net/dev column -> OpenConfig leaf
    (0, "in-octets"), (1, "in-pkts"), (2, "in-errors"), (3, "in-discards"),
    (8, "out-octets"), (9, "out-pkts"), (10, "out-errors"), (11, "out-discards"),
]
DEFAULT_INTERVAL_NS = 1_000_000_000


def log(msg):
    print("gnmi-target: %s" % msg, file=sys.stderr, flush=True)


# ---- paths ----------------------------------------------------------------------------------

def elems(path):
    """A gnmi Path as a tuple of (name, ((key, value), ...))."""
    out = [(e.name, tuple(sorted(e.key.items()))) for e in path.elem]
    if not out and path.element:  # deprecated string form
        out = [(s, ()) for s in path.element]
    return tuple(out)


def join(prefix, path):
    return elems(prefix) + elems(path) if prefix is not None else elems(path)


def to_path(es):
    return pb.Path(elem=[pb.PathElem(name=n, key=dict(k)) for n, k in es])


def text(es):
    return "/" + "/".join(n + "".join("[%s=%s]" % kv for kv in k) for n, k in es)


def matches(query, leaf):
    """query is a prefix of leaf, with "*" wildcards; "..." matches any number of elements."""
    if not query:
        return True
    (qn, qk), rest = query[0], query[1:]
    if qn == "...":
        return any(matches(rest, leaf[i:]) for i in range(len(leaf) + 1))
    if not leaf:
        return False
    ln, lk = leaf[0]
    if qn not in ("*", ln):
        return False
    lkd = dict(lk)
    if any(v != "*" and lkd.get(k) != v for k, v in qk):
        return False
    return matches(rest, leaf[1:])


def is_state(es):
    return any(n == "state" for n, _ in es)


def has_wildcards(es):
    return any(n in ("*", "...") or any(v == "*" for _, v in k) for n, k in es)


# ---- values ---------------------------------------------------------------------------------

def typed(v):
    if isinstance(v, bool):
        return pb.TypedValue(bool_val=v)
    if isinstance(v, int):
        return pb.TypedValue(uint_val=v) if v >= 0 else pb.TypedValue(int_val=v)
    if isinstance(v, float):
        return pb.TypedValue(double_val=v)
    return pb.TypedValue(string_val=str(v))


def decode(tv):
    """A TypedValue from a SetRequest as a Python value. pygnmi sends bare strings as
    json(_ietf)_val without quotes: those are taken as strings."""
    which = tv.WhichOneof("value")
    if which in ("json_val", "json_ietf_val"):
        raw = getattr(tv, which).decode("utf-8")
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    if which in ("string_val", "ascii_val"):
        return getattr(tv, which)
    if which in ("int_val", "uint_val", "bool_val", "double_val"):
        return getattr(tv, which)
    if which == "float_val":
        return float(tv.float_val)
    raise ValueError("unsupported value type %s" % which)


def flatten(base, value, out):
    if isinstance(value, dict):
        for k, v in value.items():
            name = k.split(":", 1)[-1]  # drop a module prefix (json_ietf)
            flatten(base + ((name, ()),), v, out)
    elif isinstance(value, list):
        raise ValueError("lists are not supported (%s)" % text(base))
    else:
        out[base] = value


class Device:
    """The data: live counters of this network namespace plus the configuration store."""

    def __init__(self):
        self.lock = threading.Lock()
        self.config = {(("system", ()), ("config", ()), ("hostname", ())): "lab-device"}

    @staticmethod
    def interfaces():
        out = {}
        with open("/proc/net/dev") as f:
            for line in f.readlines()[2:]:
                name, _, rest = line.partition(":")
                out[name.strip()] = [int(x) for x in rest.split()]
        return out

    def leaves(self):
        """Every leaf as {path tuple: value}, read now."""
        data = {}
        for name, cols in self.interfaces().items():
            base = (("interfaces", ()), ("interface", (("name", name),)), ("state", ()))
            data[base + (("name", ()),)] = name
            for attr, leaf in (("mtu", "mtu"), ("operstate", "oper-status")):
                try:
                    with open("/sys/class/net/%s/%s" % (name, attr)) as f:
                        v = f.read().strip()
                    data[base + ((leaf, ()),)] = int(v) if attr == "mtu" else v.upper()
                except OSError:
                    pass
            for col, leaf in COUNTERS:
                data[base + (("counters", ()), (leaf, ()))] = cols[col]
        data[(("system", ()), ("state", ()), ("current-datetime", ()))] = \
            datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        with self.lock:
            data.update(self.config)
        return data

    def select(self, query, data=None, datatype=pb.GetRequest.ALL):
        data = self.leaves() if data is None else data
        out = []
        for p in sorted(data):
            if not matches(query, p):
                continue
            if datatype == pb.GetRequest.CONFIG and is_state(p):
                continue
            if datatype in (pb.GetRequest.STATE, pb.GetRequest.OPERATIONAL) and not is_state(p):
                continue
            out.append((p, data[p]))
        return out


class Target(pb_grpc.gNMIServicer):
    def __init__(self, device):
        self.dev = device

    # -- Capabilities
    def Capabilities(self, request, context):
        log("Capabilities from %s" % context.peer())
        return pb.CapabilityResponse(
            supported_models=[
                pb.ModelData(name="openconfig-interfaces", organization="OpenConfig working group", version="3.0.0"),
                pb.ModelData(name="openconfig-system", organization="OpenConfig working group", version="1.0.0"),
            ],
            supported_encodings=[pb.JSON, pb.JSON_IETF],
            gNMI_version="0.8.0",
        )

    # -- Get
    def Get(self, request, context):
        log("Get from %s: %s" % (context.peer(), ", ".join(text(join(request.prefix, p)) for p in request.path) or "/"))
        if request.encoding not in (pb.JSON, pb.JSON_IETF):
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "encoding %s not supported" % pb.Encoding.Name(request.encoding))
        data = self.dev.leaves()
        notes = []
        paths = list(request.path) or [pb.Path()]
        for path in paths:
            q = join(request.prefix, path)
            found = self.dev.select(q, data, request.type)
            if not found:
                context.abort(grpc.StatusCode.NOT_FOUND, "no data at %s" % text(q))
            notes.append(pb.Notification(timestamp=time.time_ns(),
                                         update=[pb.Update(path=to_path(p), val=typed(v)) for p, v in found]))
        return pb.GetResponse(notification=notes)

    # -- Set
    def Set(self, request, context):
        results, changes, deletes = [], {}, []
        try:
            for path in request.delete:
                q = join(request.prefix, path)
                self._writable(q)
                deletes.append(q)
                results.append(pb.UpdateResult(path=path, op=pb.UpdateResult.DELETE))
            for op, ups in ((pb.UpdateResult.REPLACE, request.replace), (pb.UpdateResult.UPDATE, request.update)):
                for u in ups:
                    q = join(request.prefix, u.path)
                    self._writable(q)
                    if op == pb.UpdateResult.REPLACE:
                        deletes.append(q)
                    flatten(q, decode(u.val), changes)
                    results.append(pb.UpdateResult(path=u.path, op=op))
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        with self.dev.lock:  # all or nothing
            for q in deletes:
                for p in [p for p in self.dev.config if matches(q, p)]:
                    del self.dev.config[p]
            self.dev.config.update(changes)
        log("Set from %s: %s" % (context.peer(), "; ".join(
            ["delete %s" % text(q) for q in deletes] + ["%s = %r" % (text(p), v) for p, v in changes.items()])))
        return pb.SetResponse(timestamp=time.time_ns(), response=results)

    @staticmethod
    def _writable(q):
        if not q:
            raise ValueError("the root is not writable")
        if is_state(q):
            raise ValueError("%s is state data (read-only)" % text(q))
        if has_wildcards(q):
            raise ValueError("wildcards are not allowed in Set (%s)" % text(q))

    # -- Subscribe
    def Subscribe(self, request_iterator, context):
        try:
            first = next(request_iterator)
        except StopIteration:
            return
        if not first.HasField("subscribe"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first SubscribeRequest must carry a SubscriptionList")
        sl = first.subscribe
        subs = []
        for s in sl.subscription:
            q = join(sl.prefix, s.path)
            interval = s.sample_interval or DEFAULT_INTERVAL_NS
            if s.mode == pb.ON_CHANGE:
                interval = DEFAULT_INTERVAL_NS
            subs.append({"q": q, "mode": s.mode, "interval": interval / 1e9,
                         "suppress": s.suppress_redundant or s.mode == pb.ON_CHANGE, "last": {}})
        if not subs:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no subscription in the SubscriptionList")
        mode = pb.SubscriptionList.Mode.Name(sl.mode)
        peer = context.peer()
        log("Subscribe %s from %s: %s" % (mode, peer, ", ".join(
            "%s (%s, %g s)" % (text(s["q"]), pb.SubscriptionMode.Name(s["mode"]), s["interval"]) for s in subs)))

        events = queue.Queue()

        def reader():  # Poll messages, and the client's half-close
            try:
                for req in request_iterator:
                    if req.HasField("poll"):
                        events.put("poll")
            except Exception:
                pass
            events.put("end")
        threading.Thread(target=reader, daemon=True).start()
        context.add_callback(lambda: events.put("end"))

        def notification(sub, data, only_changed):
            found = self.dev.select(sub["q"], data)
            if only_changed:
                found = [(p, v) for p, v in found if sub["last"].get(p) != v]
            sub["last"].update(found)
            if not found:
                return None
            return pb.SubscribeResponse(update=pb.Notification(
                timestamp=time.time_ns(), update=[pb.Update(path=to_path(p), val=typed(v)) for p, v in found]))

        def full_round():
            data = self.dev.leaves()
            for sub in subs:
                n = notification(sub, data, False)
                if n is not None:
                    yield n
            yield pb.SubscribeResponse(sync_response=True)

        sent = 0
        try:
            if not sl.updates_only:
                for r in full_round():
                    yield r
            else:
                yield pb.SubscribeResponse(sync_response=True)
            if sl.mode == pb.SubscriptionList.ONCE:
                return
            if sl.mode == pb.SubscriptionList.POLL:
                while True:
                    ev = events.get()
                    if ev == "end":
                        return
                    for r in full_round():
                        yield r
            # STREAM
            now = time.monotonic()
            for s in subs:
                s["due"] = now + s["interval"]
            while True:
                wait = min(s["due"] for s in subs) - time.monotonic()
                try:
                    ev = events.get(timeout=max(wait, 0))
                    if ev == "end":
                        return
                    continue  # a Poll on a stream: ignored
                except queue.Empty:
                    pass
                now = time.monotonic()
                data = None
                for s in subs:
                    if s["due"] > now:
                        continue
                    data = data or self.dev.leaves()
                    n = notification(s, data, s["suppress"])
                    if n is not None:
                        sent += 1
                        yield n
                    s["due"] += s["interval"]
                    while s["due"] <= now:  # late: skip the missed ticks
                        s["due"] += s["interval"]
        finally:
            log("Subscribe %s from %s ended (%d sampled notifications)" % (mode, peer, sent))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--addr", action="append", required=True, help="address to bind (repeat)")
    ap.add_argument("--port", type=int, default=9339)
    ap.add_argument("--cert", required=True, help="server certificate chain (PEM)")
    ap.add_argument("--key", required=True, help="server private key (PEM)")
    a = ap.parse_args()
    with open(a.key, "rb") as f:
        key = f.read()
    with open(a.cert, "rb") as f:
        cert = f.read()
    creds = grpc.ssl_server_credentials([(key, cert)])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_gNMIServicer_to_server(Target(Device()), server)
    bound = []
    for addr in a.addr:
        hp = ("[%s]:%d" if ":" in addr else "%s:%d") % (addr, a.port)
        try:
            port = server.add_secure_port(hp, creds)
        except RuntimeError as e:
            port = 0
            log("cannot bind %s: %s" % (hp, e))
        if not port:
            print("gnmi-target: cannot bind %s" % hp, file=sys.stderr, flush=True)
            return 1
        bound.append(hp)
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print("listening %s" % " ".join(bound), flush=True)
    while not stop.wait(3600):
        pass
    server.stop(grace=1).wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
