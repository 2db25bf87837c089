//! Work off the request path: `task` (each group's maintenance timer and the `CreateSnapshot` /
//! `CheckIntegrity` handlers), `retention` (body compaction), `integrity` (the chain, body and
//! snapshot checks), `gc` (the leader's expiry of TTL'd entities, SPEC §3.8), `low_priority` (the task queues
//! the background jobs run in), `reopen` (a
//! group stopped by a storage error reopens once the disk works) and `release` (the copy of a
//! data group whose replica moved away is emptied, D92). The heavy lifting runs on
//! blocking threads.

pub mod background_integrity;
pub mod gc;
pub mod integrity;
pub mod low_priority;
pub mod release;
pub mod reopen;
pub mod retention;
pub mod task;
