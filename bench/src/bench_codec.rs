//! Codec benches (SPEC §4.2–§4.3) on one `RequestBatch` frame of 1000 `Write` requests (32 B key,
//! 100 B value): encode into a reused aligned buffer, validate (header decode, checksum, rkyv
//! bytecheck access) and full decode into owned structs.

use crate::constants::{FRAME_REQUESTS, SAMPLES_MEDIUM};
use crate::error::BenchError;
use crate::fixtures::request_batch;
use crate::harness::{measure, Outcome, Plan};
use crate::Options;
use ledger_wire::codec::{access_payload, deserialize, encode_frame};
use ledger_wire::constants::{FRAME_HEADER_BYTES, MAX_FRAME_BYTES_DEFAULT, PAYLOAD_ALIGNMENT};
use ledger_wire::messages::RequestBatch;
use ledger_wire::{FrameHeader, FrameKind};
use rkyv::util::AlignedVec;
use std::hint::black_box;

pub const NAMES: [&str; 3] = ["codec/encode/1000req", "codec/validate/1000req", "codec/decode/1000req"];

pub fn run(options: &Options, out: &mut dyn FnMut(Outcome)) -> Result<(), BenchError> {
    if !NAMES.iter().any(|n| options.selects(n)) {
        return Ok(());
    }
    let batch = request_batch(FRAME_REQUESTS);
    let plan = Plan {
        samples: options.samples(SAMPLES_MEDIUM),
        inner: 1,
        items: FRAME_REQUESTS as u64,
        unit: "req",
    };
    let mut frame: AlignedVec<PAYLOAD_ALIGNMENT> = AlignedVec::new();
    encode_frame(FrameKind::RequestBatch, &batch, &mut frame)?;
    eprintln!("ledger-bench: a {FRAME_REQUESTS}-request frame is {} bytes", frame.len());
    // The payload starts right after the 16-byte header, so it is 16-byte aligned in `frame`.
    let payload = &frame.as_slice()[FRAME_HEADER_BYTES..];
    if access_payload::<RequestBatch>(payload)?.items.len() != FRAME_REQUESTS {
        return Err(BenchError::Check("encoded frame does not hold the batch".into()));
    }

    if options.selects(NAMES[0]) {
        let mut buf: AlignedVec<PAYLOAD_ALIGNMENT> = AlignedVec::with_capacity(frame.len());
        out(measure(NAMES[0], plan, || {
            buf.clear();
            let header = encode_frame(FrameKind::RequestBatch, black_box(&batch), &mut buf);
            assert!(header.is_ok(), "encode failed: {header:?}");
        }));
    }
    if options.selects(NAMES[1]) {
        out(measure(NAMES[1], plan, || {
            let bytes = black_box(frame.as_slice());
            let valid = FrameHeader::decode(&bytes[..FRAME_HEADER_BYTES], MAX_FRAME_BYTES_DEFAULT)
                .and_then(|h| h.verify_payload(&bytes[FRAME_HEADER_BYTES..]).map(|()| h))
                .map_err(ledger_wire::CodecError::from)
                .and_then(|_| {
                    access_payload::<RequestBatch>(&bytes[FRAME_HEADER_BYTES..]).map(|a| a.items.len())
                });
            assert!(matches!(valid, Ok(FRAME_REQUESTS)), "validate failed: {valid:?}");
        }));
    }
    if options.selects(NAMES[2]) {
        out(measure(NAMES[2], plan, || {
            let decoded =
                access_payload::<RequestBatch>(black_box(payload)).and_then(deserialize::<RequestBatch>);
            assert!(decoded.is_ok(), "decode failed");
            black_box(decoded.ok());
        }));
    }
    Ok(())
}
