#!/usr/bin/env bash
# run-guest.sh — boots the TCP-AO reference guest (Linux 6.12 with CONFIG_TCP_AO, see
# build-kernel.sh) under qemu TCG inside an existing network namespace, runs a scenario
# script in it, and exits with the scenario's exit code.
#
# Usage: run-guest.sh NETNS SCENARIO_SCRIPT [LOGFILE]
#
#   NETNS            existing network namespace (ip netns add NETNS); qemu runs inside it.
#   SCENARIO_SCRIPT  busy-box sh script; becomes /scenario.sh in the guest, run by /init from
#                    /tmp. It may `. /lib/interop/guest-net.sh` (guest_net_up, wait_for_line, ...).
#   LOGFILE          the guest's serial console (default /tmp/tcpaod-interop-NETNS.log).
#
# Address plan (also in README.md):
#   namespace side, tap0:  192.0.2.1/24  2001:db8:1::1/64   (set here when tap0 is created)
#   guest, eth0:           192.0.2.2/24  2001:db8:1::2/64   (the scenario adds them, e.g. with
#                                                            guest_net_up from guest-net.sh)
#
# Environment:
#   TCPAOD_INTEROP_TIMEOUT   overall limit in seconds (default 180); then qemu is killed.
#   TCPAOD_INTEROP_KERNEL    bzImage to boot (default: build-kernel.sh, cached).
#   TCPAOD_INTEROP_INITRD    base initramfs (default: build-initramfs.sh, cached).
#   TCPAOD_INTEROP_TAP       tap device name in NETNS (default tap0).
#   TCPAOD_INTEROP_EXTRA_DIR a directory copied into the guest as /extra (optional).
#
# Exit status: the scenario's (from the `GUEST-EXIT <rc>` console line); 124 when the overall
# timeout hit; 125 when the guest ended without a GUEST-EXIT line (crash, boot failure).
#
# Background use: `run-guest.sh NS scen.sh log & pid=$!`, then wait for a line the scenario
# prints (e.g. aopeer's `LISTENING ...`) with interop_wait_for_log from lib.sh, run the host
# side with `ip netns exec NS ...`, then `wait $pid`. SIGTERM/SIGINT stop qemu cleanly.
set -euo pipefail

# shellcheck source=lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
    exit 2
fi
NETNS=$1
SCENARIO=$2
LOGFILE=${3:-/tmp/tcpaod-interop-$NETNS.log}
TIMEOUT=${TCPAOD_INTEROP_TIMEOUT:-180}
TAP=${TCPAOD_INTEROP_TAP:-tap0}

[ -f "$SCENARIO" ] || die "scenario script not found: $SCENARIO"
ip netns exec "$NETNS" true 2>/dev/null || die "network namespace '$NETNS' does not exist"

interop_ensure_pkgs qemu-system-x86 cpio iproute2 coreutils
KERNEL=${TCPAOD_INTEROP_KERNEL:-$("$INTEROP_DIR/build-kernel.sh" | tail -n 1)}
INITRD=${TCPAOD_INTEROP_INITRD:-$("$INTEROP_DIR/build-initramfs.sh" | tail -n 1)}
[ -s "$KERNEL" ] || die "no kernel image: $KERNEL"
[ -s "$INITRD" ] || die "no initramfs: $INITRD"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tcpaod-guest.XXXXXX")
QEMU_PID=
cleanup() {
    if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null || true
        sleep 1
        kill -9 "$QEMU_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Extra, uncompressed cpio with /scenario.sh (and /extra), appended to the base initramfs.
# The kernel unpacks concatenated archives; a cpio header must start at a 4-byte aligned
# offset, so the base is padded with NUL bytes (which the unpacker skips).
mkdir -p "$WORK/extra"
install -m 0755 "$SCENARIO" "$WORK/extra/scenario.sh"
if [ -n "${TCPAOD_INTEROP_EXTRA_DIR:-}" ]; then
    cp -a "$TCPAOD_INTEROP_EXTRA_DIR" "$WORK/extra/extra"
fi
cp "$INITRD" "$WORK/initrd"
pad=$(( (4 - $(stat -c %s "$WORK/initrd") % 4) % 4 ))
head -c "$pad" /dev/zero >>"$WORK/initrd"
(cd "$WORK/extra" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc --owner 0:0 --quiet) >>"$WORK/initrd"

# tap0 in the namespace, with the namespace-side addresses of the plan.
if ! ip -n "$NETNS" link show "$TAP" >/dev/null 2>&1; then
    ip -n "$NETNS" tuntap add dev "$TAP" mode tap
    ip -n "$NETNS" addr add 192.0.2.1/24 dev "$TAP"
    ip -n "$NETNS" addr add 2001:db8:1::1/64 dev "$TAP" nodad
fi
ip -n "$NETNS" link set lo up
ip -n "$NETNS" link set "$TAP" up

: >"$LOGFILE"
log "booting guest in netns $NETNS (console: $LOGFILE, timeout ${TIMEOUT}s)"
# TCG only: -enable-kvm hangs on these machines.
ip netns exec "$NETNS" qemu-system-x86_64 \
    -accel tcg -nographic -no-reboot -m 256 \
    -kernel "$KERNEL" -initrd "$WORK/initrd" \
    -append "console=ttyS0 panic=-1 quiet" \
    -netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no" \
    -device virtio-net-pci,netdev=n0 \
    </dev/null >>"$LOGFILE" 2>&1 &
QEMU_PID=$!

# Overall timeout without blocking signal handling (bash runs traps between `wait`s).
deadline=$((SECONDS + TIMEOUT))
timed_out=0
while kill -0 "$QEMU_PID" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        timed_out=1
        break
    fi
    sleep 0.5
done
if [ "$timed_out" -eq 1 ]; then
    log "guest did not finish within ${TIMEOUT}s; killing qemu"
    cleanup
    QEMU_PID=
    echo "RUN-GUEST timeout after ${TIMEOUT}s" >>"$LOGFILE"
    exit 124
fi
qemu_rc=0
wait "$QEMU_PID" || qemu_rc=$?
QEMU_PID=

rc=$(tr -d '\r' <"$LOGFILE" | sed -n 's/.*GUEST-EXIT \([0-9][0-9]*\)$/\1/p' | tail -n 1)
if [ -z "$rc" ]; then
    log "guest ended without GUEST-EXIT (qemu exit $qemu_rc); last console lines:"
    tr -d '\r' <"$LOGFILE" | tail -n 20 >&2
    exit 125
fi
log "guest scenario exited with $rc"
exit "$rc"
