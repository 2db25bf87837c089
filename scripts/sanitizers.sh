#!/usr/bin/env bash
# Sanitizer runs for the unsafe code (issue 12 item 6); not in CI: each rebuilds std with the
# sanitizer (-Zbuild-std), which takes long on a small machine.
#   1. AddressSanitizer over the core and shard lib tests (use after free, double free, overflow).
#   2. ThreadSanitizer over the state-tree test that drops old versions on one thread while
#      another builds new versions on the same lineage (core/src/smt.rs, t26), the tree thread's
#      pattern (shard/src/tree_worker.rs).
# Usage: scripts/sanitizers.sh [asan|tsan]   (both by default)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
target=x86_64-unknown-linux-gnu
root="${CARGO_TARGET_DIR:-$PWD/target}"
which="${1:-all}"
rustup component add --toolchain nightly rust-src >/dev/null 2>&1 || true

if [[ "$which" == all || "$which" == asan ]]; then
    echo "== AddressSanitizer: ledger-core and ledger-shard lib tests"
    # Leak checking stays on: the tree frees every node of a lineage when its last version goes.
    RUSTFLAGS="-Zsanitizer=address" RUSTDOCFLAGS="-Zsanitizer=address" \
        CARGO_TARGET_DIR="$root-asan" ASAN_OPTIONS="detect_leaks=1" \
        cargo +nightly test -Zbuild-std --target "$target" -p ledger-core -p ledger-shard --lib
fi

if [[ "$which" == all || "$which" == tsan ]]; then
    echo "== ThreadSanitizer: versions dropped on one thread while another builds on the lineage"
    RUSTFLAGS="-Zsanitizer=thread" RUSTDOCFLAGS="-Zsanitizer=thread" \
        CARGO_TARGET_DIR="$root-tsan" TSAN_OPTIONS="halt_on_error=1" \
        cargo +nightly test -Zbuild-std --target "$target" -p ledger-core --lib \
        smt::tests::t26_old_versions_dropped_on_another_thread_while_the_lineage_grows
fi
