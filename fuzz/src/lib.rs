//! The fuzz harnesses of issue 12 item 7: one function per untrusted input kind, each called by
//! the `fuzz_targets/` binary of the same name. A harness must return normally on every input;
//! a panic (including a failed round-trip assertion) is a bug in the code under test.
//!
//! Checksums and MACs would stop a mutating fuzzer at the first byte it changes, so the harnesses
//! that guard a parser with one (`frame`, `page_token`, `snapshot`) also have a "fixup" mode,
//! chosen by the input's first byte, that recomputes the checksum before parsing: the parser
//! behind it is then reached by every mutation.

use ledger_wire::codec::{
    access_payload, deserialize, encode_frame_to_vec, FrameDeserializer, FrameSerializer,
};
use ledger_wire::constants::{FRAME_HEADER_BYTES, MAX_FRAME_BYTES_DEFAULT, PAYLOAD_ALIGNMENT};
use ledger_wire::frame::payload_checksum;
use ledger_wire::messages::{
    Goaway, Hello, HelloAck, Ping, RequestBatch, ResponseBatch, StreamEnd, StreamItem,
};
use ledger_wire::{Frame, FrameKind, FrameReader};
use rkyv::api::high::HighValidator;
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};
use std::fmt::Debug;

/// Every `ledger_shard` path the harnesses use, in one place, so that a move inside `shard/src/`
/// changes only these lines.
pub mod shard_api {
    pub use ledger_shard::codec::{decode as rkyv_decode, encode as rkyv_encode};
    pub use ledger_shard::read::page_token::{base64url_decode, base64url_encode, PageToken, PAGE_TOKEN_KEY_LEN};
    pub use ledger_shard::storage::row_journal::{
        decode as journal_decode, encode as journal_encode, keep_last_per_key, JournalMerge,
    };
    pub use ledger_shard::storage::snapshot::{decode_file, verify_scopes, SnapshotHeader};
    pub use ledger_shard::raft::state_machine::SnapshotRecord;
}

use shard_api::*;

/// The page-token key the harness and the seed generator share.
pub const PAGE_TOKEN_KEY: [u8; PAGE_TOKEN_KEY_LEN] = [7; PAGE_TOKEN_KEY_LEN];
/// Length of a page token's MAC (private in `page_token.rs`: `MAC_LEN`).
const PAGE_TOKEN_MAC_LEN: usize = 16;
/// Fixed snapshot preamble: magic ‖ version ‖ header length ‖ blake3(header) (`PREAMBLE_LEN`).
const SNAPSHOT_PREAMBLE_LEN: usize = 4 + 4 + 4 + 32;

/// First input byte at or above this selects fixup mode.
const FIXUP_FROM: u8 = 0x80;

// ---------------------------------------------------------------------------------------------
// Wire

/// A root type of a frame payload, validated, deserialized and re-encoded.
fn check_root<T>(kind: FrameKind, payload: &[u8])
where
    T: Archive + Debug + PartialEq + for<'a, 'w> Serialize<FrameSerializer<'a, 'w, Vec<u8>>>,
    T::Archived: for<'b> CheckBytes<HighValidator<'b, BoxedError>> + Deserialize<T, FrameDeserializer>,
{
    let mut aligned = AlignedVec::<PAYLOAD_ALIGNMENT>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    let Ok(archived) = access_payload::<T>(aligned.as_slice()) else {
        return;
    };
    // A payload that validates must deserialize, and what it holds must survive a round trip.
    let value = deserialize::<T>(archived).expect("a validated archive deserializes");
    let bytes = encode_frame_to_vec(kind, &value).expect("a decoded value encodes");
    let mut reader = FrameReader::new(u32::MAX);
    let frame = reader
        .read_from(&mut bytes.as_slice())
        .expect("an encoded frame reads back")
        .expect("an encoded frame is complete");
    let again = frame.decode::<T>().expect("an encoded frame decodes");
    assert_eq!(again, value);
}

/// Checks one received frame as the server or the client would: by its kind's root type.
fn check_frame(frame: &Frame) {
    let payload = frame.payload.as_slice();
    match frame.kind() {
        FrameKind::Hello => check_root::<Hello>(frame.kind(), payload),
        FrameKind::HelloAck => check_root::<HelloAck>(frame.kind(), payload),
        FrameKind::RequestBatch => check_root::<RequestBatch>(frame.kind(), payload),
        FrameKind::ResponseBatch => check_root::<ResponseBatch>(frame.kind(), payload),
        FrameKind::StreamItem => check_root::<StreamItem>(frame.kind(), payload),
        FrameKind::StreamEnd => check_root::<StreamEnd>(frame.kind(), payload),
        FrameKind::Goaway => check_root::<Goaway>(frame.kind(), payload),
        FrameKind::Ping | FrameKind::Pong => check_root::<Ping>(frame.kind(), payload),
    }
}

/// Patches each frame's checksum (and clamps its length to what is left), so mutations of the
/// payload reach rkyv validation instead of failing the checksum.
fn fix_frame_checksums(stream: &mut [u8]) {
    let mut at = 0;
    while stream.len() - at >= FRAME_HEADER_BYTES {
        let payload_at = at + FRAME_HEADER_BYTES;
        let mut len = [0u8; 4];
        len.copy_from_slice(&stream[at + 8..at + 12]);
        let len = (u32::from_le_bytes(len) as usize).min(stream.len() - payload_at);
        stream[at + 8..at + 12].copy_from_slice(&(len as u32).to_le_bytes());
        let checksum = payload_checksum(&stream[payload_at..payload_at + len]);
        stream[at + 12..at + 16].copy_from_slice(&checksum);
        at = payload_at + len;
    }
}

/// `frame`: byte 0 picks fixup mode (>= 0x80) and the size of the pieces (1 + byte % 64) the rest
/// is delivered in; the rest is a byte stream for `FrameReader`. Every frame it yields is checked
/// as its kind's root type, then the stream ends with `finish`.
pub fn frame(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let mut stream = stream.to_vec();
    if control >= FIXUP_FROM {
        fix_frame_checksums(&mut stream);
    }
    let piece = usize::from(control % 64) + 1;
    let mut reader = FrameReader::new(MAX_FRAME_BYTES_DEFAULT);
    for chunk in stream.chunks(piece) {
        let mut input = chunk;
        while !input.is_empty() {
            match reader.read_from(&mut input) {
                Ok(Some(frame)) => {
                    assert_eq!(frame.payload.len(), frame.header.payload_len as usize);
                    check_frame(&frame);
                }
                Ok(None) => assert!(input.is_empty()),
                Err(_) => {
                    // A failed reader stays failed.
                    assert!(reader.read_from(&mut input).is_err());
                    assert!(reader.finish().is_err());
                    return;
                }
            }
        }
    }
    let _ = reader.finish();
}

/// `messages`: byte 0 picks the root type (requests and responses, both directions), the rest is
/// its payload, validated with rkyv's checked access (no frame header, no checksum).
pub fn messages(data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let kind = FrameKind::ALL[usize::from(selector) % FrameKind::ALL.len()];
    let frame = Frame {
        header: ledger_wire::FrameHeader { kind, payload_len: payload.len() as u32, checksum: [0; 4] },
        payload: {
            let mut aligned = AlignedVec::<PAYLOAD_ALIGNMENT>::with_capacity(payload.len());
            aligned.extend_from_slice(payload);
            aligned
        },
    };
    check_frame(&frame);
}

// ---------------------------------------------------------------------------------------------
// Shard

fn page_token_mac(body: &[u8]) -> [u8; PAGE_TOKEN_MAC_LEN] {
    let mut mac = [0u8; PAGE_TOKEN_MAC_LEN];
    mac.copy_from_slice(&blake3::keyed_hash(&PAGE_TOKEN_KEY, body).as_bytes()[..PAGE_TOKEN_MAC_LEN]);
    mac
}

/// Decodes a token and, when it is accepted, checks that it is the one spelling of its value.
fn check_page_token(text: &str) {
    if let Some(raw) = base64url_decode(text) {
        assert_eq!(base64url_encode(&raw), text, "base64url has one spelling per blob");
    }
    if let Ok(token) = PageToken::decode(text, &PAGE_TOKEN_KEY) {
        assert_eq!(token.encode(&PAGE_TOKEN_KEY), text, "an accepted token re-encodes to itself");
        let _ = token.check(token.namespace_id, token.vault_id, token.query_hash, Some(token.at_height));
    }
}

/// `page_token`: below 0x80 the rest of the input is the token text as a client sends it (MAC
/// checked with `PAGE_TOKEN_KEY`); from 0x80 the rest is a token body, MAC'd with the key before
/// it is spelled in base64url, so the body parser behind the MAC is reached.
pub fn page_token(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    if control < FIXUP_FROM {
        if let Ok(text) = std::str::from_utf8(rest) {
            check_page_token(text);
        }
        return;
    }
    let mut raw = rest.to_vec();
    raw.extend_from_slice(&page_token_mac(rest));
    check_page_token(&base64url_encode(&raw));
}

/// Patches the header checksum and, when the header decodes, its `body_checksum`.
fn fix_snapshot_checksums(file: &[u8]) -> Vec<u8> {
    if file.len() < SNAPSHOT_PREAMBLE_LEN {
        return file.to_vec();
    }
    let mut word = [0u8; 4];
    word.copy_from_slice(&file[8..12]);
    let header_len = (u32::from_le_bytes(word) as usize).min(file.len() - SNAPSHOT_PREAMBLE_LEN);
    let header_end = SNAPSHOT_PREAMBLE_LEN + header_len;
    let (mut header_bytes, body) = (file[SNAPSHOT_PREAMBLE_LEN..header_end].to_vec(), &file[header_end..]);
    if let Ok(mut header) = rkyv_decode::<SnapshotHeader>("fuzz snapshot header", &header_bytes) {
        header.body_checksum = *blake3::hash(body).as_bytes();
        header_bytes = rkyv_encode(&header);
    }
    let mut out = Vec::with_capacity(file.len() + 64);
    out.extend_from_slice(&file[..8]);
    out.extend_from_slice(&(header_bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(blake3::hash(&header_bytes).as_bytes());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(body);
    out
}

/// `snapshot`: a snapshot file as `load_verified` reads it (both checksums, rkyv validation, the
/// group position check, then every Healthy scope's state root). From 0x80 in byte 0 the
/// checksums are patched first; below, the rest is used as it is.
pub fn snapshot(data: &[u8]) {
    let Some((&control, file)) = data.split_first() else {
        return;
    };
    let file = if control >= FIXUP_FROM { fix_snapshot_checksums(file) } else { file.to_vec() };
    if let Ok((header, record)) = decode_file(&file) {
        let _ = verify_scopes(&header, record);
    }
    // The body alone, as an rkyv archive, whatever the checksums say.
    if let Some(body) = file.get(SNAPSHOT_PREAMBLE_LEN..) {
        let _ = rkyv_decode::<SnapshotRecord>("fuzz snapshot body", body);
    }
}

/// `journal`: a row-journal record (`row_journal::decode`). An accepted record must re-encode to
/// the same bytes (the format has one spelling), and merging it must keep the last row per key.
pub fn journal(data: &[u8]) {
    let Ok(record) = journal_decode(1, data) else {
        return;
    };
    assert_eq!(journal_encode(&record.entities, &record.relationships), data);
    let mut expected = record.entities.clone();
    keep_last_per_key(&mut expected);
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    let (entities, _relationships) =
        JournalMerge::of_changes(record.entities, record.relationships).into_changes();
    assert_eq!(entities, expected);
}

// ---------------------------------------------------------------------------------------------
// Server

/// `verify_json`: a `ledger verify FILE` document: JSON parsing, then the offline checks.
pub fn verify_json(data: &[u8]) {
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = ledger_server::cli::verify::verify_document(&doc);
    }
}
