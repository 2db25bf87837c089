//! The volatile per-core cache of recent full write responses (SPEC §6.2): a retried sequence
//! that is still cached gets its original `Success` verbatim (same tx id, height, statuses);
//! otherwise the persisted `ClientState` answers `AlreadyCommitted`. Bounded twice: at most
//! `per_client` entries per `(scope, client)` and at most `total` entries on the core, evicting
//! the least recently used.
//!
//! The entries live in `SLOT_SHARDS` hash maps, each value boxed. A full cache inserts and evicts
//! on every write, and a hash map that does so now and then rebuilds its whole table (to grow, or
//! to clear the tombstones of removed entries). With one map of 100 k unboxed responses that
//! rebuild moved tens of MB and stopped the core's executor for tens of ms, the p99 of every
//! write on the core (D55); a shard holds 1/64 of the entries, each a pointer wide.

use ledger_core::types::ScopeKey;
use ledger_wire::messages::WriteSuccess;
use std::collections::hash_map::{Entry, RandomState};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasher;

type ClientKey = (ScopeKey, String);
type SlotKey = (ClientKey, u64);

/// How many maps the entries are spread over (a power of two).
const SLOT_SHARDS: usize = 64;

struct Slot {
    value: Box<WriteSuccess>,
    tick: u64,
}

pub struct IdemCache {
    total: usize,
    per_client: usize,
    tick: u64,
    /// Every entry, in the shard its key hashes to.
    shards: Vec<HashMap<SlotKey, Slot>>,
    shard_of: RandomState,
    len: usize,
    /// tick → key, oldest first: the global LRU order.
    order: BTreeMap<u64, SlotKey>,
    /// Per client, its cached sequences in insertion order (for the per-client bound).
    clients: HashMap<ClientKey, VecDeque<u64>>,
}

impl IdemCache {
    pub fn new(total: usize, per_client: usize) -> Self {
        IdemCache {
            total: total.max(1),
            per_client: per_client.max(1),
            tick: 0,
            shards: (0..SLOT_SHARDS).map(|_| HashMap::new()).collect(),
            shard_of: RandomState::new(),
            len: 0,
            order: BTreeMap::new(),
            clients: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn shard(&mut self, key: &SlotKey) -> &mut HashMap<SlotKey, Slot> {
        let index = self.shard_of.hash_one(key) as usize & (SLOT_SHARDS - 1);
        &mut self.shards[index]
    }

    /// The cached response for `(scope, client, sequence)`, refreshed as most recently used.
    pub fn get(&mut self, scope: ScopeKey, client_id: &str, sequence: u64) -> Option<WriteSuccess> {
        let key = ((scope, client_id.to_string()), sequence);
        self.tick += 1;
        let tick = self.tick;
        let Some(slot) = self.shard(&key).get_mut(&key) else {
            crate::metrics::with(|m| m.idem_misses += 1);
            return None;
        };
        crate::metrics::with(|m| m.idem_hits += 1);
        let old = std::mem::replace(&mut slot.tick, tick);
        let value = (*slot.value).clone();
        if let Some(k) = self.order.remove(&old) {
            self.order.insert(tick, k);
        }
        Some(value)
    }

    pub fn insert(&mut self, scope: ScopeKey, client_id: &str, sequence: u64, value: WriteSuccess) {
        let client: ClientKey = (scope, client_id.to_string());
        let key = (client.clone(), sequence);
        self.tick += 1;
        let tick = self.tick;
        // One lookup for both cases: the key's shard is hashed once, its slot found once.
        match self.shard(&key).entry(key.clone()) {
            Entry::Occupied(mut occupied) => {
                let slot = occupied.get_mut();
                let old = std::mem::replace(&mut slot.tick, tick);
                *slot.value = value;
                self.order.remove(&old);
                self.order.insert(tick, key);
                return;
            }
            Entry::Vacant(vacant) => {
                vacant.insert(Slot { value: Box::new(value), tick });
            }
        }
        self.len += 1;
        self.order.insert(tick, key);
        let seqs = self.clients.entry(client.clone()).or_default();
        seqs.push_back(sequence);
        if seqs.len() > self.per_client {
            if let Some(oldest) = seqs.pop_front() {
                self.remove_slot(&(client, oldest));
                crate::metrics::with(|m| m.idem_evictions += 1);
            }
        }
        while self.len > self.total {
            let Some((_, victim)) = self.order.pop_first() else { break };
            if self.shard(&victim).remove(&victim).is_some() {
                self.len -= 1;
            }
            self.forget_in_client(&victim);
            crate::metrics::with(|m| m.idem_evictions += 1);
        }
        assert!(self.len == self.order.len());
    }

    fn remove_slot(&mut self, key: &SlotKey) {
        if let Some(slot) = self.shard(key).remove(key) {
            self.len -= 1;
            self.order.remove(&slot.tick);
        }
    }

    fn forget_in_client(&mut self, key: &SlotKey) {
        let (client, seq) = key;
        if let Some(seqs) = self.clients.get_mut(client) {
            if let Some(pos) = seqs.iter().position(|s| s == seq) {
                seqs.remove(pos);
            }
            if seqs.is_empty() {
                self.clients.remove(client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ledger_core::types::{NamespaceId, Timestamp, VaultId};

    fn scope() -> ScopeKey {
        ScopeKey { namespace_id: NamespaceId(1), vault_id: VaultId(2) }
    }

    fn success(seq: u64) -> WriteSuccess {
        WriteSuccess {
            tx_id: [seq as u8; 16],
            block_height: seq,
            tx_timestamp: Timestamp::default(),
            actor: "client:c".into(),
            block_header: None,
            tx_proof: None,
            statuses: vec![],
        }
    }

    /// Entries come back verbatim; the per-client bound evicts that client's oldest sequence only.
    #[test]
    fn t01_per_client_bound() {
        let mut c = IdemCache::new(100, 3);
        for s in 1..=4 {
            c.insert(scope(), "a", s, success(s));
        }
        c.insert(scope(), "b", 1, success(1));
        assert!(c.get(scope(), "a", 1).is_none());
        assert_eq!(c.get(scope(), "a", 2).unwrap(), success(2));
        assert_eq!(c.get(scope(), "a", 4).unwrap(), success(4));
        assert_eq!(c.get(scope(), "b", 1).unwrap(), success(1));
        assert_eq!(c.len(), 4);
    }

    /// The global bound evicts the least recently used entry, and a `get` refreshes recency.
    #[test]
    fn t02_global_lru() {
        let mut c = IdemCache::new(2, 10);
        c.insert(scope(), "a", 1, success(1));
        c.insert(scope(), "b", 1, success(1));
        assert!(c.get(scope(), "a", 1).is_some());
        c.insert(scope(), "c", 1, success(1));
        assert!(c.get(scope(), "b", 1).is_none());
        assert!(c.get(scope(), "a", 1).is_some());
        assert!(c.get(scope(), "c", 1).is_some());
        assert_eq!(c.len(), 2);
        // Client bookkeeping of the evicted entry is gone, so "b" can fill its quota again.
        assert!(!c.clients.contains_key(&(scope(), "b".to_string())));
    }

    /// Many clients over many shards: the bound holds, the newest entries stay and come back
    /// verbatim, the evicted ones are gone, and the count matches the LRU order throughout.
    #[test]
    fn t04_bounded_across_shards() {
        let mut c = IdemCache::new(1000, 100);
        let clients: Vec<String> = (0..50).map(|i| format!("client-{i}")).collect();
        for s in 1..=200u64 {
            for client in &clients {
                c.insert(scope(), client, s, success(s));
                assert_eq!(c.len(), c.order.len());
            }
        }
        assert_eq!(c.len(), 1000);
        assert_eq!(c.shards.iter().map(HashMap::len).sum::<usize>(), 1000);
        for client in &clients {
            for s in 181..=200 {
                assert_eq!(c.get(scope(), client, s), Some(success(s)), "{client} {s}");
            }
            assert!(c.get(scope(), client, 180).is_none(), "{client} 180 outlived the bound");
        }
    }

    /// Different scopes are different streams even for the same client id.
    #[test]
    fn t03_scopes_are_independent() {
        let mut c = IdemCache::new(10, 10);
        let other = ScopeKey { namespace_id: NamespaceId(1), vault_id: VaultId(0) };
        c.insert(scope(), "a", 1, success(1));
        assert!(c.get(other, "a", 1).is_none());
        assert!(c.get(scope(), "a", 1).is_some());
    }
}
