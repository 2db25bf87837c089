//! The state tree's lineage property (`ledger_core::smt_check`) with the server's allocator
//! installed and node caching on, as on a tree thread: freed node blocks are handed straight back
//! to the next update, so a node freed while a live version still reached it would be overwritten
//! by a new node and show up as a wrong root, count or proof.

use ledger_core::smt_check::{steps, versions_under_any_drop_order};
use ledger_server::node_alloc::{
    cache_this_thread, hits_on_this_thread, release_this_thread, NodeCacheAlloc,
};
use proptest::test_runner::{Config, TestRunner};

#[global_allocator]
static GLOBAL: NodeCacheAlloc<mimalloc::MiMalloc> = NodeCacheAlloc { inner: mimalloc::MiMalloc };

#[test]
fn t01_versions_under_any_drop_order_with_node_cache() {
    // Runs the property on this thread with caching on, then checks that the cache really served
    // tree nodes (so the property ran over recycled blocks), and hands the blocks back.
    cache_this_thread();
    let mut runner = TestRunner::new(Config::with_cases(128));
    let result = runner.run(&steps(), versions_under_any_drop_order);
    let hits = hits_on_this_thread();
    release_this_thread(&GLOBAL);
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(hits > 1_000, "only {hits} node blocks came from the cache");
}
