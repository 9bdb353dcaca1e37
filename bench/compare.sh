#!/usr/bin/env bash
# Side by side: our gateway (one node embedded, two nodes over Redis) against Socket.IO 4 with
# @socket.io/redis-adapter (two nodes over Redis) and a plain `ws` relay (one node), under the same
# scenarios, printed as ONE table. Everything runs on this machine, on 127.0.0.1.
#
#   bench/compare.sh                                   # scenarios a and b, SECS=10, WARMUP=3
#   SCENARIOS="a b c" SECS=15 bench/compare.sh
#   SYSTEMS="gateway-2 socketio-2" SCENARIOS=b bench/compare.sh
#
# Scenarios (every room has one poster; its members are spread over the nodes, member k on node
# k mod nodes, so a poster and most of its room's subscribers are on different nodes):
#   a  fan-out: 1 room x (500 subscribers + 1 poster), 200 posts/s
#   b  many rooms: 100 x (10 subscribers + 1 poster), 2,000 posts/s
#   c  1,000 rooms x (5 subscribers + 1 poster), 2,000 posts/s
# Systems:
#   gateway-1    our gateway, embedded backend, measured by chat-loadgen
#   gateway-2    two gateways over one private redis-server, chat-loadgen
#   gateway-1n   gateway-1 measured by the Node client (bench/peers/loadclient.js --proto chat),
#   gateway-2n   and gateway-2: the same client as the peers' rows, and how much of a difference
#                the load client alone makes (the Node client is one thread; chat-loadgen uses
#                every core)
#   socketio-2   two Socket.IO nodes with the Redis adapter over one private redis-server
#   socketio-1   one Socket.IO node, no adapter (not in the default set)
#   ws-1         the plain ws relay, one node
# Columns: latency of every counted delivery (the poster's own copy included), deliveries counted
# over expected, gaps (per-room order broken) / lost (expected - received), server CPU (all the
# system's server processes, from /proc) per delivery and Redis CPU per post over the window, and
# the load client's own CPU (100 % = one core) so a saturated client is visible.
#
# Env: SECS (counted seconds, default 10), WARMUP (uncounted seconds first, default 3), SCENARIOS,
# SYSTEMS, ACK_EVERY (our gateways' receivers ack every K-th message; default 0, as the peers have
# no acks), PEERS_DIR (where the npm packages are installed, default target/bench-peers),
# OUT (directory to keep the JSON results in; default a temporary one, removed at exit).
#
# Needs cargo, node 20+ with npm (packages come from the npm registry, pinned by
# bench/peers/package-lock.json), redis-server, curl, python3. Every process it starts is stopped
# by PID at exit; every run is bounded by WARMUP + SECS + a few seconds of joins and drain.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

SECS=${SECS:-10}
WARMUP=${WARMUP:-3}
SCENARIOS=${SCENARIOS:-"a b"}
SYSTEMS=${SYSTEMS:-"gateway-1 gateway-2 gateway-1n gateway-2n socketio-2 ws-1"}
ACK_EVERY=${ACK_EVERY:-0}
PEERS_DIR=${PEERS_DIR:-$repo/target/bench-peers}

work=$(mktemp -d)
out=${OUT:-$work/results}
mkdir -p "$out"
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() { stop_all; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

nice -n 10 cargo build --release -q -p chat-gateway -p chat-loadgen
gw=$repo/target/release/chat-gateway
lg=$repo/target/release/chat-loadgen
# The peers run from a scratch directory outside the source tree: node resolves their packages
# next to the scripts, and nothing lands in bench/peers.
mkdir -p "$PEERS_DIR"
cp bench/peers/package.json bench/peers/package-lock.json bench/peers/*.js "$PEERS_DIR/"
(cd "$PEERS_DIR" && npm ci --no-audit --no-fund --loglevel=error >"$work/npm.log" 2>&1) ||
  { cat "$work/npm.log" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
fail() { echo "compare.sh: $*" >&2; tail -n 20 "$work"/*.log >&2 || true; exit 1; }
wait_http() { for _ in $(seq 200); do curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done; fail "gateway on $1 not ready"; }
wait_log() { for _ in $(seq 200); do grep -q ready "$1" 2>/dev/null && return 0; sleep 0.1; done; fail "$1: not ready"; }

redis_pid='' redis_port=''
start_redis() {
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  fail "redis-server did not start"
}

# Starts the system's servers; sets urls (comma-separated), server_pids (--pid args), and for the
# clustered ones redis_pid/redis_port.
urls='' server_pids=()
start_system() {
  local sys=$1 nodes p i list=()
  server_pids=() redis_pid='' redis_port=''
  case $sys in
    gateway-1 | gateway-1n | gateway-2 | gateway-2n)
      nodes=1
      local redis_env=CHAT__REDIS__URL=
      if [ "${sys%n}" = gateway-2 ]; then nodes=2; start_redis; redis_env=CHAT__REDIS__URL=redis://127.0.0.1:$redis_port; fi
      for i in $(seq "$nodes"); do
        p=$(free_port)
        env CHAT__SERVER__LISTEN=127.0.0.1:$p CHAT__LOG__LEVEL=warn "$redis_env" \
          CHAT__SERVER__NODE_ID=cmp$i "$gw" >"$work/gw-$p.log" 2>&1 &
        pids+=($!) server_pids+=(--pid "$!")
        wait_http "$p"
        list+=("ws://127.0.0.1:$p/ws")
      done ;;
    socketio-1 | socketio-2)
      nodes=${sys#socketio-}
      local redis_url=''
      if [ "$nodes" = 2 ]; then start_redis; redis_url=redis://127.0.0.1:$redis_port; fi
      for i in $(seq "$nodes"); do
        p=$(free_port)
        PORT=$p REDIS_URL=$redis_url node "$PEERS_DIR/sio-server.js" >"$work/sio-$p.log" 2>&1 &
        pids+=($!) server_pids+=(--pid "$!")
        wait_log "$work/sio-$p.log"
        list+=("ws://127.0.0.1:$p")
      done ;;
    ws-1)
      p=$(free_port)
      PORT=$p node "$PEERS_DIR/ws-server.js" >"$work/ws-$p.log" 2>&1 &
      pids+=($!) server_pids+=(--pid "$!")
      wait_log "$work/ws-$p.log"
      list+=("ws://127.0.0.1:$p") ;;
    *) fail "unknown system $sys" ;;
  esac
  urls=$(IFS=,; echo "${list[*]}")
}

run() { # scenario system
  local sc=$1 sys=$2 rooms per_room rate redis_args=()
  case $sc in
    a) rooms=1 per_room=501 rate=200 ;;
    b) rooms=100 per_room=11 rate=2000 ;;
    c) rooms=1000 per_room=6 rate=2000 ;;
    *) fail "unknown scenario $sc" ;;
  esac
  start_system "$sys"
  [ -n "$redis_pid" ] && redis_args=(--redis-pid "$redis_pid" --redis-port "$redis_port")
  local common=(--url "$urls" --clients $((rooms * per_room)) --rooms "$rooms" --posters "$rooms"
    --rate "$rate" --secs "$SECS" --warmup "$WARMUP" --room-prefix "cmp$sc" "${server_pids[@]}"
    "${redis_args[@]}")
  echo "# $(date -u +%T) scenario $sc, $sys: $((rooms * per_room)) clients in $rooms rooms, $rate posts/s" >&2
  case $sys in
    gateway-1 | gateway-2) "$lg" --mode fanout --json --ack-every "$ACK_EVERY" "${common[@]}" ;;
    gateway-1n | gateway-2n) node "$PEERS_DIR/loadclient.js" --proto chat "${common[@]}" ;;
    socketio-*) node "$PEERS_DIR/loadclient.js" --proto sio "${common[@]}" ;;
    ws-1) node "$PEERS_DIR/loadclient.js" --proto ws "${common[@]}" ;;
  esac >"$out/$sc-$sys.json" || fail "scenario $sc on $sys failed"
  stop_all
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); SECS=$SECS WARMUP=$WARMUP ACK_EVERY=$ACK_EVERY" >&2
for sc in $SCENARIOS; do
  for sys in $SYSTEMS; do run "$sc" "$sys"; done
done

# One table over every result, in run order.
node - "$out" $SCENARIOS -- $SYSTEMS <<'EOF'
const fs = require('node:fs');
const [dir, ...rest] = process.argv.slice(2);
const split = rest.indexOf('--');
const scenarios = rest.slice(0, split), systems = rest.slice(split + 1);
const names = { a: 'a: 1 × 500 subs, 200/s', b: 'b: 100 × (10+1), 2,000/s', c: 'c: 1,000 × (5+1), 2,000/s' };
const f = (v, d = 1) => (v === null || v === undefined ? '—' : Number(v).toFixed(d));
const int = (v) => Number(v).toLocaleString('en-US');
console.log('| scenario | system | client | p50 ms | p99 ms | delivered / expected | gaps / lost | server CPU µs/delivery | Redis CPU µs/post | client CPU % |');
console.log('|---|---|---|---|---|---|---|---|---|---|');
const notes = [];
for (const sc of scenarios) for (const sys of systems) {
  const r = JSON.parse(fs.readFileSync(`${dir}/${sc}-${sys}.json`, 'utf8'));
  const client = r.tool === 'chat-loadgen' ? 'chat-loadgen' : 'node';
  console.log(`| ${names[sc]} | ${sys} | ${client} | ${f(r.latency_ms.p50, 2)} | ${f(r.latency_ms.p99, 2)} | ${int(r.received)} / ${int(r.expected)} | ${r.gaps} / ${int(r.lost)} | ${f(r.server_cpu_us_per_delivery, 2)} | ${f(r.redis_cpu_us_per_post)} | ${f(r.loadgen_cpu_pct, 0)} |`);
  const cmds = Object.entries(r.redis_commands || {})
    .filter(([name]) => !name.startsWith('config') && !name.startsWith('info'))
    .sort((x, y) => y[1].per_post - x[1].per_post)
    .slice(0, 6)
    .map(([name, c]) => `${name} ${c.per_post.toFixed(2)}`);
  if (cmds.length) notes.push(`${sc} ${sys}: Redis commands per post (scripts' inner calls included): ${cmds.join(', ')}`);
  if (r.errors) notes.push(`${sc} ${sys}: ${r.errors} errors`);
}
for (const n of notes) console.log(`\n${n}`);
EOF
