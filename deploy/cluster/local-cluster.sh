#!/usr/bin/env bash
# A local Redis Cluster for development and tests: N primaries with R replicas each, all on
# 127.0.0.1, every node daemonized in its own directory under --dir.
#
#   deploy/cluster/local-cluster.sh start --dir /tmp/kc --ports "7000 7001 7002 7003 7004 7005" \
#       [--replicas 1] [--node-timeout 5000] [--maxmemory 256mb] [--tls-dir DIR] [--requirepass PW]
#   deploy/cluster/local-cluster.sh stop --dir /tmp/kc
#
# With --tls-dir (holding ca.pem, server.pem and server.key) every node speaks TLS only, on the
# client port and the cluster bus alike (tls-cluster, tls-replication); with --requirepass every
# node requires that password (replicas use it as masterauth). Clients then connect with
# rediss:// and the CA.
# The number of ports must be a multiple of (1 + replicas); the first ones become primaries.
# Each node also uses its port + 10000 for the cluster bus. `start` on a directory that already
# holds the nodes' state restarts them as they were, without creating the cluster again.
set -euo pipefail

usage() {
  sed -n '5,7p' "$0" >&2
  exit 2
}

die() {
  echo "local-cluster: $*" >&2
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

# redis-cli as this cluster's clients must speak: TLS and the password when the nodes need them.
cli() {
  local args=()
  if [ -n "$tls_dir" ]; then args+=(--tls --cacert "$tls_dir/ca.pem"); fi
  if [ -n "$requirepass" ]; then args+=(--no-auth-warning -a "$requirepass"); fi
  redis-cli "${args[@]}" "$@"
}

pings() { [ "$(cli -p "$1" ping 2>/dev/null)" = PONG ]; }

cluster_ok() { cli -p "$1" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }

# A replica is usable for failover only once its link to the primary is up.
synced() {
  local info
  info=$(cli -p "$1" info replication 2>/dev/null) || return 1
  grep -q '^role:master' <<<"$info" || grep -q '^master_link_status:up' <<<"$info"
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

stop_nodes() {
  local pidfile pid
  for pidfile in "$dir"/node-*/redis.pid; do
    [ -e "$pidfile" ] || continue
    if pid=$(live_pid "$pidfile"); then
      kill -TERM "$pid" 2>/dev/null || true
      # SIGTERM makes Redis fsync its AOF and exit; wait so the ports are free afterwards.
      wait_until 10 "pid $pid to exit" gone "$pidfile"
    fi
    rm -f "$pidfile"
  done
}

write_config() {
  local port=$1 node_dir=$2
  local client_port="port $port"
  if [ -n "$tls_dir" ]; then client_port="port 0"; fi
  cat >"$node_dir/redis.conf" <<EOF
$client_port
bind 127.0.0.1
dir "$node_dir"
daemonize yes
pidfile "$node_dir/redis.pid"
logfile "$node_dir/redis.log"
cluster-enabled yes
cluster-config-file nodes-$port.conf
cluster-node-timeout $node_timeout
appendonly yes
appendfsync everysec
maxmemory-policy noeviction
save ""
EOF
  if [ -n "$maxmemory" ]; then
    echo "maxmemory $maxmemory" >>"$node_dir/redis.conf"
  fi
  if [ -n "$tls_dir" ]; then
    cat >>"$node_dir/redis.conf" <<EOF
tls-port $port
tls-cert-file "$tls_dir/server.pem"
tls-key-file "$tls_dir/server.key"
tls-ca-cert-file "$tls_dir/ca.pem"
tls-auth-clients no
tls-cluster yes
tls-replication yes
EOF
  fi
  if [ -n "$requirepass" ]; then
    printf 'requirepass "%s"\nmasterauth "%s"\n' "$requirepass" "$requirepass" >>"$node_dir/redis.conf"
  fi
}

start_nodes() {
  local port node_dir fresh=yes
  read -r -a port_list <<<"$ports"
  [ "${#port_list[@]}" -gt 0 ] || die "--ports is empty"
  [ $((${#port_list[@]} % (replicas + 1))) -eq 0 ] ||
    die "${#port_list[@]} ports do not split into primaries with $replicas replicas each"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  for port in "${port_list[@]}"; do
    node_dir="$dir/node-$port"
    if [ -e "$node_dir/nodes-$port.conf" ]; then fresh=no; fi
    mkdir -p "$node_dir"
    write_config "$port" "$node_dir"
  done

  # From here on a failure stops whatever was started, so a retry finds the ports free.
  trap 'echo "local-cluster: start failed, stopping the nodes" >&2; stop_nodes' EXIT
  for port in "${port_list[@]}"; do
    redis-server "$dir/node-$port/redis.conf"
  done
  for port in "${port_list[@]}"; do
    wait_until 10 "node $port to answer PING" pings "$port"
  done

  if [ "$fresh" = yes ]; then
    local addresses=()
    for port in "${port_list[@]}"; do addresses+=("127.0.0.1:$port"); done
    cli --cluster create "${addresses[@]}" --cluster-replicas "$replicas" --cluster-yes
  fi
  for port in "${port_list[@]}"; do
    wait_until 60 "cluster_state:ok on $port" cluster_ok "$port"
    wait_until 60 "node $port to be in sync with its primary" synced "$port"
  done
  trap - EXIT
  echo "local-cluster: ${#port_list[@]} nodes up in $dir (cluster_state:ok on every node)"
}

[ $# -ge 1 ] || usage
command=$1
shift
dir="" ports="" replicas=1 node_timeout=5000 maxmemory="" tls_dir="" requirepass=""
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || usage
  case $1 in
    --dir) dir=$2 ;;
    --ports) ports=$2 ;;
    --replicas) replicas=$2 ;;
    --node-timeout) node_timeout=$2 ;;
    --maxmemory) maxmemory=$2 ;;
    --tls-dir) tls_dir=$(cd "$2" && pwd) ;;
    --requirepass) requirepass=$2 ;;
    *) usage ;;
  esac
  shift 2
done
[ -n "$dir" ] || usage

case $command in
  start) start_nodes ;;
  stop) stop_nodes ;;
  *) usage ;;
esac
