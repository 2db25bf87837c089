//! Bounds of the router.

/// Bytes read from a socket per read call.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Responses coalesced into one ResponseBatch frame at most (SPEC §8.1 step 4).
pub const RESPONSES_PER_FRAME_MAX: usize = 64;
/// Stream events (`StreamItem`/`StreamEnd` frames) encoded into one socket write at most.
pub const STREAM_EVENTS_PER_WRITE_MAX: usize = 256;
/// The server version reported in HelloAck.
pub const SERVER_VERSION: &str = concat!("ledger ", env!("CARGO_PKG_VERSION"));
/// Characters of a `StreamEnd` status message kept when the whole message would not fit in a
/// frame (it then fits in the smallest `max_frame_bytes` a server accepts).
pub const STREAM_END_MESSAGE_CHARS_MAX: usize = 128;
