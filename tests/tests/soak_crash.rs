//! Crash soak (issue 12 item 5; SPEC §9.6, §12 invariants 1, 3, 10, 24–26): cycles of `kill -9`
//! at seeded-random moments while concurrent writers run — single writes and two-group batches,
//! in two namespaces, to vaults and to namespace scopes — then a restart that must hold every
//! acknowledged write, keep every scope's chain continuous and every earlier block unchanged,
//! and leave each client's sequences exactly 1..n.
//!
//! `cargo test --workspace --test soak_crash` runs `LEDGER_SOAK_CYCLES` cycles (3 by default, as
//! in CI); `scripts/soak-crash.sh N` runs N. `LEDGER_SOAK_SEED` replays a run; a failure prints
//! the seed.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledger_core::hash::block_hash;
use ledger_core::types::{Block, Hash, Operation, ReadConsistency, TxId};
use ledger_tests::scope::{client_state, connect, create_scope, retry_transient, set, walk_chain};
use ledger_tests::{temp_dir, ServerProcess};
use ledger_wire::client::{RetryPolicy, WriteOutcome, WriteSession};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DEFAULT_CYCLES: usize = 3;
const DEFAULT_SEED: u64 = 0x50a4_c2a5;
/// Writers per namespace: a single-write writer to the vault, one to the namespace scope, and a
/// batch writer to the vault.
const WRITERS_PER_NAMESPACE: usize = 3;
const NAMESPACES: usize = 2;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `(namespace id, vault id)`; `None` is the namespace scope.
type Scope = (i64, Option<i64>);

/// One writer: its scope, client id and whether it sends batches.
#[derive(Debug, Clone)]
struct Writer {
    namespace_id: i64,
    vault_id: Option<i64>,
    client_id: String,
    batched: bool,
}

/// One acknowledged transaction, as the client was told.
#[derive(Debug, Clone)]
struct Ack {
    writer: usize,
    operations: Vec<Operation>,
    height: u64,
    tx_id: TxId,
    sequence: u64,
}

/// The operations of transaction `n` of `writer` in `cycle`: one key, or two groups of one key.
fn operations(writer: usize, batched: bool, n: u64, cycle: usize) -> Vec<Vec<Operation>> {
    let value = |part: &str| format!("{writer}:{n}:{part}:{cycle}").into_bytes();
    if batched {
        vec![
            vec![set(format!("b{writer}:{n}:a"), value("a"))],
            vec![set(format!("b{writer}:{n}:b"), value("b"))],
        ]
    } else {
        vec![vec![set(format!("w{writer}:{n}"), value("v"))]]
    }
}

/// One writer's part of one cycle.
struct WriterRun {
    addr: String,
    index: usize,
    writer: Writer,
    cycle: usize,
    /// First transaction number of this cycle (numbers keep growing, so keys never repeat).
    n: u64,
    seed: u64,
}

/// Writes until the server is gone, recording every acknowledged transaction. Returns the next
/// transaction number and the last sequence sent.
async fn run_writer(run: WriterRun, acks: Arc<Mutex<Vec<Ack>>>, acked: Arc<AtomicUsize>) -> (u64, u64) {
    let WriterRun { addr, index, writer, cycle, mut n, seed } = run;
    let client = connect(&addr).await;
    let policy = RetryPolicy {
        base: Duration::from_millis(5),
        cap: Duration::from_millis(20),
        max_attempts: 3,
        jitter: true,
    };
    let mut session = WriteSession::new(client, writer.namespace_id, writer.vault_id)
        .with_client_id(writer.client_id.clone())
        .with_retry_policy(policy)
        .with_rng_seed(seed ^ index as u64);
    let mut attempt = 0;
    while let Err(e) = session.sync_sequence().await {
        attempt += 1;
        assert!(attempt < 100, "{}: cannot learn its sequence: {e}", writer.client_id);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    loop {
        let groups = operations(index, writer.batched, n, cycle);
        n += 1;
        let sequence = session.next_sequence().unwrap();
        let outcome = if writer.batched {
            session.batch_write(groups.clone()).await
        } else {
            session.write(groups[0].clone()).await
        };
        let operations: Vec<Operation> = groups.into_iter().flatten().collect();
        let ack =
            |height, tx_id| Ack { writer: index, operations: operations.clone(), height, tx_id, sequence };
        match outcome {
            Ok(WriteOutcome::Committed { sequence: committed, success }) => {
                assert_eq!(committed, sequence);
                acks.lock().unwrap().push(ack(success.block_height, success.tx_id));
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(WriteOutcome::AlreadyCommitted { committed_tx_id, committed_block_height, .. }) => {
                // A retry of this very transaction found it committed (the writer is sequential).
                if let (Some(tx_id), Some(height)) = (committed_tx_id, committed_block_height) {
                    acks.lock().unwrap().push(ack(height, tx_id));
                    acked.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(WriteOutcome::Rejected(error)) => panic!("unconditional write rejected: {error:?}"),
            Err(_) => return (n, sequence),
        }
    }
}

/// Every acknowledged write is readable with its value and sits in the block at its height;
/// every writer's committed sequences are 1..n with the client state in [last acked, last
/// sent]; every scope's chain (and `_system`'s) walks from genesis. Returns the chains.
async fn verify(
    addr: &str,
    writers: &[Writer],
    acks: &[Ack],
    last_sent: &HashMap<usize, u64>,
) -> BTreeMap<(i64, Option<i64>), BTreeMap<u64, Block>> {
    let client = connect(addr).await;
    let mut chains = BTreeMap::new();
    chains.insert((0, None), walk_chain(&client, 0, None).await);
    for w in writers {
        let scope = (w.namespace_id, w.vault_id);
        if let std::collections::btree_map::Entry::Vacant(slot) = chains.entry(scope) {
            slot.insert(walk_chain(&client, scope.0, scope.1).await);
        }
    }
    let mut latest: HashMap<(i64, Option<i64>, String), Vec<u8>> = HashMap::new();
    for ack in acks {
        let w = &writers[ack.writer];
        for op in &ack.operations {
            if let Operation::SetEntity { key, value, .. } = op {
                latest.insert((w.namespace_id, w.vault_id, key.clone()), value.clone());
            }
        }
        let block = chains[&(w.namespace_id, w.vault_id)]
            .get(&ack.height)
            .unwrap_or_else(|| panic!("height of {ack:?} is beyond the tip"));
        let tx = block.transactions.iter().find(|t| t.id == ack.tx_id);
        let tx = tx.unwrap_or_else(|| panic!("tx of {ack:?} not in block {}", ack.height));
        assert_eq!((&tx.client_id, tx.sequence), (&w.client_id, ack.sequence));
        assert_eq!(tx.operations, ack.operations, "block holds other operations for {ack:?}");
    }
    let mut by_scope: BTreeMap<Scope, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for ((ns, vault, key), value) in latest {
        by_scope.entry((ns, vault)).or_default().push((key, value));
    }
    for ((ns, vault), pairs) in by_scope {
        for chunk in pairs.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|(k, _)| k.clone()).collect();
            let items =
                retry_transient(|| client.batch_read(ns, vault, keys.clone(), ReadConsistency::Linearizable))
                    .await
                    .unwrap();
            for ((key, value), item) in chunk.iter().zip(items) {
                assert_eq!(&item.key, key);
                assert_eq!(
                    item.value.as_deref(),
                    Some(&value[..]),
                    "acknowledged write lost: {ns}/{vault:?} {key}"
                );
            }
        }
    }
    for (index, w) in writers.iter().enumerate() {
        let sequences: Vec<u64> = chains[&(w.namespace_id, w.vault_id)]
            .values()
            .flat_map(|b| b.transactions.iter())
            .filter(|t| t.client_id == w.client_id)
            .map(|t| t.sequence)
            .collect();
        let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
        assert_eq!(sequences, expected, "{}: committed sequences are not 1..n", w.client_id);
        let state = client_state(&client, w.namespace_id, w.vault_id, &w.client_id).await;
        assert_eq!(state, sequences.len() as u64, "{}: client state differs from the chain", w.client_id);
        let last_acked = acks.iter().filter(|a| a.writer == index).map(|a| a.sequence).max().unwrap_or(0);
        assert!(
            state >= last_acked,
            "{}: client state {state} < last acknowledged {last_acked}",
            w.client_id
        );
        let sent = last_sent.get(&index).copied().unwrap_or(0);
        assert!(state <= sent, "{}: client state {state} > last sent {sent}", w.client_id);
    }
    chains
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_acknowledged_writes_survive_kill9_cycles() {
    // Proves durability under repeated crashes at random moments: each cycle starts the writers
    // (resuming their sequences), waits for a seeded-random number of acknowledgements plus a
    // seeded-random pause, kills the server with writes in flight, restarts it and verifies
    // everything acknowledged so far; blocks seen in earlier cycles must never change.
    let cycles: usize = env_or("LEDGER_SOAK_CYCLES", DEFAULT_CYCLES);
    let seed: u64 = env_or("LEDGER_SOAK_SEED", DEFAULT_SEED);
    eprintln!("soak: {cycles} cycles, LEDGER_SOAK_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = temp_dir("soak-crash");
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data, &[]);
    let mut writers = Vec::new();
    {
        let client = connect(&server.addr).await;
        for ns in 0..NAMESPACES {
            let (namespace_id, vault_id) = create_scope(&client, &format!("soak-{ns}")).await;
            for (role, (vault, batched)) in
                [(Some(vault_id), false), (None, false), (Some(vault_id), true)].into_iter().enumerate()
            {
                let client_id = format!("soak-{ns}-{role}");
                writers.push(Writer { namespace_id, vault_id: vault, client_id, batched });
            }
        }
    }
    assert_eq!(writers.len(), NAMESPACES * WRITERS_PER_NAMESPACE);
    let acks = Arc::new(Mutex::new(Vec::<Ack>::new()));
    let mut next_n = vec![0u64; writers.len()];
    let mut last_sent: HashMap<usize, u64> = HashMap::new();
    let mut seen_blocks: HashMap<(i64, Option<i64>, u64), Hash> = HashMap::new();

    for cycle in 0..cycles {
        let target = rng.gen_range(20..200);
        let pause = Duration::from_millis(rng.gen_range(0..40));
        let acked = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for (index, writer) in writers.iter().enumerate() {
            let run = WriterRun {
                addr: server.addr.clone(),
                index,
                writer: writer.clone(),
                cycle,
                n: next_n[index],
                seed,
            };
            tasks.push(tokio::spawn(run_writer(run, Arc::clone(&acks), Arc::clone(&acked))));
        }
        while acked.load(Ordering::SeqCst) < target {
            assert!(
                !tasks.iter().all(|t| t.is_finished()),
                "seed {seed}: all writers stopped before the crash"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(pause).await;
        server.kill9();
        for (index, task) in tasks.into_iter().enumerate() {
            let (n, sent) = task.await.unwrap();
            next_n[index] = n;
            last_sent.insert(index, sent);
        }
        server = ServerProcess::restart(&data, &[]);
        let acked_so_far: Vec<Ack> = acks.lock().unwrap().clone();
        let chains = verify(&server.addr, &writers, &acked_so_far, &last_sent).await;
        for ((ns, vault), chain) in &chains {
            for (height, block) in chain {
                let hash = block_hash(&block.header);
                let earlier = seen_blocks.insert((*ns, *vault, *height), hash);
                assert!(
                    earlier.is_none_or(|h| h == hash),
                    "seed {seed}: block ({ns}, {vault:?}, {height}) changed"
                );
            }
        }
        let blocks: usize = chains.values().map(BTreeMap::len).sum();
        eprintln!(
            "soak cycle {}/{cycles}: killed after {} acks this cycle (+{pause:?}); {} acks and {blocks} blocks verified",
            cycle + 1,
            acked.load(Ordering::SeqCst),
            acked_so_far.len()
        );
    }
    assert_eq!(server.stop(), Some(0), "clean stop failed");
}
