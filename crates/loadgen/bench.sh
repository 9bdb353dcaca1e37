#!/usr/bin/env bash
# Reproducible benchmark run: builds release binaries, then measures on loopback
#  1. idle connection cost (gateway RSS per logged-in silent connection), single node;
#  2. fan-out latency/throughput on a single node (embedded backend);
#  3. the same fan-out on a 3-node cluster over a private redis-server, clients spread over nodes.
# Every run is bounded (--secs, --clients). Results go to stdout; docs/benchmarks.md records them.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
cargo build --release -q -p chat-gateway -p chat-loadgen
gw=$repo/target/release/chat-gateway
lg=$repo/target/release/chat-loadgen
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "gateway on $1 not ready" >&2; exit 1; }
start_gateway() { # port, extra env...
  local port=$1; shift
  env CHAT__SERVER__LISTEN=127.0.0.1:$port CHAT__LOG__LEVEL=warn "$@" "$gw" >"$work/gw-$port.log" 2>&1 &
  pids+=($!)
  wait_ready "$port"
}

CLIENTS=${CLIENTS:-1000}
ROOMS=${ROOMS:-10}
RATE=${RATE:-200}
SECS=${SECS:-10}
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(uname -r); clients=$CLIENTS rooms=$ROOMS rate=$RATE/s secs=$SECS"

echo "## 1. idle connections, single node"
p=$(free_port); start_gateway "$p"
"$lg" --mode idle --url "ws://127.0.0.1:$p/ws" --clients 5000 --rooms 50 --pid "${pids[-1]}" --secs 3

echo "## 2. fan-out, single node (embedded backend)"
"$lg" --mode fanout --url "ws://127.0.0.1:$p/ws" --clients "$CLIENTS" --rooms "$ROOMS" \
  --posters 20 --rate "$RATE" --secs "$SECS" --room-prefix single --pid "${pids[-1]}"
kill -TERM "${pids[-1]}"

echo "## 3. fan-out, 3 nodes over Redis (clients round-robin over the nodes)"
rp=$(free_port)
redis-server --port "$rp" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$rp" ping >/dev/null 2>&1 && break; sleep 0.1; done
urls=()
gw_pids=()
for i in 1 2 3; do
  p=$(free_port)
  start_gateway "$p" CHAT__REDIS__URL=redis://127.0.0.1:$rp CHAT__SERVER__NODE_ID=bench$i
  urls+=("ws://127.0.0.1:$p/ws")
  gw_pids+=(--pid "${pids[-1]}")
done
"$lg" --mode fanout --url "$(IFS=,; echo "${urls[*]}")" --clients "$CLIENTS" --rooms "$ROOMS" \
  --posters 20 --rate "$RATE" --secs "$SECS" --room-prefix cluster "${gw_pids[@]}"
# utime+stime in clock ticks (USER_HZ = 100): Redis's whole share of the cluster run.
echo "redis_cpu_ms=$(awk '{print ($14 + $15) * 10}' "/proc/${pids[1]}/stat") (whole run, joins included)"
