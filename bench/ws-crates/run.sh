#!/usr/bin/env bash
# bench/ws-crates/run.sh: builds the relay and the driver (release), then for every relay variant
# measures idle memory per connection with permessage-deflate negotiated and a fan-out with
# 100 B and 1 KiB posts, and prints one table. Results of docs/benchmarks.md, "yawc and
# sockudo-ws, measured".
#
# Everything runs on 127.0.0.1 and stops by itself: each measurement gets a fresh relay on its own
# port (so no TIME_WAIT from the last one is in the way), killed by its PID when the measurement
# ends or the script exits. Variants are interleaved within each kind of measurement, so they
# are compared as ratios within a run.
#
# Knobs (environment): IMPLS, ROUNDS (1), IDLE_CLIENTS (5000; 0 skips the idle runs), RECEIVERS
# (500), RATE (200 posts/s), SECS (10), CONTENTS ("100 1024", bytes of text per post), IDLE_SECS (2),
# BASE_PORT (19300). If /tmp/bench-stop exists, the script waits before
# each measurement until it is gone.
set -euo pipefail
cd "$(dirname "$0")"

IMPLS=${IMPLS:-"ours ours-plain yawc yawc-ctx sockudo sockudo-ctx"}
ROUNDS=${ROUNDS:-1}
IDLE_CLIENTS=${IDLE_CLIENTS:-5000}
RECEIVERS=${RECEIVERS:-500}
RATE=${RATE:-200}
SECS=${SECS:-10}
IDLE_SECS=${IDLE_SECS:-2}
CONTENTS=${CONTENTS:-"100 1024"}
port=${BASE_PORT:-19300}

ulimit -n 20000

# Two relay builds: flate2 uses zlib-rs for the whole binary as soon as one crate enables it
# (sockudo-ws does), while the gateway and yawc ship with miniz_oxide (Cargo.toml).
cargo build --release --quiet --no-default-features --bin driver
cargo build --release --quiet --no-default-features --features ours,yawc --bin relay
cp target/release/relay target/release/relay-ours-yawc
cargo build --release --quiet --no-default-features --features sockudo --bin relay
cp target/release/relay target/release/relay-sockudo
DRIVER=target/release/driver

out=target/results-$(date -u +%Y%m%dT%H%M%SZ).txt
: >"$out"
relay_pid=
cleanup() {
    if [[ -n $relay_pid ]]; then
        kill "$relay_pid" 2>/dev/null || true
        wait "$relay_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

start_relay() { # impl
    local bin=target/release/relay-ours-yawc
    [[ $1 == sockudo* ]] && bin=target/release/relay-sockudo
    port=$((port + 1))
    "$bin" --impl "$1" --port "$port" 2>>"$out.relay-log" &
    relay_pid=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            sleep 0.5
            return 0
        fi
        sleep 0.1
    done
    echo "relay $1 did not start" >&2
    return 1
}

measure() { # impl, driver args...
    local impl=$1
    shift
    while [[ -e /tmp/bench-stop ]]; do sleep 10; done
    start_relay "$impl"
    timeout 120 "$DRIVER" --port "$port" --pid "$relay_pid" --label "$impl" "$@" | tee -a "$out" ||
        echo "driver failed: $impl $*" | tee -a "$out" >&2
    cleanup
    relay_pid=
}

for round in $(seq "$ROUNDS"); do
    echo "== round $round" | tee -a "$out"
    if ((IDLE_CLIENTS > 0)); then
        for impl in $IMPLS; do
            measure "$impl" --mode idle --clients "$IDLE_CLIENTS" --secs "$IDLE_SECS"
        done
    fi
    for content in $CONTENTS; do
        for impl in $IMPLS; do
            measure "$impl" --mode fanout --clients "$RECEIVERS" --rate "$RATE" --secs "$SECS" \
                --content-bytes "$content"
        done
    done
done

# One table per round: the RESULT lines' fields, and ratios against `ours`.
awk '
/^== round/ { if (n) table(); round = $3; n = 0; delete seen; next }
/^RESULT/ {
    delete f
    for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = substr($i, length(kv[1]) + 2) }
    impl = f["impl"]
    if (!(impl in seen)) { seen[impl] = 1; order[++n] = impl }
    if (f["mode"] == "idle") {
        open_b[impl] = f["per_conn_open_b"]; post_b[impl] = f["per_conn_after_post_b"]; ext[impl] = f["ext"]
    } else {
        c = f["content"]
        cpu[impl, c] = f["cpu_us_per_delivery"]; wire[impl, c] = f["wire_bytes_per_delivery"]
        pct[impl, c] = f["delivered_pct"]; p50[impl, c] = f["p50_ms"]; json[c] = f["json_bytes"]
        bad[impl, c] = f["checked_bad"]
    }
}
function ratio(x, base) { return (base > 0 && x != "") ? sprintf("%.2f", x / base) : "-" }
function table(   i, m) {
    printf "\nround %s (JSON post: %s B with 100 B of text, %s B with 1 KiB)\n", round, json[100], json[1024]
    printf "| impl | idle B/conn (open) | idle B/conn (after 1 post) | 100 B: CPU us/delivery | 100 B: wire B/delivery | 1 KiB: CPU us/delivery | 1 KiB: wire B/delivery | delivered %% (100 B / 1 KiB) | p50 ms (100 B / 1 KiB) | negotiated |\n"
    printf "|---|---|---|---|---|---|---|---|---|---|\n"
    for (i = 1; i <= n; i++) {
        m = order[i]
        printf "| %s | %s | %s | %s (x%s) | %s (x%s) | %s (x%s) | %s (x%s) | %s / %s | %s / %s | %s |\n", m, open_b[m], post_b[m],
            cpu[m, 100], ratio(cpu[m, 100], cpu["ours", 100]), wire[m, 100], ratio(wire[m, 100], wire["ours", 100]),
            cpu[m, 1024], ratio(cpu[m, 1024], cpu["ours", 1024]), wire[m, 1024], ratio(wire[m, 1024], wire["ours", 1024]),
            pct[m, 100], pct[m, 1024], p50[m, 100], p50[m, 1024], ext[m]
        if (bad[m, 100] + bad[m, 1024] > 0) printf "  (!) %s: %s checked messages did not inflate/parse in order\n", m, bad[m, 100] + bad[m, 1024]
    }
}
END { if (n) table() }
' "$out" | tee "$out.table"
echo "raw results: $out"
