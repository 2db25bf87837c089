//! Bounds of the router.

/// Bytes read from a socket per read call.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Responses coalesced into one ResponseBatch frame at most (SPEC §8.1 step 4).
pub const RESPONSES_PER_FRAME_MAX: usize = 64;
/// Stream events (`StreamItem`/`StreamEnd` frames) encoded into one socket write at most.
pub const STREAM_EVENTS_PER_WRITE_MAX: usize = 256;
/// The server version reported in HelloAck.
pub const SERVER_VERSION: &str = concat!("ledger ", env!("CARGO_PKG_VERSION"));

/// Connections the node's listening socket queues before a core accepts them (what glommio's
/// own `TcpListener::bind` asked for).
pub const LISTEN_BACKLOG: i32 = 1024;
/// How long a starting node waits for its listen address to be released. After `kill -9` the
/// dead process's listening socket stays open until the kernel has torn down its io_uring
/// instances (they hold the socket for their pending accepts): 5–11 ms after the process was
/// reaped on the 2-core development machine, idle (D26); the bound leaves room for a loaded
/// host. A live server holds the address for good, so a second one gives up after this.
pub const LISTEN_IN_USE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How often a starting node retries binding an address in use.
pub const LISTEN_IN_USE_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Characters of a `StreamEnd` status message kept when the whole message would not fit in a
/// frame (it then fits in the smallest `max_frame_bytes` a server accepts).
pub const STREAM_END_MESSAGE_CHARS_MAX: usize = 128;

/// Pongs a connection may have queued, not yet written, before its client is cut off: a client
/// that sends pings faster than it reads the answers would otherwise grow the queue without end.
pub const PONGS_QUEUED_MAX: usize = 64;
/// Capacity of a connection's control channel: the pongs, plus `HelloAck` and `Goaway` (each
/// sent at most once per connection) and `Shutdown` (at most twice: when the connection opens
/// during a shutdown, and from `shutdown_all`), so those sends never find the channel full.
pub const CONTROL_QUEUE_MAX: usize = PONGS_QUEUED_MAX + 4;

/// The longest a router holds a write refusal it made itself for an over-limit namespace (D47).
pub const THROTTLE_HOLD_MAX: std::time::Duration = std::time::Duration::from_millis(250);
/// Over-limit namespaces one core's router remembers at once (D47); beyond it, a namespace's
/// writes simply go to the leader to be refused there.
pub const THROTTLE_NAMESPACES_MAX: usize = 10_000;

/// Bytes peeked for a Hello's namespace hint (D53): a Hello is a 16-byte header and a payload
/// of well under this.
pub const HELLO_PEEK_BYTES: usize = 4096;
/// Peeks for a whole Hello before a connection is served where it was accepted.
pub const HELLO_PEEK_TRIES: u32 = 4;
/// The longest one peek waits for a connection's first bytes; a client sends its Hello at once.
pub const HELLO_PEEK_WAIT: std::time::Duration = std::time::Duration::from_millis(50);
/// Pause between those peeks while a Hello is still arriving.
pub const HELLO_PEEK_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);
