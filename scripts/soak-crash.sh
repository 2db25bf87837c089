#!/usr/bin/env bash
# Crash soak (issue 12 item 5): N cycles of kill -9 at seeded-random moments under concurrent
# single and batched writers in two namespaces, each followed by a restart that verifies every
# acknowledged write and every scope's chain. CI runs the same test with 3 cycles.
#   scripts/soak-crash.sh [N=100] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
export LEDGER_SOAK_CYCLES="${1:-100}"
if [[ -n "${2:-}" ]]; then export LEDGER_SOAK_SEED="$2"; fi
exec cargo test --workspace --test soak_crash -- --nocapture
