//! Durability across `kill -9` (SPEC §9.6, §12 invariants 1, 3, 24–26, 30): every acknowledged
//! write survives a crash at an arbitrary moment, chains stay continuous, committed blocks never
//! change, client sequences persist, and the recovered state root is stable across a clean
//! restart. Also: a second server on a data directory in use is refused.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledger_core::hash::block_hash;
use ledger_core::types::{Block, Hash, Operation, ReadConsistency, TxId};
use ledger_tests::scope::{client_state, connect, create_scope, retry_transient, set, tip, walk_chain};
use ledger_tests::{run_server_to_exit, temp_dir, ServerProcess};
use ledger_wire::client::{RetryPolicy, WriteOutcome, WriteSession};
use ledger_wire::messages::{Request, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WRITERS: usize = 4;
const CYCLES: usize = 3;
const SEED: u64 = 0x5eed_c4a5;

/// One acknowledged write: what the client was told.
#[derive(Debug, Clone)]
struct Ack {
    writer: usize,
    vault_id: Option<i64>,
    key: String,
    value: Vec<u8>,
    height: u64,
    tx_id: TxId,
    sequence: u64,
}

fn writer_id(writer: usize) -> String {
    format!("writer-{writer}")
}

/// Writer 3 writes to the namespace scope, the others to the vault, so both kinds of scope
/// are crashed with writes in flight.
fn writer_scope(writer: usize, vault_id: i64) -> Option<i64> {
    if writer == WRITERS - 1 {
        None
    } else {
        Some(vault_id)
    }
}

/// What one writer task does in one cycle.
struct WriterPlan {
    addr: String,
    writer: usize,
    namespace_id: i64,
    vault_id: Option<i64>,
    cycle: usize,
    /// First key index of this cycle (indices keep growing, so keys never repeat).
    n: u64,
}

/// Where writers record acknowledged writes.
#[derive(Clone)]
struct Recorder {
    acks: Arc<Mutex<Vec<Ack>>>,
    acked_this_cycle: Arc<AtomicUsize>,
}

impl Recorder {
    fn record(&self, ack: Ack) {
        self.acks.lock().unwrap().push(ack);
        self.acked_this_cycle.fetch_add(1, Ordering::SeqCst);
    }
}

/// Writes `w{i}:{n}` = `v{i}:{n}:{cycle}` in a loop until the server is gone; records every
/// acknowledged write. Returns (next n to use, last sequence this writer sent).
async fn run_writer(plan: WriterPlan, recorder: Recorder) -> (u64, u64) {
    let WriterPlan { addr, writer, namespace_id, vault_id, cycle, mut n } = plan;
    let client = connect(&addr).await;
    // Few quick retries: once the server is killed the writer should give up promptly.
    let policy = RetryPolicy {
        base: Duration::from_millis(5),
        cap: Duration::from_millis(20),
        max_attempts: 3,
        jitter: true,
    };
    let mut session = WriteSession::new(client, namespace_id, vault_id)
        .with_client_id(writer_id(writer))
        .with_retry_policy(policy)
        .with_rng_seed(SEED ^ writer as u64);
    // Resume after the previous cycle's crash: continue at last_committed_sequence + 1.
    let mut attempt = 0;
    while let Err(e) = session.sync_sequence().await {
        attempt += 1;
        assert!(attempt < 100, "writer {writer}: cannot learn its sequence: {e}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    loop {
        let key = format!("w{writer}:{n}");
        let value = format!("v{writer}:{n}:{cycle}").into_bytes();
        n += 1;
        let sequence = session.next_sequence().unwrap();
        match session.write(vec![set(key.clone(), value.clone())]).await {
            Ok(WriteOutcome::Committed { sequence: committed, success }) => {
                assert_eq!(committed, sequence);
                let (height, tx_id) = (success.block_height, success.tx_id);
                recorder.record(Ack { writer, vault_id, key, value, height, tx_id, sequence });
            }
            Ok(WriteOutcome::AlreadyCommitted { committed_tx_id, committed_block_height, .. }) => {
                // A retry of this very write found it committed; this writer is sequential, so
                // the ids name this transaction.
                if let (Some(tx_id), Some(height)) = (committed_tx_id, committed_block_height) {
                    recorder.record(Ack { writer, vault_id, key, value, height, tx_id, sequence });
                }
            }
            Ok(WriteOutcome::Rejected(error)) => panic!("unconditional write rejected: {error:?}"),
            // The server is gone; this write's outcome is unknown.
            Err(_) => return (n, sequence),
        }
    }
}

/// Checks every acknowledged write against a freshly restarted server; returns the chains.
async fn verify(
    addr: &str,
    namespace_id: i64,
    vault_id: i64,
    acks: &[Ack],
    last_sent: &HashMap<usize, u64>,
) -> BTreeMap<(i64, Option<i64>), BTreeMap<u64, Block>> {
    let client = connect(addr).await;
    // Values: each acknowledged key reads back with its value (linearizable, from the leader).
    for scope in [Some(vault_id), None] {
        let scoped: Vec<&Ack> = acks.iter().filter(|a| a.vault_id == scope).collect();
        for chunk in scoped.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|a| a.key.clone()).collect();
            let results = retry_transient(|| {
                client.batch_read(namespace_id, scope, keys.clone(), ReadConsistency::Linearizable)
            })
            .await
            .unwrap();
            for (ack, item) in chunk.iter().zip(results) {
                assert_eq!(item.key, ack.key);
                assert_eq!(item.value.as_deref(), Some(&ack.value[..]), "acknowledged write lost: {ack:?}");
            }
        }
    }
    // Chains: continuous from genesis to tip, for every scope including `_system`'s.
    let mut chains = BTreeMap::new();
    for scope in [(namespace_id, Some(vault_id)), (namespace_id, None), (0, None)] {
        chains.insert(scope, walk_chain(&client, scope.0, scope.1).await);
    }
    // Each acknowledged transaction is in the block at its reported height, as sent.
    for ack in acks {
        let chain = &chains[&(namespace_id, ack.vault_id)];
        let block = chain.get(&ack.height).unwrap_or_else(|| panic!("height of {ack:?} beyond the tip"));
        let tx = block.transactions.iter().find(|t| t.id == ack.tx_id);
        let tx = tx.unwrap_or_else(|| panic!("tx of {ack:?} not in block {}", ack.height));
        assert_eq!(tx.client_id, writer_id(ack.writer));
        assert_eq!(tx.sequence, ack.sequence);
        let expected = vec![set(ack.key.clone(), ack.value.clone())];
        assert_eq!(tx.operations, expected, "block holds different operations for {ack:?}");
    }
    // Sequences: each writer's transactions in chain order are exactly 1, 2, 3, ... and the
    // persisted client state is at least its last acknowledged and at most its last sent one.
    for writer in 0..WRITERS {
        let scope = writer_scope(writer, vault_id);
        let id = writer_id(writer);
        let sequences: Vec<u64> = chains[&(namespace_id, scope)]
            .values()
            .flat_map(|b| b.transactions.iter())
            .filter(|t| t.client_id == id)
            .map(|t| t.sequence)
            .collect();
        let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
        assert_eq!(sequences, expected, "{id}: committed sequences not 1..n");
        let state = client_state(&client, namespace_id, scope, &id).await;
        assert_eq!(state, sequences.len() as u64, "{id}: client state differs from the chain");
        let last_acked = acks.iter().filter(|a| a.writer == writer).map(|a| a.sequence).max().unwrap_or(0);
        assert!(state >= last_acked, "{id}: client state {state} < last acknowledged {last_acked}");
        let sent = last_sent.get(&writer).copied().unwrap_or(0);
        assert!(state <= sent, "{id}: client state {state} > last sent sequence {sent}");
    }
    chains
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_acknowledged_writes_survive_kill9() {
    // Proves durability of acknowledged writes over 3 crash cycles. Each cycle: 4 writers (own
    // client id each, sequences resumed with GetClientState) write distinct keys; once a
    // seeded-random number of writes is acknowledged the server gets SIGKILL with writes in
    // flight. After restart: every acknowledged value reads back, every scope's chain walks from
    // genesis to tip with previous_hash == block_hash(prev), each acked tx sits in the block at
    // its height, sequences are 1..n with the client state in [last acked, last sent], blocks
    // seen in earlier cycles are unchanged, and the tip survives a clean restart unchanged.
    let dir = temp_dir("crash-t01");
    let data = dir.path().join("data");
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut server = ServerProcess::start(&data, &[]);
    let (namespace_id, vault_id) = create_scope(&connect(&server.addr).await, "crash").await;
    let acks = Arc::new(Mutex::new(Vec::<Ack>::new()));
    let mut next_n = [0u64; WRITERS];
    let mut last_sent: HashMap<usize, u64> = HashMap::new();
    let mut seen_blocks: HashMap<(i64, Option<i64>, u64), Hash> = HashMap::new();

    for cycle in 0..CYCLES {
        let target = rng.gen_range(40..160);
        let acked_this_cycle = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for (writer, n) in next_n.iter().enumerate() {
            let plan = WriterPlan {
                addr: server.addr.clone(),
                writer,
                namespace_id,
                vault_id: writer_scope(writer, vault_id),
                cycle,
                n: *n,
            };
            let recorder =
                Recorder { acks: Arc::clone(&acks), acked_this_cycle: Arc::clone(&acked_this_cycle) };
            tasks.push(tokio::spawn(run_writer(plan, recorder)));
        }
        while acked_this_cycle.load(Ordering::SeqCst) < target {
            assert!(!tasks.iter().all(|t| t.is_finished()), "all writers stopped before the crash");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        server.kill9();
        for (writer, task) in tasks.into_iter().enumerate() {
            let (n, sent) = task.await.unwrap();
            next_n[writer] = n;
            last_sent.insert(writer, sent);
        }

        let restarted = ServerProcess::restart(&data, &[]);
        let acked: Vec<Ack> = acks.lock().unwrap().clone();
        eprintln!(
            "cycle {cycle}: crashed after {} acks this cycle ({} in total); last sent sequences {last_sent:?}",
            acked_this_cycle.load(Ordering::SeqCst),
            acked.len()
        );
        assert!(acked.len() >= target, "cycle {cycle}: only {} acknowledged", acked.len());
        let chains = verify(&restarted.addr, namespace_id, vault_id, &acked, &last_sent).await;
        for ((ns, vault), chain) in &chains {
            for (height, block) in chain {
                let hash = block_hash(&block.header);
                let earlier = seen_blocks.insert((*ns, *vault, *height), hash);
                assert!(earlier.is_none_or(|h| h == hash), "block ({ns}, {vault:?}, {height}) changed");
            }
            eprintln!("cycle {cycle}: scope ({ns}, {vault:?}) chain of {} blocks verified", chain.len());
        }

        // The recovered state is stable: a clean restart reports the identical tips.
        let client = connect(&restarted.addr).await;
        let before =
            (tip(&client, namespace_id, Some(vault_id)).await, tip(&client, namespace_id, None).await);
        drop(client);
        assert_eq!(restarted.stop(), Some(0), "clean stop failed");
        server = ServerProcess::restart(&data, &[]);
        let client = connect(&server.addr).await;
        let after =
            (tip(&client, namespace_id, Some(vault_id)).await, tip(&client, namespace_id, None).await);
        assert_eq!(after, before, "cycle {cycle}: tip changed across a clean restart");
        drop(client);
    }
    server.stop();
}

#[tokio::test]
async fn t02_second_server_on_locked_data_dir_exits_3() {
    // Proves SPEC §9.6 step 1: while one server holds the data directory, a second
    // `ledger-server` on it exits with code 3 and says "data directory locked", and the first
    // server keeps serving.
    let dir = temp_dir("crash-t02");
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &["--cores", "1"]);
    let (code, stdout, stderr) = run_server_to_exit(&data, &["--cores", "1"], Duration::from_secs(30));
    assert_eq!(code, Some(3), "stdout {stdout:?} stderr {stderr:?}");
    assert!(stderr.contains("data directory locked"), "stderr: {stderr}");
    assert!(!stdout.contains("listening on"), "second server started: {stdout}");

    let client = connect(&server.addr).await;
    let (namespace_id, vault_id) = create_scope(&client, "locked").await;
    let result =
        client.write(namespace_id, Some(vault_id), "c", 1, vec![set("k", b"v".to_vec())]).await.unwrap();
    assert!(matches!(result, ledger_wire::messages::WriteResult::Success(_)), "{result:?}");
    assert_eq!(client.read(namespace_id, Some(vault_id), "k").await.unwrap().as_deref(), Some(&b"v"[..]));
    drop(client);
    assert_eq!(server.stop(), Some(0));
}

/// The operations of batch `n` of writer `w`: two groups, two keys and one relationship.
fn batch_groups(writer: usize, n: u64) -> Vec<Vec<Operation>> {
    vec![
        vec![set(format!("b{writer}:{n}:a"), format!("{n}").into_bytes())],
        vec![
            set(format!("b{writer}:{n}:b"), format!("{n}").into_bytes()),
            Operation::CreateRelationship {
                resource: format!("doc:{writer}-{n}"),
                relation: "viewer".to_string(),
                subject: format!("user:{writer}"),
            },
        ],
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t03_batch_writes_are_atomic_across_kill9() {
    // Proves invariant 10 under crashes: 3 writers send two-group BatchWrites (two keys and a
    // relationship each) until a seeded number are acknowledged, then the server is killed with
    // batches in flight. After restart every acknowledged batch is fully present, and every
    // batch ever sent — including those whose outcome was unknown — is all-or-nothing.
    let dir = temp_dir("crash-t03");
    let data = dir.path().join("data");
    let mut rng = StdRng::seed_from_u64(SEED ^ 3);
    let server = ServerProcess::start(&data, &[]);
    let (namespace_id, vault_id) = create_scope(&connect(&server.addr).await, "atomic").await;
    let target = rng.gen_range(30..120);
    let acked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for writer in 0..3usize {
        let (addr, acked) = (server.addr.clone(), Arc::clone(&acked));
        tasks.push(tokio::spawn(async move {
            let client = connect(&addr).await;
            let policy = RetryPolicy { max_attempts: 2, ..RetryPolicy::default() };
            let mut session = WriteSession::new(client, namespace_id, Some(vault_id))
                .with_client_id(writer_id(writer))
                .with_retry_policy(policy)
                .with_rng_seed(SEED ^ writer as u64);
            let mut acked_ns = Vec::new();
            let mut n = 0u64;
            loop {
                match session.batch_write(batch_groups(writer, n)).await {
                    Ok(WriteOutcome::Committed { .. } | WriteOutcome::AlreadyCommitted { .. }) => {
                        acked_ns.push(n);
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(WriteOutcome::Rejected(error)) => panic!("unconditional batch rejected: {error:?}"),
                    Err(_) => return (acked_ns, n),
                }
                n += 1;
            }
        }));
    }
    while acked.load(Ordering::SeqCst) < target {
        assert!(!tasks.iter().all(|t| t.is_finished()), "all writers stopped before the crash");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill9();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }

    let server = ServerProcess::restart(&data, &[]);
    let client = connect(&server.addr).await;
    walk_chain(&client, namespace_id, Some(vault_id)).await;
    for (writer, (acked_ns, last_sent)) in outcomes.iter().enumerate() {
        for n in 0..=*last_sent {
            let keys = vec![format!("b{writer}:{n}:a"), format!("b{writer}:{n}:b")];
            let items = retry_transient(|| {
                client.batch_read(namespace_id, Some(vault_id), keys.clone(), ReadConsistency::Linearizable)
            })
            .await
            .unwrap();
            let request = Request::ListRelationships {
                namespace_id,
                vault_id,
                resource: Some(format!("doc:{writer}-{n}")),
                relation: None,
                subject: None,
                at_height: None,
                limit: 0,
                page_token: String::new(),
                consistency: ReadConsistency::Linearizable,
            };
            let relationships = match retry_transient(|| client.call(request.clone())).await.unwrap() {
                Response::ListRelationships { relationships, .. } => relationships.len(),
                other => panic!("unexpected response: {other:?}"),
            };
            let present = [items[0].found, items[1].found, relationships == 1];
            assert!(
                present.iter().all(|p| *p) || present.iter().all(|p| !*p),
                "batch {n} of writer {writer} partially applied: {present:?}"
            );
            if acked_ns.contains(&n) {
                assert!(present[0], "acknowledged batch {n} of writer {writer} lost");
            }
        }
    }
    drop(client);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t04_acknowledged_namespaces_and_vaults_survive_kill9() {
    // Proves admin operations are durable too: namespaces and vaults are created in a loop (two
    // concurrent tasks) until a seeded number are acknowledged, then the server is killed with
    // creations in flight. After restart every acknowledged namespace resolves by name to the
    // same id and is listed, every acknowledged vault's chain walks from its genesis, and each
    // of them accepts a write; a namespace created while the crash hit is either fully usable
    // or absent.
    let dir = temp_dir("crash-t04");
    let data = dir.path().join("data");
    let mut rng = StdRng::seed_from_u64(SEED ^ 4);
    let server = ServerProcess::start(&data, &[]);
    let target = rng.gen_range(6..20);
    let acked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..2usize {
        let (addr, acked) = (server.addr.clone(), Arc::clone(&acked));
        tasks.push(tokio::spawn(async move {
            let client = connect(&addr).await;
            let mut created = Vec::new();
            let mut attempted = Vec::new();
            for n in 0.. {
                let name = format!("adm{task}x{n}");
                attempted.push(name.clone());
                let Ok((namespace_id, _)) = client.create_namespace(name.clone()).await else { break };
                let Ok(vault_id) = client.create_vault(namespace_id, None).await else {
                    created.push((name, namespace_id, None));
                    break;
                };
                created.push((name, namespace_id, Some(vault_id)));
                acked.fetch_add(1, Ordering::SeqCst);
            }
            (created, attempted)
        }));
    }
    while acked.load(Ordering::SeqCst) < target {
        assert!(!tasks.iter().all(|t| t.is_finished()), "all tasks stopped before the crash");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill9();
    let mut created = Vec::new();
    let mut attempted = Vec::new();
    for task in tasks {
        let (c, a) = task.await.unwrap();
        created.extend(c);
        attempted.extend(a);
    }

    let server = ServerProcess::restart(&data, &[]);
    let client = connect(&server.addr).await;
    let listed = match retry_transient(|| {
        client.call(Request::ListNamespaces { page_token: String::new(), page_size: 1000 })
    })
    .await
    .unwrap()
    {
        Response::ListNamespaces { namespaces, .. } => namespaces,
        other => panic!("unexpected response: {other:?}"),
    };
    for (name, namespace_id, vault_id) in &created {
        let by = ledger_wire::messages::NamespaceSelector::Name(name.clone());
        let info = retry_transient(|| client.get_namespace(by.clone())).await.unwrap();
        assert_eq!(info.namespace_id, *namespace_id, "{name} resolves to another id");
        assert!(listed.iter().any(|n| n.namespace_id == *namespace_id), "{name} not listed");
        walk_chain(&client, *namespace_id, None).await;
        if let Some(vault_id) = vault_id {
            let chain = walk_chain(&client, *namespace_id, Some(*vault_id)).await;
            assert!(chain.contains_key(&0));
            let result = retry_transient(|| {
                client.write(*namespace_id, Some(*vault_id), "after", 1, vec![set("k", b"v".to_vec())])
            })
            .await
            .unwrap();
            assert!(matches!(result, ledger_wire::messages::WriteResult::Success(_)), "{name}: {result:?}");
        }
    }
    // In-flight creations: either absent, or a namespace whose scope works.
    for name in attempted.iter().filter(|a| !created.iter().any(|c| &c.0 == *a)) {
        let by = ledger_wire::messages::NamespaceSelector::Name(name.clone());
        match retry_transient(|| client.get_namespace(by.clone())).await {
            Ok(info) => {
                walk_chain(&client, info.namespace_id, None).await;
            }
            Err(ledger_wire::error::ClientError::Status { code, .. }) => {
                assert_eq!(code, ledger_wire::messages::StatusCode::NotFound, "{name}");
            }
            Err(e) => panic!("{name}: {e}"),
        }
    }
    drop(client);
    server.stop();
}
