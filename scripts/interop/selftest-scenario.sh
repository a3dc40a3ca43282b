#!/bin/sh
# selftest-scenario.sh — guest side of selftest.sh; runs as /scenario.sh inside the TCP-AO
# guest (busybox sh). Exercises aopeer against the guest kernel's TCP-AO over the guest's
# loopback, then plain TCP between the guest and the namespace (the host side of it is in
# selftest.sh). Prints `CHECK ok|FAIL NAME detail` lines; exits 1 if any check failed.
# shellcheck source=guest-net.sh  # installed in the guest as /lib/interop/guest-net.sh
. /lib/interop/guest-net.sh

fail=0
N=1048576
SECRET=tcpaod-selftest
EXPECT=$(aopeer gen "$N" | sha256sum | cut -d' ' -f1)

check() { # NAME CONDITION-EXIT-STATUS DETAIL
    if [ "$2" -eq 0 ]; then
        echo "CHECK ok $1 $3"
    else
        echo "CHECK FAIL $1 $3"
        fail=1
    fi
}
t() { [ "$@" ]; echo $?; } # test expression -> 0/1

line() { grep "^$1" "$2" | head -n 1; } # first line of FILE starting with WORD
# keyfield FILE SNDID FIELD: FIELD of the AOKEY line for SNDID
keyfield() { kv "$(grep "^AOKEY sndid=$2 " "$1" | head -n 1)" "$3"; }

# pair NAME PORT SERVER_OPTS CLIENT_OPTS: runs an aopeer server and client over 127.0.0.1;
# leaves NAME.s / NAME.c (outputs) and sets SRC / CRC (exit codes).
pair() {
    # shellcheck disable=SC2086  # option lists are split on purpose
    aopeer server --listen 127.0.0.1 --port "$2" $3 >"$1.s" 2>&1 &
    _sp=$!
    wait_for_line "$1.s" '^(LISTENING|ERROR)' 10
    # shellcheck disable=SC2086
    aopeer client --connect 127.0.0.1 --port "$2" $4 >"$1.c" 2>&1
    CRC=$?
    wait "$_sp"
    SRC=$?
    record "$1 server rc=$SRC" "$1.s"
    record "$1 client rc=$CRC" "$1.c"
}

guest_net_up 192.0.2.2/24 2001:db8:1::2/64 || check net-up 1 "ip addr add failed"

# 1. Matching HMAC-SHA-1 keys over loopback: 1 MB, digest matches, only good packets.
K="1:1:hmac(sha1):$SECRET"
pair ao-match 7001 "--key $K --recv --timeout 60" "--key $K --send $N --timeout 60"
R=$(line RESULT ao-match.s)
I=$(line AOINFO ao-match.s)
CI=$(line AOINFO ao-match.c)
check ao-match-exit "$(t "$SRC" -eq 0 -a "$CRC" -eq 0)" "server=$SRC client=$CRC"
check ao-match-bytes "$(t "$(kv "$R" received)" = "$N")" "received=$(kv "$R" received)"
check ao-match-sha256 "$(t "$(kv "$R" sha256)" = "$EXPECT")" "sha256=$(kv "$R" sha256)"
check ao-match-server-counters \
    "$(t "$(kv "$I" pkt_good)" -gt 0 -a "$(kv "$I" pkt_bad)" -eq 0)" \
    "pkt_good=$(kv "$I" pkt_good) pkt_bad=$(kv "$I" pkt_bad)"
check ao-match-client-counters \
    "$(t "$(kv "$CI" pkt_good)" -gt 0 -a "$(kv "$CI" pkt_bad)" -eq 0)" \
    "pkt_good=$(kv "$CI" pkt_good) pkt_bad=$(kv "$CI" pkt_bad)"

# 2. Same KeyIDs, different secret: no connection; the listener counts bad MACs.
pair ao-badsecret 7002 "--key $K --recv --timeout 4" \
    "--key 1:1:hmac(sha1):wrong-secret --send 1000 --timeout 4"
I=$(line AOINFO ao-badsecret.s)
check ao-badsecret-fails "$(t "$SRC" -ne 0 -a "$CRC" -ne 0)" "server=$SRC client=$CRC"
B=$(kv "$I" pkt_bad)
KNF=$(kv "$I" pkt_key_not_found)
check ao-badsecret-counted "$(t $(( ${B:-0} + ${KNF:-0} )) -gt 0)" \
    "pkt_bad=$B pkt_key_not_found=$KNF"

# 3. Unknown KeyID: no connection; the listener counts key-not-found.
pair ao-badkeyid 7003 "--key $K --recv --timeout 4" \
    "--key 7:7:hmac(sha1):$SECRET --send 1000 --timeout 4"
I=$(line AOINFO ao-badkeyid.s)
check ao-badkeyid-fails "$(t "$SRC" -ne 0 -a "$CRC" -ne 0)" "server=$SRC client=$CRC"
check ao-badkeyid-counted "$(t "$(kv "$I" pkt_key_not_found)" -gt 0)" \
    "pkt_key_not_found=$(kv "$I" pkt_key_not_found) pkt_bad=$(kv "$I" pkt_bad)"

# 4. ao_required listener, client without TCP-AO: refused, counted as pkt_ao_required.
pair ao-required 7004 "--key $K --ao-required --recv --timeout 4" "--send 1000 --timeout 4"
I=$(line AOINFO ao-required.s)
check ao-required-fails "$(t "$SRC" -ne 0 -a "$CRC" -ne 0)" "server=$SRC client=$CRC"
check ao-required-counted "$(t "$(kv "$I" pkt_ao_required)" -gt 0)" \
    "pkt_ao_required=$(kv "$I" pkt_ao_required)"

# 5. Three keys, one per algorithm; both sides roll Current/RNext over twice mid-stream (the
#    client counting sent bytes, the server received bytes). Both must: Linux switches its
#    Current_key to whatever the peer asks for in RNextKeyID on every verified segment, so a
#    one-sided switch is undone by the next segment from the peer. Small socket buffers keep
#    the two byte counts (and so the two rollovers) close together on the wire; with default
#    (autotuned) buffers the whole transfer can be in flight before the receiver rolls.
M=786432
KS="--key 1:1:hmac(sha1):$SECRET --key 2:2:cmac(aes128):$SECRET --key 3:3:hmac(sha256):$SECRET"
ROLL="--rollover-at 262144:2:2 --rollover-at 524288:3:3"
pair ao-rollover 7005 "$KS $ROLL --rcvbuf 16384 --recv --timeout 60" \
    "$KS --current 1 --rnext 1 --sndbuf 16384 --send $M $ROLL --timeout 60"
R=$(line RESULT ao-rollover.s)
check ao-rollover-transfer \
    "$(t "$SRC" -eq 0 -a "$CRC" -eq 0 -a "$(kv "$R" sha256)" = "$(aopeer gen $M | sha256sum | cut -d' ' -f1)")" \
    "server=$SRC client=$CRC received=$(kv "$R" received)"
check ao-rollover-events "$(t "$(cat ao-rollover.c ao-rollover.s | grep -c '^ROLLOVER')" -eq 4)" \
    "$(cat ao-rollover.c ao-rollover.s | grep '^ROLLOVER' | tr '\n' ' ')"
for id in 1 2 3; do
    check "ao-rollover-key$id-used" \
        "$(t "$(keyfield ao-rollover.s $id pkt_good)" -gt 0 -a "$(keyfield ao-rollover.s $id pkt_bad)" -eq 0)" \
        "server key $id: pkt_good=$(keyfield ao-rollover.s $id pkt_good) pkt_bad=$(keyfield ao-rollover.s $id pkt_bad)"
done
for side in c s; do
    I=$(line AOINFO ao-rollover.$side)
    check "ao-rollover-final-keys-$side" "$(t "$(kv "$I" current_key)" = 3 -a "$(kv "$I" rnext)" = 3)" \
        "current_key=$(kv "$I" current_key) rnext=$(kv "$I" rnext)"
done

# 6. Hex secret, TCP_AO_KEYF_EXCLUDE_OPT, 16-byte MAC, both directions at once.
KX="5:6:hmac(sha256):0x000102030405060708090a0b0c0d0e0f:x"
KY="6:5:hmac(sha256):0x000102030405060708090a0b0c0d0e0f:x"
pair ao-excludeopt 7006 "--key $KX --maclen 16 --send 65536 --recv --timeout 60" \
    "--key $KY --maclen 16 --send 65536 --recv --timeout 60"
R=$(line RESULT ao-excludeopt.s)
CR=$(line RESULT ao-excludeopt.c)
G=$(aopeer gen 65536 | sha256sum | cut -d' ' -f1)
check ao-excludeopt "$(t "$SRC" -eq 0 -a "$CRC" -eq 0 -a "$(kv "$R" sha256)" = "$G" -a "$(kv "$CR" sha256)" = "$G")" \
    "server=$SRC client=$CRC maclen=$(keyfield ao-excludeopt.s 5 maclen)"

# 7. IPv6, keys bound to the peer address ::1/128, 64 KB.
KV="4:4:hmac(sha1):$SECRET"
aopeer server --listen ::1 --port 7007 --key "$KV" --peer ::1/128 --recv --timeout 60 >ao-v6.s 2>&1 &
sp=$!
wait_for_line ao-v6.s '^(LISTENING|ERROR)' 10
aopeer client --connect ::1 --port 7007 --key "$KV" --peer ::1/128 --send 65536 --timeout 60 >ao-v6.c 2>&1
CRC=$?
wait "$sp"
SRC=$?
record "ao-v6 server rc=$SRC" ao-v6.s
record "ao-v6 client rc=$CRC" ao-v6.c
R=$(line RESULT ao-v6.s)
I=$(line AOINFO ao-v6.s)
check ao-ipv6-peer "$(t "$SRC" -eq 0 -a "$CRC" -eq 0 -a "$(kv "$R" sha256)" = "$G" -a "$(kv "$I" pkt_good)" -gt 0 -a "$(kv "$I" pkt_bad)" -eq 0)" \
    "server=$SRC client=$CRC pkt_good=$(kv "$I" pkt_good) pkt_bad=$(kv "$I" pkt_bad)"

# 8. Plain TCP with the namespace: the host (selftest.sh) connects to us over IPv4 ...
aopeer server --listen 192.0.2.2 --port 7100 --send 65536 --recv --timeout 60 >plain4.s 2>&1 &
sp=$!
wait_for_line plain4.s '^(LISTENING|ERROR)' 10
echo "SELFTEST-READY plain4"
wait "$sp"
SRC=$?
record "plain4 server rc=$SRC" plain4.s
R=$(line RESULT plain4.s)
check plain-v4-from-namespace "$(t "$SRC" -eq 0 -a "$(kv "$R" sha256)" = "$G")" \
    "server=$SRC received=$(kv "$R" received)"

# 9. ... and we connect to the host's server over IPv6.
aopeer client --connect 2001:db8:1::1 --port 7101 --send 65536 --recv --timeout 30 >plain6.c 2>&1
CRC=$?
record "plain6 client rc=$CRC" plain6.c
R=$(line RESULT plain6.c)
check plain-v6-to-namespace "$(t "$CRC" -eq 0 -a "$(kv "$R" sha256)" = "$G")" \
    "client=$CRC received=$(kv "$R" received)"

echo "SELFTEST-GUEST-DONE fail=$fail"
exit "$fail"
