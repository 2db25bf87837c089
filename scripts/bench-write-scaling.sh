#!/usr/bin/env bash
# Write cost as a vault grows (issue 3 item 9): client-batched entity writes into ONE vault whose
# key space is 1 k and then 1 M keys, each on a fresh server and data directory, same flags, same
# machine, one after the other. Prints one loadgen JSON report per size and the ratio of the
# entity-write throughputs. Not part of CI (about 3 minutes; wants a quiet machine).
#   usage: scripts/bench-write-scaling.sh [DURATION (default 20s)] [extra ledger-server flags…]
#   BIN_DIR=DIR runs the ledger-server and ledger-loadgen found there instead of building them
#   (to compare two builds in one session).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-20s}"; shift || true
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release -q -p ledger-server -p ledger-loadgen
  BIN_DIR=./target/release
fi
SERVER=""
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null; true; }
trap cleanup EXIT
declare -A RATE
for KEYS in 1000 1000000; do
  DATA="$(mktemp -d /tmp/ledger-scaling.XXXXXX)"
  LOG="$DATA.log"
  "$BIN_DIR/ledger-server" --data-dir "$DATA" --listen-addr 127.0.0.1:0 --metrics-addr off --rate-limit-rps 0 \
    --spin-before-park-us 50 "$@" > "$LOG" 2>&1 &
  SERVER=$!
  for _ in $(seq 100); do grep -q "listening on" "$LOG" && break; sleep 0.1; done
  ADDR="$(grep -o 'listening on [0-9.:]*' "$LOG" | awk '{print $3}')"
  echo "== client-batched writes (100 ops/tx), one vault, $KEYS keys"
  OUT="$("$BIN_DIR/ledger-loadgen" --addr "$ADDR" --namespaces 1 --vaults-per-ns 1 \
    --key-space "$KEYS" --value-size 100 --mix write=100 --batch-items 100 --connections 4 \
    --pipeline 8 --duration "$DURATION" --warmup 5s --report json 2>/dev/null)"
  echo "$OUT"
  RATE[$KEYS]="$(echo "$OUT" | grep -o '"entity_writes_per_s":[0-9.]*' | head -1 | cut -d: -f2)"
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
  rm -rf "$DATA" "$LOG"
done
awk -v small="${RATE[1000]}" -v large="${RATE[1000000]}" \
  'BEGIN { printf "entity writes/s: 1k keys %s, 1M keys %s; 1M is %.2fx slower\n", small, large, small / large }'
