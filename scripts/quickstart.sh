#!/usr/bin/env bash
# Quick start: build, run a single-node server with the built-in defaults (data in ./ledger-data,
# clients on 127.0.0.1:50051, metrics/health on 127.0.0.1:9090), make a first write and read
# with the `ledger` CLI, then keep serving in the foreground until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p ledger-server
./target/release/ledger-server &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' INT TERM
L=./target/release/ledger
for _ in $(seq 100); do $L namespace list >/dev/null 2>&1 && break; sleep 0.1; done
$L namespace create demo >/dev/null 2>&1 || true          # already there on a second run
VAULT=$($L vault create --namespace demo)
echo "+ ledger set --namespace demo --vault $VAULT user:1 alice"
$L set --namespace demo --vault "$VAULT" user:1 alice
echo "+ ledger get --namespace demo --vault $VAULT user:1"
$L get --namespace demo --vault "$VAULT" user:1
echo "+ ledger tip --namespace demo --vault $VAULT"
$L tip --namespace demo --vault "$VAULT"
echo "ledger-server (pid $SERVER) keeps serving on 127.0.0.1:50051; Ctrl-C stops it."
wait $SERVER
