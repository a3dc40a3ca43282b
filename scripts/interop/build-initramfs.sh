#!/usr/bin/env bash
# build-initramfs.sh — builds (or finds in the cache) the interop guest's base initramfs:
# a gzip'd newc cpio with Debian's busybox-static (all applets as symlinks), a statically
# linked aopeer (/bin/aopeer), /init (guest-init.sh) and /lib/interop/guest-net.sh.
# run-guest.sh appends the scenario as a second, uncompressed cpio at boot time.
#
# Cache (outside the repo), keyed by a hash of every input (these scripts, aopeer.c, the
# busybox binary, gcc and libc versions):
#   ${TCPAOD_INTEROP_CACHE:-/var/cache/tcpaod-interop}/initramfs-<hash>/initramfs.cpio.gz
# If build-kernel.sh has cached a 6.12 UAPI linux/tcp.h, aopeer.c is also compiled once
# against it (syntax only) to prove its own copy of the TCP-AO structs matches the kernel's.
#
# Usage: build-initramfs.sh        (last stdout line: the initramfs path)
set -euo pipefail

# shellcheck source=lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

interop_ensure_pkgs build-essential cpio gzip libc6-dev

# busybox-static conflicts with the dynamic `busybox` package; don't replace that one, unpack
# busybox-static's .deb into the cache instead.
BUSYBOX=/bin/busybox
if ! interop_have_pkg busybox-static; then
    if interop_have_pkg busybox; then
        BBDIR=$INTEROP_CACHE/busybox-static
        if [ ! -x "$BBDIR/root/bin/busybox" ]; then
            log "busybox (dynamic) is installed; unpacking busybox-static into $BBDIR"
            rm -rf "$BBDIR" && mkdir -p "$BBDIR/root"
            (cd "$BBDIR" && apt-get -qq -o APT::Sandbox::User=root download busybox-static >/dev/null 2>&1) ||
                { apt-get -qq update >/dev/null &&
                  (cd "$BBDIR" && apt-get -qq -o APT::Sandbox::User=root download busybox-static >/dev/null); }
            dpkg-deb -x "$BBDIR"/busybox-static_*.deb "$BBDIR/root"
        fi
        BUSYBOX=$BBDIR/root/bin/busybox
    else
        interop_ensure_pkgs busybox-static
    fi
fi
[ -x "$BUSYBOX" ] || die "no busybox binary at $BUSYBOX"
if file_out=$(LC_ALL=C file -b "$BUSYBOX" 2>/dev/null); then
    case $file_out in *dynamically*) die "$BUSYBOX is not static ($file_out)" ;; esac
fi

INPUTS=("$INTEROP_DIR/build-initramfs.sh" "$INTEROP_DIR/aopeer.c" "$INTEROP_DIR/guest-init.sh"
        "$INTEROP_DIR/guest-net.sh" "$BUSYBOX")
KEY=$({
    interop_hash "${INPUTS[@]}"
    gcc --version | sed -n 1p
    dpkg-query -W -f='${Version}\n' libc6-dev
} | sha256sum | cut -c1-16)
OUT=$INTEROP_CACHE/initramfs-$KEY
mkdir -p "$INTEROP_CACHE"
exec 8>"$INTEROP_CACHE/.initramfs.lock"
flock 8
if [ -s "$OUT/initramfs.cpio.gz" ]; then
    log "cached initramfs $KEY"
    echo "$OUT/initramfs.cpio.gz"
    exit 0
fi

WORK=$(mktemp -d "$INTEROP_CACHE/irbuild.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# Layout check against the kernel's own header (if a cached kernel build left one).
UAPI=$(compgen -G "$INTEROP_CACHE/kernel-*/uapi/linux/tcp.h" | tail -n 1 || true)
if [ -n "$UAPI" ]; then
    gcc -fsyntax-only -Wall -Wextra -I "${UAPI%/linux/tcp.h}" "$INTEROP_DIR/aopeer.c" ||
        die "aopeer.c does not compile against $UAPI (TCP-AO struct layout mismatch?)"
    log "aopeer.c TCP-AO structs match $UAPI"
fi

ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,root,lib/interop}
gcc -static -O2 -Wall -Wextra -o "$ROOT/bin/aopeer" "$INTEROP_DIR/aopeer.c"
strip "$ROOT/bin/aopeer"
cp "$BUSYBOX" "$ROOT/bin/busybox"
# One symlink per applet, at the path busybox itself names (bin/sh, sbin/ip, ...).
while IFS= read -r applet; do
    [ -n "$applet" ] || continue
    [ -e "$ROOT/$applet" ] || [ -L "$ROOT/$applet" ] || ln -s /bin/busybox "$ROOT/$applet"
done < <("$BUSYBOX" --list-full)
install -m 0755 "$INTEROP_DIR/guest-init.sh" "$ROOT/init"
install -m 0644 "$INTEROP_DIR/guest-net.sh" "$ROOT/lib/interop/guest-net.sh"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"
# The kernel's built-in initramfs already has /dev/console; add it anyway for clarity.
mknod -m 600 "$ROOT/dev/console" c 5 1 2>/dev/null || true

(cd "$ROOT" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null --reproducible -o -H newc --owner 0:0 --quiet) | gzip -9n >"$WORK/initramfs.cpio.gz"

mkdir -p "$WORK/out"
mv "$WORK/initramfs.cpio.gz" "$WORK/out/"
"$BUSYBOX" | sed -n 1p >"$WORK/out/busybox-version"
rm -rf "$OUT"
mv "$WORK/out" "$OUT"
# Forget initramfs builds of other inputs that have not been rebuilt for two weeks.
find "$INTEROP_CACHE" -maxdepth 1 -type d -name 'initramfs-*' ! -name "initramfs-$KEY" \
    -mtime +14 -exec rm -rf {} +
log "built initramfs $KEY ($(du -h "$OUT/initramfs.cpio.gz" | cut -f1))"
echo "$OUT/initramfs.cpio.gz"
