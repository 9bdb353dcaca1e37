#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each; FUZZ_SECS overrides), on stable
# Rust through RUSTC_BOOTSTRAP=1 when no nightly is installed. Not part of CI: it is a search, not a
# check. A crash leaves its input in fuzz/artifacts/<target>/; turn it into a regression test
# (crates/protocol/tests or crates/gateway/tests) before fixing it.
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECS:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
toolchain=()
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  export RUSTC_BOOTSTRAP=1
else
  toolchain=(+nightly)
fi
mkdir -p corpus
for target in client_frame server_frame session; do
  mkdir -p "corpus/$target"
  cp -n seeds/"$target"/* "corpus/$target/" 2>/dev/null || true
  echo "== $target: ${secs}s"
  cargo "${toolchain[@]}" fuzz run "$target" "corpus/$target" -- -max_total_time="$secs" -max_len=4096 -timeout=10
done
