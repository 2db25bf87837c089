//! Work off the request path: `task` (each group's maintenance timer and the `CreateSnapshot` /
//! `CheckIntegrity` handlers), `retention` (body compaction) and `integrity` (the chain, body and
//! snapshot checks). The heavy lifting runs on blocking threads.

pub mod integrity;
pub mod retention;
pub mod task;
