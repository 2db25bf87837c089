//! Hash benches (SPEC §7.3–§7.6): the transaction hash of a one-operation transaction, the
//! 148-byte block hash, one internal state-tree node hash, and a level of 1,024 node hashes
//! hashed side by side as a tree update hashes them (`hash_lanes.rs`; per node hash).

use crate::constants::{INNER_LOOP_FAST, SAMPLES_FAST};
use crate::fixtures::{header, transaction};
use crate::harness::{measure, Outcome, Plan};
use crate::Options;
use ledger_core::hash::{block_hash, tx_hash};
use ledger_core::hash_lanes::{hash_all, INPUT_BYTES};
use ledger_core::smt::internal_node_hash;
use std::hint::black_box;

pub const NAMES: [&str; 4] = ["hash/tx", "hash/block", "hash/tree_node", "hash/tree_level_1024"];

/// Node hashes in the `hash/tree_level_1024` bench.
const LEVEL_NODES: usize = 1024;

pub fn run(options: &Options, out: &mut dyn FnMut(Outcome)) {
    let plan =
        Plan { samples: options.samples(SAMPLES_FAST), inner: INNER_LOOP_FAST, items: 1, unit: "hash" };
    if options.selects(NAMES[0]) {
        let tx = transaction(42);
        out(measure(NAMES[0], plan, || {
            black_box(tx_hash(black_box(&tx)));
        }));
    }
    if options.selects(NAMES[1]) {
        let h = header(17, [3u8; 32]);
        out(measure(NAMES[1], plan, || {
            black_box(block_hash(black_box(&h)));
        }));
    }
    if options.selects(NAMES[2]) {
        let (left, right) = ([1u8; 32], [2u8; 32]);
        out(measure(NAMES[2], plan, || {
            black_box(internal_node_hash(black_box(&left), black_box(&right)));
        }));
    }
    if options.selects(NAMES[3]) {
        let inputs: Vec<[u8; INPUT_BYTES]> =
            (0..LEVEL_NODES).map(|i| std::array::from_fn(|j| (i * 7 + j) as u8)).collect();
        let mut hashes = vec![[0u8; 32]; LEVEL_NODES];
        let plan = Plan { inner: 1, items: LEVEL_NODES as u64, ..plan };
        out(measure(NAMES[3], plan, || {
            hash_all(black_box(&inputs), &mut hashes);
            black_box(&hashes);
        }));
    }
}
