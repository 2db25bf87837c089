//! Every bound the ledger core enforces, in one place (SPEC §3.6, §4.6, §5.1, §7.7), so that a
//! limit is changed once and is visible at a glance. Names put the unit and qualifier last.

/// Entity key length in bytes (SPEC §3.2, §3.6): `1..=KEY_BYTES_MAX`.
pub const KEY_BYTES_MAX: usize = 1024;
/// Entity value length in bytes (SPEC §3.6).
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Relationship `resource` length in bytes (SPEC §3.4).
pub const RESOURCE_BYTES_MAX: usize = 512;
/// Relationship `subject` length in bytes (SPEC §3.4).
pub const SUBJECT_BYTES_MAX: usize = 512;
/// Relationship `relation` length in bytes: `1..=RELATION_BYTES_MAX` (SPEC §3.4).
pub const RELATION_BYTES_MAX: usize = 64;
/// Client id length in bytes: `1..=CLIENT_ID_BYTES_MAX` (SPEC §3.6).
pub const CLIENT_ID_BYTES_MAX: usize = 256;
/// Default operations per transaction, summed over a batch (SPEC §3.6, `max_ops_per_tx`).
pub const OPS_PER_TX_MAX_DEFAULT: usize = 10_000;
/// A failed condition carries the current value only up to this size (SPEC §3.3).
pub const WRITE_ERROR_VALUE_BYTES_MAX: usize = 4 * 1024;
/// Keys per `BatchRead` (SPEC §3.6).
pub const BATCH_READ_KEYS_MAX: usize = 1000;
/// Blocks per `GetBlockRange`, inclusive (SPEC §3.6).
pub const BLOCK_RANGE_MAX: u64 = 1000;
/// List page size when the request says 0 (SPEC §3.6).
pub const PAGE_SIZE_DEFAULT: usize = 100;
/// List page size cap; larger requests are clamped (SPEC §3.6).
pub const PAGE_SIZE_MAX: usize = 1000;
/// Key and value bytes of one `ListEntities` page: a page ends early (with its page token) before
/// crossing it, so that a page of 1 MiB values still fits the default 16 MiB frame (a page holds
/// at most this plus one entity, 1 MiB + 1 KiB, plus encoding overhead).
pub const LIST_PAGE_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Namespace name length in bytes (SPEC §3.6).
pub const NAMESPACE_NAME_BYTES_MAX: usize = 128;
/// A state proof walks at most one sibling per key-hash bit (SPEC §7.7 step 1).
pub const STATE_PROOF_SIBLINGS_MAX: usize = 256;
/// Debug builds recompute the state root from scratch after a commit while the scope holds at
/// most this many rows; above it the O(n) check would dominate test run time.
pub const DEBUG_FROM_SCRATCH_ROWS_MAX: u64 = 2048;

/// Clamp a requested list page size per SPEC §3.6: 0 ⇒ default, above the cap ⇒ the cap.
pub fn page_size(requested: u32) -> usize {
    match requested as usize {
        0 => PAGE_SIZE_DEFAULT,
        n => n.min(PAGE_SIZE_MAX),
    }
}
