//! A group's files other than the Raft log: `checkpoint` (`state.redb`: the latest row per key and
//! the applied index, and opening a group from it), `row_journal` (the journal a checkpoint appends
//! rows to and now and then merges into the row tables), `archive`, `archive_scan` and `archive_damage` (blocks
//! in `blocks.redb`, the scans over them, and finding the ones a replay cannot use), `snapshot` (snapshot files, their catalog, loading),
//! `dir_sync` (directory fsyncs), `log_files` (the segment files of a core's Raft log) and `sim_disk` (the simulated disk of the power-loss tests).

pub mod archive;
pub mod archive_damage;
pub mod archive_scan;
pub mod checkpoint;
pub mod dir_sync;
pub mod log_files;
pub mod paced_file;
pub mod row_journal;
pub mod sim_disk;
pub mod snapshot;
