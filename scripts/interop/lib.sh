#!/usr/bin/env bash
# lib.sh — helpers sourced by the scripts in scripts/interop/ (not meant to be run).
# Provides: log/die, the cache root, and an idempotent, quiet apt-get installer.
# shellcheck shell=bash

INTEROP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
INTEROP_CACHE=${TCPAOD_INTEROP_CACHE:-/var/cache/tcpaod-interop}
export INTEROP_DIR INTEROP_CACHE

log() { printf '[interop] %s\n' "$*" >&2; }
die() { printf '[interop] ERROR: %s\n' "$*" >&2; exit 1; }

# interop_have_pkg PKG: true if the Debian package is installed.
interop_have_pkg() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

# interop_ensure_pkgs PKG...: installs the missing ones (no recommends), quietly.
# Runs `apt-get update` once and retries when the first attempt fails (fresh machine).
interop_ensure_pkgs() {
    local missing=() p
    for p in "$@"; do
        interop_have_pkg "$p" || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "need root to apt-get install ${missing[*]}"
    log "apt-get install ${missing[*]}"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -qq --no-install-recommends
               -o Dpkg::Use-Pty=0 -o APT::Color=0)
    if ! "${apt[@]}" install "${missing[@]}" >/dev/null 2>&1; then
        log "apt-get update (install failed on the current package lists)"
        DEBIAN_FRONTEND=noninteractive apt-get -qq update >/dev/null
        "${apt[@]}" install "${missing[@]}" >/dev/null
    fi
}

# interop_hash FILE...: short (16 hex) sha256 over the named files' contents, in order.
interop_hash() {
    cat "$@" | sha256sum | cut -c1-16
}

# interop_wait_for_log FILE ERE SECONDS [PID]: waits until a line of FILE matches ERE (the
# guest console has CRLF line ends: don't anchor ERE with $). Fails after SECONDS, or early
# when PID (e.g. a background run-guest.sh) has exited.
interop_wait_for_log() {
    local file=$1 re=$2 limit=$(( $3 * 10 )) pid=${4:-}
    while [ "$limit" -gt 0 ]; do
        grep -qaE -- "$re" "$file" 2>/dev/null && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            grep -qaE -- "$re" "$file" 2>/dev/null && return 0
            return 1
        fi
        sleep 0.1
        limit=$((limit - 1))
    done
    return 1
}
