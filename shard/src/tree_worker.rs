//! A group's state-tree thread (decision D21). At 1 M keys half of the owning executor's time
//! went to the sparse Merkle tree: copying and hashing the ~20-node paths of every changed key,
//! and freeing the paths of versions that leave the history ring. Trees are persistent and
//! immutable (`Send + Sync`), so that work needs nothing from the executor but the parent tree and
//! the leaf changes: the block builder hands them here and awaits the new tree, while the executor
//! goes on applying, answering and reading. Old versions are dropped here too, so one thread both
//! frees and allocates the nodes and its allocator cache (`server/src/node_alloc.rs`) recycles
//! them. Jobs run in order on one thread, so a group's trees are built in block order.

use crate::config::HelperHooks;
#[cfg(doc)]
use crate::constants::TREE_THREAD_MIN_LEAVES;
use futures::channel::oneshot;
use ledger_core::smt::{Change, SparseMerkleTree};

enum Job {
    Update { parent: SparseMerkleTree, changes: Vec<Change>, done: oneshot::Sender<SparseMerkleTree> },
    Release(Box<dyn Send>),
}

/// Handle to a group's tree thread; clones share the thread, which ends when the last handle is
/// dropped. `inline()` has no thread and does the work on the caller (tests, tools).
#[derive(Clone, Default)]
pub struct TreeWorker {
    jobs: Option<flume::Sender<Job>>,
    /// Trees with fewer leaves are updated on the caller.
    min_leaves: u64,
}

impl std::fmt::Debug for TreeWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeWorker")
            .field("threaded", &self.jobs.is_some())
            .field("min_leaves", &self.min_leaves)
            .finish()
    }
}

impl TreeWorker {
    /// No thread: updates and releases run on the calling thread.
    pub fn inline() -> Self {
        TreeWorker { jobs: None, min_leaves: 0 }
    }

    /// Starts the thread `name` (on all of the process's CPUs, like every helper), which updates
    /// trees of at least `min_leaves` leaves (normally [`TREE_THREAD_MIN_LEAVES`]; smaller trees
    /// fit in the core's caches and cost less than the round trip). If the thread cannot be
    /// spawned the worker runs inline, which is slower but equivalent.
    pub fn start(name: &str, hooks: HelperHooks, min_leaves: u64) -> Self {
        let (jobs, queue) = flume::unbounded::<Job>();
        let spawned = crate::helper_threads::spawn_helper(name, move || {
            if let Some(on_start) = hooks.on_start {
                on_start();
            }
            while let Ok(job) = queue.recv() {
                match job {
                    Job::Update { parent, changes, done } => {
                        // The builder is gone only if its round was abandoned; the tree is dropped.
                        let _ = done.send(parent.with_updates(changes));
                    }
                    Job::Release(value) => drop(value),
                }
            }
            if let Some(on_exit) = hooks.on_exit {
                on_exit();
            }
        });
        match spawned {
            Ok(_) => TreeWorker { jobs: Some(jobs), min_leaves },
            Err(e) => {
                eprintln!("event=tree_thread_spawn_failed name={name} error={e}");
                TreeWorker::inline()
            }
        }
    }

    /// `parent` with `changes` applied ([`SparseMerkleTree::with_updates`]), computed on the
    /// tree thread after every job queued before it.
    /// Trees smaller than `min_leaves` are updated on the caller.
    pub async fn update(&self, parent: SparseMerkleTree, changes: Vec<Change>) -> SparseMerkleTree {
        let Some(jobs) = self.jobs.as_ref().filter(|_| parent.len() >= self.min_leaves) else {
            return parent.with_updates(changes);
        };
        let (done, tree) = oneshot::channel();
        let job = Job::Update { parent, changes, done };
        let job = match jobs.send(job) {
            Ok(()) => return tree_or_inline(tree.await),
            Err(flume::SendError(job)) => job,
        };
        // The thread is gone (it can only end when every handle is dropped, or by a panic):
        // compute here rather than fail the block.
        match job {
            Job::Update { parent, changes, .. } => parent.with_updates(changes),
            Job::Release(_) => unreachable!("an update job was sent"),
        }
    }

    /// Drop `value` (an old tree version, or anything holding one) on the tree thread.
    pub fn release<T: Send + 'static>(&self, value: T) {
        if let Some(jobs) = &self.jobs {
            // A send fails only when the thread is gone; the value then drops here.
            let _ = jobs.send(Job::Release(Box::new(value)));
        }
    }
}

fn tree_or_inline(result: Result<SparseMerkleTree, oneshot::Canceled>) -> SparseMerkleTree {
    // The thread drops a job's sender unanswered only if `with_updates` panicked, which is a
    // broken invariant of the tree (it asserts its own), not a request error.
    result.unwrap_or_else(|_| panic!("state tree thread failed while building a tree"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_core::smt::key_hash;

    fn changes(from: u32, to: u32, salt: u8) -> Vec<Change> {
        (from..to).map(|i| (key_hash(&i.to_le_bytes()), Some(key_hash(&[salt, i as u8])))).collect()
    }

    /// Trees built on the thread, each on the previous one, equal the trees built inline, and
    /// releasing old versions there leaves the newer ones intact.
    #[test]
    fn t01_threaded_updates_equal_inline_ones() {
        let threaded = TreeWorker::start("t01-tree", HelperHooks::default(), 0);
        let inline = TreeWorker::inline();
        let (mut a, mut b) = (SparseMerkleTree::new(), SparseMerkleTree::new());
        for round in 0..20u32 {
            let batch = changes(round * 7, round * 7 + 50, round as u8);
            let next_a = futures::executor::block_on(threaded.update(a.clone(), batch.clone()));
            let next_b = futures::executor::block_on(inline.update(b.clone(), batch));
            assert_eq!(next_a.root(), next_b.root());
            assert_eq!(next_a.len(), next_b.len());
            threaded.release(std::mem::replace(&mut a, next_a));
            inline.release(std::mem::replace(&mut b, next_b));
        }
        assert_eq!(a.leaves(), b.leaves());
        assert_eq!(a.root(), ledger_core::smt::from_scratch_root(b.leaves()));
    }
}
