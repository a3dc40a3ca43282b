#!/usr/bin/env bash
# build-kernel.sh — builds (or finds in the cache) a minimal x86_64 Linux bzImage with native
# TCP-AO (CONFIG_TCP_AO=y), used as the reference TCP-AO peer inside a qemu guest.
#
# Source: Debian trixie's binary package linux-source-6.12, fetched with a private apt state
# (own sources list, own lists and cache dirs under the cache root) so the system's bookworm
# apt state is never touched. Config: `make tinyconfig` + kernel.config (merge_config.sh) +
# `make olddefconfig`; then `make -j2 bzImage`.
#
# Cache (outside the repo):
#   ${TCPAOD_INTEROP_CACHE:-/var/cache/tcpaod-interop}/kernel-<pkg version>-<sha256(kernel.config):12>/
#     bzImage  config  kernelrelease  uapi/linux/tcp.h  build.log
# A cached build is reused without network access once the private trixie package lists exist;
# TCPAOD_INTEROP_REFRESH=1 forces an `apt-get update` of those lists (and so a newer source).
#
# Pinning: TCPAOD_INTEROP_KERNEL_VERSION=<Debian version of linux-source-6.12> (e.g. 6.12.117-1)
# uses exactly that source: its cached build if there is one (no network), else it is downloaded
# and built. Debian's mirror carries only the current version; for an older one point
# TCPAOD_INTEROP_TRIXIE_MIRROR at a snapshot, e.g. https://snapshot.debian.org/archive/debian/20251101T000000Z
#
# Usage: build-kernel.sh            (last stdout line: the bzImage path)
set -euo pipefail

# shellcheck source=lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

FRAGMENT=$INTEROP_DIR/kernel.config
SRC_PKG=linux-source-6.12
MIRROR=${TCPAOD_INTEROP_TRIXIE_MIRROR:-http://deb.debian.org/debian}
CFG_HASH=$(sha256sum "$FRAGMENT" | cut -c1-12)

APTDIR=$INTEROP_CACHE/apt-trixie
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/debs"
printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s trixie main\n' \
    "$MIRROR" >"$APTDIR/sources.list"

# Every apt call of this script uses only the private state below.
APT_OPTS=(
    -o "Dir::Etc::sourcelist=$APTDIR/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$APTDIR/lists"
    -o "Dir::Cache=$APTDIR/cache"
    -o "APT::Get::List-Cleanup=0"
    -o "Acquire::Languages=none"
    -o "APT::Sandbox::User=root"
)

# Serialise concurrent runs (they would share the build dir and the private apt lists).
exec 9>"$INTEROP_CACHE/.kernel.lock"
flock 9

private_update() {
    log "apt-get update (private trixie lists in $APTDIR)"
    apt-get -qq "${APT_OPTS[@]}" update >/dev/null
}

src_version() {
    apt-cache "${APT_OPTS[@]}" show --no-all-versions "$SRC_PKG" 2>/dev/null \
        | awk '/^Version:/ && !v { v = $2 } END { print v }'
}

lists_present() {
    compgen -G "$APTDIR/lists/*_Packages*" >/dev/null
}

# 1. Which source version? The pinned one; else the private lists' if we have them (no
#    network), else fetch them.
PIN=${TCPAOD_INTEROP_KERNEL_VERSION:-}
VERSION=$PIN
if [ -n "$PIN" ]; then
    log "kernel source pinned by TCPAOD_INTEROP_KERNEL_VERSION: $SRC_PKG $PIN"
elif [ "${TCPAOD_INTEROP_REFRESH:-0}" != 1 ] && lists_present; then
    VERSION=$(src_version || true)
fi
if [ -z "$VERSION" ] && [ -z "$PIN" ]; then
    interop_ensure_pkgs apt debian-archive-keyring
    private_update
    VERSION=$(src_version || true)
    [ -n "$VERSION" ] || die "$SRC_PKG not found in trixie ($MIRROR)"
fi

OUT=$INTEROP_CACHE/kernel-$VERSION-$CFG_HASH
if [ -s "$OUT/bzImage" ] && grep -qx 'CONFIG_TCP_AO=y' "$OUT/config" 2>/dev/null; then
    log "cached kernel $(cat "$OUT/kernelrelease") ($SRC_PKG $VERSION, config $CFG_HASH)"
    echo "$OUT/bzImage"
    exit 0
fi

# 2. Build.
log "building kernel from $SRC_PKG $VERSION with kernel.config $CFG_HASH (takes ~10 min on 2 cores)"
interop_ensure_pkgs build-essential bc flex bison libelf-dev libssl-dev cpio xz-utils kmod

DEB=$(compgen -G "$APTDIR/debs/${SRC_PKG}_${VERSION//:/%3a}_*.deb" | sed -n 1p || true)
if [ -z "$DEB" ]; then
    if [ -n "$PIN" ] && ! lists_present; then
        interop_ensure_pkgs apt debian-archive-keyring
        private_update
    fi
    if ! (cd "$APTDIR/debs" && apt-get -qq "${APT_OPTS[@]}" download "$SRC_PKG=$VERSION" >/dev/null); then
        # Stale lists can name a version the mirror no longer has: refresh once and retry.
        private_update
        if [ -n "$PIN" ]; then
            # Pinned: that version or nothing (no re-run with whatever trixie has now).
            (cd "$APTDIR/debs" && apt-get -qq "${APT_OPTS[@]}" download "$SRC_PKG=$VERSION" >/dev/null) \
                || die "$SRC_PKG $PIN (TCPAOD_INTEROP_KERNEL_VERSION) is not available from $MIRROR (trixie has $(src_version || echo nothing)); for an older version set TCPAOD_INTEROP_TRIXIE_MIRROR to a snapshot.debian.org URL"
        else
            NEW_VERSION=$(src_version)
            [ "$NEW_VERSION" = "$VERSION" ] || {
                log "trixie now has $SRC_PKG $NEW_VERSION; re-running"
                exec 9>&-
                exec "$0" "$@"
            }
            (cd "$APTDIR/debs" && apt-get -qq "${APT_OPTS[@]}" download "$SRC_PKG=$VERSION" >/dev/null)
        fi
    fi
    DEB=$(compgen -G "$APTDIR/debs/${SRC_PKG}_${VERSION//:/%3a}_*.deb" | sed -n 1p)
    [ -n "$DEB" ] || die "apt-get download of $SRC_PKG $VERSION left no .deb"
    # Keep only this version's .deb (~150 MB each); removed only now, so that a failed download
    # (say, of a pinned version the mirror lacks) does not cost the cached one.
    for f in "$APTDIR/debs/${SRC_PKG}_"*.deb; do [ "$f" = "$DEB" ] || rm -f "$f"; done
fi
log "source package: $DEB"

WORK=$(mktemp -d "$INTEROP_CACHE/kbuild.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$WORK" --wildcards './usr/src/linux-source-*.tar.xz'
TARBALL=$(compgen -G "$WORK/usr/src/linux-source-*.tar.xz" | sed -n 1p)
[ -n "$TARBALL" ] || die "no kernel tarball inside $DEB"
tar -xJf "$TARBALL" -C "$WORK"
rm -rf "${WORK:?}/usr"
KSRC=$(compgen -G "$WORK/linux-source-*" | sed -n 1p)
[ -d "$KSRC" ] || die "tarball did not unpack to linux-source-*"

LOGFILE=$WORK/build.log
{
    make -C "$KSRC" tinyconfig
    "$KSRC/scripts/kconfig/merge_config.sh" -m -O "$KSRC" "$KSRC/.config" "$FRAGMENT"
    make -C "$KSRC" olddefconfig
} >"$LOGFILE" 2>&1 || { tail -n 40 "$LOGFILE" >&2; die "kernel configuration failed"; }

# Every line of the fragment must have survived olddefconfig (a dropped one means an unmet
# dependency); CONFIG_TCP_AO=y is the one that matters, check it by name as well.
unapplied=0
while IFS= read -r line; do
    case $line in CONFIG_*=*) ;; *) continue ;; esac
    if ! grep -qxF "$line" "$KSRC/.config"; then
        log "kernel.config line not in the final .config: $line"
        unapplied=1
    fi
done <"$FRAGMENT"
grep -qx 'CONFIG_TCP_AO=y' "$KSRC/.config" || die "CONFIG_TCP_AO=y is NOT set in the built .config"
[ "$unapplied" -eq 0 ] || die "kernel.config was not fully applied (see above)"

log "make -j2 bzImage (log: $LOGFILE while it runs)"
if ! make -C "$KSRC" -j2 bzImage >>"$LOGFILE" 2>&1; then
    tail -n 60 "$LOGFILE" >&2
    die "kernel build failed"
fi
grep -qx 'CONFIG_TCP_AO=y' "$KSRC/.config" || die "CONFIG_TCP_AO=y is NOT set in the built .config"

STAGE=$WORK/out
mkdir -p "$STAGE/uapi/linux"
cp "$KSRC/arch/x86/boot/bzImage" "$STAGE/bzImage"
cp "$KSRC/.config" "$STAGE/config"
cp "$KSRC/include/uapi/linux/tcp.h" "$STAGE/uapi/linux/tcp.h"
make -C "$KSRC" -s kernelrelease >"$STAGE/kernelrelease"
echo "$SRC_PKG $VERSION" >"$STAGE/source"
cp "$LOGFILE" "$STAGE/build.log"
rm -rf "$OUT"
mv "$STAGE" "$OUT"
log "built kernel $(cat "$OUT/kernelrelease") -> $OUT"
echo "$OUT/bzImage"
