//! Every bound of the native protocol and of the client library, as named constants (SPEC §4).
//! Keeping them in one place makes the limits reviewable and lets the server and the client agree
//! on defaults without either crate hard-coding a number.

/// Size of the fixed frame header (SPEC §4.2).
pub const FRAME_HEADER_BYTES: usize = 16;

/// Frame magic, the first four bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"LDGR";

/// Default cap on one frame's payload (16 MiB); the server announces its own in `HelloAck`.
pub const MAX_FRAME_BYTES_DEFAULT: u32 = 16 * 1024 * 1024;

/// Default cap on the envelopes of one `RequestBatch`/`ResponseBatch` (SPEC §4.3).
pub const MAX_BATCH_ITEMS_DEFAULT: u32 = 1024;

/// Alignment of receive buffers: rkyv archives are validated at this alignment (SPEC §4.2).
pub const PAYLOAD_ALIGNMENT: usize = 16;

/// Server default for outstanding requests per connection (`requests_max_concurrent`, SPEC §4.1);
/// the client keeps at most this many in flight so that it never trips `ResourceExhausted`.
pub const MAX_OUTSTANDING_DEFAULT: usize = 100;

/// Default per-call deadline of the client (the server caps it at `requests_timeout_secs`, 30 s).
pub const CALL_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// Default bound on TCP connect plus the Hello/HelloAck exchange.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// Capacity of the client's queue from callers to its writer task.
pub const CLIENT_QUEUE_CAPACITY: usize = 4096;

/// Stream items a `BlockStream` holds for a consumer that is not calling `next`; beyond it the
/// client ends the stream with `ResourceExhausted` (the server bounds its side by `stream_buffer`).
pub const CLIENT_STREAM_BUFFER_MAX: usize = 65_536;

/// Size of the client's socket read buffer.
pub const CLIENT_READ_BUFFER_BYTES: usize = 64 * 1024;

/// Retry backoff of the client library (SPEC §6.4): base × 2^n, capped, jittered, max attempts.
pub const RETRY_BACKOFF_BASE_MS: u64 = 10;
/// Cap of one retry delay.
pub const RETRY_BACKOFF_CAP_MS: u64 = 2_000;
/// Attempts (the first try included) before a retryable error is returned.
pub const RETRY_ATTEMPTS_MAX: u32 = 10;

/// Cap on the `message` of a Goaway we send, so an error string never makes a frame large.
pub const GOAWAY_MESSAGE_BYTES_MAX: usize = 1024;

/// Smallest `max_frame_bytes` a server accepts in its configuration: every control frame and
/// stream frame of v1 fits in it.
pub const MAX_FRAME_BYTES_MIN: u32 = 1024;

/// Alignment padding an archived envelope can gain when it sits inside a batch instead of being
/// a root of its own: rkyv aligns objects to at most 16 bytes, and once an envelope's offset from
/// its standalone layout is a multiple of that, it stays so (`FrameBudget`).
pub const ENVELOPE_ALIGNMENT_SLACK_BYTES: usize = 16;

/// What a batch adds around its envelopes: the root `Vec` (8 bytes) and the padding before the
/// envelope array and the root.
pub const BATCH_ROOT_BYTES_MAX: usize = 64;
