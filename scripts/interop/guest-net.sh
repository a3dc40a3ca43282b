#!/bin/sh
# guest-net.sh — helpers for guest scenario scripts; installed in the guest as
# /lib/interop/guest-net.sh. Source it:   . /lib/interop/guest-net.sh
#
# Address plan (run-guest.sh sets up the namespace side of tap0):
#   namespace tap0: 192.0.2.1/24  2001:db8:1::1/64
#   guest eth0:     192.0.2.2/24  2001:db8:1::2/64
#
# guest_net_up [V4/LEN [V6/LEN]]     add the guest addresses to eth0 (defaults above) and
#                                    wait (<= 10 s) until the namespace side answers pings
# wait_for_line FILE PATTERN [SECS]  wait until a line of FILE matches the grep -E PATTERN
# kv LINE KEY                        print the value of KEY=value in LINE (e.g. a RESULT line)
# record TAG FILE                    print FILE's lines prefixed with "TAG| " to the console

# shellcheck disable=SC2034  # (used by scenarios)
GUEST_V4=192.0.2.2/24
GUEST_V6=2001:db8:1::2/64
HOST_V4=192.0.2.1
HOST_V6=2001:db8:1::1

guest_net_up() {
    ip addr add "${1:-$GUEST_V4}" dev eth0 || return 1
    ip -6 addr add "${2:-$GUEST_V6}" dev eth0 || return 1
    ip link set eth0 up
    i=0
    while [ "$i" -lt 10 ]; do
        if ping -c 1 -W 1 "$HOST_V4" >/dev/null 2>&1; then
            return 0
        fi
        i=$((i + 1))
    done
    echo "GUEST-WARN $HOST_V4 does not answer pings"
    return 0
}

wait_for_line() {
    _w=$(( ${3:-30} * 10 ))
    while [ "$_w" -gt 0 ]; do
        grep -qE "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
        _w=$((_w - 1))
    done
    echo "GUEST-WARN timeout waiting for /$2/ in $1"
    return 1
}

kv() {
    printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | sed -n 1p
}

record() {
    sed "s/^/$1| /" "$2"
}
