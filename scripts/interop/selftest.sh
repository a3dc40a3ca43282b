#!/usr/bin/env bash
# selftest.sh — proves the Linux-kernel TCP-AO peer harness end to end:
#   builds (or reuses from the cache) the TCP-AO guest kernel, the initramfs and a native
#   aopeer; creates a network namespace; boots the guest in it (run-guest.sh) with
#   selftest-scenario.sh, which checks TCP-AO between two aopeers over the guest's loopback
#   (1 MB with matching HMAC-SHA-1 keys: digest ok, pkt_good > 0, pkt_bad = 0; wrong secret;
#   unknown KeyID; ao_required; key rollover across three algorithms; hex key + exclude-opt);
#   and checks plain TCP between the guest and the namespace (IPv4 guest server <- namespace
#   client, IPv6 namespace server <- guest client) with the native aopeer on the host side.
# Prints one line per check, a summary, and exits 0 only if every check passed.
#
# Usage: selftest.sh [LOGDIR]     (default LOGDIR: a fresh temp dir, kept and printed)
# Env: TCPAOD_INTEROP_CACHE, TCPAOD_INTEROP_TIMEOUT (guest limit, default 240 here).
set -euo pipefail

# shellcheck source=lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

[ "$(id -u)" -eq 0 ] || die "selftest.sh needs root (network namespaces, tap, apt-get)"
START=$SECONDS
LOGDIR=${1:-$(mktemp -d "${TMPDIR:-/tmp}/tcpaod-selftest.XXXXXX")}
mkdir -p "$LOGDIR"
NS=tcpaod-selftest-$$
GUEST_LOG=$LOGDIR/guest-console.log
export TCPAOD_INTEROP_TIMEOUT=${TCPAOD_INTEROP_TIMEOUT:-240}

GUEST_PID=
SERVER6_PID=
cleanup() {
    local pid
    for pid in $GUEST_PID $SERVER6_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1. Build everything (cached after the first run).
interop_ensure_pkgs build-essential iproute2
KERNEL=$("$INTEROP_DIR/build-kernel.sh" | tail -n 1)
INITRD=$("$INTEROP_DIR/build-initramfs.sh" | tail -n 1)
AOPEER=$LOGDIR/aopeer
gcc -O2 -Wall -Wextra -o "$AOPEER" "$INTEROP_DIR/aopeer.c"
BUILT=$SECONDS
export TCPAOD_INTEROP_KERNEL=$KERNEL TCPAOD_INTEROP_INITRD=$INITRD

# 2. Namespace; the namespace side of the IPv6 test listens on the wildcard before the guest
#    boots (run-guest.sh creates tap0 and its addresses).
ip netns add "$NS"
ip netns exec "$NS" "$AOPEER" server --listen :: --port 7101 --send 65536 --recv --timeout 200 \
    >"$LOGDIR/plain6.server" 2>&1 &
SERVER6_PID=$!

# 3. Guest in the background.
"$INTEROP_DIR/run-guest.sh" "$NS" "$INTEROP_DIR/selftest-scenario.sh" "$GUEST_LOG" \
    2>"$LOGDIR/run-guest.stderr" &
GUEST_PID=$!

# 4. Host side of the IPv4 test once the guest's server listens.
plain4_rc=1
if interop_wait_for_log "$GUEST_LOG" 'SELFTEST-READY plain4' 200 "$GUEST_PID"; then
    plain4_rc=0
    ip netns exec "$NS" "$AOPEER" client --connect 192.0.2.2 --port 7100 --send 65536 --recv \
        --timeout 60 >"$LOGDIR/plain4.client" 2>&1 || plain4_rc=$?
else
    echo "ERROR guest never announced its IPv4 server" >"$LOGDIR/plain4.client"
fi

guest_rc=0
wait "$GUEST_PID" || guest_rc=$?
GUEST_PID=
server6_rc=0
if kill -0 "$SERVER6_PID" 2>/dev/null; then
    sleep 2
    kill "$SERVER6_PID" 2>/dev/null || true
fi
wait "$SERVER6_PID" || server6_rc=$?
SERVER6_PID=

# 5. Verdict.
EXPECT64K=$("$AOPEER" gen 65536 | sha256sum | cut -d' ' -f1)
passed=0
failed=0
report() { # ok|FAIL NAME DETAIL
    printf 'CHECK %-4s %s %s\n' "$1" "$2" "$3"
    if [ "$1" = ok ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
}
host_check() { # NAME RC FILE
    local sha
    sha=$(sed -n 's/^RESULT .*sha256=\([0-9a-f]*\).*/\1/p' "$3" | tail -n 1)
    if [ "$2" -eq 0 ] && [ "$sha" = "$EXPECT64K" ]; then
        report ok "$1" "rc=0 sha256 ok"
    else
        report FAIL "$1" "rc=$2 sha256=${sha:-none} ($(grep -m1 '^ERROR' "$3" || true))"
    fi
}

echo "== guest checks (TCP-AO in the guest kernel) =="
while read -r _ st name rest; do
    report "$st" "$name" "$rest"
done < <(tr -d '\r' <"$GUEST_LOG" | grep -a '^CHECK ' || true)
echo "== host checks (plain TCP between namespace and guest) =="
host_check plain-v4-namespace-client "$plain4_rc" "$LOGDIR/plain4.client"
host_check plain-v6-namespace-server "$server6_rc" "$LOGDIR/plain6.server"
if [ "$guest_rc" -eq 0 ] && grep -qa 'SELFTEST-GUEST-DONE fail=0' "$GUEST_LOG"; then
    report ok guest-exit "run-guest.sh exit 0"
else
    report FAIL guest-exit "run-guest.sh exit $guest_rc (see $GUEST_LOG, $LOGDIR/run-guest.stderr)"
fi

KVER=$(tr -d '\r' <"$GUEST_LOG" | sed -n 's/.*GUEST-BOOT kernel=\([^ ]*\).*/\1/p' | tail -n 1)
echo "== summary =="
echo "guest kernel: ${KVER:-unknown} ($KERNEL)"
echo "initramfs:    $INITRD"
echo "logs:         $LOGDIR"
echo "time:         build/cache $((BUILT - START))s, guest run $((SECONDS - BUILT))s, total $((SECONDS - START))s"
echo "selftest: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
