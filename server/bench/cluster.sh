#!/usr/bin/env bash
# Push throughput on a 3-primary Redis Cluster against a single Redis, on the same machine, each
# with its raw XADD baseline measured in the same run. Bounded in time, loopback only.
#
#   cargo build --release -p kryonix-server -p kryonix-loadgen
#   server/bench/cluster.sh   # DURATION=10 ROUNDS=3 DEVICES=100 QUIET_LOAD=1.0
#
# Prints the loadgen's figures for both; docs/benchmarks.md ("Cluster") records them.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
DEVICES="${DEVICES:-100}"
QUIET_LOAD="${QUIET_LOAD:-1.0}"
export KRYONIX_JWT_SECRET="bench-secret-bench-secret-bench-secret"

[ -x "$BIN/kryonix-server" ] && [ -x "$BIN/kryonix-loadgen" ] || {
  echo "build first: cargo build --release -p kryonix-server -p kryonix-loadgen" >&2; exit 2; }

WORK="$(mktemp -d)"
cleanup() {
  [ -f "$WORK/server.pid" ] && kill "$(cat "$WORK/server.pid")" 2>/dev/null || true
  [ -f "$WORK/redis.pid" ] && kill "$(cat "$WORK/redis.pid")" 2>/dev/null || true
  "$ROOT/deploy/cluster/local-cluster.sh" stop --dir "$WORK/cluster" >/dev/null 2>&1 || true
  sleep 0.5
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_quiet() {
  for _ in $(seq 120); do
    awk -v q="$QUIET_LOAD" '{ exit !($1 < q) }' /proc/loadavg && break
    sleep 1
  done
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
}

serve() { # serve <port> <redis flags…>
  local port=$1
  shift
  RUST_LOG=warn "$BIN/kryonix-server" serve "$@" --listen "127.0.0.1:$port" \
    --default-rate-per-sec 0 --default-device-rate-per-sec 0 >"$WORK/server-$port.log" 2>&1 &
  echo $! >"$WORK/server.pid"
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return; sleep 0.1; done
  echo "the server did not become ready:" >&2; cat "$WORK/server-$port.log" >&2; exit 1
}

loadgen() { # loadgen <port> <redis flags…>
  local port=$1
  shift
  "$BIN/kryonix-loadgen" --url "http://127.0.0.1:$port" "$@" --store-ceiling --rounds "$ROUNDS" \
    --devices "$DEVICES" --batch 100 --payload-bytes 512 --duration-secs "$DURATION"
}

echo "== single Redis (AOF everysec, noeviction): push, raw XADD, push transaction alone"
redis-server --port 6392 --bind 127.0.0.1 --dir "$WORK" --save "" --appendonly yes \
  --appendfsync everysec --maxmemory 6gb --maxmemory-policy noeviction \
  --daemonize yes --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log"
for _ in $(seq 50); do redis-cli -p 6392 ping >/dev/null 2>&1 && break; sleep 0.1; done
serve 18082 --redis-url redis://127.0.0.1:6392
wait_quiet
loadgen 18082 --redis-url redis://127.0.0.1:6392
kill "$(cat "$WORK/server.pid")"; rm -f "$WORK/server.pid"
kill "$(cat "$WORK/redis.pid")"; rm -f "$WORK/redis.pid"

echo "== Redis Cluster, 3 primaries (AOF everysec, noeviction), 16 partitions per tenant"
"$ROOT/deploy/cluster/local-cluster.sh" start --dir "$WORK/cluster" --ports "7391 7392 7393" \
  --replicas 0 --maxmemory 2gb >/dev/null
SEEDS="redis://127.0.0.1:7391,redis://127.0.0.1:7392,redis://127.0.0.1:7393"
serve 18083 --redis-cluster "$SEEDS"
wait_quiet
loadgen 18083 --redis-cluster "$SEEDS"
echo "== entries per primary after the run (every round deletes its streams: expect 0)"
for port in 7391 7392 7393; do
  echo "  127.0.0.1:$port: $(redis-cli -p "$port" dbsize) keys, $(redis-cli -p "$port" info stats | grep -E '^(total_commands_processed)' | tr -d '\r')"
done
echo "== cross-slot errors in the server log: $(grep -c CROSSSLOT "$WORK/server-18083.log" || true)"
