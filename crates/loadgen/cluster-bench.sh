#!/usr/bin/env bash
# Cross-node cost benchmark: one private redis-server, two gateways over it, and chat-loadgen's
# many-rooms scenario with every room's members spread over both gateways. Prints the load
# generator's summary: latency, gateway CPU per delivery, and Redis's CPU and commands per post,
# all over the measured window of steady traffic (joins before it and disconnects after it are
# not counted).
#
#   crates/loadgen/cluster-bench.sh                  # 100 rooms x (10 subscribers + 1 poster), 2000 posts/s
#   ROOMS=1000 PER_ROOM=6 RATE=1000 SECS=20 ACK_EVERY=10 crates/loadgen/cluster-bench.sh
#   IDLE=1 ROOMS=1000 PER_ROOM=6 crates/loadgen/cluster-bench.sh   # connected, silent: upkeep cost only
#   GATEWAY_BIN=/path/to/older/chat-gateway crates/loadgen/cluster-bench.sh   # compare builds
#   EMBEDDED=1 crates/loadgen/cluster-bench.sh       # the same load on one gateway, no Redis
#   ROOMS=1 PER_ROOM=5 RATE=200 OFFLINE=9995 crates/loadgen/cluster-bench.sh   # a room of 10k
#       members, 5 online: Redis commands and CPU per post must not grow with the offline ones
#   WARMUP=3 JSON=1 crates/loadgen/cluster-bench.sh  # 3 s uncounted first; one JSON object out
#
# Loopback only; every run is bounded by SECS and the client count.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
cargo build --release -q -p chat-gateway -p chat-loadgen
# GATEWAY_BIN runs another build of the gateway (e.g. an older commit's) under the same load.
gw=${GATEWAY_BIN:-$repo/target/release/chat-gateway}
lg=$repo/target/release/chat-loadgen
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

ROOMS=${ROOMS:-100}
PER_ROOM=${PER_ROOM:-11}
RATE=${RATE:-2000}
SECS=${SECS:-20}
ACK_EVERY=${ACK_EVERY:-0}
IDLE=${IDLE:-0}
EMBEDDED=${EMBEDDED:-0}
WARMUP=${WARMUP:-0}
OFFLINE=${OFFLINE:-0}
JSON=${JSON:-0}
clients=$((ROOMS * PER_ROOM))

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 200); do curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "gateway on $1 not ready" >&2; exit 1; }
cpu_ms() { awk '{print ($14 + $15) * 10}' "/proc/$1/stat"; }

rp=$(free_port)
redis-server --port "$rp" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
for _ in $(seq 50); do redis-cli -p "$rp" ping >/dev/null 2>&1 && break; sleep 0.1; done
urls=()
gw_args=()
nodes=2 redis_env=CHAT__REDIS__URL=redis://127.0.0.1:$rp
if [ "$EMBEDDED" = 1 ]; then nodes=1 redis_env=CHAT__REDIS__URL=; fi
for i in $(seq "$nodes"); do
  p=$(free_port)
  env CHAT__SERVER__LISTEN=127.0.0.1:$p CHAT__LOG__LEVEL=warn "$redis_env" \
    CHAT__SERVER__NODE_ID=bench$i "$gw" >"$work/gw-$p.log" 2>&1 &
  pids+=($!)
  gw_args+=(--pid "$!")
  wait_ready "$p"
  urls+=("ws://127.0.0.1:$p/ws")
done
echo "# $(date -u +%FT%TZ) $(nproc) cores; rooms=$ROOMS per_room=$PER_ROOM rate=$RATE/s secs=$SECS warmup=$WARMUP ack_every=$ACK_EVERY offline=$OFFLINE idle=$IDLE" >&2
if [ "$IDLE" = 1 ]; then
  # Connected and silent: what does upkeep cost Redis and the gateways per second? The clients
  # stay connected through the whole measured window.
  "$lg" --mode idle --url "$(IFS=,; echo "${urls[*]}")" --clients "$clients" --rooms "$ROOMS" \
    --room-prefix idle "${gw_args[@]}" --secs $((SECS + 20)) &
  lg_pid=$!
  sleep 15
  redis-cli -p "$rp" CONFIG RESETSTAT >/dev/null
  r0=$(cpu_ms "$redis_pid"); g0=0; for p in "${pids[@]:1}"; do g0=$((g0 + $(cpu_ms "$p"))); done
  sleep "$SECS"
  r1=$(cpu_ms "$redis_pid"); g1=0; for p in "${pids[@]:1}"; do g1=$((g1 + $(cpu_ms "$p"))); done
  awk -v r=$((r1 - r0)) -v g=$((g1 - g0)) -v s="$SECS" -v u="$clients" \
    'BEGIN { printf "idle: users=%d redis_cpu_pct=%.1f gateways_cpu_pct=%.1f\n", u, r / s / 10, g / s / 10 }'
  redis-cli -p "$rp" INFO commandstats | grep -E '^cmdstat' | sed 's/^cmdstat_//' | tr -d '\r' |
    awk -F'[:,=]' -v s="$SECS" '{printf "  %-22s calls/s=%8.1f usec_per_call=%s\n", $1, $3 / s, $7}'
  wait "$lg_pid" || true
  exit 0
fi
"$lg" --mode fanout --url "$(IFS=,; echo "${urls[*]}")" --clients "$clients" --rooms "$ROOMS" \
  --posters "$ROOMS" --rate "$RATE" --secs "$SECS" --ack-every "$ACK_EVERY" --room-prefix many \
  --warmup "$WARMUP" --offline-members "$OFFLINE" $([ "$JSON" = 1 ] && echo --json) \
  "${gw_args[@]}" --redis-pid "$redis_pid" --redis-port "$rp"
