//! The idempotency cache (SPEC §6.2, `shard/src/round/idem_cache.rs`): one insert into a full
//! cache of the default size, as every committed write makes (it evicts the oldest entry).

use crate::constants::{INNER_LOOP_FAST, SAMPLES_FAST};
use crate::harness::{measure, Outcome, Plan};
use crate::Options;
use ledger_core::types::{NamespaceId, OpStatus, ScopeKey, Timestamp, VaultId};
use ledger_shard::round::idem_cache::IdemCache;
use ledger_wire::messages::WriteSuccess;
use std::hint::black_box;

pub const NAMES: [&str; 1] = ["idem/insert_full_100k"];

/// The default `idempotency_cache_entries` and per-client bound.
const TOTAL: usize = 100_000;
const PER_CLIENT: usize = 1_000;
/// Writers of one core in a 256-in-flight run (128 per core).
const CLIENTS: usize = 128;

fn success(sequence: u64) -> WriteSuccess {
    WriteSuccess {
        tx_id: [sequence as u8; 16],
        block_height: sequence,
        tx_timestamp: Timestamp::default(),
        actor: "client:loadgen-w17".into(),
        block_header: None,
        tx_proof: None,
        statuses: vec![vec![OpStatus::Created]],
    }
}

pub fn run(options: &Options, out: &mut dyn FnMut(Outcome)) {
    if !options.selects(NAMES[0]) {
        return;
    }
    let scope = ScopeKey { namespace_id: NamespaceId(1), vault_id: VaultId(0) };
    let ids: Vec<String> = (0..CLIENTS).map(|c| format!("run-0123456789-w{c}")).collect();
    let mut cache = IdemCache::new(TOTAL, PER_CLIENT);
    let mut next = vec![1u64; CLIENTS];
    let mut i = 0usize;
    let mut insert = |cache: &mut IdemCache| {
        let c = i % CLIENTS;
        i = i.wrapping_add(1);
        cache.insert(scope, &ids[c], next[c], success(next[c]));
        next[c] += 1;
    };
    while cache.len() < TOTAL {
        insert(&mut cache);
    }
    let plan =
        Plan { samples: options.samples(SAMPLES_FAST), inner: INNER_LOOP_FAST, items: 1, unit: "insert" };
    out(measure(NAMES[0], plan, || {
        insert(black_box(&mut cache));
    }));
}
