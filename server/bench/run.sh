#!/usr/bin/env bash
# Server benchmark, bounded in time, loopback only: starts a throw-away Redis (noeviction, AOF
# everysec) and a release kryonix-server, runs kryonix-loadgen against them, stops both.
#
#   cargo build --release -p kryonix-server -p kryonix-loadgen
#   server/bench/run.sh   # DURATION=10 ROUNDS=3 DEVICES=100 PACE="1 2 3" IDLE=10000 QUIET_LOAD=1.0
#                         # MEMORY_ITEMS=1000000 MEMORY_DEVICES=1000 (MEMORY_ITEMS=0 skips it)
#
# Prints the loadgen's figures; docs/benchmarks.md (section "Server") records them.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
DEVICES="${DEVICES:-100}"
PACE="${PACE:-1 2 3}"
IDLE="${IDLE:-10000}"
MEMORY_ITEMS="${MEMORY_ITEMS:-1000000}"
MEMORY_DEVICES="${MEMORY_DEVICES:-1000}"
QUIET_LOAD="${QUIET_LOAD:-1.0}"
REDIS_PORT="${REDIS_PORT:-6391}"
HTTP_PORT="${HTTP_PORT:-18081}"
export KRYONIX_JWT_SECRET="bench-secret-bench-secret-bench-secret"

[ -x "$BIN/kryonix-server" ] && [ -x "$BIN/kryonix-loadgen" ] || {
  echo "build first: cargo build --release -p kryonix-server -p kryonix-loadgen" >&2; exit 2; }

WORK="$(mktemp -d)"
cleanup() {
  [ -f "$WORK/server.pid" ] && kill "$(cat "$WORK/server.pid")" 2>/dev/null || true
  [ -f "$WORK/redis.pid" ] && kill "$(cat "$WORK/redis.pid")" 2>/dev/null || true
  sleep 0.5
  rm -rf "$WORK"
}
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK" --save "" \
  --appendonly yes --appendfsync everysec --maxmemory 8gb --maxmemory-policy noeviction \
  --daemonize yes --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log"
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

ulimit -n 20000
RUST_LOG=warn "$BIN/kryonix-server" serve --redis-url "redis://127.0.0.1:$REDIS_PORT" \
  --listen "127.0.0.1:$HTTP_PORT" --default-rate-per-sec 0 --default-device-rate-per-sec 0 \
  >"$WORK/server.log" 2>&1 &
echo $! >"$WORK/server.pid"
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null && break; sleep 0.1; done

# Wait (at most two minutes) for other work on the machine to calm down.
for _ in $(seq 120); do
  awk -v q="$QUIET_LOAD" '{ exit !($1 < q) }' /proc/loadavg && break
  sleep 1
done
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; $(redis-server --version | cut -d' ' -f3)"

LOADGEN=("$BIN/kryonix-loadgen" --url "http://127.0.0.1:$HTTP_PORT")

echo "== saturation: $DEVICES devices pushing back to back, the raw XADD ceiling, the push transaction alone"
"${LOADGEN[@]}" --redis-url "redis://127.0.0.1:$REDIS_PORT" --store-ceiling --rounds "$ROUNDS" \
  --devices "$DEVICES" --batch 100 --payload-bytes 512 --duration-secs "$DURATION"

echo "== the revocation check: the same push with tokens that carry an id (one EXISTS per request) and without"
"${LOADGEN[@]}" --redis-url "redis://127.0.0.1:$REDIS_PORT" --compare-revocation-check --rounds "$ROUNDS" \
  --devices "$DEVICES" --batch 100 --payload-bytes 512 --duration-secs "$DURATION"

for pace in $PACE; do
  echo "== paced: $DEVICES devices, $pace batches/s each, spread over the period"
  "${LOADGEN[@]}" --devices "$DEVICES" --batch 100 --payload-bytes 512 \
    --batches-per-sec "$pace" --duration-secs "$DURATION"
done

echo "== idle: $IDLE keep-alive connections"
"${LOADGEN[@]}" --devices 0 --idle-connections "$IDLE" --idle-hold-secs 10 \
  --server-pid "$(cat "$WORK/server.pid")"

if [ "$MEMORY_ITEMS" -gt 0 ]; then
  echo "== memory: $MEMORY_ITEMS items from $MEMORY_DEVICES devices, trimmed as a backend would; what is left per device"
  "${LOADGEN[@]}" --memory --redis-url "redis://127.0.0.1:$REDIS_PORT" \
    --memory-items "$MEMORY_ITEMS" --memory-devices "$MEMORY_DEVICES"
fi

echo "== redis after the run"
redis-cli -p "$REDIS_PORT" info memory | grep -E '^used_memory_human'
# The push transaction: WATCH + HMGET + TYPE, then MULTI / XADD per item / HSET / PEXPIRE / EXEC.
redis-cli -p "$REDIS_PORT" info commandstats \
  | grep -E 'cmdstat_(xadd|watch|hmget|type|multi|exec|unwatch|hset|pexpire|wait):'
