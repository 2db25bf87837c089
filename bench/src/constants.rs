//! Sizes and default iteration counts of the micro-benchmarks, named so that a result line can be
//! traced to exactly what was measured.

/// State-tree rows for the state-root and proof benches (SPEC §13: 1 M keys)...
pub const TREE_ROWS_FULL: u64 = 1_000_000;
/// ...and with `--quick`.
pub const TREE_ROWS_QUICK: u64 = 100_000;
/// Dirty-key counts of the state-root bench.
pub const DIRTY_KEYS: [u64; 3] = [1, 100, 1000];

/// Requests per frame in the codec benches (the 1000-request batch of STACK.md).
pub const FRAME_REQUESTS: usize = 1000;
/// Key and value sizes of every synthetic entity (as in STACK.md's measurements).
pub const KEY_BYTES: usize = 32;
pub const VALUE_BYTES: usize = 100;

/// Transactions per block in the redb apply bench; each sets one entity.
pub const BLOCK_TXS: usize = 100;

/// Default timed samples per bench, by cost class (overridden by `--iterations`).
pub const SAMPLES_FAST: u64 = 2_000;
pub const SAMPLES_MEDIUM: u64 = 500;
pub const SAMPLES_SLOW: u64 = 100;
/// Divisor of the default sample counts under `--quick`.
pub const QUICK_DIVISOR: u64 = 10;
/// Sub-microsecond operations are timed in groups of this many and recorded per operation, so the
/// clock read does not dominate.
pub const INNER_LOOP_FAST: u64 = 100;

/// Latency-budget benches (`fsync/…`, `net/…`): the size of one durable write, the pages of the
/// pre-allocated file that the overwrite bench cycles through, and the round trip's message size.
pub const FSYNC_PAGE_BYTES: usize = 4096;
pub const FSYNC_RING_PAGES: u64 = 64;
pub const RTT_MESSAGE_BYTES: usize = 64;
/// Samples of each fsync bench: p99.9 needs at least a thousand.
pub const SAMPLES_FSYNC: u64 = 1_000;
/// A round trip that takes longer than this fails the bench instead of hanging it.
pub const RTT_READ_TIMEOUT_SECS: u64 = 10;

/// Histogram range of per-iteration times: 1 ns to 1 h, 3 significant digits.
pub const HDR_LOW_NS: u64 = 1;
pub const HDR_HIGH_NS: u64 = 3_600_000_000_000;
pub const HDR_SIGFIG: u8 = 3;
