#!/usr/bin/env python3
"""The Debian package (scripts/package) installed for real: apt-get installs it in the Debian
bookworm container of systemd_real.py (systemd as PID 1, booted by systemd-nspawn with nothing
of the host bound in: no /opt/swift, no built binary), in a network namespace joined to a peer
namespace that runs the package's own binary (extracted on the host).

What it shows:
  - the binary needs no Swift toolchain: only the libraries of the package's Depends, which the
    container's packages satisfy (apt-get installs it without a mirror);
  - a first install neither enables nor starts the service; /etc/tcpaod is 700 and the
    configuration, a conffile, 600; the shipped configuration is refused by `tcpaod check` and
    `systemctl start` fails with the reason in the journal (its secrets are empty), no rule left;
  - the man page (rendered here with `man --warnings`, no warning) and the bash, zsh and fish
    completions are installed;
  - with a real configuration `systemctl enable --now tcpaod` starts it (rules installed, queues
    bound); reinstalling the package (an upgrade) restarts the running service in place;
  - socat transfers both ways between the peer and the container's namespace arrive intact,
    and the capture of the peer's link verifies (`tcpaod verify-pcap --strict`);
  - `apt-get remove` stops the service and removes the rules, keeping the configuration;
    `apt-get purge` removes the configuration and the enablement symlink.

usage: package.py [DEB]   (root; default: the newest out/tcpaod_*_amd64.deb, made by
                           scripts/package when there is none)
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402  (namespaces, configurations, daemons, captures)
import systemd_real  # noqa: E402  (the container)
from e2e import Fail, check, log, sh  # noqa: E402

ROOT = e2e.ROOT
UNIT_WANTS = "/etc/systemd/system/multi-user.target.wants/tcpaod.service"
FILES = ["/usr/sbin/tcpaod", "/lib/systemd/system/tcpaod.service", "/usr/share/man/man8/tcpaod.8.gz",
         "/usr/share/bash-completion/completions/tcpaod", "/usr/share/zsh/vendor-completions/_tcpaod",
         "/usr/share/fish/vendor_completions.d/tcpaod.fish", "/usr/share/doc/tcpaod/copyright",
         "/usr/share/doc/tcpaod/changelog.Debian.gz", "/usr/share/doc/tcpaod/examples/tcpaod.yaml"]


def the_deb():
    if len(sys.argv) > 1:
        return os.path.abspath(sys.argv[1])
    pattern = os.path.join(ROOT, "out", "tcpaod_*_amd64.deb")
    if not glob.glob(pattern):
        log("    no out/tcpaod_*_amd64.deb: making it (scripts/package)")
        sh([os.path.join(ROOT, "scripts", "package")], timeout=3600)
    return max(glob.glob(pattern), key=os.path.getmtime)


def in_container(c, script, timeout=60, check_rc=True):
    return c.run(["sh", "-c", script], timeout=timeout, check_rc=check_rc)


def apt(c, args, timeout=120):
    t0 = time.time()
    r = in_container(c, "cd /root && DEBIAN_FRONTEND=noninteractive apt-get -y -q %s 2>&1" % args, timeout=timeout, check_rc=False)
    check(r.returncode == 0, "apt-get %s: exit %d\n%s" % (args, r.returncode, r.stdout))
    return r.stdout, time.time() - t0


def stat(c, path):
    r = c.run(["stat", "-c", "%a %U:%G", path], check_rc=False)
    return r.stdout.strip() if r.returncode == 0 else None


def package_installed_for_real(deb):
    name = os.path.basename(deb)
    version = sh(["dpkg-deb", "-f", deb, "Version"]).stdout.strip()
    depends = sh(["dpkg-deb", "-f", deb, "Depends"]).stdout.strip()
    log("    %s (%d kB): Depends: %s" % (name, os.path.getsize(deb) // 1024, depends))

    # The package's own binary, for the peer and verify-pcap: no Swift runtime needed.
    pkgroot = os.path.join(e2e.WORK, "pkgroot")
    sh(["dpkg-deb", "-x", deb, pkgroot])
    binary = os.path.join(pkgroot, "usr", "sbin", "tcpaod")
    ldd = sh(["ldd", binary]).stdout
    check("/opt/swift" not in ldd and "not found" not in ldd and "libswift" not in ldd,
          "the packaged binary needs more than Debian's libraries:\n" + ldd)
    e2e.TCPAOD = binary
    man = os.path.join(pkgroot, "usr", "share", "man", "man8", "tcpaod.8.gz")
    r = sh(["man", "--warnings", "-l", man], env=dict(os.environ, MANWIDTH="100"))
    check("verify-pcap" in r.stdout and "--config" in r.stdout and not r.stderr.strip(),
          "man -l tcpaod.8.gz: %s" % (r.stderr or r.stdout[:500]))
    log("    host: the binary links no Swift runtime; man page renders (%d lines, no warning)" % len(r.stdout.splitlines()))

    topo = e2e.Topology()
    container = None
    try:
        a, b = e2e.two_hosts(topo)
        t0 = time.time()
        container = systemd_real.Container(b, "tcpaod-pkg-%s" % e2e.TAG, binds=[])
        log("    container booted in %.1f s, nothing bound in (no /opt/swift: %s)"
            % (time.time() - t0, container.run(["test", "-e", "/opt/swift"], check_rc=False).returncode != 0))
        with open(deb, "rb") as f:
            container.put("/root/" + name, f.read(), 0o644)

        out, secs = apt(container, "install ./" + name)
        check("not started" in out, "the postinst did not say what to do next:\n" + out)
        enabled = container.run(["systemctl", "is-enabled", "tcpaod"], check_rc=False).stdout.strip()
        active = container.run(["systemctl", "is-active", "tcpaod"], check_rc=False).stdout.strip()
        check(enabled == "disabled" and active == "inactive", "after install: %s, %s" % (enabled, active))
        log("    apt-get install ./%s: %.1f s; the service is %s and %s" % (name, secs, enabled, active))

        for path in FILES:
            check(stat(container, path) is not None, "not installed: " + path)
        modes = (stat(container, "/etc/tcpaod"), stat(container, "/etc/tcpaod/tcpaod.yaml"))
        check(modes == ("700 root:root", "600 root:root"), "/etc/tcpaod, tcpaod.yaml: %s" % (modes,))
        conffiles = container.run(["dpkg-query", "-W", "-f", "${Conffiles}", "tcpaod"]).stdout
        check("/etc/tcpaod/tcpaod.yaml" in conffiles, "not a conffile: %r" % conffiles)
        r = container.run(["ldd", "/usr/sbin/tcpaod"])
        check("not found" not in r.stdout, "missing libraries in the container:\n" + r.stdout)
        check(container.run(["tcpaod", "--help"], check_rc=False).returncode == 0, "tcpaod --help fails in the container")
        log("    installed: binary, unit, man page, bash/zsh/fish completions, docs; /etc/tcpaod 700, "
            "tcpaod.yaml 600 (conffile)")

        # The shipped configuration: refused, with the reason; the service does not start.
        r = container.run(["tcpaod", "check", "--config", "/etc/tcpaod/tcpaod.yaml"], check_rc=False)
        check(r.returncode == 1 and "the secret is empty" in r.stderr, "check of the shipped configuration: %d\n%s" % (r.returncode, r.stderr))
        r = container.run(["systemctl", "start", "tcpaod"], check_rc=False, timeout=60)
        check(r.returncode != 0, "the service started with the shipped configuration")
        journal = container.journal()
        check("the secret is empty" in journal, "the journal does not say why:\n" + journal[-2000:])
        container.run(["systemctl", "stop", "tcpaod"], check_rc=False)
        container.run(["systemctl", "reset-failed", "tcpaod"], check_rc=False)
        check(systemd_real.jumps(b) == (0, 0), "rules left by the failed start: %s" % (systemd_real.jumps(b),))
        log("    shipped configuration: `tcpaod check` exit 1 and `systemctl start` fails, journal: %s"
            % next(l for l in journal.splitlines() if "the secret is empty" in l).split(": error: ", 1)[-1].split(" (fix:")[0][:100])

        # A real configuration, then what the operator does.
        k1 = e2e.key_yaml(1, 1, 1, "hmac-sha-256-128", e2e.SECRET)
        conf_b = ("mode: host\nqueue: 100\nthreads: 2\nstats-interval: 0\nkey-chains:\n  - name: k\n    keys:\n" + k1 +
                  "peers:\n  - { name: a, prefix: 192.0.2.1/32, ports: [830, 9339], key-chain: k }\n")
        container.put("/etc/tcpaod/tcpaod.yaml", conf_b, 0o600)
        t0 = time.time()
        container.systemctl("enable", "--now", "tcpaod")
        state, enabled = container.show("ActiveState"), container.run(["systemctl", "is-enabled", "tcpaod"], check_rc=False).stdout.strip()
        check(state == "active" and enabled == "enabled", "after enable --now: %s, %s" % (state, enabled))
        check(systemd_real.jumps(b) == (1, 1) and systemd_real.bound_queues(b) == [100, 101],
              "enable --now: jumps %s, queues %s" % (systemd_real.jumps(b), systemd_real.bound_queues(b)))
        inv = container.show("InvocationID")
        j = container.run(["journalctl", "--no-pager", "-o", "cat", "_SYSTEMD_INVOCATION_ID=" + inv]).stdout
        noisy = [l for l in j.splitlines() if re.search(r"warn|fail|error|errno|denied", l, re.I)]
        check("tcpaod running" in j and not noisy, "the start's journal:\n%s" % j[-3000:])
        log("    systemctl enable --now tcpaod: active in %.2f s, rules installed, queues 100-101 bound, journal clean"
            % (time.time() - t0))

        # An upgrade (here the same version again) restarts the running service in place.
        pid0 = container.show("MainPID")
        out, secs = apt(container, "install --reinstall ./" + name)
        pid1 = container.show("MainPID")
        check(pid1 != pid0 and container.show("ActiveState") == "active" and systemd_real.jumps(b) == (1, 1),
              "after reinstalling: pid %s -> %s, %s, jumps %s" % (pid0, pid1, container.show("ActiveState"), systemd_real.jumps(b)))
        log("    apt-get install --reinstall: %.1f s, the service restarted (pid %s -> %s), rules in place" % (secs, pid0, pid1))

        # Traffic: the peer runs the package's binary; socat both ways; the capture verifies.
        ca = e2e.write_config("a", [("b", "192.0.2.2/32", [830, 9339])], [k1])
        da = e2e.Daemon(a, ca, "a")
        cap = e2e.Capture(a, "va", "tcp port 830 or tcp port 9339")
        size = 20 * 1000 * 1000
        s1, ok1 = e2e.transfer(a, b, "192.0.2.2", 830, size)
        s2, ok2 = e2e.transfer(b, a, "192.0.2.1", 9339, size)
        check(ok1 and ok2, "transfers not intact: peer->container %s, container->peer %s" % (ok1, ok2))
        path = cap.stop()
        da.stop()
        rc, res = e2e.verify_pcap(ca, path, strict=True)
        check(rc == 0, "verify-pcap --strict: %s" % res["line"])
        signed = systemd_real.total_counter(container, "signed")
        verified = systemd_real.total_counter(container, "verified")
        check(signed > 0 and verified > 0, "the service's counters: signed %d, verified %d" % (signed, verified))
        log("    socat %d MB each way intact (%.1f s, %.1f s); the service signed %d, verified %d; capture: %s"
            % (size // 1000000, s1, s2, signed, verified, res["line"]))

        # Remove: the service stops and its rules go; the configuration stays. Purge: all gone.
        out, secs = apt(container, "remove tcpaod")
        active = container.run(["systemctl", "is-active", "tcpaod"], check_rc=False).stdout.strip()
        check(active != "active" and systemd_real.jumps(b) == (0, 0) and systemd_real.bound_queues(b) == [],
              "after remove: %s, jumps %s, queues %s" % (active, systemd_real.jumps(b), systemd_real.bound_queues(b)))
        check(stat(container, "/usr/sbin/tcpaod") is None and stat(container, "/etc/tcpaod/tcpaod.yaml") == "600 root:root",
              "after remove: binary %s, configuration %s" % (stat(container, "/usr/sbin/tcpaod"), stat(container, "/etc/tcpaod/tcpaod.yaml")))
        journal = container.journal()
        check(re.search(r"rules removed", journal), "the journal does not show the rules removed at the stop:\n" + journal[-2000:])
        log("    apt-get remove: %.1f s; service stopped, rules removed, queues unbound, configuration kept" % secs)
        out, secs = apt(container, "purge tcpaod")
        status = container.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", "tcpaod"], check_rc=False).stdout.strip()
        left = [p for p in ("/etc/tcpaod", UNIT_WANTS, "/lib/systemd/system/tcpaod.service") if stat(container, p) is not None
                or container.run(["test", "-L", p], check_rc=False).returncode == 0]
        check(status in ("", "not-installed") and not left, "after purge: status %r, left %s" % (status, left))
        log("    apt-get purge: %.1f s; /etc/tcpaod and the enablement symlink gone" % secs)
    except Exception:
        if container and container.leader:
            log("    the journal's end:\n" + "\n".join("      " + l for l in container.journal().splitlines()[-40:]))
        raise
    finally:
        if container:
            container.close()
        topo.close()


def main():
    if os.geteuid() != 0:
        print("needs root (systemd-nspawn, network namespaces)")
        return 1
    for tool in ("systemd-nspawn", "mmdebstrap", "nsenter", "dpkg-deb", "man", "socat", "tcpdump"):
        if not shutil.which(tool):
            print("missing %s (scripts/deps test installs it)" % tool)
            return 1
    deb = the_deb()
    log("-- package_installed_for_real")
    t0 = time.time()
    try:
        package_installed_for_real(deb)
        log("PASS package_installed_for_real (%.1f s)" % (time.time() - t0))
        return 0
    except Exception as ex:
        log("FAIL package_installed_for_real (%.1f s): %s" % (time.time() - t0, ex))
        if not isinstance(ex, Fail):
            import traceback
            traceback.print_exc()
        return 1
    finally:
        shutil.rmtree(e2e.WORK, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
