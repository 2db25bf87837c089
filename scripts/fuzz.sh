#!/usr/bin/env bash
# Fuzzes every untrusted input kind (issue 12 item 7): wire frames and messages, page tokens,
# snapshot files, row-journal records and `ledger verify` documents; see fuzz/src/lib.rs.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   run each target (default 60 s, all targets)
#   scripts/fuzz.sh --seed                             recapture fuzz/corpus/ from a live server
#
# Targets run one at a time on one core (the machine is shared). New inputs go to
# fuzz/target/corpus/<target>/ (not committed); fuzz/corpus/<target>/ is the committed seed
# corpus. A crash leaves its input in fuzz/artifacts/<target>/ and stops the script: make it a
# regression test next to the code it broke. FUZZ_SANITIZER=none trades ASan for ~2-3x speed.
# FUZZ_RUNS=N stops a target after N executions (or the time limit, whichever comes first);
# FUZZ_MAX_LEN caps input size (page tokens: 8192 covers the longest valid token and then some).
# Not run by .ci/run: it needs nightly and minutes per target.
set -euo pipefail
cd "$(dirname "$0")/.."
ALL_TARGETS=(frame messages page_token snapshot journal verify_json)

if [[ "${1:-}" == "--seed" ]]; then
    rm -rf fuzz/corpus
    LEDGER_FUZZ_CORPUS="$PWD/fuzz/corpus" cargo test --workspace --test fuzz_corpus -- --ignored --nocapture
    du -sh fuzz/corpus
    exit 0
fi

SECONDS_PER_TARGET="${1:-60}"
shift || true
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL_TARGETS[@]}")
SANITIZER="${FUZZ_SANITIZER:-address}"

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

cd fuzz
cargo +nightly fuzz build --debug-assertions --sanitizer "$SANITIZER"
mkdir -p logs
for target in "${TARGETS[@]}"; do
    mkdir -p "target/corpus/$target"
    log="logs/$target.log"
    echo "== $target: ${SECONDS_PER_TARGET}s"
    # The fresh corpus directory comes first: libFuzzer writes new inputs there, and only reads
    # the committed seeds.
    cargo +nightly fuzz run --debug-assertions --sanitizer "$SANITIZER" "$target" "target/corpus/$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" ${FUZZ_RUNS:+-runs="$FUZZ_RUNS"} -print_final_stats=1 -max_len="${FUZZ_MAX_LEN:-65536}" -rss_limit_mb=4096 \
        >"$log" 2>&1 || { tail -n 40 "$log"; echo "FAILED: $target (input in fuzz/artifacts/$target/)"; exit 1; }
    executions=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
    speed=$(grep -m1 'stat::average_exec_per_sec' "$log" | awk '{print $2}')
    echo "   $target: $executions executions, $speed exec/s, no crash ($(grep -m1 'DONE' "$log" || true))"
done
