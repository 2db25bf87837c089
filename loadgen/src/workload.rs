//! The deterministic workload: each worker owns a generator seeded from `(--seed, worker index)`
//! that yields the same sequence of abstract operations (`OpSpec`) on every run, independent of
//! timing, server answers and the other workers. Keys are `k` + a zero-padded index so that
//! `ListEntities` prefixes cover a known number of keys and preload and reads agree on names.

use crate::constants::{KEY_INDEX_DIGITS, LIST_PREFIX_DROP_DIGITS};
use crate::mix::{Mix, OpKind};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// What a workload draws from: the scope count, the key space per scope, the batch size and the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Number of scopes (`namespaces × vaults_per_ns`); ops pick one uniformly.
    pub scopes: u64,
    /// Keys per scope.
    pub key_space: u64,
    /// Distinct keys written by one write transaction (`≤ key_space`).
    pub batch_items: u64,
    pub mix: Mix,
}

/// One abstract operation; `scope` indexes the run's scope table, keys index the key space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpSpec {
    Read {
        scope: u64,
        key: u64,
    },
    /// Sets `keys` (distinct) to values derived from `value_seed`, in one transaction.
    Write {
        scope: u64,
        keys: Vec<u64>,
        value_seed: u64,
    },
    Verified {
        scope: u64,
        key: u64,
    },
    /// Lists the page of keys sharing `key`'s prefix (see `list_prefix`).
    List {
        scope: u64,
        key: u64,
    },
}

impl OpSpec {
    pub fn kind(&self) -> OpKind {
        match self {
            OpSpec::Read { .. } => OpKind::Read,
            OpSpec::Write { .. } => OpKind::Write,
            OpSpec::Verified { .. } => OpKind::Verified,
            OpSpec::List { .. } => OpKind::List,
        }
    }

    pub fn scope(&self) -> u64 {
        match self {
            OpSpec::Read { scope, .. }
            | OpSpec::Write { scope, .. }
            | OpSpec::Verified { scope, .. }
            | OpSpec::List { scope, .. } => *scope,
        }
    }
}

/// The operation stream of one worker.
#[derive(Debug, Clone)]
pub struct Workload {
    shape: Shape,
    rng: StdRng,
    /// Every operation goes to this scope (`--scope-per-connection`).
    pinned: Option<u64>,
}

/// SplitMix64 finaliser: spreads `(seed, worker)` so neighbouring workers get unrelated streams.
pub fn mix_seed(seed: u64, worker: u64) -> u64 {
    let mut z = seed ^ worker.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Workload {
    /// The stream of worker `worker` under `seed`.
    pub fn new(seed: u64, worker: u64, shape: Shape) -> Workload {
        assert!(shape.scopes > 0, "workload needs at least one scope");
        assert!(shape.key_space > 0, "workload needs a key space");
        assert!(shape.batch_items >= 1, "a write carries at least one operation");
        assert!(shape.batch_items <= shape.key_space, "a write's keys must be distinct");
        Workload { shape, rng: StdRng::seed_from_u64(mix_seed(seed, worker)), pinned: None }
    }

    /// The same stream with every operation on `scope` (`< shape.scopes`).
    pub fn pinned(self, scope: u64) -> Workload {
        Workload { pinned: Some(scope % self.shape.scopes), ..self }
    }

    /// The next operation of this worker.
    pub fn next_op(&mut self) -> OpSpec {
        let kind = self.shape.mix.pick(self.rng.gen_range(0..self.shape.mix.total()));
        let drawn = self.rng.gen_range(0..self.shape.scopes);
        let scope = self.pinned.unwrap_or(drawn);
        match kind {
            OpKind::Read => OpSpec::Read { scope, key: self.key() },
            OpKind::Verified => OpSpec::Verified { scope, key: self.key() },
            OpKind::List => OpSpec::List { scope, key: self.key() },
            OpKind::Write => {
                let keys = self.distinct_keys();
                OpSpec::Write { scope, keys, value_seed: self.rng.next_u64() }
            }
        }
    }

    fn key(&mut self) -> u64 {
        self.rng.gen_range(0..self.shape.key_space)
    }

    /// `batch_items` distinct keys: a random start and a random stride coprime with the key
    /// space walk a permutation of it, so no two steps of one batch collide.
    fn distinct_keys(&mut self) -> Vec<u64> {
        let space = self.shape.key_space;
        let start = self.rng.gen_range(0..space);
        let stride = loop {
            let candidate = self.rng.gen_range(1..space.max(2));
            if gcd(candidate, space) == 1 {
                break candidate;
            }
        };
        (0..self.shape.batch_items)
            .map(|i| ((start as u128 + i as u128 * stride as u128) % space as u128) as u64)
            .collect()
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The entity key of index `index`: `k` followed by `KEY_INDEX_DIGITS` digits.
pub fn key_name(index: u64) -> String {
    format!("k{index:0width$}", width = KEY_INDEX_DIGITS)
}

/// The `ListEntities` prefix for `index`: its key name without the last `LIST_PREFIX_DROP_DIGITS`
/// digits, covering up to 10^LIST_PREFIX_DROP_DIGITS consecutive keys.
pub fn list_prefix(index: u64) -> String {
    let mut name = key_name(index);
    name.truncate(name.len() - LIST_PREFIX_DROP_DIGITS);
    name
}

/// `size` bytes derived from `value_seed` (cheap, deterministic, not compressible to nothing).
pub fn value_bytes(value_seed: u64, size: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(value_seed);
    let mut out = vec![0u8; size];
    rng.fill_bytes(&mut out);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeSet;

    fn shape(mix: &str, batch_items: u64) -> Shape {
        Shape { scopes: 6, key_space: 1000, batch_items, mix: Mix::parse(mix).unwrap() }
    }

    fn ops(seed: u64, worker: u64, shape: Shape, n: usize) -> Vec<OpSpec> {
        let mut w = Workload::new(seed, worker, shape);
        (0..n).map(|_| w.next_op()).collect()
    }

    #[test]
    fn t30_same_seed_same_sequence() {
        // Proves determinism: two generators with equal (seed, worker) agree op for op, while a
        // different seed or a different worker gives a different stream.
        let s = shape("read=50,write=30,verified=10,list=10", 8);
        let a = ops(7, 3, s, 2000);
        assert_eq!(a, ops(7, 3, s, 2000));
        assert_ne!(a, ops(8, 3, s, 2000));
        assert_ne!(a, ops(7, 4, s, 2000));
    }

    #[test]
    fn t31_ops_stay_in_bounds_and_follow_the_mix() {
        // Proves scopes and keys stay inside their ranges, writes have batch_items distinct keys,
        // and the observed mix is close to the weights.
        let s = shape("read=70,write=20,list=10", 25);
        let all = ops(1, 0, s, 20_000);
        let mut counts = [0usize; 4];
        for op in &all {
            assert!(op.scope() < s.scopes);
            match op {
                OpSpec::Read { key, .. } | OpSpec::Verified { key, .. } | OpSpec::List { key, .. } => {
                    assert!(*key < s.key_space)
                }
                OpSpec::Write { keys, .. } => {
                    assert_eq!(keys.len(), 25);
                    assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), 25);
                    assert!(keys.iter().all(|k| *k < s.key_space));
                }
            }
            counts[OpKind::ALL.iter().position(|k| *k == op.kind()).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0);
        let share = |n: usize| n as f64 / all.len() as f64;
        assert!((share(counts[0]) - 0.7).abs() < 0.03);
        assert!((share(counts[1]) - 0.2).abs() < 0.03);
        assert!((share(counts[3]) - 0.1).abs() < 0.03);
    }

    #[test]
    fn t32_full_key_space_batches_are_permutations() {
        // Proves a batch as large as the key space writes every key exactly once.
        let s = Shape { scopes: 1, key_space: 12, batch_items: 12, mix: Mix::parse("write=1").unwrap() };
        for op in ops(5, 0, s, 50) {
            let OpSpec::Write { keys, .. } = op else { panic!("write-only mix") };
            assert_eq!(keys.iter().copied().collect::<BTreeSet<_>>(), (0..12).collect());
        }
        let one = Shape { scopes: 1, key_space: 1, batch_items: 1, mix: Mix::parse("write=1").unwrap() };
        assert_eq!(ops(5, 0, one, 3).len(), 3);
    }

    #[test]
    fn t34_a_pinned_worker_uses_its_scope_only() {
        // Proves --scope-per-connection: a pinned stream keeps the unpinned stream's operations
        // and keys, every one of them on the pinned scope.
        let s = shape("read=1,write=1", 3);
        let free: Vec<OpSpec> = ops(7, 2, s, 200);
        let mut pinned = Workload::new(7, 2, s).pinned(4);
        for op in &free {
            let p = pinned.next_op();
            assert_eq!(p.scope(), 4);
            assert_eq!(p.kind(), op.kind());
        }
        assert!(free.iter().any(|op| op.scope() != 4), "the free stream spreads over scopes");
    }

    #[test]
    fn t33_key_names_and_prefixes() {
        // Proves key names sort like their indexes and a list prefix covers 100 consecutive keys.
        assert_eq!(key_name(42), "k0000000042");
        assert!(key_name(99) < key_name(100));
        assert_eq!(list_prefix(1234), "k00000012");
        assert!(key_name(1200).starts_with(&list_prefix(1234)));
        assert!(key_name(1299).starts_with(&list_prefix(1234)));
        assert!(!key_name(1300).starts_with(&list_prefix(1234)));
        assert_eq!(value_bytes(9, 64), value_bytes(9, 64));
        assert_ne!(value_bytes(9, 64), value_bytes(10, 64));
        assert_eq!(value_bytes(9, 0).len(), 0);
    }
}
