#!/usr/bin/env bash
# The cost of TLS (D43) on one node: plain TCP and TLS alternated, same binaries, same machine,
# a fresh server per mode and round. Certificates are made here with openssl (a throwaway CA and
# a P-256 node certificate for 127.0.0.1). Prints one text report per scenario. Not part of CI.
#   usage: scripts/bench-tls.sh [DURATION (default 10s)] [ROUNDS (default 2)]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10s}"; ROUNDS="${2:-2}"
cargo build --release -q -p ledger-server -p ledger-loadgen
WORK="$(mktemp -d /tmp/ledger-bench-tls.XXXXXX)"
SERVER=""
stop() { if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; SERVER=""; fi; }
trap 'stop; rm -rf "$WORK"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
  -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
  -keyout "$WORK/node.key" -out "$WORK/node.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > "$WORK/ext"
openssl x509 -req -in "$WORK/node.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
  -days 1 -extfile "$WORK/ext" -out "$WORK/node.pem" 2>/dev/null

start() { # MODE: plain | tls
  local data="$WORK/data-$1-$2" log="$WORK/log-$1-$2" tls=()
  [ "$1" = tls ] && tls=(--tls-cert "$WORK/node.pem" --tls-key "$WORK/node.key")
  ./target/release/ledger-server --data-dir "$data" --listen-addr 127.0.0.1:0 --metrics-addr off \
    --log-level warn --rate-limit-rps 0 "${tls[@]}" > "$log" 2>&1 &
  SERVER=$!
  for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
  ADDR="$(grep -o 'listening on [0-9.:]*' "$log" | awk '{print $3}')"
}

for round in $(seq "$ROUNDS"); do
  for mode in plain tls; do
    start "$mode" "$round"
    ca=(); [ "$mode" = tls ] && ca=(--tls-ca "$WORK/ca.pem")
    LG=(./target/release/ledger-loadgen --addr "$ADDR" "${ca[@]}" --namespaces 2 --key-space 1000
        --value-size 100 --duration "$DURATION" --warmup 3s)
    run() { echo "== round $round, $mode: $1"; shift; "${LG[@]}" "$@" 2>/dev/null | grep -E '^(write|read) '; }
    run "writes, 64 in flight"     --mix write=100 --batch-items 1 --connections 4 --pipeline 16
    run "reads, 64 in flight"      --mix read=100 --connections 4 --pipeline 16
    run "write, 1 in flight"       --mix write=100 --batch-items 1 --connections 1 --pipeline 1
    run "read, 1 in flight"        --mix read=100 --connections 1 --pipeline 1
    stop
  done
done
