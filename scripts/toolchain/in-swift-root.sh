#!/usr/bin/env bash
# Runs a shell command inside the Swift root (see swift-root.sh) with a host directory at /src.
#
#   scripts/toolchain/in-swift-root.sh 'swiftc main.swift -o main && ./main'
#
# Environment: SWIFT_ROOT (default $KRYONIX_CACHE/swift-trixie-root); SWIFT_SRC, the host directory
# mounted read-write at /src, which is also the working directory (default: the current directory);
# EXTRA_BIND="/host/dir:/in/root ..." for more bind mounts.
# The mounts live in a private mount namespace: they vanish with the command, even if it is killed.
# The command sees a clean environment (the host's PATH and LD_LIBRARY_PATH mean nothing inside).
# Binaries built inside only run inside (the root's glibc and Swift runtime are newer than the host's).
set -euo pipefail
. "$(dirname "$0")/common.sh"

ROOT="${SWIFT_ROOT:-$KRYONIX_CACHE/swift-trixie-root}"
SRC="$(cd "${SWIFT_SRC:-$PWD}" && pwd -P)"
[ -f "$ROOT/.swift-root-ready" ] || { echo "no swift root at $ROOT: run scripts/toolchain/swift-root.sh" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "in-swift-root.sh must run as root (mount, chroot)" >&2; exit 1; }
[ "$#" -gt 0 ] || { echo "usage: $0 'shell command'" >&2; exit 2; }

# shellcheck disable=SC2016 # the inner script expands its own arguments
exec unshare --mount --propagation private bash -euc '
  R=$1 W=$2 CMD=$3
  mount -t proc proc "$R/proc"
  mount --bind /dev "$R/dev"
  mkdir -p "$R/src"
  mount --bind "$W" "$R/src"
  for b in ${EXTRA_BIND:-}; do
    mkdir -p "$R${b#*:}"
    mount --bind "${b%%:*}" "$R${b#*:}"
  done
  exec chroot "$R" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb \
    /bin/bash -euo pipefail -c "cd /src; $CMD"
' bash "$ROOT" "$SRC" "$*"
