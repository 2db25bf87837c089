//! Moving a group's Raft log to another core's log (SPEC §10.5 "if the configured core count
//! shrinks, groups on vanished cores are reassigned", D77). Each core keeps one log for all its
//! groups (D38, `log/core-NN/`), so a group placed on a core that no longer exists has its
//! entries, vote, commit and purge point in a log nobody opens. Before the executors start, the
//! node copies them into the log of the group's new core, durably, and only then records the
//! new placement; a copy cut short by a crash is started over (the target's entries of the group
//! are truncated first), so the move is idempotent. The group's other files
//! (`groups/gNNNNN/`) do not depend on the core.

use crate::error::ShardError;
use crate::raft::core_log::{CoreLog, SyncBy};
use crate::raft::log_store::encode_entry;
use crate::storage::log_files::LogDir;
use ledger_core::types::GroupId;
use std::path::{Path, PathBuf};

/// Entries per append record while copying (bounded records, one sync each).
const ENTRIES_PER_RECORD: usize = 256;

/// `log/core-NN` of the data directory at `data_dir`.
pub fn core_dir(data_dir: &Path, core: u16) -> PathBuf {
    data_dir.join("log").join(format!("core-{core:02}"))
}

/// What a move copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub entries: usize,
    pub last_index: Option<u64>,
}

fn wait(what: &str, rx: std::sync::mpsc::Receiver<std::io::Result<()>>) -> Result<(), ShardError> {
    match rx.recv() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ShardError::WriteFailed { what: what.to_string(), source: std::sync::Arc::new(e) }),
        Err(_) => Err(ShardError::StorageClosed { what: what.to_string() }),
    }
}

/// Copies `group`'s log from core `from`'s log to core `to`'s, durably. Must run where no
/// executor has either log open (node start).
pub fn move_group(data_dir: &Path, group: GroupId, from: u16, to: u16) -> Result<Moved, ShardError> {
    let (entries, state) = {
        let source = CoreLog::open(LogDir::new(core_dir(data_dir, from), None))?;
        let state = source.attach(group).unwrap_or_else(|| Ok(Default::default()))?;
        let entries = source.read(group, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded)?;
        source.close();
        (entries, state)
    };
    let target = CoreLog::open(LogDir::new(core_dir(data_dir, to), None))?;
    let _ = target.attach(group).transpose()?;
    futures::executor::block_on(target.truncate(group, 0))?;
    if let Some(vote) = &state.vote {
        futures::executor::block_on(target.save_vote(group, vote))?;
    }
    if let Some(purged) = state.last_purged {
        futures::executor::block_on(target.purge(group, purged))?;
    }
    let what = format!("raft log {}", core_dir(data_dir, to).display());
    for chunk in entries.chunks(ENTRIES_PER_RECORD) {
        let stored: Vec<_> = chunk.iter().map(|e| (e.log_id, encode_entry(e))).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        target.append(group, &stored, SyncBy::IdleWriter, Box::new(move |r| drop(tx.send(r))))?;
        wait(&what, rx)?;
    }
    if let Some(committed) = state.committed {
        target.save_committed(group, committed)?;
        // A durable record after it, so that the commit point is on disk before the move counts.
        if let Some(vote) = &state.vote {
            futures::executor::block_on(target.save_vote(group, vote))?;
        }
    }
    // The executor opens this directory next: this instance's thread must be done with it.
    target.close();
    Ok(Moved { entries: entries.len(), last_index: entries.last().map(|e| e.log_id.index) })
}

/// Renames `log/core-NN` aside (`core-NN.moved-{secs}`) for every core from `cores` on whose
/// groups have all moved; returns the new names. Kept, not deleted: nothing reads them again.
pub fn set_aside_vanished_cores(data_dir: &Path, cores: usize) -> std::io::Result<Vec<PathBuf>> {
    let log = data_dir.join("log");
    let Ok(read) = std::fs::read_dir(&log) else { return Ok(Vec::new()) };
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut moved = Vec::new();
    for dir in read {
        let dir = dir?;
        let name = dir.file_name().to_string_lossy().into_owned();
        let Some(core) = name.strip_prefix("core-").and_then(|n| n.parse::<usize>().ok()) else { continue };
        if core < cores {
            continue;
        }
        let aside = log.join(format!("{name}.moved-{secs}"));
        std::fs::rename(dir.path(), &aside)?;
        moved.push(aside);
    }
    if !moved.is_empty() {
        std::fs::File::open(&log)?.sync_all()?;
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::raft::type_config::{Entry, LogId, Vote};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(3, 1), index)
    }

    fn append(log: &CoreLog, group: u32, indexes: std::ops::RangeInclusive<u64>) {
        let stored: Vec<_> = indexes
            .map(|i| {
                let e = Entry { log_id: log_id(i), payload: EntryPayload::Blank };
                (e.log_id, encode_entry(&e))
            })
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        log.append(GroupId(group), &stored, SyncBy::IdleWriter, Box::new(move |r| drop(tx.send(r)))).unwrap();
        rx.recv().unwrap().unwrap();
    }

    fn state_of(data_dir: &Path, core: u16, group: u32) -> (Vec<u64>, crate::raft::core_log::GroupLogState) {
        let log = CoreLog::open(LogDir::new(core_dir(data_dir, core), None)).unwrap();
        let state = log.attach(GroupId(group)).unwrap().unwrap();
        let entries =
            log.read(GroupId(group), std::ops::Bound::Unbounded, std::ops::Bound::Unbounded).unwrap();
        log.close();
        (entries.iter().map(|e| e.log_id.index).collect(), state)
    }

    /// A group's entries, vote, commit and purge point reach the other core's log beside that
    /// core's own groups, and a move made twice (a crash before the placement was recorded)
    /// leaves the same log as one.
    #[test]
    fn t01_a_move_copies_the_whole_group_and_can_be_repeated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let source = CoreLog::open(LogDir::new(core_dir(dir.path(), 1), None)).unwrap();
            append(&source, 5, 1..=40);
            futures::executor::block_on(source.save_vote(GroupId(5), &Vote::new(3, 1))).unwrap();
            futures::executor::block_on(source.purge(GroupId(5), log_id(10))).unwrap();
            source.save_committed(GroupId(5), log_id(35)).unwrap();
            append(&source, 5, 41..=42);
            source.close();
            let target = CoreLog::open(LogDir::new(core_dir(dir.path(), 0), None)).unwrap();
            append(&target, 2, 1..=7);
            target.close();
        }
        for _ in 0..2 {
            let moved = move_group(dir.path(), GroupId(5), 1, 0).unwrap();
            assert_eq!(moved, Moved { entries: 32, last_index: Some(42) });
            let (indexes, state) = state_of(dir.path(), 0, 5);
            assert_eq!(indexes, (11..=42).collect::<Vec<_>>());
            assert_eq!(state.vote, Some(Vote::new(3, 1)));
            assert_eq!(state.last_purged, Some(log_id(10)));
            assert_eq!(state.committed, Some(log_id(35)));
            assert_eq!(state.last_log_id, Some(log_id(42)));
            assert_eq!(state_of(dir.path(), 0, 2).0, (1..=7).collect::<Vec<_>>(), "the target's own group");
        }
        let aside = set_aside_vanished_cores(dir.path(), 1).unwrap();
        assert_eq!(aside.len(), 1);
        assert!(!core_dir(dir.path(), 1).exists() && core_dir(dir.path(), 0).exists());
    }
}
