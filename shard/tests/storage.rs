//! The storage/consensus layer end to end on one glommio executor and a temporary data dir: open a
//! group (single voter), propose scope creation and blocks through `raft.client_write`, and check
//! apply, clean restart, crash recovery by re-applying the Raft log, and the recovery root check.
#![allow(clippy::unwrap_used)]

use glommio::LocalExecutorBuilder;
use ledger_core::hash::block_hash;
use ledger_core::state::{BlockContext, BlockDraft};
use ledger_core::types::*;
use ledger_shard::raft::open::{group_dir, open_group_with, GroupOptions, OpenGroup};
use ledger_shard::raft::state_machine::ApplyResult;
use ledger_shard::raft::type_config::LogId;
use ledger_shard::round::group_data::SpeculativeBlock;
use ledger_shard::ShardConfig;
use redb::{ReadableDatabase, ReadableTable};
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

const GROUP: GroupId = GroupId(1);

fn run<T: 'static>(f: impl Future<Output = T> + 'static) -> T {
    LocalExecutorBuilder::default().make().unwrap().run(f)
}

fn config(dir: &Path) -> ShardConfig {
    ShardConfig::for_tests(dir.to_path_buf())
}

fn no_periodic() -> GroupOptions {
    GroupOptions { checkpoint_interval: None, peers: None, core: 0 }
}

fn scope(vault: i64) -> ScopeKey {
    ScopeKey { namespace_id: NamespaceId(7), vault_id: VaultId(vault) }
}

fn ts(secs: i64) -> Timestamp {
    Timestamp { secs, nanos: 0 }
}

async fn create_scope(g: &OpenGroup, key: ScopeKey) -> ApplyResult {
    let cmd = AdminCommand::CreateScope {
        namespace_id: key.namespace_id.0,
        vault_id: key.vault_id.0,
        retention_policy: RetentionPolicy::default(),
        timestamp: ts(1),
        leader_id: 1,
    };
    g.raft.client_write(LogPayload::Admin(cmd)).await.unwrap().data
}

fn tx(client: &str, sequence: u64, key: &str, value: &[u8]) -> Transaction {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&sequence.to_be_bytes());
    Transaction {
        id,
        client_id: client.into(),
        sequence,
        operations: vec![Operation::SetEntity {
            key: key.into(),
            value: value.to_vec(),
            expires_at: None,
            condition: None,
        }],
        timestamp: ts(10),
        actor: "user:test".into(),
    }
}

/// Builds a one-entry group block on the current state like the leader's block builder does
/// (optionally leaving the speculative delta for apply), proposes it and returns apply's result.
async fn propose(g: &OpenGroup, key: ScopeKey, txs: Vec<Transaction>, speculative: bool) -> ApplyResult {
    let gb = {
        let mut data = g.data.borrow_mut();
        let metrics = g.raft.metrics().borrow().clone();
        let ctx = BlockContext {
            timestamp: ts(100 + data.group_height as i64),
            leader_id: 1,
            term: metrics.current_term,
            committed_index: metrics.last_log_index.unwrap_or(0) + 1,
        };
        let mut draft = BlockDraft::new(data.scopes.get(&key).unwrap());
        for t in txs {
            draft.try_apply(t).unwrap();
        }
        let (entry, delta) = draft.finish(&ctx);
        let gb = GroupBlock {
            group_id: GROUP.0,
            group_height: data.group_height + 1,
            previous_group_hash: data.last_group_hash,
            vault_entries: vec![entry],
            timestamp: ctx.timestamp,
            leader_id: ctx.leader_id,
            term: ctx.term,
            committed_index: ctx.committed_index,
        };
        if speculative {
            data.speculative.push_back(SpeculativeBlock {
                group_height: gb.group_height,
                group_hash: ledger_core::hash::group_hash(&gb),
                deltas: vec![(key, delta)],
            });
        }
        gb
    };
    g.raft.client_write(LogPayload::Block(std::sync::Arc::new(gb))).await.unwrap().data
}

/// What must survive a restart: per scope (height, state root, last block hash, health) plus the
/// group chain position.
#[derive(Debug, Clone, PartialEq)]
struct Fingerprint {
    scopes: Vec<(ScopeKey, u64, Hash, Hash, VaultHealth)>,
    group_height: u64,
    last_group_hash: Hash,
}

fn fingerprint(g: &OpenGroup) -> Fingerprint {
    let data = g.data.borrow();
    Fingerprint {
        scopes: data
            .scopes
            .values()
            .map(|s| {
                (s.meta.key, s.meta.height, s.meta.state_root, s.meta.last_block_hash, s.meta.health.clone())
            })
            .collect(),
        group_height: data.group_height,
        last_group_hash: data.last_group_hash,
    }
}

/// Proves the open → propose → apply path: scope creation is idempotent, a block with the
/// leader's speculative delta is committed without replay, one without is replayed and verified,
/// the entity is readable, and the archive serves genesis and every block with matching hashes.
#[test]
fn t01_open_propose_apply() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    run(async move {
        let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
        let s = scope(11);
        assert_eq!(create_scope(&g, s).await, ApplyResult::ScopeCreated { scope: s, created: true });
        assert_eq!(create_scope(&g, s).await, ApplyResult::ScopeCreated { scope: s, created: false });

        let r = propose(&g, s, vec![tx("c1", 1, "k1", b"v1")], true).await;
        assert!(
            matches!(r, ApplyResult::Block { group_height: 1, ref speculative, .. } if speculative == &vec![s])
        );
        let r = propose(&g, s, vec![tx("c1", 2, "k2", b"v2"), tx("c2", 1, "k1", b"v1b")], false).await;
        assert!(
            matches!(r, ApplyResult::Block { group_height: 2, ref replayed, .. } if replayed == &vec![s])
        );

        {
            let data = g.data.borrow();
            let state = data.scopes.get(&s).unwrap();
            assert_eq!(state.meta.height, 2);
            assert_eq!(state.get_entity("k1").unwrap().value, b"v1b");
            assert_eq!(state.client_state("c1").last_committed_seq, 2);
            assert_eq!(state.computed_root(), state.meta.state_root);
            assert_eq!(data.group_height, 2);
            assert_eq!(data.applied_index, g.raft.metrics().borrow().last_applied.unwrap().index);

            let genesis = data.get_block(s, 0).unwrap().unwrap();
            assert_eq!(genesis.header, state.meta.genesis);
            let b2 = data.get_block(s, 2).unwrap().unwrap();
            assert_eq!(block_hash(&b2.header), state.meta.last_block_hash);
            assert_eq!(b2.transactions.len(), 2);
            let b1 = data.get_block(s, 1).unwrap().unwrap();
            assert_eq!(b2.header.previous_hash, block_hash(&b1.header));
            assert_eq!(data.get_range(s, 0, 10).unwrap().len(), 3);
            assert!(data.get_block(s, 3).unwrap().is_none());
        }
        g.close().await.unwrap();
    });
}

/// Proves a clean restart keeps everything: after close (final checkpoint) and reopen, every
/// scope's height, root and hash, the group chain and the archive (now read from blocks.redb)
/// are identical, and the recomputed roots passed the recovery check (scopes still Healthy).
#[test]
fn t02_restart_keeps_state() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let before = run({
        let cfg = cfg.clone();
        async move {
            let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
            for v in [1, 2] {
                create_scope(&g, scope(v)).await;
            }
            for i in 1..=5u64 {
                propose(
                    &g,
                    scope(1 + (i as i64 % 2)),
                    vec![tx("c", i.div_ceil(2), &format!("k{i}"), b"x")],
                    i % 2 == 0,
                )
                .await;
            }
            let applied = g.data.borrow().applied_index;
            let f = fingerprint(&g);
            g.close().await.unwrap();
            (f, applied)
        }
    });
    run(async move {
        let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
        assert_eq!(fingerprint(&g), before.0);
        {
            let data = g.data.borrow();
            // The final checkpoint covered everything: nothing was re-applied (openraft resumes the
            // same term from the committed vote, so there may be no new entry either).
            assert_eq!(data.durable_log_id.unwrap().index, before.1);
            assert!(data.applied_index >= before.1);
            assert_eq!(data.archive.pending_len(), 0);
            for (key, state) in &data.scopes {
                assert_eq!(state.meta.health, VaultHealth::Healthy);
                let tip = data.get_block(*key, state.meta.height).unwrap().unwrap();
                assert_eq!(block_hash(&tip.header), state.meta.last_block_hash);
            }
        }
        g.close().await.unwrap();
    });
}

/// Proves crash recovery: a checkpoint after 3 blocks, then 4 more blocks that are only in the
/// (durable) Raft log when the executor dies without closing the group. Reopening loads the
/// 3-block checkpoint and openraft re-applies the rest, giving identical roots, and the
/// re-applied blocks are archived again.
#[test]
fn t03_crash_reapplies_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let before = run({
        let cfg = cfg.clone();
        async move {
            let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
            create_scope(&g, scope(1)).await;
            for i in 1..=3 {
                propose(&g, scope(1), vec![tx("c", i, &format!("k{i}"), b"x")], true).await;
            }
            assert!(g.checkpoint().await.unwrap());
            let durable = g.data.borrow().durable_log_id.unwrap().index;
            for i in 4..=7 {
                propose(&g, scope(1), vec![tx("c", i, &format!("k{}", i % 3), &[i as u8])], i % 2 == 0).await;
            }
            assert!(g.data.borrow().applied_index > durable);
            // Crash: no close, no final checkpoint; the executor drops every task.
            fingerprint(&g)
        }
    });
    assert_eq!(before.scopes[0].1, 7);
    run(async move {
        let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
        assert_eq!(fingerprint(&g), before);
        {
            let data = g.data.borrow();
            let state = data.scopes.get(&scope(1)).unwrap();
            assert_eq!(state.get_entity("k1").unwrap().value, vec![7u8]);
            for h in 1..=7 {
                assert!(data.get_block(scope(1), h).unwrap().is_some(), "block {h} archived");
            }
        }
        g.close().await.unwrap();
    });
}

/// Changes the group's `state.redb` behind the server's back (the group must be closed).
fn edit_state_file(cfg: &ShardConfig, edit: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::create(group_dir(cfg, GROUP).join("state.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    edit(&txn);
    txn.commit().unwrap();
}

/// Proves the recovery HARD CHECK: a state row altered on disk behind the server's back makes
/// the recomputed root differ from `ScopeMeta.state_root`, so the scope opens Diverged while the
/// other scope of the group stays Healthy.
#[test]
fn t04_tampered_row_marks_scope_diverged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    run({
        let cfg = cfg.clone();
        async move {
            let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
            create_scope(&g, scope(1)).await;
            create_scope(&g, scope(2)).await;
            propose(&g, scope(1), vec![tx("c", 1, "k", b"honest")], true).await;
            propose(&g, scope(2), vec![tx("c", 1, "k", b"other")], true).await;
            g.close().await.unwrap();
        }
    });
    edit_state_file(&cfg, |txn| {
        let mut t = txn.open_table(redb::TableDefinition::<&[u8], &[u8]>::new("entities")).unwrap();
        let mut key = 1i64.to_be_bytes().to_vec();
        key.extend_from_slice(b"k");
        let mut row = t.get(key.as_slice()).unwrap().unwrap().value().to_vec();
        let last = row.len() - 1;
        row[last] ^= 1;
        t.insert(key.as_slice(), row.as_slice()).unwrap();
    });
    run(async move {
        let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
        {
            let data = g.data.borrow();
            assert!(matches!(data.scopes[&scope(1)].meta.health, VaultHealth::Diverged { at_height: 1, .. }));
            assert_eq!(data.scopes[&scope(2)].meta.health, VaultHealth::Healthy);
        }
        g.close().await.unwrap();
    });
}

/// Proves apply isolates a divergence: an entry whose state root is wrong marks only its scope
/// Diverged (and is archived, not applied); a later block for another scope still applies, and a
/// later entry for the diverged scope is skipped.
#[test]
fn t05_divergent_entry_marks_only_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    run(async move {
        let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
        create_scope(&g, scope(1)).await;
        create_scope(&g, scope(2)).await;
        let bad = {
            let data = g.data.borrow();
            let mut draft = BlockDraft::new(data.scopes.get(&scope(1)).unwrap());
            draft.try_apply(tx("c", 1, "k", b"v")).unwrap();
            let ctx = BlockContext { timestamp: ts(100), leader_id: 1, term: 1, committed_index: 0 };
            let (mut entry, _) = draft.finish(&ctx);
            entry.state_root = [9u8; 32];
            GroupBlock {
                group_id: GROUP.0,
                group_height: 1,
                previous_group_hash: data.last_group_hash,
                vault_entries: vec![entry],
                timestamp: ts(100),
                leader_id: 1,
                term: 1,
                committed_index: 0,
            }
        };
        let r = g.raft.client_write(LogPayload::Block(std::sync::Arc::new(bad))).await.unwrap().data;
        assert!(matches!(r, ApplyResult::Block { ref diverged, .. } if diverged == &vec![scope(1)]));
        let r = propose(&g, scope(2), vec![tx("c", 1, "k", b"v")], false).await;
        assert!(
            matches!(r, ApplyResult::Block { group_height: 2, ref replayed, .. } if replayed == &vec![scope(2)])
        );
        {
            let data = g.data.borrow();
            assert!(matches!(data.scopes[&scope(1)].meta.health, VaultHealth::Diverged { at_height: 1, .. }));
            assert_eq!(data.scopes[&scope(1)].meta.height, 0);
            assert!(data.archive.get_group_block(1).unwrap().is_some());
        }
        g.close().await.unwrap();
    });
}

/// Measures sequential single-group throughput (one block of 10 transactions in flight at a
/// time, each acknowledged after its fsync'd log append and apply) and the periodic checkpoint.
#[test]
fn t06_sequential_block_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    run(async move {
        let g = open_group_with(&cfg, GROUP, GroupOptions::default()).await.unwrap();
        create_scope(&g, scope(1)).await;
        let blocks = 200u64;
        let started = Instant::now();
        for b in 0..blocks {
            let txs = (0..10)
                .map(|i| tx(&format!("c{i}"), b + 1, &format!("k{}", (b * 10 + i) % 500), b"value"))
                .collect();
            propose(&g, scope(1), txs, true).await;
        }
        let took = started.elapsed();
        let waited = Instant::now();
        while g.checkpointer.stats().checkpoints == 0 && waited.elapsed() < Duration::from_secs(5) {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        let cp = g.checkpointer.stats();
        let commits = g.log_stats.durable_commits.load(std::sync::atomic::Ordering::Relaxed);
        let commit_us = g.log_stats.durable_commit_us.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "single group: {blocks} blocks x 10 tx sequential in {took:?} = {:.0} blocks/s; log fsync mean {} us over {commits} commits; {} checkpoints, last {} us",
            blocks as f64 / took.as_secs_f64(),
            commit_us / commits.max(1),
            cp.checkpoints,
            cp.last_us
        );
        assert!(cp.checkpoints >= 1, "periodic checkpoint ran");

        // Pipelined small entries (idempotent status writes). openraft 0.9.25's RaftCore runs
        // the engine commands after every client write and awaits each append's flush callback
        // inline (`RaftCore::append_to_log`), so one group gets one fsync per entry however many
        // writes are queued: batching belongs in the block builder (SPEC §8.2-8.3).
        let writes = 500u64;
        let commits_before = g.log_stats.durable_commits.load(std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let handles: Vec<_> = (0..writes)
            .map(|_| {
                let raft = g.raft.clone();
                glommio::spawn_local(async move {
                    let cmd = AdminCommand::SetScopeStatus {
                        namespace_id: 7,
                        vault_id: 1,
                        status: VaultStatus::Active,
                    };
                    raft.client_write(LogPayload::Admin(cmd)).await.unwrap();
                })
                .detach()
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        let took = started.elapsed();
        let commits = g.log_stats.durable_commits.load(std::sync::atomic::Ordering::Relaxed) - commits_before;
        eprintln!(
            "single group pipelined: {writes} entries in {took:?} = {:.0} entries/s over {commits} fsync'd log commits",
            writes as f64 / took.as_secs_f64()
        );
        assert!(commits >= 1);
        assert!(g.data.borrow().durable_log_id.is_some());
        g.close().await.unwrap();
    });
}

fn delete_tx(client: &str, sequence: u64, key: &str) -> Transaction {
    let mut t = tx(client, sequence, key, b"");
    t.operations = vec![Operation::DeleteEntity { key: key.into() }];
    t
}

/// Storage key of `key` in scope 1 (SPEC §3.5).
fn row_key_1(key: &str) -> Vec<u8> {
    let mut k = scope(1).scope_id().to_be_bytes().to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

fn journal_len(cfg: &ShardConfig) -> u64 {
    use redb::ReadableTableMetadata;
    let db = redb::Database::open(group_dir(cfg, GROUP).join("state.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    txn.open_table(ledger_shard::storage::row_journal::ROW_JOURNAL).unwrap().len().unwrap()
}

/// Proves the row journal (D18) loses nothing: three checkpoints append records that overwrite and
/// delete each other's rows; after a crash the group reopens with identical roots and rows (the
/// journal replayed over the tables, later records winning), and a clean close then merges the
/// journal into SPEC §9.2's `entities` table and empties it, with the rows unchanged.
#[test]
fn t07_row_journal_replays_after_a_crash_and_merges_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let before = run({
        let cfg = cfg.clone();
        async move {
            let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
            create_scope(&g, scope(1)).await;
            propose(&g, scope(1), vec![tx("c", 1, "a", b"a1"), tx("c", 2, "b", b"b1")], true).await;
            assert!(g.checkpoint().await.unwrap());
            propose(&g, scope(1), vec![tx("c", 3, "a", b"a2"), delete_tx("c", 4, "b")], true).await;
            assert!(g.checkpoint().await.unwrap());
            propose(&g, scope(1), vec![tx("c", 5, "b", b"b3"), tx("c", 6, "c", b"c3")], false).await;
            assert!(g.checkpoint().await.unwrap());
            assert!(g.checkpointer.journal_rows() >= 6, "small checkpoints append records");
            fingerprint(&g)
        }
    });
    assert!(journal_len(&cfg) >= 3);
    run({
        let cfg = cfg.clone();
        let before = before.clone();
        async move {
            let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
            assert_eq!(fingerprint(&g), before);
            assert!(g.checkpointer.journal_rows() >= 6, "the reopened group counts the journal");
            {
                let data = g.data.borrow();
                let state = data.scopes.get(&scope(1)).unwrap();
                assert_eq!(state.meta.health, VaultHealth::Healthy);
                assert_eq!(state.get_entity("a").unwrap().value, b"a2".to_vec());
                assert_eq!(state.get_entity("b").unwrap().value, b"b3".to_vec());
                assert_eq!(state.get_entity("c").unwrap().value, b"c3".to_vec());
            }
            g.close().await.unwrap();
        }
    });
    assert_eq!(journal_len(&cfg), 0, "a clean close merges the journal");
    {
        let db = redb::Database::open(group_dir(&cfg, GROUP).join("state.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(redb::TableDefinition::<&[u8], &[u8]>::new("entities")).unwrap();
        for (key, value) in [("a", b"a2"), ("b", b"b3"), ("c", b"c3")] {
            let row = t.get(row_key_1(key).as_slice()).unwrap().unwrap().value().to_vec();
            assert_eq!(&row[16..], value, "row {key} merged");
        }
    }
    run(async move {
        let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
        assert_eq!(fingerprint(&g), before);
        assert_eq!(g.checkpointer.journal_rows(), 0);
        g.close().await.unwrap();
    });
}

/// Proves a checkpoint with more rows than one record holds appends several records, and that a
/// crashed group replays all of them.
#[test]
fn t09_a_large_checkpoint_spans_several_records() {
    let rows = 2 * ledger_shard::constants::JOURNAL_RECORD_ROWS_MAX as u64 + 100;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let before = run({
        let cfg = cfg.clone();
        async move {
            let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
            create_scope(&g, scope(1)).await;
            let txs = (1..=rows).map(|i| tx("c", i, &format!("k{i}"), format!("v{i}").as_bytes())).collect();
            propose(&g, scope(1), txs, true).await;
            assert!(g.checkpoint().await.unwrap());
            assert_eq!(g.checkpointer.journal_rows(), rows);
            fingerprint(&g)
            // Crash: the rows are only in the journal.
        }
    });
    assert_eq!(journal_len(&cfg), 3, "split into records of at most JOURNAL_RECORD_ROWS_MAX rows");
    run(async move {
        let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
        assert_eq!(fingerprint(&g), before);
        {
            let data = g.data.borrow();
            let state = data.scopes.get(&scope(1)).unwrap();
            assert_eq!(state.meta.health, VaultHealth::Healthy);
            assert_eq!(state.get_entity(&format!("k{rows}")).unwrap().value, format!("v{rows}").into_bytes());
        }
        g.close().await.unwrap();
    });
}

/// Proves a changed byte in a journal record is caught like one in a table row: the recomputed
/// root differs, so the scope opens Diverged instead of serving the altered row.
#[test]
fn t08_tampered_journal_record_marks_scope_diverged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    run({
        let cfg = cfg.clone();
        async move {
            let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
            create_scope(&g, scope(1)).await;
            propose(&g, scope(1), vec![tx("c", 1, "k", b"honest")], true).await;
            assert!(g.checkpoint().await.unwrap());
            // Crash: the row is only in the journal.
        }
    });
    edit_state_file(&cfg, |txn| {
        let mut t = txn.open_table(ledger_shard::storage::row_journal::ROW_JOURNAL).unwrap();
        let (seq, mut record) = {
            let (seq, bytes) = t.last().unwrap().unwrap();
            (seq.value(), bytes.value().to_vec())
        };
        let at = record.windows(6).position(|w| w == b"honest").expect("the value is in the record");
        record[at] ^= 1;
        t.insert(seq, record.as_slice()).unwrap();
    });
    run(async move {
        let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
        {
            let data = g.data.borrow();
            assert!(matches!(data.scopes[&scope(1)].meta.health, VaultHealth::Diverged { .. }));
        }
        g.close().await.unwrap();
    });
}

/// Waits while openraft owes the group a snapshot (10 applied entries past the last one:
/// t10's `raft_snapshot_logs`).
async fn wait_for_due_snapshot(g: &OpenGroup) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (applied, next) = {
            let m = g.raft.metrics().borrow().clone();
            (m.last_applied.map_or(0, |l| l.index + 1), m.snapshot.map_or(0, |s| s.index + 1))
        };
        if applied < next + 10 {
            return;
        }
        assert!(Instant::now() < deadline, "openraft never built the snapshot due at {applied}");
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// D73: a `state.redb` that is gone (not garbage) while snapshot files remain and the log was
/// never purged used to open as a new, empty state; openraft then found a snapshot ahead of its
/// committed index and panicked, stopping the node. The group now restores from the newest
/// snapshot and re-applies the log after it.
#[test]
fn t11_lost_state_beside_snapshots_restores_without_a_purged_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.raft_snapshot_logs = 10;
    cfg.raft_log_keep = 1000;
    let before = run({
        let cfg = cfg.clone();
        async move {
            let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
            create_scope(&g, scope(1)).await;
            for i in 1..=12 {
                propose(&g, scope(1), vec![tx("c", i, &format!("k{i}"), &[i as u8])], true).await;
                wait_for_due_snapshot(&g).await;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while g.data.borrow().snapshots.newest().is_none() {
                assert!(Instant::now() < deadline, "no snapshot file was built");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            assert!(g.raft.metrics().borrow().purged.is_none(), "the log must not be purged here");
            propose(&g, scope(1), vec![tx("c", 13, "late", &[13])], true).await;
            fingerprint(&g)
        }
    });
    std::fs::remove_file(group_dir(&cfg, GROUP).join("state.redb")).unwrap();
    run(async move {
        let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
        assert_eq!(fingerprint(&g), before);
        assert_eq!(
            g.data.borrow().scopes.get(&scope(1)).unwrap().get_entity("late").unwrap().value,
            vec![13u8]
        );
        g.close().await.unwrap();
    });
}

/// Proves snapshots are openraft's and files at once, and SPEC §9.6 step 4: with a low
/// `raft_snapshot_logs` openraft builds snapshot files on its own and purges the log behind them
/// (never past the durable checkpoint); after a crash that leaves `state.redb` unusable (garbage
/// bytes), the group opens from its newest snapshot file plus the log after it, with the same
/// roots and chain, the bad file moved aside, and `get_snapshot` serving that file's cut.
#[test]
fn t10_unusable_state_restores_from_snapshot_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.raft_snapshot_logs = 10;
    cfg.raft_log_keep = 2;
    let before = run({
        let cfg = cfg.clone();
        async move {
            let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
            create_scope(&g, scope(1)).await;
            for i in 1..=25 {
                propose(&g, scope(1), vec![tx("c", i, &format!("k{}", i % 7), &[i as u8])], i % 2 == 0).await;
                // openraft starts a build once 10 entries are applied past the last snapshot and
                // builds at whatever is applied when its task runs: wait for each build before
                // the next entry, so that a slow machine cannot move a build past index 9 and the
                // next one past the last entry (27).
                wait_for_due_snapshot(&g).await;
            }
            // openraft builds its snapshots in a task of its own and purges after them: entries 0..=27
            // (membership, blank, scope, 25 blocks) give builds at indexes 9 and 19.
            let deadline = Instant::now() + Duration::from_secs(10);
            while g.raft.metrics().borrow().snapshot.is_none_or(|s| s.index < 19)
                || g.raft.metrics().borrow().purged.is_none()
            {
                assert!(
                    Instant::now() < deadline,
                    "openraft never purged the log: {:?}",
                    g.raft.metrics().borrow()
                );
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            let metrics = g.raft.metrics().borrow().clone();
            let snapshot = metrics.snapshot.unwrap();
            assert!(snapshot.index >= 10, "{snapshot:?}");
            let purged = metrics.purged.unwrap();
            assert!(purged.index <= snapshot.index - 2, "{purged:?} keeps 2 behind {snapshot:?}");
            assert!(purged.index <= g.data.borrow().durable_log_id.unwrap().index);
            let newest = g.data.borrow().snapshots.newest().cloned().unwrap();
            assert_eq!(newest.header.last_log_id.unwrap().index, snapshot.index);
            assert!(newest.path.exists());
            // One more block, only in the log (index 28: no build at 29 is in flight at the crash,
            // which the dying executor could not finish).
            propose(&g, scope(1), vec![tx("c", 26, "late", &[26])], true).await;
            assert!(g.data.borrow().applied_index > newest.header.last_log_id.unwrap().index);
            // Crash: no close.
            fingerprint(&g)
        }
    });
    let state = group_dir(&cfg, GROUP).join("state.redb");
    std::fs::write(&state, vec![0xA5u8; 8192]).unwrap();
    run(async move {
        let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
        assert_eq!(fingerprint(&g), before);
        {
            let data = g.data.borrow();
            let s = data.scopes.get(&scope(1)).unwrap();
            assert_eq!(s.get_entity("late").unwrap().value, vec![26u8]);
            assert_eq!(s.meta.health, VaultHealth::Healthy);
            assert_eq!(s.computed_root(), s.meta.state_root);
        }
        let aside = std::fs::read_dir(group_dir(&cfg, GROUP))
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("state.redb.unusable-"));
        assert!(aside, "the unusable state.redb was moved aside");
        let current = g.raft.get_snapshot().await.unwrap().unwrap();
        let newest = g.data.borrow().snapshots.newest().cloned().unwrap();
        assert_eq!(current.meta.last_log_id.map(|l| l.index), newest.header.last_log_id.map(|l| l.index));
        let bytes = current.snapshot.into_inner();
        assert_eq!(bytes, std::fs::read(&newest.path).unwrap(), "openraft's snapshot is the file");
        g.close().await.unwrap();
    });
    // The restored state was checkpointed: a clean reopen needs no snapshot.
}

/// Proves a checkpoint that would record less than the last durable one (a bug: apply only moves
/// forward, and the log is purged up to that checkpoint) is refused as `Corrupt` with the dirty
/// rows kept, so the next checkpoint still writes them and a restart finds them.
#[test]
fn t12_a_checkpoint_behind_the_durable_one_is_refused_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let before = run({
        let cfg = cfg.clone();
        async move {
            let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
            create_scope(&g, scope(1)).await;
            propose(&g, scope(1), vec![tx("c", 1, "k1", b"v1")], true).await;
            let durable = g.checkpointer.durable();
            let real = durable.get();
            let ahead = g.data.borrow().applied_log_id.map(|id| LogId::new(id.leader_id, id.index + 100));
            durable.set(ahead);
            let err = g.checkpoint().await.unwrap_err();
            assert!(matches!(err, ledger_shard::ShardError::Corrupt { what: "checkpoint", .. }), "{err}");
            durable.set(real);
            assert!(g.checkpoint().await.unwrap(), "the refused checkpoint's rows are still dirty");
            let f = fingerprint(&g);
            g.close().await.unwrap();
            f
        }
    });
    run(async move {
        let g = open_group_with(&cfg, GROUP, no_periodic()).await.unwrap();
        assert_eq!(fingerprint(&g), before);
        assert_eq!(g.data.borrow().scopes[&scope(1)].get_entity("k1").unwrap().value, b"v1");
        g.close().await.unwrap();
    });
}
