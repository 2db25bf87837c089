//! A group's state-tree thread (decision D21). At 1 M keys half of the owning executor's time
//! went to the sparse Merkle tree: copying and hashing the ~20-node paths of every changed key,
//! and freeing the paths of versions that leave the history ring. Trees are persistent and
//! immutable (`Send + Sync`), so that work needs nothing from the executor but the parent tree and
//! the leaf changes: the block builder hands them here and awaits the new tree, while the executor
//! goes on applying, answering and reading. Old versions are dropped here too, so one thread both
//! frees and allocates the nodes and its allocator cache (`server/src/node_alloc.rs`) recycles
//! them. Jobs run in order on one thread, so a group's trees are built in block order.

use crate::config::HelperHooks;
use crate::constants::TREE_RELEASES_QUEUED_MAX;
#[cfg(doc)]
use crate::constants::{TREE_THREAD_MIN_CHANGES, TREE_THREAD_MIN_LEAVES};
use futures::channel::oneshot;
use ledger_core::smt::{Change, SparseMerkleTree};
use ledger_core::types::Hash;
use std::sync::{Arc, OnceLock};

/// Where a block's tree starts.
pub enum TreeParent {
    /// A tree already built (the committed tree, or a proposed block's).
    Built(SparseMerkleTree),
    /// The tree of an earlier job, still being built: the block it belongs to was sealed but
    /// not completed. Jobs run in order, so it is set by the time this job runs.
    After(Arc<TreeSlot>),
}

/// The tree a job built, kept for the job after it (set before the job answers).
pub type TreeSlot = OnceLock<SparseMerkleTree>;

/// A built tree and the root of the tree it was built on (the block builder checks that this is
/// still the root its block follows).
pub struct BuiltTree {
    pub parent_root: Hash,
    pub tree: SparseMerkleTree,
    /// Nodes the update hashed (`state_nodes_hashed_per_block`).
    pub nodes_hashed: u64,
}

struct Update {
    parent: TreeParent,
    changes: Vec<Change>,
    slot: Arc<TreeSlot>,
    done: oneshot::Sender<BuiltTree>,
}

enum Job {
    Update(Update),
    Release(Box<dyn Send>),
}

/// The tree thread's loop until every handle is gone. Updates go first: each is on a block's
/// critical path, while a release (dropping an old version, ~2 ms at 1 M keys) is not, and
/// waiting behind one doubled the time a block waited for its tree.
fn serve(updates: &flume::Receiver<Update>, releases: &flume::Receiver<Box<dyn Send>>) {
    loop {
        let job = match updates.try_recv() {
            Ok(update) => Job::Update(update),
            Err(_) => match releases.try_recv() {
                Ok(value) => Job::Release(value),
                Err(_) => {
                    let next = flume::Selector::new()
                        .recv(updates, |r| r.map(Job::Update))
                        .recv(releases, |r| r.map(Job::Release))
                        .wait();
                    // Disconnected: every handle is gone (both senders go together).
                    let Ok(job) = next else { return };
                    job
                }
            },
        };
        match job {
            Job::Update(Update { parent, changes, slot, done }) => {
                // No answer (the sender dropped) tells the builder the parent was never built;
                // a send fails only if the builder is gone.
                if let Some(built) = build(parent, changes, &slot) {
                    let _ = done.send(built);
                }
            }
            Job::Release(value) => drop(value),
        }
    }
}

/// A submitted tree update.
pub struct TreeJob {
    slot: Arc<TreeSlot>,
    answer: Answer,
}

enum Answer {
    Ready(Option<BuiltTree>),
    Pending(oneshot::Receiver<BuiltTree>),
}

impl TreeJob {
    /// Where the built tree will be, for a job that follows this one.
    pub fn slot(&self) -> Arc<TreeSlot> {
        self.slot.clone()
    }

    /// The built tree; `None` if it could not be built because the tree it follows never was
    /// (that job's block was abandoned).
    pub async fn wait(self) -> Option<BuiltTree> {
        match self.answer {
            Answer::Ready(built) => built,
            Answer::Pending(answer) => answer.await.ok(),
        }
    }
}

/// Runs one update where it is called; `None` if its parent slot is empty.
fn build(parent: TreeParent, changes: Vec<Change>, slot: &TreeSlot) -> Option<BuiltTree> {
    let parent = match parent {
        TreeParent::Built(tree) => tree,
        TreeParent::After(earlier) => earlier.get()?.clone(),
    };
    let (tree, nodes_hashed) = parent.with_updates_counted(changes);
    // Each slot belongs to one job, so this is its only write.
    let _ = slot.set(tree.clone());
    Some(BuiltTree { parent_root: parent.root(), tree, nodes_hashed })
}

/// Handle to a group's tree thread; clones share the thread, which ends when the last handle is
/// dropped. `inline()` has no thread and does the work on the caller (tests, tools).
#[derive(Clone, Default)]
pub struct TreeWorker {
    jobs: Option<flume::Sender<Update>>,
    released: Option<flume::Sender<Box<dyn Send>>>,
    /// Trees with fewer leaves are updated on the caller.
    min_leaves: u64,
    min_changes: usize,
}

impl std::fmt::Debug for TreeWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeWorker")
            .field("threaded", &self.jobs.is_some())
            .field("min_leaves", &self.min_leaves)
            .field("min_changes", &self.min_changes)
            .finish()
    }
}

impl TreeWorker {
    /// No thread: updates and releases run on the calling thread.
    pub fn inline() -> Self {
        TreeWorker { jobs: None, released: None, min_leaves: 0, min_changes: 0 }
    }

    /// Starts the thread `name` (on all of the process's CPUs, like every helper), which updates
    /// trees of at least `min_leaves` leaves by at least `min_changes` leaf changes (normally
    /// [`TREE_THREAD_MIN_LEAVES`] and [`TREE_THREAD_MIN_CHANGES`]): a smaller tree fits in the
    /// core's caches, and a smaller update costs less than the round trip. If the thread cannot
    /// be spawned the worker runs inline, which is slower but equivalent.
    pub fn start(name: &str, hooks: HelperHooks, min_leaves: u64, min_changes: usize) -> Self {
        // Unbounded, but bounded by the block builder: only `Group::dry_run` submits updates, one
        // per scope its round changed (at most one per transaction, so `batch_max_size`), and a
        // round counts in `Group::in_flight` from that dry run until its task has awaited every
        // one of its jobs. At most `blocks_in_flight_max` rounds are in flight, so at most
        // `blocks_in_flight_max × batch_max_size` updates are queued. A bounded channel could only
        // turn a full queue into a stalled or abandoned block.
        let (jobs, updates) = flume::unbounded::<Update>();
        let (released, releases) = flume::bounded::<Box<dyn Send>>(TREE_RELEASES_QUEUED_MAX);
        let spawned = crate::helper_threads::spawn_helper(name, move || {
            if let Some(on_start) = hooks.on_start {
                on_start();
            }
            serve(&updates, &releases);
            if let Some(on_exit) = hooks.on_exit {
                on_exit();
            }
        });
        match spawned {
            Ok(_) => TreeWorker { jobs: Some(jobs), released: Some(released), min_leaves, min_changes },
            Err(e) => {
                crate::event!(error, "tree_thread_spawn_failed", name = %name, error = %e);
                TreeWorker::inline()
            }
        }
    }

    /// Queue the update of `parent` by `changes` ([`SparseMerkleTree::with_updates`]) behind
    /// every job submitted before it. A job the thread is not for ([`Self::is_threaded`]) runs
    /// here and now, unless it follows a tree still being built on the thread.
    pub fn submit(&self, parent: TreeParent, changes: Vec<Change>, leaves: u64) -> TreeJob {
        let slot = Arc::new(TreeSlot::new());
        let parent_ready = match &parent {
            TreeParent::Built(_) => true,
            TreeParent::After(earlier) => earlier.get().is_some(),
        };
        let jobs = match &self.jobs {
            Some(jobs) if self.is_threaded(leaves, changes.len()) || !parent_ready => jobs,
            _ => {
                let built = build(parent, changes, &slot);
                return TreeJob { slot, answer: Answer::Ready(built) };
            }
        };
        let (done, answer) = oneshot::channel();
        match jobs.send(Update { parent, changes, slot: slot.clone(), done }) {
            Ok(()) => TreeJob { slot, answer: Answer::Pending(answer) },
            // The thread is gone (only a panic ends it while handles exist): build here. A
            // parent still unbuilt then never will be, which `build` reports as `None`.
            Err(flume::SendError(Update { parent, changes, .. })) => {
                let built = build(parent, changes, &slot);
                TreeJob { slot, answer: Answer::Ready(built) }
            }
        }
    }

    /// Whether an update of a tree of `leaves` leaves by `changes` leaf changes is the thread's
    /// (when there is one): a large tree by enough changes. A few changes to a large tree cost
    /// a few µs each, less than the two thread wake-ups of the round trip (D49).
    pub fn is_threaded(&self, leaves: u64, changes: usize) -> bool {
        self.jobs.is_some() && leaves >= self.min_leaves && changes >= self.min_changes
    }

    /// Drops an old tree version that `changes` leaf changes made: here when the update of that
    /// many changes would have run here (the nodes only it reaches are about `changes` paths, a
    /// few µs to free, less than waking the thread), else on the tree thread.
    pub fn release_version(&self, tree: SparseMerkleTree, changes: usize) {
        if changes < self.min_changes {
            drop(tree);
        } else {
            self.release(tree);
        }
    }

    /// Drop `value` (an old tree version, or anything holding one) on the tree thread, or here
    /// if [`TREE_RELEASES_QUEUED_MAX`] releases are already waiting there.
    pub fn release<T: Send + 'static>(&self, value: T) {
        if let Some(released) = &self.released {
            // A full queue or a thread that is gone: the value drops here, on the return.
            let _ = released.try_send(Box::new(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_core::smt::key_hash;

    fn changes(from: u32, to: u32, salt: u8) -> Vec<Change> {
        (from..to).map(|i| (key_hash(&i.to_le_bytes()), Some(key_hash(&[salt, i as u8])))).collect()
    }

    fn run(job: TreeJob) -> Option<BuiltTree> {
        futures::executor::block_on(job.wait())
    }

    /// Trees chained on the thread through slots (each job follows the one before, submitted
    /// before that one is built) equal trees built one after another, whichever way each job
    /// runs; evicted versions released (here or there, by their size) leave newer ones intact.
    #[test]
    fn t01_chained_jobs_equal_sequential_updates() {
        let cases = [
            (0, 0, "t01-thread"),
            (100, 0, "t01-mixed"),
            (0, 20, "t01-small-inline"),
            (u64::MAX, 0, "t01-inline"),
        ];
        for (min_leaves, min_changes, name) in cases {
            let worker = TreeWorker::start(name, HelperHooks::default(), min_leaves, min_changes);
            let mut expected = SparseMerkleTree::new();
            let mut jobs = Vec::new();
            let mut parent = TreeParent::Built(SparseMerkleTree::new());
            for round in 0..20u32 {
                // Every third job is small (5 changes), so with `min_changes` 20 the jobs
                // alternate between the thread and the caller, each chained on the one before.
                let size = if round % 3 == 0 { 5 } else { 50 };
                let batch = changes(round * 7, round * 7 + size, round as u8);
                let before = expected.root();
                expected = expected.with_updates(batch.clone());
                let job = worker.submit(parent, batch, u64::from(round) * 7 + 50);
                parent = TreeParent::After(job.slot());
                jobs.push((before, expected.clone(), job, size as usize));
            }
            for (before, want, job, size) in jobs {
                let built = run(job).expect("built");
                assert_eq!(built.parent_root, before);
                assert_eq!(built.tree.root(), want.root());
                // Small versions drop here, large ones on the thread; the later versions
                // checked after them must be intact either way.
                worker.release_version(built.tree, size);
            }
            assert_eq!(expected.root(), ledger_core::smt::from_scratch_root(expected.leaves()));
        }
    }

    /// The thread takes a job only for a large enough tree AND enough changes; an inline worker
    /// takes none.
    #[test]
    fn t04_thread_takes_large_trees_by_enough_changes() {
        let worker = TreeWorker::start("t04-tree", HelperHooks::default(), 1000, 16);
        assert!(worker.is_threaded(1000, 16));
        assert!(worker.is_threaded(1_000_000, 100));
        assert!(!worker.is_threaded(999, 100));
        assert!(!worker.is_threaded(1_000_000, 15));
        assert!(!TreeWorker::inline().is_threaded(u64::MAX, usize::MAX));
    }

    /// Releasing far more values than the queue holds, faster than the thread drops them, never
    /// blocks the caller and drops every value exactly once (on the thread, or on the caller
    /// when the queue is full).
    #[test]
    fn t03_releases_beyond_the_bound_are_dropped_not_lost() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let total = 10 * TREE_RELEASES_QUEUED_MAX;
        let worker = TreeWorker::start("t03-tree", HelperHooks::default(), 0, 0);
        for _ in 0..total {
            worker.release(Counted(dropped.clone()));
        }
        drop(worker);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while dropped.load(Ordering::SeqCst) < total && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(dropped.load(Ordering::SeqCst), total);
    }

    /// A job after a slot that is never filled answers `None`, and so does every job after it.
    #[test]
    fn t02_a_job_after_an_unbuilt_tree_answers_none() {
        for min_leaves in [0, u64::MAX] {
            let worker = TreeWorker::start("t02-tree", HelperHooks::default(), min_leaves, 0);
            let never = Arc::new(TreeSlot::new());
            let first = worker.submit(TreeParent::After(never), changes(0, 5, 1), 0);
            let second = worker.submit(TreeParent::After(first.slot()), changes(5, 9, 2), 0);
            assert!(run(first).is_none());
            assert!(run(second).is_none());
        }
    }
}
