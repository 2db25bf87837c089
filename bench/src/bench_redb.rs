//! redb apply benches (STACK.md "what a commit costs"): one write transaction per block of 100
//! transactions — 100 entity rows (32 B random-looking keys, 100 B values), the client-state row
//! and the applied-index row — into a fresh temporary database, with `Durability::None` and with
//! `Durability::Immediate` (fsync per block). The tables mirror the shape of SPEC §9.2, not
//! shard's exact schema: this measures the storage engine, not our code.

use crate::constants::{BLOCK_TXS, SAMPLES_MEDIUM, SAMPLES_SLOW};
use crate::error::BenchError;
use crate::fixtures::{key, spread, value};
use crate::harness::{measure, Outcome, Plan};
use crate::Options;
use redb::{Database, Durability, ReadableDatabase, ReadableTableMetadata, TableDefinition};

const ENTITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entities");
const CLIENTS: TableDefinition<&str, u64> = TableDefinition::new("client_state");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Key space the block rows are spread over.
const KEY_SPACE: u64 = 1_000_000;

pub const NAMES: [&str; 2] = ["redb/apply_100tx/none", "redb/apply_100tx/immediate"];

/// Applies block `block` (rows `block × BLOCK_TXS ..`) in one write transaction.
fn apply_block(db: &Database, block: u64, durability: Durability) -> Result<(), BenchError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    {
        let mut entities = txn.open_table(ENTITIES)?;
        for t in 0..BLOCK_TXS as u64 {
            let row = spread(block * BLOCK_TXS as u64 + t + 1, KEY_SPACE);
            entities.insert(key(row).as_str(), value(row, block).as_slice())?;
        }
        let mut clients = txn.open_table(CLIENTS)?;
        clients.insert("bench-client", (block + 1) * BLOCK_TXS as u64)?;
        let mut meta = txn.open_table(META)?;
        meta.insert("applied_index", block + 1)?;
    }
    txn.commit()?;
    Ok(())
}

pub fn run(options: &Options, out: &mut dyn FnMut(Outcome)) -> Result<(), BenchError> {
    for (name, durability, samples) in
        [(NAMES[0], Durability::None, SAMPLES_MEDIUM), (NAMES[1], Durability::Immediate, SAMPLES_SLOW)]
    {
        if !options.selects(name) {
            continue;
        }
        let dir = tempfile::tempdir().map_err(BenchError::TempFile)?;
        let db = Database::create(dir.path().join("bench.redb"))?;
        let plan = Plan { samples: options.samples(samples), inner: 1, items: BLOCK_TXS as u64, unit: "tx" };
        let mut block = 0u64;
        let mut failure = None;
        let outcome = measure(name, plan, || {
            if failure.is_none() {
                failure = apply_block(&db, block, durability).err();
            }
            block += 1;
        });
        if let Some(e) = failure {
            return Err(e);
        }
        let rows = db.begin_read()?.open_table(ENTITIES)?.len()?;
        if rows == 0 {
            return Err(BenchError::Check(format!("{name}: no rows were written")));
        }
        out(outcome);
    }
    Ok(())
}
