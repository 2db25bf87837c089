#!/usr/bin/env bash
# Figures for the verifiable-reads issue (docs/benchmarks.md): verified-read throughput and p99
# at 100 k and 1 M keys in one vault, proof size at those sizes, and client-batched write
# throughput at 1 k vs 1 M keys. One release server on a temporary data directory, stopped by
# PID at the end. Not part of CI (several minutes; wants a quiet machine).
#   usage: scripts/bench-verified.sh [DURATION (default 15s)]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-15s}"
cargo build --release -q -p ledger-server -p ledger-loadgen
DATA="$(mktemp -d /tmp/ledger-bench.XXXXXX)"
LOG="$DATA.log"
./target/release/ledger-server --data-dir "$DATA" --listen-addr 127.0.0.1:0 --metrics-addr off --rate-limit-rps 0 \
  --spin-before-park-us 50 > "$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$DATA" "$LOG"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$LOG" && break; sleep 0.1; done
ADDR="$(grep -o 'listening on [0-9.:]*' "$LOG" | awk '{print $3}')"
LG=(./target/release/ledger-loadgen --addr "$ADDR" --namespaces 1 --value-size 100 --warmup 3s
    --duration "$DURATION" --report json)
proof_size() {  # siblings and bytes of one state proof (32 B per sibling + 64 B leaf)
  ./target/release/ledger --addr "$ADDR" --json get --verify --namespace loadgen-0 --vault 1 "$1" |
    python3 -c 'import json,sys; p=json.load(sys.stdin)["state_proof"]; n=len(p["siblings"]); leaf=64 if p.get("leaf") else 0; print("proof: %d siblings, %d bytes of hashes" % (n, 32*n+leaf))'
}
echo "== batched writes, 1k keys";   "${LG[@]}" --key-space 1000    --mix write=100 --batch-items 100 --connections 4 --pipeline 8 2>/dev/null
echo "== verified reads, 100k keys"; "${LG[@]}" --key-space 100000  --mix verified=100 --connections 8 --pipeline 32 2>/dev/null
proof_size k0000000042
echo "== verified reads, 1M keys";   "${LG[@]}" --key-space 1000000 --mix verified=100 --connections 8 --pipeline 32 2>/dev/null
proof_size k0000000042
echo "== batched writes, 1M keys";   "${LG[@]}" --key-space 1000000 --mix write=100 --batch-items 100 --connections 4 --pipeline 8 2>/dev/null
