#!/usr/bin/env bash
# Memory checks of the unsafe code in the state tree (core/src/smt.rs: lineage freeing), run by
# .ci/run (issue 12 item 6, D36):
#   1. valgrind memcheck over the tree's unit and property tests (few proptest cases): use after
#      free, invalid reads/writes and definite leaks fail the run. valgrind is on every machine of
#      this kind and works with the stable toolchain.
#   2. With --miri: Miri over the same tests (needs a nightly toolchain with miri; interpreting
#      the tree's tests takes well over ten minutes on these 2 cores, so CI does not run it).
# scripts/sanitizers.sh (ASan over core + shard, TSan over the cross-thread drop test) needs
# nightly too and stays outside CI.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
root="${CARGO_TARGET_DIR:-$PWD/target}"

echo "== valgrind memcheck: ledger-core smt tests"
bin=$(cargo test --workspace -p ledger-core --lib --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "ledger_core" and m["profile"]["test"]:
        print(m["executable"])')
[[ -x "$bin" ]] || { echo "no ledger-core test binary found"; exit 1; }
LEDGER_SMT_CASES="${LEDGER_SMT_CASES:-8}" valgrind --quiet --error-exitcode=1 --leak-check=full \
    --errors-for-leak-kinds=definite --show-leak-kinds=definite "$bin" smt --test-threads=1 \
    --skip t23_throughput_smoke   # 100k keys: minutes under valgrind, no memory case t24 lacks

if [[ "${1:-}" == "--miri" ]]; then
    echo "== Miri: ledger-core smt tests"
    cargo +nightly miri setup >/dev/null
    CARGO_TARGET_DIR="$root-miri" cargo +nightly miri test -p ledger-core --lib smt
else
    echo "== Miri: not run (scripts/memcheck.sh --miri; needs nightly, takes long)"
fi
