//! `WatchBlocks` against a real server (SPEC §4.3, §5.1 item 5, §8.8): replay from the archive
//! then live delivery with no gap or duplicate while writers run, matching `GetBlockRange`;
//! a start above the tip waits; `CancelStream` ends with `Cancelled`; refusals end at once;
//! a client that stops reading gets `StreamEnd{ResourceExhausted}`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpStream;
use std::os::fd::FromRawFd;
use std::time::Duration;

use ledger_core::hash::block_hash;
use ledger_core::types::BlockAnnouncement;
use ledger_tests::raw::{hello_frame, READ_GUARD};
use ledger_tests::scope::{connect, create_scope, set, tip, walk_chain};
use ledger_tests::{temp_dir, ServerProcess};
use ledger_wire::client::{BlockStream, Client, StreamNext, WriteSession};
use ledger_wire::codec::{encode_frame_to_vec, FrameReader};
use ledger_wire::constants::MAX_FRAME_BYTES_DEFAULT;
use ledger_wire::frame::FrameKind;
use ledger_wire::messages::{
    Request, RequestBatch, RequestEnvelope, StatusCode, StreamEnd, StreamItem, StreamPayload,
    PROTOCOL_VERSION,
};

/// Guard on waiting for one stream event; a healthy server sends within milliseconds.
const EVENT_GUARD: Duration = Duration::from_secs(20);

async fn next_block(stream: &mut BlockStream) -> BlockAnnouncement {
    match tokio::time::timeout(EVENT_GUARD, stream.next()).await.expect("stream event in time") {
        Ok(StreamNext::Block(block)) => block,
        other => panic!("expected a block, got {other:?}"),
    }
}

async fn next_end(stream: &mut BlockStream) -> StatusCode {
    match tokio::time::timeout(EVENT_GUARD, stream.next()).await.expect("stream end in time") {
        Ok(StreamNext::End(status)) => status.code,
        other => panic!("expected the stream end, got {other:?}"),
    }
}

/// Commits `count` transactions one after another (one block each) through one session.
async fn write_blocks(client: &Client, ns: i64, vault: i64, writer: &str, count: usize) {
    let mut session =
        WriteSession::new(client.clone(), ns, Some(vault)).with_client_id(writer).with_rng_seed(7);
    for i in 0..count {
        session.write(vec![set(format!("{writer}-{i}"), "v")]).await.expect("write");
    }
}

#[tokio::test]
async fn t01_replay_then_live_is_gap_free_with_concurrent_writers() {
    // Proves a stream from height 1 (300 archived blocks), opened while 4 writers commit
    // concurrently, delivers every
    // height 1..=final tip exactly once, in order, across the replay → live switch, and that each
    // announcement's block hash and state root equal those of the block GetBlockRange returns.
    let dir = temp_dir("watch-t01");
    let server = ServerProcess::start(dir.path(), &["--cores", "2"]);
    let client = connect(&server.addr).await;
    let (ns, vault) = create_scope(&client, "watch-t01").await;
    // More than one replay chunk (256 headers), so live blocks commit while replay is running.
    write_blocks(&client, ns, vault, "pre", 300).await;

    let watcher = connect(&server.addr).await;
    let mut stream = watcher.watch_blocks(ns, Some(vault), 1).await.unwrap();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move { write_blocks(&client, ns, vault, &format!("w{w}"), 25).await })
        })
        .collect();
    let mut received = Vec::new();
    for writer in writers {
        writer.await.unwrap();
    }
    let final_tip = tip(&client, ns, Some(vault)).await;
    while received.last().is_none_or(|b: &BlockAnnouncement| b.height < final_tip.height) {
        received.push(next_block(&mut stream).await);
    }
    let heights: Vec<u64> = received.iter().map(|b| b.height).collect();
    assert_eq!(heights, (1..=final_tip.height).collect::<Vec<_>>(), "gap or duplicate in the stream");
    assert!(final_tip.height > 301, "the writers produced live blocks");

    let chain = walk_chain(&client, ns, Some(vault)).await;
    for block in &received {
        let archived = &chain[&block.height];
        assert_eq!(block.block_hash, block_hash(&archived.header), "hash of block {}", block.height);
        assert_eq!(block.state_root, archived.header.state_root, "root of block {}", block.height);
        assert_eq!((block.namespace_id, block.vault_id), (ns, vault));
    }
    stream.cancel().await.unwrap();
    assert_eq!(next_end(&mut stream).await, StatusCode::Cancelled);
}

#[tokio::test]
async fn t02_start_above_tip_waits_for_that_height() {
    // Proves a stream starting above the tip sends nothing until that height commits, then
    // sends exactly it (and the next ones) with the archived hash; one starting two heights
    // above the tip skips the blocks below its start.
    let dir = temp_dir("watch-t02");
    let server = ServerProcess::start(dir.path(), &["--cores", "1"]);
    let client = connect(&server.addr).await;
    let (ns, vault) = create_scope(&client, "watch-t02").await;
    let start = tip(&client, ns, Some(vault)).await.height + 1;
    let mut next = client.watch_blocks(ns, Some(vault), start).await.unwrap();
    let mut later = client.watch_blocks(ns, Some(vault), start + 2).await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(300), next.next()).await;
    assert!(quiet.is_err(), "a stream above the tip sent {quiet:?} before any write");

    write_blocks(&client, ns, vault, "a", 3).await;
    let chain = walk_chain(&client, ns, Some(vault)).await;
    for height in start..start + 3 {
        let block = next_block(&mut next).await;
        assert_eq!(block.height, height);
        assert_eq!(block.block_hash, block_hash(&chain[&height].header));
    }
    let block = next_block(&mut later).await;
    assert_eq!(block.height, start + 2, "the stream starting at tip + 3 skipped the earlier blocks");
}

#[tokio::test]
async fn t03_cancel_and_refusals_end_the_stream() {
    // Proves CancelStream ends a stream with StreamEnd{Cancelled} (after the items already
    // sent) and that refused streams end at once: start_height 0 ⇒ InvalidArgument, an unknown
    // vault ⇒ NotFound. Cancelling an unknown stream id still answers.
    let dir = temp_dir("watch-t03");
    let server = ServerProcess::start(dir.path(), &["--cores", "1"]);
    let client = connect(&server.addr).await;
    let (ns, vault) = create_scope(&client, "watch-t03").await;
    write_blocks(&client, ns, vault, "a", 3).await;

    let mut stream = client.watch_blocks(ns, Some(vault), 1).await.unwrap();
    assert_eq!(next_block(&mut stream).await.height, 1);
    stream.cancel().await.unwrap();
    let mut heights = Vec::new();
    let end = loop {
        match tokio::time::timeout(EVENT_GUARD, stream.next()).await.unwrap().unwrap() {
            StreamNext::Block(block) => heights.push(block.height),
            StreamNext::End(status) => break status.code,
        }
    };
    assert_eq!(end, StatusCode::Cancelled);
    assert!(heights.iter().copied().eq(2..2 + heights.len() as u64), "items before the end: {heights:?}");

    let mut zero = client.watch_blocks(ns, Some(vault), 0).await.unwrap();
    assert_eq!(next_end(&mut zero).await, StatusCode::InvalidArgument);
    let mut unknown = client.watch_blocks(ns, Some(vault + 1000), 1).await.unwrap();
    assert_eq!(next_end(&mut unknown).await, StatusCode::NotFound);
    let mut no_namespace = client.watch_blocks(ns + 1000, None, 1).await.unwrap();
    assert_eq!(next_end(&mut no_namespace).await, StatusCode::NotFound);
    let answer = client.call(Request::CancelStream { request_id: 999_999 }).await.unwrap();
    assert_eq!(answer, ledger_wire::messages::Response::CancelStream);
}

/// A TCP connection whose receive buffer is made small before connecting, so that a client
/// that stops reading fills the server's socket quickly.
fn connect_small_receive_buffer(addr: &str) -> TcpStream {
    let addr: std::net::SocketAddrV4 = addr.parse().unwrap();
    // SAFETY: plain socket calls on a descriptor this function owns until it is handed to
    // `TcpStream`, with a correctly sized and initialised `sockaddr_in`.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket");
        let size: libc::c_int = 4096;
        let set = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(set, 0, "SO_RCVBUF");
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = addr.port().to_be();
        sin.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
        let connected = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(connected, 0, "connect");
        TcpStream::from_raw_fd(fd)
    }
}

#[tokio::test]
async fn t04_client_that_stops_reading_gets_resource_exhausted() {
    // Proves backpressure: with --stream-buffer 4, a raw client with a small receive buffer
    // opens 1000 live streams of one vault on one connection (each block then adds ~136 KB of
    // items, so at most ~31 blocks fit in the socket buffers of 4 MiB) and stops reading while
    // 100 blocks commit. When it reads again, every stream delivered consecutive heights from
    // its start and then ended with StreamEnd{ResourceExhausted}, with nothing after the end.
    const STREAMS: u64 = 1000;
    let dir = temp_dir("watch-t04");
    let server = ServerProcess::start(
        dir.path(),
        &["--cores", "2", "--stream-buffer", "4", "--requests-max-concurrent", "1100"],
    );
    let client = connect(&server.addr).await;
    let (ns, vault) = create_scope(&client, "watch-t04").await;
    let start = tip(&client, ns, Some(vault)).await.height + 1;

    let mut socket = connect_small_receive_buffer(&server.addr);
    socket.set_read_timeout(Some(READ_GUARD)).unwrap();
    std::io::Write::write_all(&mut socket, &hello_frame(PROTOCOL_VERSION)).unwrap();
    let items = (1..=STREAMS)
        .map(|request_id| RequestEnvelope {
            request_id,
            deadline_ms: 0,
            on_behalf_of: None,
            request: Request::WatchBlocks { namespace_id: ns, vault_id: Some(vault), start_height: start },
        })
        .collect();
    let batch = encode_frame_to_vec(FrameKind::RequestBatch, &RequestBatch { items }).unwrap();
    std::io::Write::write_all(&mut socket, &batch).unwrap();
    // Let the server register every stream before the blocks come.
    tokio::time::sleep(Duration::from_millis(300)).await;

    write_blocks(&client, ns, vault, "w", 100).await;

    let ends = tokio::task::spawn_blocking(move || read_streams(socket, STREAMS)).await.unwrap();
    for (request_id, (heights, end)) in ends {
        assert_eq!(end.status.code, StatusCode::ResourceExhausted, "stream {request_id}: {end:?}");
        assert!(
            heights.iter().copied().eq(start..start + heights.len() as u64),
            "stream {request_id} heights not consecutive from {start}: {heights:?}"
        );
    }
}

/// Reads the raw connection until each of `streams` streams has ended; returns, per stream, the
/// heights it delivered and its `StreamEnd`. Items after a stream's end fail the test.
fn read_streams(mut socket: TcpStream, streams: u64) -> BTreeMap<u64, (Vec<u64>, StreamEnd)> {
    let mut reader = FrameReader::new(MAX_FRAME_BYTES_DEFAULT);
    let mut heights: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut ends: BTreeMap<u64, StreamEnd> = BTreeMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    while (ends.len() as u64) < streams {
        let n = match socket.read(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!(
                "{e}: {} of {streams} streams ended; items per stream: {:?}",
                ends.len(),
                heights.values().map(Vec::len).collect::<Vec<_>>()
            ),
        };
        assert!(n > 0, "server closed the connection; ended streams: {}", ends.len());
        let mut input = &buf[..n];
        while let Some(frame) = reader.read_from(&mut input).expect("valid frame") {
            match frame.kind() {
                FrameKind::StreamItem => {
                    let item = frame.decode::<StreamItem>().unwrap();
                    assert!(
                        !ends.contains_key(&item.request_id),
                        "item after the end of {}",
                        item.request_id
                    );
                    let StreamPayload::Block(block) = item.item;
                    heights.entry(item.request_id).or_default().push(block.height);
                }
                FrameKind::StreamEnd => {
                    let end = frame.decode::<StreamEnd>().unwrap();
                    assert!(ends.insert(end.request_id, end.clone()).is_none(), "two ends: {end:?}");
                }
                FrameKind::HelloAck => {}
                other => panic!("unexpected {other} frame"),
            }
        }
    }
    ends.into_iter().map(|(id, end)| (id, (heights.remove(&id).unwrap_or_default(), end))).collect()
}

#[tokio::test]
async fn t05_shutdown_ends_streams_with_unavailable() {
    // Proves a node shutting down (SIGTERM) ends an open stream with StreamEnd{Unavailable}
    // before its Goaway, so the client learns why the stream stopped.
    let dir = temp_dir("watch-t05");
    let server = ServerProcess::start(dir.path(), &["--cores", "2"]);
    let client = connect(&server.addr).await;
    let (ns, vault) = create_scope(&client, "watch-t05").await;
    let start = tip(&client, ns, Some(vault)).await.height + 1;
    let mut stream = client.watch_blocks(ns, Some(vault), start).await.unwrap();
    write_blocks(&client, ns, vault, "a", 1).await;
    assert_eq!(next_block(&mut stream).await.height, start);
    let stopped = tokio::task::spawn_blocking(move || server.stop());
    assert_eq!(next_end(&mut stream).await, StatusCode::Unavailable);
    assert_eq!(stopped.await.unwrap(), Some(0), "clean exit");
}

#[tokio::test]
async fn t06_cli_watch_prints_one_line_per_block() {
    // Proves `ledger watch --from 1 --count 3` prints heights 1, 2, 3 with their archived block
    // hashes and state roots, one JSON object per line with --json and one text line without.
    let dir = temp_dir("watch-t06");
    let server = ServerProcess::start(dir.path(), &["--cores", "1"]);
    let client = connect(&server.addr).await;
    let (ns, vault) = create_scope(&client, "watch-t06").await;
    write_blocks(&client, ns, vault, "a", 3).await;
    let chain = walk_chain(&client, ns, Some(vault)).await;
    let addr = server.addr.clone();
    let (ns_arg, vault_arg) = (ns.to_string(), vault.to_string());
    let (json_run, text_run) = tokio::task::spawn_blocking(move || {
        let args = ["watch", "--namespace", &ns_arg, "--vault", &vault_arg, "--from", "1", "--count", "3"];
        let json_args: Vec<&str> = std::iter::once("--json").chain(args).collect();
        (ledger_tests::ledger_cli(&addr, &json_args), ledger_tests::ledger_cli(&addr, &args))
    })
    .await
    .unwrap();
    let (code, stdout, stderr) = json_run;
    assert_eq!(code, 0, "stderr: {stderr}");
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for (line, height) in lines.iter().zip(1u64..) {
        let header = &chain[&height].header;
        assert_eq!(line["height"], height);
        assert_eq!(line["block_hash"], hex(&block_hash(header)));
        assert_eq!(line["state_root"], hex(&header.state_root));
    }
    let (code, stdout, stderr) = text_run;
    assert_eq!(code, 0, "stderr: {stderr}");
    let first = stdout.lines().next().unwrap();
    assert_eq!(
        first,
        format!("1 {} {}", hex(&block_hash(&chain[&1].header)), hex(&chain[&1].header.state_root))
    );
    assert_eq!(stdout.lines().count(), 3);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
