#!/usr/bin/env bash
# Single-node end-to-end figures for docs/benchmarks.md (issue: the thread-per-core server).
# Builds release binaries, starts one server on a temporary data directory (fsync on, as always),
# runs the loadgen scenarios below one after another, prints one JSON report per scenario, and
# stops the server by PID. Not part of CI: it takes about 2 minutes and wants a quiet machine.
#   usage: scripts/bench-single-node.sh [DURATION (default 20s)] [extra ledger-server flags…]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-20s}"; shift || true
cargo build --release -q -p ledger-server -p ledger-loadgen
DATA="$(mktemp -d /tmp/ledger-bench.XXXXXX)"
LOG="$DATA.log"
./target/release/ledger-server --data-dir "$DATA" --listen-addr 127.0.0.1:0 --metrics-addr off --rate-limit-rps 0 \
  --spin-before-park-us 50 "$@" > "$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$DATA" "$LOG"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$LOG" && break; sleep 0.1; done
ADDR="$(grep -o 'listening on [0-9.:]*' "$LOG" | awk '{print $3}')"
LG=(./target/release/ledger-loadgen --addr "$ADDR" --namespaces 2 --key-space 100000 --value-size 100
    --duration "$DURATION" --warmup 5s --report json)
run() { echo "== $1"; shift; "${LG[@]}" "$@" 2>/dev/null; }
run "single writes, 256 in flight"      --mix write=100 --batch-items 1   --connections 4 --pipeline 64
run "client-batched writes (100 ops/tx)" --mix write=100 --batch-items 100 --connections 4 --pipeline 16
run "point reads"                        --mix read=100                    --connections 8 --pipeline 100
run "single write, 1 in flight"          --mix write=100 --batch-items 1   --connections 1 --pipeline 1
run "point read, 1 in flight"            --mix read=100                    --connections 1 --pipeline 1
