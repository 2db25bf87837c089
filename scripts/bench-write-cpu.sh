#!/usr/bin/env bash
# Single-key writes against a fresh one-node server, with the CPU each write costs: runs
# `ledger-loadgen --connections C --pipeline P --batch-items 1 --mix write=100 --namespaces NS
# --key-space 100000` for 10 s after 2 s of warm-up, and over seconds 5–10 of the run samples the
# CPU time (user + system, /proc/PID/stat) of the server and of the load generator and the
# server's `batch_size` metric, then prints the loadgen's write line and one line:
#   window 5s: tx … blocks … tx/block …  server … cores … us/tx … us/block  loadgen … cores … us/tx
# Not part of CI; wants a quiet machine (docs/benchmarks.md, D49/D50).
#   usage: scripts/bench-write-cpu.sh [C (default 4)] [P (default 4)] [extra ledger-server flags…]
#   BIN_DIR=dir uses ledger-server/ledger-loadgen from dir instead of building (before/after runs).
#   PORT=n listen port (default 27600; n+1 serves metrics).
#   NS=n namespaces written (default 2: one data group on each core).
#   LOADGEN_FLAGS="…" extra ledger-loadgen flags (e.g. --scope-per-connection, D53).
set -euo pipefail
cd "$(dirname "$0")/.."
C="${1:-4}"; P="${2:-4}"; shift 2 || shift $#
if [[ -z "${BIN_DIR:-}" ]]; then
  cargo build --release -q -p ledger-server -p ledger-loadgen
  BIN_DIR=./target/release
fi
PORT="${PORT:-27600}"
BASE="$(mktemp -d /tmp/ledger-write-cpu.XXXXXX)"
SP=""; LP=""
cleanup() {
  for p in $LP $SP; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$BASE"
}
trap cleanup EXIT
"$BIN_DIR/ledger-server" --data-dir "$BASE/data" --listen-addr "127.0.0.1:$PORT" \
  --metrics-addr "127.0.0.1:$((PORT + 1))" --rate-limit-rps 0 "$@" > "$BASE/server.log" 2>&1 &
SP=$!
for _ in $(seq 100); do grep -q "listening on" "$BASE/server.log" && break; sleep 0.1; done
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
batches() {
  curl -s "127.0.0.1:$((PORT + 1))/metrics" | grep -E "^batch_size_(sum|count)" \
    | awk '{split($1, a, "{"); v[a[1]] += $2} END {print v["batch_size_count"] + 0, v["batch_size_sum"] + 0}'
}
"$BIN_DIR/ledger-loadgen" --addr "127.0.0.1:$PORT" --connections "$C" --pipeline "$P" --batch-items 1 \
  --mix write=100 --namespaces "${NS:-2}" --key-space 100000 --duration 10s --warmup 2s ${LOADGEN_FLAGS:-} \
  > "$BASE/loadgen.out" 2> "$BASE/loadgen.err" &
LP=$!
sleep 5; s0=$(ticks "$SP"); l0=$(ticks "$LP"); b0=$(batches)
sleep 5; s1=$(ticks "$SP"); l1=$(ticks "$LP"); b1=$(batches)
wait "$LP" || { echo "loadgen failed:"; tail -n 3 "$BASE/loadgen.err"; exit 1; }
LP=""
grep -E "^write" "$BASE/loadgen.out"
echo "$b0 $b1 $s0 $s1 $l0 $l1" | awk -v hz="$(getconf CLK_TCK)" '{
  blocks = $3 - $1; tx = $4 - $2; s = ($6 - $5) / hz; l = ($8 - $7) / hz;
  printf "window 5s: tx %d blocks %d tx/block %.2f  server %.2f cores %.0f us/tx %.0f us/block  loadgen %.2f cores %.0f us/tx\n",
    tx, blocks, tx / blocks, s / 5, s * 1e6 / tx, s * 1e6 / blocks, l / 5, l * 1e6 / tx }'
