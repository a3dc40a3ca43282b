#!/bin/sh
# guest-init.sh — becomes /init of the interop guest's initramfs (busybox sh, run as PID 1).
# Mounts proc/sys/devtmpfs/tmpfs, brings up lo and eth0 (no addresses: the scenario adds them,
# see /lib/interop/guest-net.sh), disables IPv6 DAD on eth0 (busybox `ip addr add` has no
# nodad), runs /scenario.sh if present, prints `GUEST-EXIT <rc>` and powers off (reboot -f;
# qemu runs with -no-reboot, so it exits).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run

echo 0 >/proc/sys/net/ipv6/conf/default/accept_dad
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    echo 0 >/proc/sys/net/ipv6/conf/eth0/accept_dad
    ip link set eth0 up
else
    echo "GUEST-WARN no eth0"
fi
echo "GUEST-BOOT kernel=$(uname -r) version=\"$(cat /proc/version)\""

rc=0
if [ -f /scenario.sh ]; then
    cd /tmp && sh /scenario.sh
    rc=$?
else
    echo "GUEST-WARN no /scenario.sh"
fi
echo "GUEST-EXIT $rc"
sync
reboot -f
# Not reached; if it were, PID 1 exiting panics the kernel and panic=-1 ends qemu.
sleep 5
