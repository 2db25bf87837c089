#!/usr/bin/env bash
# The long linearizability run (issue 14 item 8), outside .ci/run: SEEDS runs of SECS seconds of
# concurrent puts, deletes, put-if-absent and linearizable gets through a 3-node cluster while
# leaders are killed and nodes partitioned, each history checked with the Wing–Gong checker.
#   scripts/linearizability.sh [SEEDS] [SECS] [FIRST_SEED]    (defaults: 50, 20, 0x11ea7)
# A failure prints the seed and the command that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
export LEDGER_LIN_SEEDS="${1:-50}" LEDGER_LIN_SECS="${2:-20}" LEDGER_LIN_SEED="${3:-73383}"
exec cargo test --workspace --release --test cluster -- --test-threads 1 --nocapture \
    t08_histories_under_kills_and_partitions_are_linearizable
