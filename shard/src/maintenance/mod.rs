//! Work off the request path: `task` (each group's maintenance timer and the `CreateSnapshot` /
//! `CheckIntegrity` handlers), `retention` (body compaction), `integrity` (the chain, body and
//! snapshot checks) and `reopen` (a group stopped by a storage error reopens once the disk works). The heavy lifting runs on blocking threads.

pub mod background_integrity;
pub mod integrity;
pub mod reopen;
pub mod retention;
pub mod task;
