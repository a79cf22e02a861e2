#!/usr/bin/env bash
# Creates (once) and reuses a Debian trixie root with Debian's `swiftlang` 6.x + libc6-dev, for
# compiling and running the Swift bindings on this Debian 12 host. Run as root (debootstrap, chroot).
#
#   scripts/toolchain/swift-root.sh         # root: ${SWIFT_ROOT:-$KRYONIX_CACHE/swift-trixie-root}
#
# A finished root carries ROOT/.swift-root-ready (the `swiftc --version` line): reuse is instant.
# A half-built root only ever exists as ROOT.partial and is removed on the next call.
# Every mount happens inside `unshare --mount --propagation private`, so nothing stays mounted in
# the root when a job dies, and `rm -rf` of the root can never reach through a bind mount.
set -euo pipefail
. "$(dirname "$0")/common.sh"

ROOT="${SWIFT_ROOT:-$KRYONIX_CACHE/swift-trixie-root}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [ -f "$ROOT/.swift-root-ready" ]; then
  log "swift root: reusing $ROOT ($(cat "$ROOT/.swift-root-ready"))"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "swift-root.sh must run as root (debootstrap, chroot)" >&2; exit 1; }

mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
flock 9 # one builder per machine; a second job waits here and then reuses the result
if [ -f "$ROOT/.swift-root-ready" ]; then
  log "swift root: reusing $ROOT ($(cat "$ROOT/.swift-root-ready"))"
  exit 0
fi

# Leftovers of an interrupted run are plain directory trees (mounts only ever live in private
# namespaces); safe_rm still refuses to delete anything that has a mount below it.
safe_rm "$ROOT"
safe_rm "$ROOT.partial"

apt_install debootstrap

t0=$(date +%s)
log "swift root: debootstrap trixie (log: $ROOT.debootstrap.log)"
if ! debootstrap --variant=minbase trixie "$ROOT.partial" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1; then
  tail -20 "$ROOT.debootstrap.log" >&2
  exit 1
fi
t1=$(date +%s)

# /proc is needed by apt and by every Swift tool (they find libswiftCore.so via RPATH $ORIGIN,
# which glibc resolves through /proc/self/exe). libc6-dev is only a Recommends of gcc, hence explicit.
log "swift root: apt-get install swiftlang libc6-dev (log: $ROOT.apt.log)"
# shellcheck disable=SC2016 # the inner script expands its own arguments
if ! unshare --mount --propagation private bash -euc '
  R=$1
  mount -t proc proc "$R/proc"
  chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends swiftlang libc6-dev
  chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin apt-get clean
' bash "$ROOT.partial" >"$ROOT.apt.log" 2>&1; then
  tail -20 "$ROOT.apt.log" >&2
  exit 1
fi
t2=$(date +%s)

# shellcheck disable=SC2016
V=$(unshare --mount --propagation private bash -euc '
  mount -t proc proc "$1/proc"
  chroot "$1" /usr/bin/env -i PATH=/usr/bin:/bin swiftc --version 2>/dev/null | head -1
' bash "$ROOT.partial")
# Not pinned to 6.0.3-2: a trixie point release would drop that exact version from the mirror.
case "$V" in
  "Swift version 6."*) ;;
  *) echo "unexpected swiftc version: $V" >&2; exit 1 ;;
esac
echo "$V" >"$ROOT.partial/.swift-root-ready"
mv "$ROOT.partial" "$ROOT"
log "swift root: built $ROOT in $((t2 - t0))s (debootstrap $((t1 - t0))s, apt $((t2 - t1))s): $V"
