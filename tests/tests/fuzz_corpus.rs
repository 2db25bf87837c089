//! Seed corpora for the fuzz targets of `fuzz/` (issue 12 item 7), captured from a live server:
//! the bytes a client sends and the frames the server answers with, a page token it issued, a
//! snapshot file and the row-journal records it wrote, and the `ledger get --verify --json` /
//! `ledger blocks --json` documents `ledger verify` reads. Ignored by default: it writes files.
//! Run it with `scripts/fuzz.sh --seed` (or set `LEDGER_FUZZ_CORPUS` to a directory and pass
//! `--ignored`); each input's first byte is the harness's control byte (see `fuzz/src/lib.rs`).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ledger_core::types::{Operation, ReadConsistency};
use ledger_tests::raw::{frame_bytes, hello_frame, RawConn};
use ledger_tests::scope::{connect, create_scope, set};
use ledger_tests::{binary, ledger_cli, temp_dir, ServerProcess};
use ledger_wire::codec::encode_frame_to_vec;
use ledger_wire::messages::{Ping, Request, RequestBatch, RequestEnvelope, Response, PROTOCOL_VERSION};
use ledger_wire::FrameKind;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

// The row journal of state.redb, as defined in shard/src/row_journal.rs.
const ROW_JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("row_journal");

/// Control byte of the harnesses' "fixup" mode (checksums/MACs recomputed before parsing).
const FIXUP: u8 = 0x80;

struct Corpus {
    root: PathBuf,
}

impl Corpus {
    fn put(&self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    fn with_control(&self, target: &str, name: &str, control: u8, bytes: &[u8]) {
        let mut input = vec![control];
        input.extend_from_slice(bytes);
        self.put(target, name, &input);
    }
}

fn kind_index(kind: FrameKind) -> u8 {
    FrameKind::ALL.iter().position(|k| *k == kind).unwrap() as u8
}

fn base64url_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        _ => 63,
    };
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, c)| n | (u32::from(value(*c)) << (18 - 6 * i)));
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn files_named(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_named(&path, suffix, out);
        } else if path.to_string_lossy().ends_with(suffix) {
            out.push(path);
        }
    }
}

/// Proves nothing about the server: it records real traffic and files for the fuzzers, and
/// asserts only that each kind of seed was captured.
#[test]
#[ignore = "writes the fuzz seed corpus; run by scripts/fuzz.sh --seed"]
fn seed_fuzz_corpus() {
    let root = std::env::var_os("LEDGER_FUZZ_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus"));
    let corpus = Corpus { root };
    let dir = temp_dir("fuzz-corpus");
    let data_dir = dir.path().join("node");
    let server = ServerProcess::start(&data_dir, &[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = rt.block_on(connect(&server.addr));
    let (ns, vault) = rt.block_on(create_scope(&client, "fuzz"));
    rt.block_on(async {
        for i in 0..12u64 {
            let ops = vec![
                set(format!("k{i:02}"), format!("value-{i}")),
                Operation::CreateRelationship {
                    resource: format!("doc:{i}"),
                    relation: "viewer".into(),
                    subject: format!("user:{}", i % 3),
                },
            ];
            client.write(ns, Some(vault), "seed", i + 1, ops).await.unwrap();
        }
        client
            .write(ns, Some(vault), "seed", 13, vec![Operation::DeleteEntity { key: "k03".into() }])
            .await
            .unwrap();
    });

    // Frames, both directions: what a client sends, and each frame the server answers with.
    let requests = vec![
        Request::Read {
            namespace_id: ns,
            vault_id: Some(vault),
            key: "k01".into(),
            consistency: ReadConsistency::Linearizable,
        },
        Request::BatchRead {
            namespace_id: ns,
            vault_id: Some(vault),
            keys: vec!["k02".into(), "k03".into(), "missing".into()],
            consistency: ReadConsistency::Eventual,
        },
        Request::GetBlock { namespace_id: ns, vault_id: Some(vault), height: 2 },
        Request::GetBlockRange { namespace_id: ns, vault_id: Some(vault), start_height: 0, end_height: 3 },
        Request::GetTip { namespace_id: ns, vault_id: Some(vault) },
        Request::GetClientState { namespace_id: ns, vault_id: Some(vault), client_id: "seed".into() },
        Request::ListEntities {
            namespace_id: ns,
            vault_id: Some(vault),
            key_prefix: "k".into(),
            at_height: None,
            include_expired: false,
            limit: 2,
            page_token: String::new(),
            consistency: ReadConsistency::Eventual,
        },
        Request::ListRelationships {
            namespace_id: ns,
            vault_id: vault,
            resource: None,
            relation: Some("viewer".into()),
            subject: None,
            at_height: None,
            limit: 2,
            page_token: String::new(),
            consistency: ReadConsistency::Eventual,
        },
        Request::ListNamespaces { page_token: String::new(), page_size: 10 },
        Request::ListVaults,
        Request::GetNodeInfo,
        Request::Write {
            namespace_id: ns,
            vault_id: Some(vault),
            client_id: "raw".into(),
            sequence: 1,
            operations: vec![set("raw", "bytes"), Operation::DeleteEntity { key: "k04".into() }],
            include_tx_proof: true,
        },
        Request::GetBlock { namespace_id: ns, vault_id: None, height: 999 },
    ];
    let hello = hello_frame(PROTOCOL_VERSION);
    let mut conn = RawConn::connect(&server.addr);
    conn.send(&hello).unwrap();
    let ack = conn.next_frame().unwrap();
    let mut client_stream = hello.clone();
    let mut server_stream = frame_bytes(ack.kind(), ack.payload.as_slice());
    corpus.with_control("messages", "hello_ack", kind_index(FrameKind::HelloAck), ack.payload.as_slice());
    corpus.with_control("messages", "hello", kind_index(FrameKind::Hello), &hello[16..]);
    let mut page_tokens = Vec::new();
    for (i, request) in requests.into_iter().enumerate() {
        let batch = RequestBatch {
            items: vec![RequestEnvelope {
                request_id: i as u64 + 1,
                deadline_ms: 0,
                on_behalf_of: None,
                request,
            }],
        };
        let bytes = encode_frame_to_vec(FrameKind::RequestBatch, &batch).unwrap();
        conn.send(&bytes).unwrap();
        corpus.with_control(
            "messages",
            &format!("request_{i:02}"),
            kind_index(FrameKind::RequestBatch),
            &bytes[16..],
        );
        client_stream.extend_from_slice(&bytes);
        let reply = conn.next_frame().unwrap();
        assert_eq!(reply.kind(), FrameKind::ResponseBatch);
        corpus.with_control(
            "messages",
            &format!("response_{i:02}"),
            kind_index(reply.kind()),
            reply.payload.as_slice(),
        );
        server_stream.extend_from_slice(&frame_bytes(reply.kind(), reply.payload.as_slice()));
        let responses = reply.decode::<ledger_wire::messages::ResponseBatch>().unwrap();
        for item in responses.items {
            match item.result {
                Ok(Response::ListEntities { next_page_token, .. }) => page_tokens.push(next_page_token),
                Ok(Response::ListRelationships { next_page_token, .. }) => page_tokens.push(next_page_token),
                _ => {}
            }
        }
    }
    let ping = encode_frame_to_vec(FrameKind::Ping, &Ping { nonce: 42 }).unwrap();
    conn.send(&ping).unwrap();
    let pong = conn.next_frame().unwrap();
    client_stream.extend_from_slice(&ping);
    server_stream.extend_from_slice(&frame_bytes(pong.kind(), pong.payload.as_slice()));
    corpus.with_control("messages", "ping", kind_index(FrameKind::Ping), &ping[16..]);
    corpus.with_control("frame", "client_whole", 63, &client_stream);
    corpus.with_control("frame", "client_pieces", 6, &client_stream);
    corpus.with_control("frame", "client_fixup", FIXUP | 15, &client_stream);
    corpus.with_control("frame", "server_whole", 63, &server_stream);
    corpus.with_control("frame", "server_fixup", FIXUP | 1, &server_stream);

    // Page tokens as issued (raw text; the harness's key differs, so they exercise the MAC check)
    // and their bodies (fixup mode re-MACs them with the harness's key).
    let page_tokens: Vec<String> = page_tokens.into_iter().filter(|t| !t.is_empty()).collect();
    assert!(!page_tokens.is_empty(), "no page token was issued");
    for (i, token) in page_tokens.iter().enumerate() {
        corpus.with_control("page_token", &format!("issued_{i}"), 0, token.as_bytes());
        let raw = base64url_decode(token);
        corpus.with_control("page_token", &format!("body_{i}"), FIXUP, &raw[..raw.len() - 16]);
    }

    // `ledger verify` documents.
    let (ns_s, vault_s) = (ns.to_string(), vault.to_string());
    let cli = |args: &[&str]| {
        let (code, stdout, stderr) = ledger_cli(&server.addr, args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        stdout.trim().to_string()
    };
    let base = ["--json", "get", "--verify", "--namespace", &ns_s, "--vault", &vault_s];
    for (name, extra) in [
        ("read_present", vec!["k01"]),
        ("read_absent", vec!["k03"]),
        ("read_at_height", vec!["k02", "--at-height", "4", "--trusted-height", "0"]),
    ] {
        let args: Vec<&str> = base.iter().copied().chain(extra).collect();
        corpus.put("verify_json", name, cli(&args).as_bytes());
    }
    let blocks = cli(&["--json", "blocks", "--namespace", &ns_s, "--vault", &vault_s, "0", "4"]);
    corpus.put("verify_json", "blocks", blocks.as_bytes());

    // A snapshot file, as the server wrote it.
    let output = Command::new(binary("ledger-admin"))
        .args([
            "--addr",
            &server.addr,
            "--format",
            "json",
            "snapshot",
            "--namespace",
            &ns_s,
            "--vault",
            &vault_s,
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut snaps = Vec::new();
    files_named(&data_dir, ".snap", &mut snaps);
    assert!(!snaps.is_empty(), "no snapshot file under {}", data_dir.display());
    for (i, path) in snaps.iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        corpus.with_control("snapshot", &format!("file_{i}"), 0, &bytes);
        corpus.with_control("snapshot", &format!("file_{i}_fixup"), FIXUP, &bytes);
    }

    // Row-journal records: a killed server leaves its last checkpoints' records unmerged.
    drop(client);
    server.kill9();
    let mut states = Vec::new();
    files_named(&data_dir, "state.redb", &mut states);
    let mut records = 0;
    for path in &states {
        let db = redb::Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let Ok(table) = txn.open_table(ROW_JOURNAL) else { continue };
        for row in table.iter().unwrap() {
            let (seq, bytes) = row.unwrap();
            corpus.put("journal", &format!("record_{records}_{}", seq.value()), bytes.value());
            records += 1;
        }
    }
    // Always at least one record, in the format row_journal.rs documents, in case every
    // checkpoint had merged: two entity rows (one deleted) and one relationship row.
    let mut record = Vec::new();
    record.extend_from_slice(&2u32.to_le_bytes());
    record.extend_from_slice(&1u32.to_le_bytes());
    for (key, value) in [(&b"k01"[..], Some(&b"row"[..])), (&b"k02"[..], None)] {
        record.extend_from_slice(&(key.len() as u32).to_le_bytes());
        record.extend_from_slice(key);
        match value {
            Some(value) => {
                record.push(1);
                record.extend_from_slice(&(value.len() as u32).to_le_bytes());
                record.extend_from_slice(value);
            }
            None => record.push(0),
        }
    }
    record.extend_from_slice(&3u32.to_le_bytes());
    record.extend_from_slice(b"rel");
    record.push(1);
    record.extend_from_slice(&7u64.to_le_bytes());
    corpus.put("journal", "record_handmade", &record);
    eprintln!("seeded {} (journal records from the server: {records})", corpus.root.display());
}
