//! Every bound and fixed default of the load generator, named in one place so that a reader of a
//! report knows exactly what was measured (STYLE: each bound is a named constant).

/// Lowest latency the histograms track, in microseconds.
pub const HDR_LOW_US: u64 = 1;
/// Highest latency the histograms track (60 s), in microseconds; larger values are clamped.
pub const HDR_HIGH_US: u64 = 60_000_000;
/// Significant decimal digits kept by the histograms.
pub const HDR_SIGFIG: u8 = 3;

/// Page size of a `list` operation; each list reads one page of up to this many entities.
pub const LIST_LIMIT: u32 = 100;
/// A `list` prefix drops this many trailing digits of a key, so one prefix covers 10^n keys.
pub const LIST_PREFIX_DROP_DIGITS: usize = 2;

/// Digits of the zero-padded key index in `k{index}` keys (covers key spaces up to 10^10).
pub const KEY_INDEX_DIGITS: usize = 10;
/// Largest accepted `--key-space` (per scope).
pub const KEY_SPACE_MAX: u64 = 10_000_000_000;

/// Preload transactions carry at most this many operations...
pub const PRELOAD_ITEMS_MAX: usize = 1000;
/// ...and at most this many value bytes, so that a preload frame stays far below the frame limit.
pub const PRELOAD_TX_BYTES_MAX: usize = 1024 * 1024;
/// Preload transactions in flight per connection.
pub const PRELOAD_INFLIGHT_PER_CONN: usize = 8;

/// Largest accepted `--value-size` (the server's value limit, SPEC §3.6).
pub const VALUE_SIZE_MAX: usize = ledger_core::constants::VALUE_BYTES_MAX;
/// Largest accepted `--batch-items` (operations per transaction, SPEC §3.6).
pub const BATCH_ITEMS_MAX: usize = ledger_core::constants::OPS_PER_TX_MAX_DEFAULT;
/// Largest accepted `--connections`.
pub const CONNECTIONS_MAX: usize = 4096;
/// Largest accepted `--pipeline` (the server's per-connection limit, SPEC §4.1).
pub const PIPELINE_MAX: usize = ledger_wire::constants::MAX_OUTSTANDING_DEFAULT;
/// Largest accepted `--namespaces` and `--vaults-per-ns`.
pub const SCOPES_PER_AXIS_MAX: u64 = 10_000;

/// Prefix of the namespaces the load generator creates (and reuses on the next run).
pub const NAMESPACE_PREFIX: &str = "loadgen-";

/// Pause after a worker's first consecutive failed operation; it doubles per further failure
/// (jittered) up to the cap, and a success resets it (SPEC §6.4's schedule).
pub const RETRY_BACKOFF_BASE_MS: u64 = ledger_wire::constants::RETRY_BACKOFF_BASE_MS;
/// Cap of a worker's pause after failures.
pub const RETRY_BACKOFF_CAP_MS: u64 = ledger_wire::constants::RETRY_BACKOFF_CAP_MS;
/// First pause before replacing a lost connection; doubles per failed reconnect.
pub const RECONNECT_BACKOFF_BASE_MS: u64 = 100;
/// Cap of the pause between reconnect attempts.
pub const RECONNECT_BACKOFF_CAP_MS: u64 = 2_000;
/// A run stops with an error once this long has passed with failed requests and no success.
pub const ALL_FAILING_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

/// Attempts of one preload transaction (with backoff up to `RECONNECT_BACKOFF_CAP_MS`).
pub const PRELOAD_RETRY_ATTEMPTS: u32 = 60;
