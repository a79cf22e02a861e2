# shellcheck shell=bash
# Shared helpers for the toolchain scripts. Sourced, never run.
# Everything downloaded or built lives under $KRYONIX_CACHE (outside the clone).
KRYONIX_CACHE="${KRYONIX_CACHE:-$HOME/.cache/kryonix-ci}"
export KRYONIX_CACHE
mkdir -p "$KRYONIX_CACHE"

# Messages go to stderr: stdout of kotlin.sh is KEY=VALUE lines meant for eval.
log() { echo "==> $*" >&2; }

# apt_install PKG...: installs the packages that are missing (as root, or through sudo).
# `apt-get update` runs once per call, only when something has to be installed.
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  log "apt-get install ${missing[*]}"
  local aptlog="$KRYONIX_CACHE/apt.log"
  if ! { "${sudo[@]}" apt-get update -qq &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$aptlog" 2>&1; then
    tail -20 "$aptlog" >&2
    echo "apt-get install ${missing[*]} failed (log: $aptlog)" >&2
    return 1
  fi
}

# safe_rm DIR: `rm -rf` for our own cache/temp trees, refusing if anything is mounted below DIR
# (a bind mount left in the root would otherwise let rm reach the mounted host directory).
safe_rm() {
  local d="$1"
  [ -e "$d" ] || return 0
  if awk -v p="$d/" 'index($2 "/", p) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
    echo "refusing to delete $d: something is mounted below it" >&2
    return 1
  fi
  rm -rf --one-file-system "$d"
}
