#!/bin/bash
# Checks the ctnetlink label client (ConntrackLabels) against this kernel, as root, in two
# network namespaces of its own joined by a veth pair (192.0.2.1/2, 2001:db8::1/2), IPv4 and IPv6:
#   1. no rules: conntrack is not active, no entry, writes answer ENOENT;
#   2. conntrack active (-m conntrack), no label-using rule: writes answer ENOSPC, reads find no labels;
#   3. plus `-m connlabel --label 127` (no --set): new connections can be labelled (write, read
#      back, masked bits only, reverse tuple, missing tuple, a late answer skipped, timings;
#      `conntrack -L -o labels` shows the bits); 3b. a connection made before that rule cannot;
#   4. the connlabel match alone: it also makes conntrack active.
# Needs: iproute2, iptables/ip6tables, socat, conntrack (Debian package `conntrack`), and the
# test binary built: swift build --scratch-path .build-ct --build-tests
# Usage: Tests/e2e/conntrack_probe.sh [scratch-path]   (from the package root)
set -u
SCRATCH=${1:-.build-ct}
A=ctprobe-a B=ctprobe-b
PORT4=40001 PORT6=40002 SPORT4=51001 SPORT6=51002
fail=0

cleanup() {
    for p in $(ip netns pids $A 2>/dev/null) $(ip netns pids $B 2>/dev/null); do kill "$p" 2>/dev/null; done
    ip netns del $A 2>/dev/null; ip netns del $B 2>/dev/null
}
trap cleanup EXIT
cleanup

in_a() { ip netns exec $A "$@"; }
in_b() { ip netns exec $B "$@"; }

ip netns add $A && ip netns add $B || exit 1
ip link add ctp-va netns $A type veth peer name ctp-vb netns $B
in_a ip link set lo up; in_b ip link set lo up
in_a ip addr add 192.0.2.1/24 dev ctp-va; in_b ip addr add 192.0.2.2/24 dev ctp-vb
in_a ip addr add 2001:db8::1/64 dev ctp-va nodad; in_b ip addr add 2001:db8::2/64 dev ctp-vb nodad
in_a ip link set ctp-va up; in_b ip link set ctp-vb up

# Two listeners in B that keep every accepted connection open.
in_b socat TCP4-LISTEN:$PORT4,fork,reuseaddr SYSTEM:'sleep 600' &
in_b socat TCP6-LISTEN:$PORT6,fork,reuseaddr,ipv6only SYSTEM:'sleep 600' &
sleep 0.5

# Opens a connection from A with a fixed source port; it stays open (sleep on stdin).
connect() { # family sport dst port
    if [ "$1" = 4 ]; then in_a socat -u SYSTEM:'sleep 600' TCP4:$3:$4,sourceport=$2,reuseaddr &
    else in_a socat -u SYSTEM:'sleep 600' TCP6:[$3]:$4,sourceport=$2,reuseaddr & fi
    sleep 0.5
}

# `conntrack -o labels` prints label bits only by their names in /etc/xtables/connlabel.conf
# (without the file: "nfct_labelmap_new: No such file or directory" and no labels). Name bits
# 0-127 "bN" in a private mount namespace over an overlay of /etc: the host's /etc is untouched.
show_labels() { # family sport
    local d; d=$(mktemp -d)
    mkdir -p "$d/u/xtables" "$d/w"
    for i in $(seq 0 127); do echo "$i b$i"; done > "$d/u/xtables/connlabel.conf"
    unshare -m sh -c "mount --make-rprivate / && mount -t overlay overlay -o lowerdir=/etc,upperdir=$d/u,workdir=$d/w /etc && ip netns exec $A conntrack -L -f $1 -o labels 2>/dev/null" | grep "sport=$2 "
    rm -rf "$d"
}

live() { # tuple [expect]
    in_a env TCPAOD_CT_LIVE="$1" TCPAOD_CT_EXPECT="${2:-}" \
        swift test --scratch-path "$SCRATCH" --skip-build --filter ConntrackLiveTests 2>&1 \
        | grep -E "conntrack |passed|failed|Expectation|error" || true
}

echo "== 1. no rules at all: is there an entry?"
connect 4 $SPORT4 192.0.2.2 $PORT4
in_a conntrack -L 2>/dev/null | grep -c "sport=$SPORT4" | sed 's/^/entries: /'
live "192.0.2.1,$SPORT4,192.0.2.2,$PORT4" ENOENT

echo "== 2. conntrack active, no label rule: connection made now has no label space"
in_a iptables -t mangle -A OUTPUT -p tcp -m conntrack --ctstate NEW,ESTABLISHED
in_a ip6tables -t mangle -A OUTPUT -p tcp -m conntrack --ctstate NEW,ESTABLISHED
connect 4 $((SPORT4 + 10)) 192.0.2.2 $PORT4
connect 6 $((SPORT6 + 10)) 2001:db8::2 $PORT6
in_a conntrack -L 2>/dev/null | grep -E "sport=$((SPORT4 + 10))"
live "192.0.2.1,$((SPORT4 + 10)),192.0.2.2,$PORT4" ENOSPC
live "2001:db8::1,$((SPORT6 + 10)),2001:db8::2,$PORT6" ENOSPC

echo "== 3. label space reserved (numeric connlabel match, no --set), /etc/xtables/connlabel.conf: $(ls /etc/xtables/connlabel.conf 2>&1 | tail -1)"
in_a iptables -t mangle -A OUTPUT -p tcp -m connlabel --label 127 || fail=1
in_a ip6tables -t mangle -A OUTPUT -p tcp -m connlabel --label 127 || fail=1
in_a iptables-save -t mangle | grep -E "^-A"
in_a ip6tables-save -t mangle | grep -E "^-A"
connect 4 $SPORT4 192.0.2.2 $PORT4 2>/dev/null
connect 4 $((SPORT4 + 20)) 192.0.2.2 $PORT4
connect 6 $((SPORT6 + 20)) 2001:db8::2 $PORT6
live "192.0.2.1,$((SPORT4 + 20)),192.0.2.2,$PORT4"
show_labels ipv4 $((SPORT4 + 20))
live "2001:db8::1,$((SPORT6 + 20)),2001:db8::2,$PORT6"
show_labels ipv6 $((SPORT6 + 20))
echo "== 3b. the older connection (made before the label rule) still has no label space"
live "192.0.2.1,$((SPORT4 + 10)),192.0.2.2,$PORT4" ENOSPC

echo "== 4. only the connlabel match (no conntrack match), fresh namespace rules"
in_a iptables -t mangle -F OUTPUT; in_a ip6tables -t mangle -F OUTPUT
in_a iptables -t mangle -A OUTPUT -p tcp -m connlabel --label 127
in_a ip6tables -t mangle -A OUTPUT -p tcp -m connlabel --label 127
connect 4 $((SPORT4 + 30)) 192.0.2.2 $PORT4
connect 6 $((SPORT6 + 30)) 2001:db8::2 $PORT6
live "192.0.2.1,$((SPORT4 + 30)),192.0.2.2,$PORT4"
live "2001:db8::1,$((SPORT6 + 30)),2001:db8::2,$PORT6"
exit $fail
