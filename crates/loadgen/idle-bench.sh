#!/usr/bin/env bash
# Idle connection cost at scale: gateway RSS per logged-in, silent connection, for one or more
# gateway builds, runs interleaved so they are compared under the same conditions.
#
#   crates/loadgen/idle-bench.sh                       # this checkout's release build
#   GATEWAYS="/tmp/old/chat-gateway target/release/chat-gateway" ROUNDS=3 HOLDS="3 25" \
#     crates/loadgen/idle-bench.sh
#
# Each run: a fresh gateway (embedded backend, log level warn, the per-IP cap raised to the client
# count), `chat-loadgen --mode idle` with CLIENTS users in ROOMS rooms spread over SOURCES
# 127.0.0.x addresses, held HOLD seconds, then one line: the build, the hold, RSS per connection
# (loadgen's before/after) and the gateway's peak RSS (VmHWM). Every process is stopped by PID;
# each run is bounded by the logins plus HOLD. Needs `ulimit -n` of CLIENTS + a few hundred.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
cargo build --release -q -p chat-gateway -p chat-loadgen
lg=$repo/target/release/chat-loadgen
GATEWAYS=${GATEWAYS:-$repo/target/release/chat-gateway}
CLIENTS=${CLIENTS:-19000}
ROOMS=${ROOMS:-50}
SOURCES=${SOURCES:-8}
HOLDS=${HOLDS:-"3 25"}
ROUNDS=${ROUNDS:-1}
EXTRA=${EXTRA:-}   # e.g. --deflate
ulimit -n "$(ulimit -Hn)"
gw_pid=
trap '[ -n "$gw_pid" ] && kill -TERM "$gw_pid" 2>/dev/null; true' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "# $(date -u +%FT%TZ) $(nproc) cores; clients=$CLIENTS rooms=$ROOMS sources=$SOURCES $EXTRA"
for round in $(seq "$ROUNDS"); do
  for hold in $HOLDS; do
    for gw in $GATEWAYS; do
      port=$(free_port)
      CHAT__SERVER__LISTEN=127.0.0.1:$port CHAT__LOG__LEVEL=warn \
        CHAT__LIMITS__MAX_CONNECTIONS_PER_IP=$CLIENTS "$gw" >/dev/null 2>&1 &
      gw_pid=$!
      for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
      # shellcheck disable=SC2086
      result=$("$lg" --mode idle --url "ws://127.0.0.1:$port/ws" --clients "$CLIENTS" \
        --rooms "$ROOMS" --sources "$SOURCES" --secs "$hold" --pid "$gw_pid" $EXTRA \
        | grep per_connection_kib)
      peak=$(awk '/VmHWM/ {print $2}' "/proc/$gw_pid/status")
      kill -TERM "$gw_pid"
      wait "$gw_pid" 2>/dev/null || true
      gw_pid=
      echo "round=$round hold=${hold}s build=$gw $result peak_kib=$peak"
    done
  done
done
