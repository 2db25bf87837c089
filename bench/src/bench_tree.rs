//! State benches over one scope of 1 M entity rows (100 k with `--quick`), SPEC §7.6–§7.7, §8.2:
//! the new state root after k dirty keys (k = 1, 100, 1000; key hashing, value hashing and path
//! rebuild included), state-proof generation and verification against a header, and the leader's
//! construction of a 100-transaction block (`BlockDraft`: sequence checks, apply, tx hashes and
//! Merkle root, state root, block hash), and the server's pattern of a 64-version history: build the
//! next version from the newest and drop the oldest.

use crate::constants::{BLOCK_TXS, DIRTY_KEYS, SAMPLES_FAST, SAMPLES_MEDIUM, SAMPLES_SLOW};
use crate::fixtures::{block_context, header, key, scope, spread, transaction, value};
use crate::harness::{measure, measure_with_setup, Outcome, Plan};
use crate::Options;
use ledger_core::smt::{key_hash, leaf_value_hash, verify_state_proof, Change};
use ledger_core::state::BlockDraft;
use ledger_core::types::{Operation, StateProof, Transaction};
use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Instant;

/// Distinct proofs the verify bench cycles through.
const VERIFY_PROOFS: u64 = 1024;
/// Versions the history bench keeps alive, like the server's history ring; each timed iteration
/// builds the next version from the newest and drops the oldest (its nodes long out of cache).
const HISTORY_VERSIONS: usize = 64;
/// Dirty keys per version in the history bench.
const HISTORY_DIRTY_KEYS: u64 = 1000;

/// Names of the benches of this group at `rows` rows, in run order.
pub fn names(rows: u64) -> Vec<String> {
    let label = rows_label(rows);
    let mut names: Vec<String> = DIRTY_KEYS.iter().map(|k| format!("state_root/{label}/k{k}")).collect();
    names.push(format!("proof/generate/{label}"));
    names.push(format!("proof/verify/{label}"));
    names.push(format!("apply/block_{BLOCK_TXS}tx/{label}"));
    names.push(format!("state_root/{label}/history{HISTORY_VERSIONS}_k{HISTORY_DIRTY_KEYS}"));
    names
}

fn rows_label(rows: u64) -> String {
    if rows.is_multiple_of(1_000_000) {
        format!("{}M", rows / 1_000_000)
    } else {
        format!("{}k", rows / 1_000)
    }
}

/// A block's worth of one-operation transactions from one client, sequences 1..=BLOCK_TXS,
/// updating rows spread over the scope.
fn block_transactions(block: u64, rows: u64) -> Vec<Transaction> {
    (0..BLOCK_TXS as u64)
        .map(|t| {
            let mut tx = transaction(t);
            let row = spread(block * BLOCK_TXS as u64 + t + 1, rows);
            tx.operations = vec![Operation::SetEntity {
                key: key(row),
                value: value(row, block + 2),
                expires_at: None,
                condition: None,
            }];
            tx
        })
        .collect()
}

/// Successive batches of dirty keys spread over a scope's rows, each batch one version newer.
struct DirtyKeys {
    rows: u64,
    counter: u64,
    version: u64,
}

impl DirtyKeys {
    fn new(rows: u64) -> Self {
        DirtyKeys { rows, counter: 0, version: 2 }
    }

    /// The next `k` changes: key hash and new leaf value hash of `k` rows.
    fn next(&mut self, k: u64) -> Vec<Change> {
        let version = self.version;
        self.version += 1;
        (0..k)
            .map(|_| {
                self.counter += 1;
                let row = spread(self.counter, self.rows);
                let name = key(row);
                let vh = leaf_value_hash(name.as_bytes(), &value(row, version), 0, version);
                (key_hash(name.as_bytes()), Some(vh))
            })
            .collect()
    }
}

pub fn run(options: &Options, out: &mut dyn FnMut(Outcome)) {
    let rows = options.tree_rows();
    let names = names(rows);
    if !names.iter().any(|n| options.selects(n)) {
        return;
    }
    let started = Instant::now();
    let base = scope(rows);
    let tree = base.tree();
    eprintln!("ledger-bench: built a {rows}-row scope in {:.1}s", started.elapsed().as_secs_f64());

    for (i, &k) in DIRTY_KEYS.iter().enumerate() {
        if !options.selects(&names[i]) {
            continue;
        }
        let samples = options.samples(if k >= 1000 { SAMPLES_SLOW } else { SAMPLES_MEDIUM });
        let plan = Plan { samples, inner: 1, items: k, unit: "key" };
        let mut dirty = DirtyKeys::new(rows);
        out(measure(&names[i], plan, || {
            black_box(tree.with_updates(dirty.next(k)).root());
        }));
    }

    let plan = Plan { samples: options.samples(SAMPLES_FAST), inner: 1, items: 1, unit: "proof" };
    if options.selects(&names[3]) {
        let mut counter = 0u64;
        out(measure(&names[3], plan, || {
            counter += 1;
            black_box(tree.prove(key(spread(counter, rows)).as_bytes()));
        }));
    }
    if options.selects(&names[4]) {
        let state_root = tree.root();
        let h = header(5, state_root);
        let proofs: Vec<(u64, StateProof)> = (0..VERIFY_PROOFS)
            .map(|c| {
                let row = spread(c + 1, rows);
                let name = key(row);
                let (leaf, siblings) = tree.prove(name.as_bytes());
                (row, StateProof { key: name.into_bytes(), leaf, siblings, block_height: 5, state_root })
            })
            .collect();
        let mut counter = 0usize;
        out(measure(&names[4], plan, || {
            counter = (counter + 1) % proofs.len();
            let (row, proof) = &proofs[counter];
            let v = value(*row, 1);
            let verdict = verify_state_proof(proof, &proof.key, Some((&v, 0, 1)), &h);
            assert!(verdict.is_ok(), "bench proof failed to verify: {verdict:?}");
        }));
    }
    if options.selects(&names[5]) {
        let plan =
            Plan { samples: options.samples(SAMPLES_MEDIUM), inner: 1, items: BLOCK_TXS as u64, unit: "tx" };
        let mut block = 0u64;
        let setup = || {
            block += 1;
            (block, block_transactions(block, rows))
        };
        out(measure_with_setup(&names[5], plan, setup, |(block, txs)| {
            let mut draft = BlockDraft::new(&base);
            for tx in txs {
                let applied = draft.try_apply(tx);
                assert!(applied.is_ok(), "bench transaction rejected: {applied:?}");
            }
            black_box(draft.finish(&block_context(block)));
        }));
    }
    if options.selects(&names[6]) {
        let plan =
            Plan { samples: options.samples(SAMPLES_SLOW), inner: 1, items: HISTORY_DIRTY_KEYS, unit: "key" };
        let mut dirty = DirtyKeys::new(rows);
        let mut next_changes = || dirty.next(HISTORY_DIRTY_KEYS);
        let mut history = VecDeque::from([tree.clone()]);
        while history.len() < HISTORY_VERSIONS {
            let newest = history.back().map(|t| t.with_updates(next_changes()));
            history.extend(newest);
        }
        out(measure(&names[6], plan, || {
            let newest = history.back().map(|t| t.with_updates(next_changes()));
            black_box(newest.as_ref().map(|t| t.root()));
            history.extend(newest);
            drop(history.pop_front());
        }));
    }
}
