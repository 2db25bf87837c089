#!/usr/bin/env bash
# The noisy-neighbour scenario of issue 17 item 3 (SPEC §8.9, D44, D47) on one node with the
# default rate limit: a quiet namespace's p99 alone and beside a namespace that floods the node
# with writes and ignores every retry-after hint. A fresh server, the scenario run ROUNDS times on
# it; prints the loadgen report of each round. Not part of CI.
#   usage: scripts/bench-noisy.sh [DURATION (default 20s)] [ROUNDS (default 2)]
#   BIN_DIR=dir  use ledger-server/ledger-loadgen from dir instead of building them
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-20s}"; ROUNDS="${2:-2}"
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release -q -p ledger-server -p ledger-loadgen
  BIN_DIR=./target/release
fi
WORK="$(mktemp -d /tmp/ledger-bench-noisy.XXXXXX)"
SERVER=""
stop() { if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; SERVER=""; fi; }
trap 'stop; rm -rf "$WORK"' EXIT

"$BIN_DIR/ledger-server" --data-dir "$WORK/data" --listen-addr 127.0.0.1:0 --metrics-addr off \
  --log-level warn --rate-limit-rps 1000 > "$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do grep -q "listening on" "$WORK/server.log" && break; sleep 0.1; done
ADDR="$(grep -o 'listening on [0-9.:]*' "$WORK/server.log" | awk '{print $3}')"
for round in $(seq "$ROUNDS"); do
  echo "== round $round"
  "$BIN_DIR/ledger-loadgen" --addr "$ADDR" --noisy-neighbour --connections 1 --pipeline 8 --rate 200 \
    --mix read=50,write=50 --key-space 10000 --duration "$DURATION" --warmup 5s --noisy-connections 4 \
    2>/dev/null | grep -v '^ledger-loadgen'
done
