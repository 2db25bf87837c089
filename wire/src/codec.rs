//! Payload encoding and decoding (SPEC §4.2): rkyv 0.8 archives behind a `FrameHeader`.
//!
//! Sending: `encode_frame` serializes a root type straight into the caller's (reused) output
//! buffer after a header placeholder, then patches the header; no intermediate copy.
//! Receiving: `FrameReader` turns a byte stream into whole frames, checking the header (and the
//! `max_frame_bytes` bound) before it allocates the payload, and the checksum once the payload is
//! complete. Payloads live in 16-byte-aligned buffers and are validated with rkyv's `bytecheck`
//! access before any field is read; received data is never accessed unchecked.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::{BoxedError, Strategy};
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::{Positional, Writer};
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::constants::{
    BATCH_ROOT_BYTES_MAX, ENVELOPE_ALIGNMENT_SLACK_BYTES, FRAME_HEADER_BYTES, PAYLOAD_ALIGNMENT,
};
use crate::error::{CodecError, FrameError};
use crate::frame::{FrameHeader, FrameKind};

/// The first allocation for a payload being received; it grows as bytes actually arrive, so a
/// peer announcing a large frame cannot make us allocate it up front.
const PAYLOAD_RESERVE_BYTES_MAX: usize = 64 * 1024;

const _: () = assert!(AlignedVec::<PAYLOAD_ALIGNMENT>::ALIGNMENT == PAYLOAD_ALIGNMENT);

/// An output buffer frames can be appended to: `Vec<u8>` or rkyv's `AlignedVec`.
pub trait FrameBuffer: Default {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn extend_from_slice(&mut self, bytes: &[u8]);
    fn as_mut_slice(&mut self) -> &mut [u8];
    fn truncate(&mut self, len: usize);
}

impl FrameBuffer for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        Vec::extend_from_slice(self, bytes)
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        Vec::as_mut_slice(self)
    }
    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len)
    }
}

impl FrameBuffer for AlignedVec<PAYLOAD_ALIGNMENT> {
    fn len(&self) -> usize {
        AlignedVec::len(self)
    }
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        AlignedVec::extend_from_slice(self, bytes)
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        AlignedVec::as_mut_slice(self)
    }
    fn truncate(&mut self, len: usize) {
        if len < AlignedVec::len(self) {
            self.resize(len, 0);
        }
    }
}

/// The rkyv writer used by `encode_frame`: it appends to a buffer but reports positions relative
/// to the payload start, so the archive's internal alignment holds wherever the frame begins in
/// the buffer (a receiver copies the payload alone into an aligned buffer).
pub struct PayloadWriter<'w, B> {
    buf: &'w mut B,
    base: usize,
}

impl<B: FrameBuffer> Positional for PayloadWriter<'_, B> {
    fn pos(&self) -> usize {
        self.buf.len() - self.base
    }
}

impl<B: FrameBuffer, E> Writer<E> for PayloadWriter<'_, B> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.buf.extend_from_slice(bytes);
        Ok(())
    }
}

/// Serializer bound of `encode_frame` for a root type `T` (all message types satisfy it).
pub type FrameSerializer<'a, 'w, B> = HighSerializer<PayloadWriter<'w, B>, ArenaHandle<'a>, BoxedError>;

/// Appends one complete frame (header + rkyv archive of `value`) to `out` and returns its header.
/// `out` may already hold earlier frames; on error it is left as it was.
pub fn encode_frame<T, B>(kind: FrameKind, value: &T, out: &mut B) -> Result<FrameHeader, CodecError>
where
    B: FrameBuffer,
    T: for<'a, 'w> Serialize<FrameSerializer<'a, 'w, B>>,
{
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    let base = out.len();
    let writer = PayloadWriter { buf: &mut *out, base };
    if let Err(e) = rkyv::api::high::to_bytes_in::<_, BoxedError>(value, writer) {
        out.truncate(start);
        return Err(CodecError::Encode { message: e.to_string() });
    }
    let payload_len = out.len() - base;
    let header = match FrameHeader::for_payload(kind, &out.as_mut_slice()[base..]) {
        Ok(header) => header,
        Err(_) => {
            out.truncate(start);
            return Err(CodecError::EncodeTooLarge { len: payload_len, max: u32::MAX });
        }
    };
    out.as_mut_slice()[start..base].copy_from_slice(&header.encode());
    Ok(header)
}

/// As `encode_frame`, but fails with `EncodeTooLarge` (leaving `out` as it was) when the payload
/// exceeds `max_frame_bytes`, the limit the peer announced.
pub fn encode_frame_limited<T, B>(
    kind: FrameKind,
    value: &T,
    out: &mut B,
    max_frame_bytes: u32,
) -> Result<FrameHeader, CodecError>
where
    B: FrameBuffer,
    T: for<'a, 'w> Serialize<FrameSerializer<'a, 'w, B>>,
{
    let start = out.len();
    let header = encode_frame(kind, value, out)?;
    if header.payload_len > max_frame_bytes {
        out.truncate(start);
        return Err(CodecError::EncodeTooLarge { len: header.payload_len as usize, max: max_frame_bytes });
    }
    Ok(header)
}

/// An rkyv writer that keeps only the position: serializing into it measures an archive's
/// exact length without copying any of its bytes (a 1 MiB value costs an addition, not a copy).
#[derive(Debug, Default)]
pub struct LengthCounter {
    len: usize,
}

impl Positional for LengthCounter {
    fn pos(&self) -> usize {
        self.len
    }
}

impl<E> Writer<E> for LengthCounter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.len += bytes.len();
        Ok(())
    }
}

/// Serializer bound of `archived_len`.
pub type LengthSerializer<'a> = HighSerializer<LengthCounter, ArenaHandle<'a>, BoxedError>;

/// The exact length of `value`'s archive when it is a frame's root, padding included. As a part
/// of a larger archive (an envelope inside a batch) it takes at most this many bytes plus
/// `ARCHIVE_ALIGNMENT_SLACK_BYTES` of alignment padding; senders use it to keep frames under
/// `max_frame_bytes` before they encode them.
pub fn archived_len<T>(value: &T) -> Result<usize, CodecError>
where
    T: for<'a> Serialize<LengthSerializer<'a>>,
{
    rkyv::api::high::to_bytes_in::<_, BoxedError>(value, LengthCounter::default())
        .map(|counter| counter.len)
        .map_err(|e| CodecError::Encode { message: e.to_string() })
}

/// The room left in one batch frame (`RequestBatch`/`ResponseBatch`) while a sender fills it:
/// each envelope is admitted by its standalone `archived_len` before it is added, so the encoded
/// payload never exceeds `max_frame_bytes` and nothing is encoded twice.
#[derive(Debug, Clone, Copy)]
pub struct FrameBudget {
    max_frame_bytes: usize,
    used: usize,
}

impl FrameBudget {
    /// An empty batch under `max_frame_bytes`.
    pub fn new(max_frame_bytes: u32) -> FrameBudget {
        FrameBudget { max_frame_bytes: max_frame_bytes as usize, used: BATCH_ROOT_BYTES_MAX }
    }

    /// What an envelope whose standalone archive is `len` bytes can take inside a batch.
    fn cost(len: usize) -> usize {
        len.saturating_add(ENVELOPE_ALIGNMENT_SLACK_BYTES)
    }

    /// Whether an envelope of `len` bytes fits in a batch frame by itself.
    pub fn fits_alone(max_frame_bytes: u32, len: usize) -> bool {
        FrameBudget::new(max_frame_bytes).fits(len)
    }

    /// Whether an envelope of `len` bytes still fits in this batch.
    pub fn fits(&self, len: usize) -> bool {
        self.used.saturating_add(FrameBudget::cost(len)) <= self.max_frame_bytes
    }

    /// Counts an envelope of `len` bytes into the batch when it fits; `false` leaves it out.
    pub fn try_add(&mut self, len: usize) -> bool {
        if !self.fits(len) {
            return false;
        }
        self.used += FrameBudget::cost(len);
        true
    }

    /// Upper bound of the batch payload admitted so far.
    pub fn used(&self) -> usize {
        self.used
    }
}

/// Encodes one frame into a fresh `Vec<u8>`.
pub fn encode_frame_to_vec<T>(kind: FrameKind, value: &T) -> Result<Vec<u8>, CodecError>
where
    T: for<'a, 'w> Serialize<FrameSerializer<'a, 'w, Vec<u8>>>,
{
    let mut out = Vec::new();
    encode_frame(kind, value, &mut out)?;
    Ok(out)
}

fn short_type_name<T>() -> &'static str {
    let name = std::any::type_name::<T>();
    name.rsplit("::").next().unwrap_or(name)
}

/// Validates an aligned payload as an archive of `T` and returns a reference into it.
/// `payload` must start at a 16-byte boundary (an `AlignedVec`); otherwise use `decode_frame`.
pub fn access_payload<T>(payload: &[u8]) -> Result<&T::Archived, CodecError>
where
    T: Archive,
    T::Archived: for<'b> CheckBytes<HighValidator<'b, BoxedError>>,
{
    if !(payload.as_ptr() as usize).is_multiple_of(PAYLOAD_ALIGNMENT) {
        return Err(CodecError::Invalid {
            kind: short_type_name::<T>(),
            message: "payload buffer is not 16-byte aligned".to_string(),
        });
    }
    rkyv::access::<T::Archived, BoxedError>(payload)
        .map_err(|e| CodecError::Invalid { kind: short_type_name::<T>(), message: e.to_string() })
}

/// Checks `payload` against `header` (length and checksum), places it in a 16-byte-aligned
/// buffer (copying into `scratch` only when `payload` is not already aligned) and validates it as
/// an archive of `T`.
pub fn decode_frame<'a, T>(
    header: &FrameHeader,
    payload: &'a [u8],
    scratch: &'a mut AlignedVec<PAYLOAD_ALIGNMENT>,
) -> Result<&'a T::Archived, CodecError>
where
    T: Archive,
    T::Archived: for<'b> CheckBytes<HighValidator<'b, BoxedError>>,
{
    header.verify_payload(payload)?;
    if (payload.as_ptr() as usize).is_multiple_of(PAYLOAD_ALIGNMENT) {
        return access_payload::<T>(payload);
    }
    scratch.clear();
    scratch.extend_from_slice(payload);
    access_payload::<T>(scratch.as_slice())
}

/// Deserializes a validated archive into the owned Rust type.
pub fn deserialize<T>(archived: &T::Archived) -> Result<T, CodecError>
where
    T: Archive,
    T::Archived: Deserialize<T, HighDeserializer<BoxedError>>,
{
    rkyv::deserialize::<T, BoxedError>(archived)
        .map_err(|e| CodecError::Deserialize { message: e.to_string() })
}

/// Deserializer strategy of `deserialize`, for callers naming the bound.
pub type FrameDeserializer = Strategy<rkyv::de::Pool, BoxedError>;

/// One received frame whose header was accepted and whose checksum matched. The payload is in
/// an aligned buffer but not yet validated as an archive: use `access` or `decode`.
#[derive(Debug)]
pub struct Frame {
    pub header: FrameHeader,
    pub payload: AlignedVec<PAYLOAD_ALIGNMENT>,
}

impl Frame {
    pub fn kind(&self) -> FrameKind {
        self.header.kind
    }

    /// Fails with `UnexpectedKind` unless this frame has kind `expected`.
    pub fn expect_kind(&self, expected: FrameKind) -> Result<(), CodecError> {
        if self.header.kind == expected {
            Ok(())
        } else {
            Err(CodecError::UnexpectedKind { expected: expected.name(), found: self.header.kind.name() })
        }
    }

    /// Validates the payload as an archive of `T` (zero-copy).
    pub fn access<T>(&self) -> Result<&T::Archived, CodecError>
    where
        T: Archive,
        T::Archived: for<'b> CheckBytes<HighValidator<'b, BoxedError>>,
    {
        access_payload::<T>(self.payload.as_slice())
    }

    /// Validates the payload as an archive of `T` and deserializes it to an owned value.
    pub fn decode<T>(&self) -> Result<T, CodecError>
    where
        T: Archive,
        T::Archived: for<'b> CheckBytes<HighValidator<'b, BoxedError>> + Deserialize<T, FrameDeserializer>,
    {
        deserialize::<T>(self.access::<T>()?)
    }
}

/// Reassembles frames from a byte stream delivered in arbitrary pieces (a socket, a glommio
/// buffer, a test vector). After an error the reader stays failed: the connection must close.
#[derive(Debug)]
pub struct FrameReader {
    max_frame_bytes: u32,
    header_bytes: [u8; FRAME_HEADER_BYTES],
    header_filled: usize,
    current: Option<(FrameHeader, AlignedVec<PAYLOAD_ALIGNMENT>)>,
    failed: Option<FrameError>,
}

impl FrameReader {
    /// A reader accepting payloads of at most `max_frame_bytes`.
    pub fn new(max_frame_bytes: u32) -> FrameReader {
        FrameReader {
            max_frame_bytes,
            header_bytes: [0u8; FRAME_HEADER_BYTES],
            header_filled: 0,
            current: None,
            failed: None,
        }
    }

    pub fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }

    /// Changes the limit for frames whose header has not been read yet.
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: u32) {
        self.max_frame_bytes = max_frame_bytes;
    }

    /// True when no partial frame is buffered: end-of-stream here is a clean close.
    pub fn is_idle(&self) -> bool {
        self.header_filled == 0 && self.current.is_none()
    }

    /// Bytes of the frame in progress that have been received so far.
    pub fn buffered_bytes(&self) -> usize {
        self.header_filled + self.current.as_ref().map_or(0, |(_, p)| FRAME_HEADER_BYTES + p.len())
    }

    /// Consumes bytes from the front of `input` until one frame is complete (returned, with the
    /// rest of `input` left for the next call) or `input` is exhausted (`Ok(None)`).
    pub fn read_from(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.advance(input) {
            Ok(frame) => Ok(frame),
            Err(e) => {
                self.failed = Some(e.clone());
                self.current = None;
                Err(e)
            }
        }
    }

    /// Signals end of stream: an error if a frame was cut off.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.is_idle() {
            return Ok(());
        }
        let needed = match &self.current {
            Some((header, _)) => header.frame_len(),
            None => FRAME_HEADER_BYTES,
        };
        Err(FrameError::Truncated { needed, available: self.buffered_bytes() })
    }

    fn advance(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, FrameError> {
        if self.current.is_none() {
            let take = (FRAME_HEADER_BYTES - self.header_filled).min(input.len());
            let (head, rest) = input.split_at(take);
            self.header_bytes[self.header_filled..self.header_filled + take].copy_from_slice(head);
            self.header_filled += take;
            *input = rest;
            if self.header_filled < FRAME_HEADER_BYTES {
                return Ok(None);
            }
            // The length bound is enforced here, before any payload memory is reserved.
            let header = FrameHeader::decode(&self.header_bytes, self.max_frame_bytes)?;
            self.header_filled = 0;
            let reserve = (header.payload_len as usize).min(PAYLOAD_RESERVE_BYTES_MAX);
            self.current = Some((header, AlignedVec::with_capacity(reserve)));
        }
        let Some((header, payload)) = self.current.as_mut() else {
            return Ok(None);
        };
        let missing = header.payload_len as usize - payload.len();
        let take = missing.min(input.len());
        let (head, rest) = input.split_at(take);
        payload.extend_from_slice(head);
        *input = rest;
        if payload.len() < header.payload_len as usize {
            return Ok(None);
        }
        let Some((header, payload)) = self.current.take() else {
            return Ok(None);
        };
        header.verify_payload(payload.as_slice())?;
        Ok(Some(Frame { header, payload }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::constants::MAX_FRAME_BYTES_DEFAULT;
    use crate::messages::{Goaway, GoawayCode, Hello, Ping, Role};

    fn hello() -> Hello {
        Hello {
            protocol_version: 1,
            role: Role::Client,
            node_id: Some(7),
            client_name: "t".into(),
            credential: None,
            namespace_hint: None,
        }
    }

    #[test]
    fn t10_frames_appended_to_one_buffer_decode_in_order() {
        // Proves encode_frame appends to a reused buffer at any offset (here 16+n, unaligned) and
        // that FrameReader returns each frame intact, even when fed one byte at a time.
        let mut out: Vec<u8> = Vec::new();
        encode_frame(FrameKind::Ping, &Ping { nonce: 1 }, &mut out).unwrap();
        encode_frame(FrameKind::Hello, &hello(), &mut out).unwrap();
        encode_frame(FrameKind::Goaway, &Goaway { code: GoawayCode::Idle, message: "x".into() }, &mut out)
            .unwrap();
        let mut reader = FrameReader::new(MAX_FRAME_BYTES_DEFAULT);
        let mut frames = Vec::new();
        for byte in out.chunks(1) {
            let mut input = byte;
            if let Some(frame) = reader.read_from(&mut input).unwrap() {
                frames.push(frame);
            }
            assert!(input.is_empty());
        }
        assert!(reader.finish().is_ok());
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].decode::<Ping>().unwrap(), Ping { nonce: 1 });
        assert_eq!(frames[1].decode::<Hello>().unwrap(), hello());
        assert_eq!(frames[2].access::<Goaway>().unwrap().message.as_str(), "x");
        assert!(frames[1].expect_kind(FrameKind::Hello).is_ok());
        assert!(frames[1].expect_kind(FrameKind::Ping).is_err());
    }

    #[test]
    fn t11_decode_frame_copies_unaligned_payloads() {
        // Proves decode_frame accepts a payload at an odd address by copying it into scratch.
        let mut out: AlignedVec<PAYLOAD_ALIGNMENT> = AlignedVec::new();
        out.extend_from_slice(&[0u8; 3]);
        let header = encode_frame(FrameKind::Hello, &hello(), &mut out).unwrap();
        let payload = &out.as_slice()[3 + FRAME_HEADER_BYTES..];
        assert!(!(payload.as_ptr() as usize).is_multiple_of(PAYLOAD_ALIGNMENT));
        let mut scratch = AlignedVec::new();
        let archived = decode_frame::<Hello>(&header, payload, &mut scratch).unwrap();
        assert_eq!(deserialize::<Hello>(archived).unwrap(), hello());
        assert!(matches!(access_payload::<Hello>(payload), Err(CodecError::Invalid { .. })));
    }

    #[test]
    fn t12_reader_rejects_oversized_header_before_payload_arrives() {
        // Proves max_frame_bytes is enforced on the header alone, and the reader stays failed.
        let header = FrameHeader { kind: FrameKind::Ping, payload_len: 1 << 30, checksum: [0; 4] };
        let bytes = header.encode();
        let mut reader = FrameReader::new(1024);
        let mut input = &bytes[..];
        let e = reader.read_from(&mut input).unwrap_err();
        assert_eq!(e, FrameError::TooLarge { len: 1 << 30, max: 1024 });
        let mut more: &[u8] = &[0u8; 4];
        assert_eq!(reader.read_from(&mut more).unwrap_err(), e);
    }

    #[test]
    fn t13_checksum_mismatch_and_truncation() {
        // Proves a flipped payload bit yields Corrupt and a cut-off stream yields Truncated.
        let mut out = encode_frame_to_vec(FrameKind::Ping, &Ping { nonce: 9 }).unwrap();
        let mut reader = FrameReader::new(MAX_FRAME_BYTES_DEFAULT);
        let mut input = &out[..out.len() - 1];
        assert!(reader.read_from(&mut input).unwrap().is_none());
        assert!(matches!(reader.finish(), Err(FrameError::Truncated { .. })));
        let last = out.len() - 1;
        out[last] ^= 1;
        let mut reader = FrameReader::new(MAX_FRAME_BYTES_DEFAULT);
        let mut input = &out[..];
        assert_eq!(reader.read_from(&mut input).unwrap_err(), FrameError::Corrupt);
    }

    #[test]
    fn t14_invalid_archive_is_a_protocol_error() {
        // Proves a frame with a valid header and checksum but a garbage body fails validation.
        let payload = [0xffu8; 8];
        let header = FrameHeader::for_payload(FrameKind::Hello, &payload).unwrap();
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(&payload);
        let mut reader = FrameReader::new(MAX_FRAME_BYTES_DEFAULT);
        let mut input = &bytes[..];
        let frame = reader.read_from(&mut input).unwrap().unwrap();
        let e = frame.access::<Hello>().unwrap_err();
        assert!(matches!(e, CodecError::Invalid { .. }));
        assert_eq!(e.goaway_code(), GoawayCode::ProtocolError);
    }

    #[test]
    fn t15_encode_limited_leaves_buffer_untouched() {
        // Proves encode_frame_limited refuses an oversized payload without leaving bytes behind.
        let mut out = vec![1u8, 2, 3];
        let e = encode_frame_limited(FrameKind::Hello, &hello(), &mut out, 4).unwrap_err();
        assert!(matches!(e, CodecError::EncodeTooLarge { .. }));
        assert_eq!(e.goaway_code(), GoawayCode::FrameTooLarge);
        assert_eq!(out, vec![1, 2, 3]);
    }

    fn envelope(seed: u64) -> crate::messages::ResponseEnvelope {
        use crate::messages::{BatchReadItem, Response, ResponseEnvelope, Status};
        // A small deterministic generator: sizes and shapes vary with the seed.
        let pick =
            |salt: u64, range: u64| (seed.wrapping_mul(6364136223846793005).wrapping_add(salt) >> 33) % range;
        let result = match pick(1, 4) {
            0 => Ok(Response::Read {
                value: Some(vec![7u8; pick(2, 5000) as usize]),
                block_height: seed,
                stale: false,
            }),
            1 => Ok(Response::BatchRead {
                results: (0..pick(3, 40))
                    .map(|i| BatchReadItem {
                        key: "k".repeat(1 + (i as usize % 13)),
                        value: (i % 3 != 0).then(|| vec![1u8; pick(4 + i, 700) as usize]),
                        found: i % 3 != 0,
                    })
                    .collect(),
                block_height: 3,
                stale: true,
            }),
            2 => Err(Status::invalid("x".repeat(pick(5, 300) as usize))),
            _ => Ok(Response::Read { value: None, block_height: 1, stale: false }),
        };
        ResponseEnvelope { request_id: seed, result, leader_hint: None }
    }

    #[test]
    fn t16_frame_budget_bounds_the_encoded_batch() {
        // Proves FrameBudget's admission rule: for many mixes of envelopes (sizes and alignments
        // varied by seed), a batch filled by admitting each envelope's standalone archived_len
        // encodes to at most the budget's bound and never above max_frame_bytes; and archived_len
        // is exact for a root (it equals the encoded payload length).
        use crate::messages::ResponseBatch;
        for max in [1024u32, 4096, 64 * 1024] {
            for start in 0..200u64 {
                let mut budget = FrameBudget::new(max);
                let mut items = Vec::new();
                for seed in start * 1000.. {
                    let item = envelope(seed);
                    let len = archived_len(&item).unwrap();
                    let mut alone = Vec::new();
                    let header = encode_frame(FrameKind::ResponseBatch, &item, &mut alone).unwrap();
                    assert_eq!(header.payload_len as usize, len);
                    if !budget.try_add(len) {
                        break;
                    }
                    items.push(item);
                }
                let batch = ResponseBatch { items };
                let mut out = Vec::new();
                let header = encode_frame(FrameKind::ResponseBatch, &batch, &mut out).unwrap();
                assert!(
                    header.payload_len as usize <= budget.used(),
                    "{} > {}",
                    header.payload_len,
                    budget.used()
                );
                assert!(header.payload_len <= max);
            }
        }
        assert!(!FrameBudget::fits_alone(1024, 1024));
        assert!(FrameBudget::fits_alone(1024, 100));
    }
}
