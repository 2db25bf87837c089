//! Property tests of the codec (seeded, so runs are reproducible): random requests and
//! responses survive encode → chunked `FrameReader` → validated decode unchanged, and random
//! bytes or mutated valid frames fed to `FrameReader`, `access` and `deserialize` only ever
//! produce `Err`, never a panic.

#![allow(clippy::unwrap_used)]

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use crate::codec::{encode_frame, Frame, FrameReader};
use crate::constants::FRAME_HEADER_BYTES;
use crate::frame::{FrameHeader, FrameKind};
use crate::messages::*;
use ledger_core::types::*;

const MAX_FRAME: u32 = 1 << 20;

fn config(cases: u32, seed: u64) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9:#@_-]{0,12}"
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..48)
}

fn hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>()
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (any::<i64>(), 0u32..1_000_000_000).prop_map(|(secs, nanos)| Timestamp { secs, nanos })
}

fn consistency() -> impl Strategy<Value = ReadConsistency> {
    prop_oneof![Just(ReadConsistency::Eventual), Just(ReadConsistency::Linearizable)]
}

fn condition() -> impl Strategy<Value = SetCondition> {
    prop_oneof![
        Just(SetCondition::MustNotExist),
        Just(SetCondition::MustExist),
        any::<u64>().prop_map(SetCondition::VersionEquals),
        bytes().prop_map(SetCondition::ValueEquals),
    ]
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        (text(), text(), text()).prop_map(|(resource, relation, subject)| Operation::CreateRelationship {
            resource,
            relation,
            subject
        }),
        (text(), text(), text()).prop_map(|(resource, relation, subject)| Operation::DeleteRelationship {
            resource,
            relation,
            subject
        }),
        (text(), bytes(), any::<Option<u64>>(), proptest::option::of(condition())).prop_map(
            |(key, value, expires_at, condition)| Operation::SetEntity { key, value, expires_at, condition }
        ),
        text().prop_map(|key| Operation::DeleteEntity { key }),
        (text(), any::<u64>()).prop_map(|(key, expired_at)| Operation::ExpireEntity { key, expired_at }),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<i64>(), any::<Option<i64>>(), text(), consistency()).prop_map(
            |(namespace_id, vault_id, key, consistency)| Request::Read {
                namespace_id,
                vault_id,
                key,
                consistency
            }
        ),
        (any::<i64>(), any::<Option<i64>>(), vec(text(), 0..5), consistency()).prop_map(
            |(namespace_id, vault_id, keys, consistency)| Request::BatchRead {
                namespace_id,
                vault_id,
                keys,
                consistency
            }
        ),
        (any::<i64>(), any::<Option<i64>>(), text(), any::<u64>(), vec(operation(), 1..4), any::<bool>())
            .prop_map(|(namespace_id, vault_id, client_id, sequence, operations, include_tx_proof)| {
                Request::Write { namespace_id, vault_id, client_id, sequence, operations, include_tx_proof }
            }),
        (any::<i64>(), any::<Option<i64>>(), text(), any::<u64>(), vec(vec(operation(), 0..3), 0..3))
            .prop_map(|(namespace_id, vault_id, client_id, sequence, groups)| Request::BatchWrite {
                namespace_id,
                vault_id,
                client_id,
                sequence,
                groups,
                include_tx_proof: false,
            }),
        (text(), any::<Option<u32>>())
            .prop_map(|(name, group_id)| Request::CreateNamespace { name, group_id }),
        prop_oneof![any::<i64>().prop_map(NamespaceSelector::Id), text().prop_map(NamespaceSelector::Name)]
            .prop_map(|by| Request::GetNamespace { by }),
        Just(Request::ListVaults),
        (any::<Option<i64>>(), any::<Option<i64>>())
            .prop_map(|(namespace_id, vault_id)| Request::HealthCheck { namespace_id, vault_id }),
    ]
}

fn block_header() -> impl Strategy<Value = BlockHeader> {
    (any::<u64>(), any::<i64>(), any::<i64>(), hash(), hash(), timestamp(), any::<u64>()).prop_map(
        |(height, namespace_id, vault_id, previous_hash, state_root, timestamp, term)| BlockHeader {
            height,
            namespace_id,
            vault_id,
            previous_hash,
            tx_merkle_root: previous_hash,
            state_root,
            timestamp,
            leader_id: term ^ 1,
            term,
            committed_index: height,
        },
    )
}

fn write_result() -> impl Strategy<Value = WriteResult> {
    let op_status = prop_oneof![Just(OpStatus::Created), Just(OpStatus::Updated), Just(OpStatus::NotFound)];
    prop_oneof![
        (
            any::<[u8; 16]>(),
            any::<u64>(),
            timestamp(),
            text(),
            proptest::option::of(block_header()),
            vec(vec(op_status, 0..3), 0..3)
        )
            .prop_map(|(tx_id, block_height, tx_timestamp, actor, block_header, statuses)| {
                WriteResult::Success(WriteSuccess {
                    tx_id,
                    block_height,
                    tx_timestamp,
                    actor,
                    block_header,
                    tx_proof: Some(MerkleProof {
                        leaf_hash: tx_id.repeat(2).try_into().unwrap_or([0; 32]),
                        siblings: vec![],
                    }),
                    statuses,
                })
            }),
        (text(), any::<Option<u64>>(), proptest::option::of(bytes()), any::<Option<u64>>()).prop_map(
            |(key, current_version, current_value, last)| WriteResult::Error(WriteError {
                code: WriteErrorCode::SequenceGap,
                key,
                current_version,
                current_value,
                message: "gap".into(),
                committed_tx_id: None,
                committed_block_height: None,
                last_committed_sequence: last,
            })
        ),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (proptest::option::of(bytes()), any::<u64>(), any::<bool>())
            .prop_map(|(value, block_height, stale)| Response::Read { value, block_height, stale }),
        (vec((text(), proptest::option::of(bytes())), 0..4), any::<u64>()).prop_map(
            |(items, block_height)| {
                let results = items
                    .into_iter()
                    .map(|(key, value)| BatchReadItem { key, found: value.is_some(), value })
                    .collect();
                Response::BatchRead { results, block_height, stale: false }
            }
        ),
        (block_header(), any::<bool>()).prop_map(|(header, body_pruned)| Response::GetBlock {
            block: Block { header, transactions: vec![] },
            body_pruned
        }),
        (any::<u64>(), hash(), hash()).prop_map(|(height, block_hash, state_root)| Response::GetTip {
            height,
            block_hash,
            state_root
        }),
        write_result().prop_map(Response::Write),
        (vec((text(), text()), 0..3), text()).prop_map(|(details, message)| Response::HealthCheck {
            status: HealthStatus::Degraded,
            message,
            details
        }),
    ]
}

fn status() -> impl Strategy<Value = Status> {
    (text(), proptest::option::of((any::<u64>(), text())), any::<bool>()).prop_map(
        |(message, leader_hint, detail)| Status {
            code: StatusCode::FailedPrecondition,
            message,
            leader_hint,
            detail: detail.then_some(ErrorDetail::HeightUnavailable { requested: 9, oldest_available: 3 }),
        },
    )
}

fn request_batch() -> impl Strategy<Value = RequestBatch> {
    vec((any::<u64>(), any::<u32>(), request()), 1..12).prop_map(|items| RequestBatch {
        items: items
            .into_iter()
            .map(|(request_id, deadline_ms, request)| RequestEnvelope {
                request_id,
                deadline_ms,
                on_behalf_of: None,
                request,
            })
            .collect(),
    })
}

fn response_batch() -> impl Strategy<Value = ResponseBatch> {
    let result = prop_oneof![response().prop_map(Ok), status().prop_map(Err)];
    vec((any::<u64>(), result), 1..12).prop_map(|items| ResponseBatch {
        items: items
            .into_iter()
            .map(|(request_id, result)| ResponseEnvelope { request_id, result, leader_hint: None })
            .collect(),
    })
}

/// Feeds `bytes` to a fresh reader in pieces of the given sizes (cycled), collecting frames
/// until the first error.
fn read_chunked(bytes: &[u8], chunks: &[usize]) -> (Vec<Frame>, Option<crate::FrameError>) {
    let mut reader = FrameReader::new(MAX_FRAME);
    let mut frames = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let take = sizes.next().unwrap_or(1).clamp(1, rest.len());
        let (mut piece, tail) = rest.split_at(take);
        rest = tail;
        while !piece.is_empty() {
            match reader.read_from(&mut piece) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {}
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, reader.finish().err())
}

/// Validates (and, when valid, deserializes) a frame as every root type; must never panic.
fn poke_every_root_type(frame: &Frame) {
    if frame.access::<Hello>().is_ok() {
        let _ = frame.decode::<Hello>();
    }
    if frame.access::<HelloAck>().is_ok() {
        let _ = frame.decode::<HelloAck>();
    }
    if frame.access::<RequestBatch>().is_ok() {
        let _ = frame.decode::<RequestBatch>();
    }
    if frame.access::<ResponseBatch>().is_ok() {
        let _ = frame.decode::<ResponseBatch>();
    }
    if frame.access::<Goaway>().is_ok() {
        let _ = frame.decode::<Goaway>();
    }
    if frame.access::<StreamItem>().is_ok() {
        let _ = frame.decode::<StreamItem>();
    }
    if frame.access::<StreamEnd>().is_ok() {
        let _ = frame.decode::<StreamEnd>();
    }
    let _ = frame.decode::<Ping>();
}

proptest! {
    #![proptest_config(config(64, 0x5eed_0001))]

    #[test]
    fn p01_request_batches_round_trip(batch in request_batch(), chunks in vec(1usize..200, 1..8)) {
        // Proves encode → chunked FrameReader → access/decode returns the identical batch.
        let mut out = vec![0xAAu8; 5];
        encode_frame(FrameKind::RequestBatch, &batch, &mut out).unwrap();
        let (frames, error) = read_chunked(&out[5..], &chunks);
        prop_assert!(error.is_none());
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(frames[0].kind(), FrameKind::RequestBatch);
        let archived = frames[0].access::<RequestBatch>().unwrap();
        prop_assert_eq!(archived.items.len(), batch.items.len());
        prop_assert_eq!(frames[0].decode::<RequestBatch>().unwrap(), batch);
    }

    #[test]
    fn p02_response_batches_round_trip(batch in response_batch(), chunks in vec(1usize..200, 1..8)) {
        // Proves the same for responses, including Err(Status) envelopes, two frames back to back.
        let mut out = Vec::new();
        encode_frame(FrameKind::ResponseBatch, &batch, &mut out).unwrap();
        encode_frame(FrameKind::Ping, &Ping { nonce: 3 }, &mut out).unwrap();
        let (frames, error) = read_chunked(&out, &chunks);
        prop_assert!(error.is_none());
        prop_assert_eq!(frames.len(), 2);
        prop_assert_eq!(frames[0].decode::<ResponseBatch>().unwrap(), batch);
        prop_assert_eq!(frames[1].decode::<Ping>().unwrap(), Ping { nonce: 3 });
    }
}

proptest! {
    #![proptest_config(config(512, 0x5eed_0002))]

    #[test]
    fn p03_random_bytes_never_panic(data in vec(any::<u8>(), 0..600), chunks in vec(1usize..64, 1..4)) {
        // Proves arbitrary input, with or without a plausible header, only yields frames or Err.
        let (frames, _) = read_chunked(&data, &chunks);
        for frame in &frames {
            poke_every_root_type(frame);
        }
        let mut framed = Vec::new();
        let kind = FrameKind::ALL[usize::from(data.first().copied().unwrap_or(0)) % FrameKind::ALL.len()];
        framed.extend_from_slice(&FrameHeader::for_payload(kind, &data).unwrap().encode());
        framed.extend_from_slice(&data);
        let (frames, error) = read_chunked(&framed, &chunks);
        prop_assert!(error.is_none());
        prop_assert_eq!(frames.len(), 1);
        poke_every_root_type(&frames[0]);
    }

    #[test]
    fn p04_mutated_frames_never_panic(
        batch in response_batch(),
        request in request_batch(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
        reseal in any::<bool>(),
    ) {
        // Proves corrupted valid frames fail cleanly. With `reseal` the header length and checksum
        // are recomputed after mutating the payload, so rkyv validation (not the checksum) must
        // catch the damage.
        for (kind, mut bytes) in [
            (FrameKind::ResponseBatch, crate::codec::encode_frame_to_vec(FrameKind::ResponseBatch, &batch).unwrap()),
            (FrameKind::RequestBatch, crate::codec::encode_frame_to_vec(FrameKind::RequestBatch, &request).unwrap()),
        ] {
            for (index, value, op) in &edits {
                let at = index.index(bytes.len());
                match op {
                    0 => bytes[at] ^= value | 1,
                    1 => bytes[at] = *value,
                    2 => bytes.truncate(at.max(1)),
                    _ => bytes.insert(at, *value),
                }
            }
            if reseal && bytes.len() >= FRAME_HEADER_BYTES {
                let payload = bytes[FRAME_HEADER_BYTES..].to_vec();
                let header = FrameHeader::for_payload(kind, &payload).unwrap();
                bytes[..FRAME_HEADER_BYTES].copy_from_slice(&header.encode());
            }
            let (frames, _) = read_chunked(&bytes, &[7, 64, 3]);
            for frame in &frames {
                poke_every_root_type(frame);
            }
        }
    }
}

#[test]
fn t05_stream_frames_round_trip() {
    // Proves StreamItem and StreamEnd (frame kinds 5 and 6) survive encode → FrameReader →
    // validated decode, back to back in one buffer as the server writes them.
    let item = StreamItem {
        request_id: 7,
        item: StreamPayload::Block(BlockAnnouncement {
            namespace_id: 3,
            vault_id: 4,
            height: 9,
            block_hash: [1; 32],
            state_root: [2; 32],
            timestamp: Timestamp { secs: 5, nanos: 6 },
        }),
    };
    let end = StreamEnd { request_id: 7, status: Status::new(StatusCode::Cancelled, "cancelled") };
    let mut out = Vec::new();
    encode_frame(FrameKind::StreamItem, &item, &mut out).unwrap();
    encode_frame(FrameKind::StreamEnd, &end, &mut out).unwrap();
    let (frames, error) = read_chunked(&out, &[5, 17, 64]);
    assert!(error.is_none());
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].kind(), FrameKind::StreamItem);
    assert_eq!(frames[0].decode::<StreamItem>().unwrap(), item);
    assert_eq!(frames[1].kind(), FrameKind::StreamEnd);
    assert_eq!(frames[1].decode::<StreamEnd>().unwrap(), end);
}
