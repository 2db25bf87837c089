//! The node's event log (SPEC §11.6). Placeholder until the persistent log lands: `GetEvents`
//! answers `FailedPrecondition`.

// Errors travel as the wire `Status` (SPEC §4.5).
#![allow(clippy::result_large_err)]

use crate::shard::Shard;
use ledger_wire::messages::{EventLevel, Response, Status, StatusCode};

/// `GetEvents` (SPEC §5.3 item 34).
pub fn query(
    _shard: &Shard,
    _since_secs: u64,
    _filter: Option<String>,
    _min_level: Option<EventLevel>,
    _limit: u32,
) -> Result<Response, Status> {
    Err(Status::new(StatusCode::FailedPrecondition, "the event log is not built yet"))
}
