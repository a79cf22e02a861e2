#!/usr/bin/env bash
# A local Sentinel group for development and tests: a mobile_sync primary, one replica, and three
# Sentinels (quorum 2), all on 127.0.0.1 and daemonized, each in its own directory under --dir.
#
#   deploy/sentinel/local-sentinel.sh start --dir /tmp/ks --primary-port 6380 --replica-port 6381 \
#       --sentinel-ports "26379 26380 26381" [--master-name mobile-sync] [--down-after 5000] \
#       [--failover-timeout 60000] [--maxmemory 256mb] [--tls-dir DIR] [--requirepass PW]
#   deploy/sentinel/local-sentinel.sh stop --dir /tmp/ks
#
# With --tls-dir (holding ca.pem, server.pem and server.key) every process, Sentinels included,
# speaks TLS only, replication too; with --requirepass both Redis nodes require that password
# (the replica and the Sentinels authenticate with it; the Sentinels themselves need none).
#
# The Redis nodes run deploy/redis-mobile-sync.conf (the replica adds the directives of
# redis-mobile-sync-replica.conf) and the Sentinels run sentinel.conf, with only the addresses,
# directories and the options above changed. Sentinel rewrites its config file (and its monitored
# nodes' files on failover), so every process gets its own copy in the run directory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

usage() {
  sed -n '5,8p' "$0" >&2
  exit 2
}

die() {
  echo "local-sentinel: $*" >&2
  exit 1
}

# Polls a command for up to $1 seconds (in 0.1 s steps); fails naming $2.
wait_until() {
  local seconds=$1 what=$2
  shift 2
  local tries=$((seconds * 10))
  until "$@"; do
    tries=$((tries - 1))
    [ "$tries" -gt 0 ] || die "timed out after ${seconds}s waiting for $what"
    sleep 0.1
  done
}

# redis-cli as clients must speak: TLS when the processes need it, the password for data nodes.
sentinel_cli() {
  local args=()
  if [ -n "$tls_dir" ]; then args+=(--tls --cacert "$tls_dir/ca.pem"); fi
  redis-cli "${args[@]}" "$@"
}
cli() {
  if [ -n "$requirepass" ]; then
    sentinel_cli --no-auth-warning -a "$requirepass" "$@"
  else
    sentinel_cli "$@"
  fi
}

pings() { [ "$(cli -p "$1" ping 2>/dev/null)" = PONG ]; }

replica_synced() { cli -p "$1" info replication 2>/dev/null | grep -q '^master_link_status:up'; }

# A Sentinel can take part in a failover once it knows the replica and both other Sentinels.
sentinel_ready() {
  sentinel_cli -p "$1" sentinel ckquorum "$master_name" 2>/dev/null | grep -q '^OK 3 usable' &&
    sentinel_cli -p "$1" sentinel replicas "$master_name" 2>/dev/null | grep -qx "$replica_port"
}

# A pid from a pid file, if that process still runs.
live_pid() {
  local pid stat
  pid=$(cat "$1" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # A zombie (exited, but init has not reaped it: some containers' init never does) has closed
  # its ports and counts as gone. Only Linux shows it, in /proc.
  if [ -r "/proc/$pid/stat" ]; then
    read -r stat <"/proc/$pid/stat"
    case ${stat##*") "} in Z*) return 1 ;; esac
  fi
  echo "$pid"
}

gone() { ! live_pid "$1" >/dev/null; }

stop_all() {
  local pidfile pid
  # Sentinels first, so they do not fail over while the Redis nodes shut down.
  for pidfile in "$dir"/sentinel-*/redis.pid "$dir"/redis-*/redis.pid; do
    [ -e "$pidfile" ] || continue
    if pid=$(live_pid "$pidfile"); then
      kill -TERM "$pid" 2>/dev/null || true
      wait_until 10 "pid $pid to exit" gone "$pidfile"
    fi
    rm -f "$pidfile"
  done
}

# The settings every process gets on top of its template: where it listens and keeps its files.
local_settings() {
  local port=$1 node_dir=$2
  local client_port="port $port"
  if [ -n "$tls_dir" ]; then client_port="port 0"; fi
  cat <<EOF

# Local run (local-sentinel.sh):
$client_port
bind 127.0.0.1
dir "$node_dir"
daemonize yes
pidfile "$node_dir/redis.pid"
logfile "$node_dir/redis.log"
EOF
  if [ -n "$tls_dir" ]; then
    cat <<EOF
tls-port $port
tls-cert-file "$tls_dir/server.pem"
tls-key-file "$tls_dir/server.key"
tls-ca-cert-file "$tls_dir/ca.pem"
tls-auth-clients no
tls-replication yes
EOF
  fi
}

write_redis_config() {
  local port=$1 node_dir="$dir/redis-$1"
  mkdir -p "$node_dir"
  # `dir` takes effect while the file is read (the production path need not exist here).
  {
    sed -E '/^(port|bind|dir) /d' "$here/../redis-mobile-sync.conf"
    local_settings "$port" "$node_dir"
    if [ -n "$maxmemory" ]; then echo "maxmemory $maxmemory"; fi
    if [ -n "$requirepass" ]; then
      printf 'requirepass "%s"\nmasterauth "%s"\n' "$requirepass" "$requirepass"
    fi
    if [ "$port" = "$replica_port" ]; then
      sed -E '/^(include|replicaof) /d' "$here/redis-mobile-sync-replica.conf"
      echo "replicaof 127.0.0.1 $primary_port"
    fi
  } >"$node_dir/redis.conf"
}

write_sentinel_config() {
  local port=$1 node_dir="$dir/sentinel-$1"
  mkdir -p "$node_dir"
  {
    sed -E \
      -e '/^(port|bind|dir) /d' \
      -e "s/^sentinel monitor .*/sentinel monitor $master_name 127.0.0.1 $primary_port 2/" \
      -e "s/^(sentinel [a-z-]+) mobile-sync /\\1 $master_name /" \
      -e "s/^(sentinel down-after-milliseconds [^ ]+) .*/\\1 $down_after/" \
      -e "s/^(sentinel failover-timeout [^ ]+) .*/\\1 $failover_timeout/" \
      "$here/sentinel.conf"
    local_settings "$port" "$node_dir"
    if [ -n "$requirepass" ]; then
      printf 'sentinel auth-pass %s "%s"\n' "$master_name" "$requirepass"
    fi
  } >"$node_dir/sentinel.conf"
}

start_all() {
  local port
  if [ -z "$primary_port" ] || [ -z "$replica_port" ]; then usage; fi
  read -r -a sentinel_list <<<"$sentinel_ports"
  [ "${#sentinel_list[@]}" -eq 3 ] || die "--sentinel-ports needs three ports (quorum 2 of 3)"
  # The name goes into sed expressions and config lines.
  [[ $master_name =~ ^[A-Za-z0-9._-]+$ ]] || die "--master-name: letters, digits, . _ - only"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ ! -e "$dir/sentinel-${sentinel_list[0]}/sentinel.conf" ] ||
    die "$dir already holds a Sentinel group; stop it and use a fresh directory"

  write_redis_config "$primary_port"
  write_redis_config "$replica_port"
  for port in "${sentinel_list[@]}"; do write_sentinel_config "$port"; done

  # From here on a failure stops whatever was started, so a retry finds the ports free.
  trap 'echo "local-sentinel: start failed, stopping everything" >&2; stop_all' EXIT
  redis-server "$dir/redis-$primary_port/redis.conf"
  redis-server "$dir/redis-$replica_port/redis.conf"
  wait_until 10 "the primary to answer PING" pings "$primary_port"
  wait_until 30 "the replica to sync" replica_synced "$replica_port"
  for port in "${sentinel_list[@]}"; do
    redis-server "$dir/sentinel-$port/sentinel.conf" --sentinel
  done
  # Sentinels find each other through hello messages every 2 s.
  for port in "${sentinel_list[@]}"; do
    wait_until 30 "Sentinel $port to see the replica and the other Sentinels" sentinel_ready "$port"
  done
  trap - EXIT
  echo "local-sentinel: primary $primary_port, replica $replica_port, Sentinels $sentinel_ports ($master_name) up in $dir"
}

[ $# -ge 1 ] || usage
command=$1
shift
dir="" primary_port="" replica_port="" sentinel_ports="" master_name=mobile-sync
down_after=5000 failover_timeout=60000 maxmemory="" tls_dir="" requirepass=""
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || usage
  case $1 in
    --dir) dir=$2 ;;
    --primary-port) primary_port=$2 ;;
    --replica-port) replica_port=$2 ;;
    --sentinel-ports) sentinel_ports=$2 ;;
    --master-name) master_name=$2 ;;
    --down-after) down_after=$2 ;;
    --failover-timeout) failover_timeout=$2 ;;
    --maxmemory) maxmemory=$2 ;;
    --tls-dir) tls_dir=$(cd "$2" && pwd) ;;
    --requirepass) requirepass=$2 ;;
    *) usage ;;
  esac
  shift 2
done
[ -n "$dir" ] || usage

case $command in
  start) start_all ;;
  stop) stop_all ;;
  *) usage ;;
esac
