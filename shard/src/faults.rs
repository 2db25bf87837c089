//! Fault-injection points, so that tests can make the real storage paths fail exactly where a
//! disk or a crash would (SPEC §12: an acknowledged write is never lost, a failed one is never
//! reported as committed). Nothing is armed unless a test arms it; an unarmed point costs one
//! relaxed atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// The crash marker's file name in a `--test-faults` node's data directory
/// (`Faults::arm_crash_marker`).
pub const CRASH_MARKER_FILE: &str = "crash-before-final-config";

/// The fault points of one node, shared by its groups through `ShardConfig::faults`.
#[derive(Debug, Default)]
pub struct Faults {
    append_armed: AtomicBool,
    append: Mutex<Option<AppendFault>>,
    /// The partition switch (issue 14 item 7): peer nodes this node neither calls nor answers.
    /// Settable only on a node started with `--test-faults` (`peer_faults_enabled`).
    peer_faults_enabled: AtomicBool,
    partitioned_any: AtomicBool,
    partitioned: Mutex<std::collections::BTreeSet<u64>>,
    /// Makes the storage probe of a group that stopped on a storage error fail, as on a disk
    /// that is still full (maintenance/reopen.rs).
    storage_full: AtomicBool,
    /// `(group, count)`: checkpoint writes of that group still to fail (before touching files).
    checkpoint_armed: AtomicBool,
    checkpoint_failures: Mutex<Option<(u32, u32)>>,
    /// `(group, count)`: snapshot files of that group still to fail (before touching files).
    snapshot_armed: AtomicBool,
    snapshot_failures: Mutex<Option<(u32, u32)>>,
    /// Abandons the next block round as it completes (as a lost leadership would).
    abandon_round: AtomicBool,
    /// With `--test-faults`: a file whose presence makes this node abort as its leader is about
    /// to append the final config that follows a joint one (a leader crash between the two
    /// steps of a membership change, SPEC §10.7). The file is removed first: one crash.
    crash_marker: Mutex<Option<std::path::PathBuf>>,
}

/// Fails the next Raft log append that carries a group block, after holding it: the append is
/// reported on `reached`, then waits until `release` yields (or its sender is dropped), then
/// completes with an I/O error instead of being written.
#[derive(Debug)]
pub struct AppendFault {
    pub reached: flume::Sender<()>,
    pub release: flume::Receiver<()>,
}

impl Faults {
    /// Arms the append fault (replacing one armed before and not reached yet).
    pub fn fail_next_block_append(&self, fault: AppendFault) {
        *self.append.lock().unwrap_or_else(PoisonError::into_inner) = Some(fault);
        self.append_armed.store(true, Ordering::Release);
    }

    /// The armed append fault, disarming it (called by the log store for each block append).
    pub(crate) fn take_block_append(&self) -> Option<AppendFault> {
        if !self.append_armed.load(Ordering::Relaxed) {
            return None;
        }
        self.append_armed.store(false, Ordering::Release);
        self.append.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl Faults {
    /// Arms the crash point at `marker` (only a `--test-faults` node does).
    pub fn arm_crash_marker(&self, marker: std::path::PathBuf) {
        *self.crash_marker.lock().unwrap_or_else(PoisonError::into_inner) = Some(marker);
    }

    /// Aborts the process if the crash marker exists (removing it first). Called by the log
    /// store before it appends its own final config after a joint one.
    pub(crate) fn crash_before_final_config(&self) {
        let marker = self.crash_marker.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(marker) = marker.filter(|m| m.exists()) {
            let _ = std::fs::remove_file(&marker);
            eprintln!("test fault: crashing before the final config of a membership change");
            std::process::abort();
        }
    }
}

impl Faults {
    /// Allows `SetPartition` requests (the server's `--test-faults` flag).
    pub fn enable_peer_faults(&self) {
        self.peer_faults_enabled.store(true, Ordering::Release);
    }

    pub fn peer_faults_enabled(&self) -> bool {
        self.peer_faults_enabled.load(Ordering::Acquire)
    }

    /// Cuts this node off from `nodes` (replacing the previous set; empty heals).
    pub fn set_partition(&self, nodes: impl IntoIterator<Item = u64>) {
        let mut set = self.partitioned.lock().unwrap_or_else(PoisonError::into_inner);
        *set = nodes.into_iter().collect();
        self.partitioned_any.store(!set.is_empty(), Ordering::Release);
    }

    /// Whether traffic with `node` is cut (one relaxed load when nothing is).
    pub fn is_partitioned(&self, node: u64) -> bool {
        if !self.partitioned_any.load(Ordering::Relaxed) {
            return false;
        }
        self.partitioned.lock().unwrap_or_else(PoisonError::into_inner).contains(&node)
    }
}

impl Faults {
    /// While set, a stopped group's storage probe fails as on a full disk.
    pub fn set_storage_full(&self, full: bool) {
        self.storage_full.store(full, Ordering::Release);
    }

    pub(crate) fn storage_full(&self) -> bool {
        self.storage_full.load(Ordering::Acquire)
    }

    /// Abandons the next block round of any group when it completes.
    pub fn abandon_next_round(&self) {
        self.abandon_round.store(true, Ordering::Release);
    }

    pub(crate) fn take_round_abandon(&self) -> bool {
        self.abandon_round.load(Ordering::Relaxed) && self.abandon_round.swap(false, Ordering::AcqRel)
    }

    /// Fails the next `count` checkpoint writes of `group` with an I/O error.
    pub fn fail_checkpoints(&self, group: u32, count: u32) {
        *self.checkpoint_failures.lock().unwrap_or_else(PoisonError::into_inner) = Some((group, count));
        self.checkpoint_armed.store(true, Ordering::Release);
    }

    /// Whether this checkpoint write of `group` must fail (counting it down).
    pub(crate) fn take_checkpoint_failure(&self, group: u32) -> bool {
        take_one(&self.checkpoint_armed, &self.checkpoint_failures, group)
    }

    /// Fails the next `count` snapshot files of `group` with an I/O error (0 disarms).
    pub fn fail_snapshots(&self, group: u32, count: u32) {
        *self.snapshot_failures.lock().unwrap_or_else(PoisonError::into_inner) = Some((group, count));
        self.snapshot_armed.store(true, Ordering::Release);
    }

    /// Whether this snapshot file of `group` must fail (counting it down).
    pub(crate) fn take_snapshot_failure(&self, group: u32) -> bool {
        take_one(&self.snapshot_armed, &self.snapshot_failures, group)
    }
}

/// Counts down one armed `(group, count)` fault of `group`; whether it fires.
fn take_one(armed_flag: &AtomicBool, armed: &Mutex<Option<(u32, u32)>>, group: u32) -> bool {
    if !armed_flag.load(Ordering::Relaxed) {
        return false;
    }
    let mut armed = armed.lock().unwrap_or_else(PoisonError::into_inner);
    match armed.as_mut() {
        Some((g, count)) if *g == group && *count > 0 => {
            *count -= 1;
            true
        }
        _ => false,
    }
}

impl AppendFault {
    /// Runs on a thread of its own: reports, holds, then fails the append's completion.
    pub(crate) fn fail(self, done: impl FnOnce(std::io::Error) + Send + 'static) {
        std::thread::spawn(move || {
            let _ = self.reached.send(());
            let _ = self.release.recv();
            done(std::io::Error::other("injected fault: log append failed"));
        });
    }
}
