#!/usr/bin/env bash
# Three-node cluster figures for docs/benchmarks.md (issue 14 item 9): builds release binaries,
# starts 3 `ledger-server` processes on this machine (all sharing its cores, fsync on) with a
# coordinated bootstrap, runs the loadgen scenarios below with connections spread over all three
# nodes (`--addr A,B,C`: requests reaching a follower are forwarded to the leader), prints one
# JSON report per scenario, and stops every server by PID. Not part of CI: ~3 minutes, wants a
# quiet machine. Compare with `NODES=3 ../shared/peers/etcd.sh` run right before or after.
#   usage: scripts/bench-cluster.sh [DURATION (default 15s)] [extra ledger-server flags…]
#   ONLY="substring" runs only the scenarios whose name contains it.
#   BIN_DIR=dir uses ledger-server/ledger-loadgen from dir instead of building (before/after runs).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-15s}"; shift || true
if [[ -z "${BIN_DIR:-}" ]]; then
  cargo build --release -q -p ledger-server -p ledger-loadgen
  BIN_DIR=./target/release
fi
BASE="$(mktemp -d /tmp/ledger-cluster-bench.XXXXXX)"
PORTS=(); for i in 1 2 3; do PORTS+=("$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"); done
PEERS="127.0.0.1:${PORTS[0]},127.0.0.1:${PORTS[1]},127.0.0.1:${PORTS[2]}"
PIDS=()
cleanup() {
  local died=0
  for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null || died=1; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  # A node that died during the run leaves its logs behind for the post-mortem.
  if [[ $died == 1 ]]; then mkdir -p "$BASE.logs" && cp "$BASE"/*.log "$BASE.logs/" && echo "a node died: logs in $BASE.logs" >&2; fi
  rm -rf "$BASE"
}
trap cleanup EXIT
for i in 0 1 2; do
  "$BIN_DIR/ledger-server" --data-dir "$BASE/n$i" --listen-addr "127.0.0.1:${PORTS[$i]}" --metrics-addr off --rate-limit-rps 0 \
    --bootstrap-expect 3 --peers "$PEERS" --bootstrap-poll-secs 1 --cpu-pinning false "$@" > "$BASE/n$i.log" 2>&1 &
  PIDS+=($!)
done
for i in 0 1 2; do for _ in $(seq 300); do grep -q "listening on" "$BASE/n$i.log" && break; sleep 0.1; done; done
LG=("$BIN_DIR/ledger-loadgen" --addr "$PEERS" --namespaces 4 --key-space 100000 --value-size 100
    --duration "$DURATION" --warmup 5s --report json)
# CPU seconds (user + system) a process has used so far, from /proc.
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# After each scenario: the CPU seconds each node and the load generator used during it (preload
# included), to show where the machine's two cores went.
run() {
  [[ -z "${ONLY:-}" || "$1" == *"$ONLY"* ]] || return 0
  echo "== $1"; shift
  local before=() p; for p in "${PIDS[@]}"; do before+=("$(cpu_secs "$p")"); done
  local started=$SECONDS
  "${LG[@]}" "$@" 2>"$BASE/loadgen.err" &
  local lg=$!; local lg_cpu=0
  while kill -0 "$lg" 2>/dev/null; do lg_cpu=$(cpu_secs "$lg"); sleep 0.5; done
  wait "$lg" || { echo "(failed)"; tail -n 3 "$BASE/loadgen.err"; }
  local line="cpu seconds over $((SECONDS - started))s wall (preload included): loadgen ≈$lg_cpu" i
  for i in "${!PIDS[@]}"; do line+=", node$i $(echo "$(cpu_secs "${PIDS[$i]}") - ${before[$i]}" | bc)"; done
  echo "$line"
}
run "single writes, 16 in flight"        --mix write=100 --batch-items 1   --connections 4 --pipeline 4
run "single writes, 256 in flight"       --mix write=100 --batch-items 1   --connections 4 --pipeline 64
run "client-batched writes (100 ops/tx)" --mix write=100 --batch-items 100 --connections 4 --pipeline 16
run "eventual reads"                     --mix read=100                    --connections 6 --pipeline 100
run "linearizable reads"                 --mix read=100 --consistency linearizable --connections 6 --pipeline 100
