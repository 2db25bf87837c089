//! Hash benches (SPEC §7.3–§7.6): the transaction hash of a one-operation transaction, the
//! 148-byte block hash, and one internal state-tree node hash.

use crate::constants::{INNER_LOOP_FAST, SAMPLES_FAST};
use crate::fixtures::{header, transaction};
use crate::harness::{measure, Outcome, Plan};
use crate::Options;
use ledger_core::hash::{block_hash, tx_hash};
use ledger_core::smt::internal_node_hash;
use std::hint::black_box;

pub const NAMES: [&str; 3] = ["hash/tx", "hash/block", "hash/tree_node"];

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
}
