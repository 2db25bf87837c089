//! The server's global allocator: mimalloc, plus a per-thread stack of freed blocks of the state
//! tree's two node sizes (`ledger_core::smt::NODE_BLOCK_SIZES`), on the threads that ask for it
//! (the cores' executors, [`cache_this_thread`]).
//!
//! Why: at 1 M keys every block allocates ~11 tree nodes per changed key and frees as many from an
//! old version. mimalloc pops a block by reading the free block's link, and the freed nodes sit
//! scattered over the whole 190 MB tree, so nearly every allocation waited on a cache miss (13% of
//! the owning core's profile was `Arc::new` in the tree's `combine`). Here a free pushes the pointer
//! onto a dense per-thread stack and an allocation pops the newest one: no read of the freed block,
//! and the block handed out is the one freed last, the likeliest to be cached. A full stack passes
//! frees through; an empty one passes allocations through. Only blocks whose layout is exactly a
//! node's (size and alignment) are cached, so a cached block is always valid for the layout it is
//! handed out for.

use ledger_core::smt::{NODE_BLOCK_ALIGN, NODE_BLOCK_SIZES};
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ptr::null_mut;

/// Freed blocks kept per size on a thread. The tree thread frees an old version's nodes in bursts
/// (one version per evicted block, several back to back when updates had the thread first) and
/// allocates them back one update at a time: at 1 M keys a bound of 65,536 internal nodes let
/// about a third of the frees pass through and as many allocations miss, each a cache miss in
/// mimalloc. The slots are a heap array made when a thread turns caching on (8 MiB and 2 MiB of
/// address space, touched only as far as the stack grows), not thread-local storage, which lives
/// on every thread's stack.
const STACK_CAPACITY: [usize; 2] = [1 << 20, 1 << 18];

/// How many pops ahead the block to hand out is prefetched: a tree update allocates a node every
/// ~100–200 ns, about one memory latency, so the next block alone arrives too late.
const PREFETCH_AHEAD: usize = 4;

/// One size's stack of freed blocks; no slots (capacity 0) until [`Stack::reserve`].
struct Stack {
    len: Cell<usize>,
    capacity: Cell<usize>,
    slots: Cell<*mut *mut u8>,
}

impl Stack {
    const fn new() -> Self {
        Stack { len: Cell::new(0), capacity: Cell::new(0), slots: Cell::new(null_mut()) }
    }

    /// Give the stack `capacity` slots (once; the array comes from the global allocator, whose
    /// stacks never hold blocks of its size).
    fn reserve(&self, capacity: usize) {
        if self.slots.get().is_null() {
            let mut slots = std::mem::ManuallyDrop::new(Vec::<*mut u8>::with_capacity(capacity));
            self.slots.set(slots.as_mut_ptr());
            self.capacity.set(slots.capacity());
        }
    }

    /// Hand the slot array back (the stack must be empty).
    fn unreserve(&self) {
        debug_assert_eq!(self.len.get(), 0);
        let slots = self.slots.replace(null_mut());
        if !slots.is_null() {
            // SAFETY: made by `reserve` from a `Vec` of this capacity, and no longer referenced.
            drop(unsafe { Vec::from_raw_parts(slots, 0, self.capacity.replace(0)) });
        }
    }

    fn pop(&self) -> Option<*mut u8> {
        let len = self.len.get();
        if len == 0 {
            return None;
        }
        self.len.set(len - 1);
        let slots = self.slots.get();
        // SAFETY: thread-local; `0 < len <= capacity`, so slots `len - 2` and `len - 1` are
        // inside the array and were written by `push`.
        unsafe {
            if len > PREFETCH_AHEAD {
                prefetch(*slots.add(len - 1 - PREFETCH_AHEAD));
            }
            Some(*slots.add(len - 1))
        }
    }

    /// False if full (the caller frees the block itself).
    fn push(&self, block: *mut u8) -> bool {
        let len = self.len.get();
        if len == self.capacity.get() {
            return false;
        }
        // SAFETY: as in `pop`; `len < capacity`.
        unsafe { *self.slots.get().add(len) = block };
        self.len.set(len + 1);
        true
    }
}

/// Ask for the block the next allocation will hand out, so that writing the new node into it
/// does not wait for memory (the tree allocates its nodes one after another).
#[inline(always)]
fn prefetch(block: *mut u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(block as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = block;
}

struct ThreadCache {
    enabled: Cell<bool>,
    internal: Stack,
    leaf: Stack,
    /// Allocations served from the stacks (tests and diagnostics).
    hits: Cell<u64>,
}

thread_local! {
    // Const-initialised and without `Drop`: no lazy initialisation and no destructor, so the
    // allocator can reach it at any point of a thread's life, including its teardown.
    static CACHE: ThreadCache = const {
        ThreadCache {
            enabled: Cell::new(false),
            internal: Stack::new(),
            leaf: Stack::new(),
            hits: Cell::new(0),
        }
    };
}

/// Which stack, if any, holds blocks of this layout.
#[inline]
fn class_of(layout: Layout) -> Option<usize> {
    if layout.align() != NODE_BLOCK_ALIGN {
        return None;
    }
    NODE_BLOCK_SIZES.iter().position(|&size| size == layout.size())
}

/// Cache freed node blocks on the calling thread from now on. Call it on long-lived threads only
/// (the cores' executors): blocks still stacked when a thread ends are not returned unless it
/// calls [`release_this_thread`] first.
pub fn cache_this_thread() {
    let _ = CACHE.try_with(|cache| {
        cache.internal.reserve(STACK_CAPACITY[0]);
        cache.leaf.reserve(STACK_CAPACITY[1]);
        cache.enabled.set(true);
    });
}

/// Stop caching on the calling thread and hand every stacked block back to `GLOBAL`'s inner
/// allocator (through `dealloc`, which now passes straight through).
pub fn release_this_thread<A: GlobalAlloc>(global: &NodeCacheAlloc<A>) {
    let _ = CACHE.try_with(|cache| {
        cache.enabled.set(false);
        for (class, size) in NODE_BLOCK_SIZES.iter().enumerate() {
            let layout = Layout::from_size_align(*size, NODE_BLOCK_ALIGN).expect("node block layout");
            while let Some(block) = if class == 0 { cache.internal.pop() } else { cache.leaf.pop() } {
                // SAFETY: every stacked block came from `global.inner` with this layout.
                unsafe { global.inner.dealloc(block, layout) };
            }
        }
        cache.internal.unreserve();
        cache.leaf.unreserve();
    });
}

/// Allocations on the calling thread served from its stacks so far.
pub fn hits_on_this_thread() -> u64 {
    CACHE.try_with(|cache| cache.hits.get()).unwrap_or(0)
}

/// `inner` (mimalloc in the server) with the per-thread node-block stacks in front.
pub struct NodeCacheAlloc<A> {
    pub inner: A,
}

// SAFETY: every block handed out is either fresh from `inner` or a block of exactly the same
// layout that was allocated from `inner` and freed by its owner; blocks leave a stack once.
unsafe impl<A: GlobalAlloc> GlobalAlloc for NodeCacheAlloc<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(class) = class_of(layout) {
            let cached = CACHE
                .try_with(|cache| {
                    if !cache.enabled.get() {
                        return None;
                    }
                    let block = if class == 0 { cache.internal.pop() } else { cache.leaf.pop() };
                    if block.is_some() {
                        cache.hits.set(cache.hits.get() + 1);
                    }
                    block
                })
                .ok()
                .flatten();
            if let Some(block) = cached {
                return block;
            }
        }
        // SAFETY: forwarded unchanged.
        unsafe { self.inner.alloc(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(class) = class_of(layout) {
            let kept = CACHE
                .try_with(|cache| {
                    cache.enabled.get()
                        && if class == 0 { cache.internal.push(ptr) } else { cache.leaf.push(ptr) }
                })
                .unwrap_or(false);
            if kept {
                return;
            }
        }
        // SAFETY: forwarded unchanged.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // A stacked block holds old bytes; zeroed requests go to `inner`.
        // SAFETY: forwarded unchanged.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if class_of(layout).is_none() {
            // SAFETY: forwarded unchanged; the block came from `inner` (only node layouts are
            // ever served from a stack).
            return unsafe { self.inner.realloc(ptr, layout, new_size) };
        }
        // A node-sized block may have come from a stack; move it by hand.
        // SAFETY: `new_size` is non-zero and the layout valid (the caller's contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as above.
        let fresh = unsafe { self.alloc(new_layout) };
        if !fresh.is_null() {
            // SAFETY: both blocks are valid for the smaller of the two sizes and do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        fresh
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::alloc::System;

    static TEST_ALLOC: NodeCacheAlloc<System> = NodeCacheAlloc { inner: System };

    /// Each test gets its own thread: the stacks are per thread and start empty and off.
    fn on_a_fresh_thread(test: impl FnOnce() + Send + 'static) {
        std::thread::spawn(test).join().unwrap();
    }

    fn node_layout(class: usize) -> Layout {
        Layout::from_size_align(NODE_BLOCK_SIZES[class], NODE_BLOCK_ALIGN).unwrap()
    }

    #[test]
    fn t01_freed_node_blocks_come_back_newest_first_only_where_enabled() {
        on_a_fresh_thread(|| {
            let layout = node_layout(0);
            // SAFETY: matched alloc/dealloc pairs of one layout.
            unsafe {
                let a = TEST_ALLOC.alloc(layout);
                TEST_ALLOC.dealloc(a, layout);
                assert_eq!(hits_on_this_thread(), 0, "not enabled: nothing is cached");
                cache_this_thread();
                let (b, c) = (TEST_ALLOC.alloc(layout), TEST_ALLOC.alloc(layout));
                TEST_ALLOC.dealloc(b, layout);
                TEST_ALLOC.dealloc(c, layout);
                assert_eq!(TEST_ALLOC.alloc(layout), c, "the newest freed block first");
                assert_eq!(TEST_ALLOC.alloc(layout), b);
                assert_eq!(hits_on_this_thread(), 2);
                // Another size or alignment never gets a node block.
                let other = Layout::from_size_align(NODE_BLOCK_SIZES[0], 16).unwrap();
                TEST_ALLOC.dealloc(b, layout);
                let d = TEST_ALLOC.alloc(other);
                assert_ne!(d, b);
                TEST_ALLOC.dealloc(d, other);
                TEST_ALLOC.dealloc(c, layout);
                release_this_thread(&TEST_ALLOC);
                assert_eq!(hits_on_this_thread(), 2);
            }
        });
    }

    #[test]
    fn t02_a_full_stack_passes_frees_through() {
        on_a_fresh_thread(|| {
            let layout = node_layout(1);
            cache_this_thread();
            let blocks: Vec<*mut u8> =
                // SAFETY: freed below with the same layout.
                (0..STACK_CAPACITY[1] + 10).map(|_| unsafe { TEST_ALLOC.alloc(layout) }).collect();
            for &block in &blocks {
                // SAFETY: allocated above with this layout.
                unsafe { TEST_ALLOC.dealloc(block, layout) };
            }
            let stacked = CACHE.with(|cache| cache.leaf.len.get());
            assert_eq!(stacked, STACK_CAPACITY[1]);
            release_this_thread(&TEST_ALLOC);
            assert_eq!(CACHE.with(|cache| cache.leaf.len.get()), 0);
        });
    }

    #[test]
    fn t03_realloc_of_a_stacked_block_keeps_its_bytes() {
        on_a_fresh_thread(|| {
            let layout = node_layout(0);
            cache_this_thread();
            // SAFETY: matched pairs; the block is written within its size before the realloc.
            unsafe {
                let a = TEST_ALLOC.alloc(layout);
                TEST_ALLOC.dealloc(a, layout);
                let b = TEST_ALLOC.alloc(layout);
                assert_eq!(a, b);
                std::ptr::write_bytes(b, 0xA5, layout.size());
                let grown = TEST_ALLOC.realloc(b, layout, 4096);
                assert!((0..layout.size()).all(|i| *grown.add(i) == 0xA5));
                TEST_ALLOC.dealloc(grown, Layout::from_size_align(4096, NODE_BLOCK_ALIGN).unwrap());
            }
            release_this_thread(&TEST_ALLOC);
        });
    }
}
