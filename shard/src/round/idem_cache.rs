//! The volatile per-core cache of recent full write responses (SPEC §6.2): a retried sequence
//! that is still cached gets its original `Success` verbatim (same tx id, height, statuses);
//! otherwise the persisted `ClientState` answers `AlreadyCommitted`. Bounded twice: at most
//! `per_client` entries per `(scope, client)` and at most `total` entries on the core, evicting
//! the least recently used.

use ledger_core::types::ScopeKey;
use ledger_wire::messages::WriteSuccess;
use std::collections::{BTreeMap, HashMap, VecDeque};

type ClientKey = (ScopeKey, String);

struct Slot {
    value: WriteSuccess,
    tick: u64,
}

pub struct IdemCache {
    total: usize,
    per_client: usize,
    tick: u64,
    slots: HashMap<(ClientKey, u64), Slot>,
    /// tick → key, oldest first: the global LRU order.
    order: BTreeMap<u64, (ClientKey, u64)>,
    /// Per client, its cached sequences in insertion order (for the per-client bound).
    clients: HashMap<ClientKey, VecDeque<u64>>,
}

impl IdemCache {
    pub fn new(total: usize, per_client: usize) -> Self {
        IdemCache {
            total: total.max(1),
            per_client: per_client.max(1),
            tick: 0,
            slots: HashMap::new(),
            order: BTreeMap::new(),
            clients: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The cached response for `(scope, client, sequence)`, refreshed as most recently used.
    pub fn get(&mut self, scope: ScopeKey, client_id: &str, sequence: u64) -> Option<WriteSuccess> {
        let key = ((scope, client_id.to_string()), sequence);
        self.tick += 1;
        let tick = self.tick;
        let Some(slot) = self.slots.get_mut(&key) else {
            crate::metrics::with(|m| m.idem_misses += 1);
            return None;
        };
        crate::metrics::with(|m| m.idem_hits += 1);
        let old = std::mem::replace(&mut slot.tick, tick);
        let value = slot.value.clone();
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
        if let Some(slot) = self.slots.get_mut(&key) {
            let old = std::mem::replace(&mut slot.tick, tick);
            slot.value = value;
            self.order.remove(&old);
            self.order.insert(tick, key);
            return;
        }
        self.slots.insert(key.clone(), Slot { value, tick });
        self.order.insert(tick, key);
        let seqs = self.clients.entry(client.clone()).or_default();
        seqs.push_back(sequence);
        if seqs.len() > self.per_client {
            if let Some(oldest) = seqs.pop_front() {
                self.remove_slot(&(client, oldest));
                crate::metrics::with(|m| m.idem_evictions += 1);
            }
        }
        while self.slots.len() > self.total {
            let Some((_, victim)) = self.order.pop_first() else { break };
            self.slots.remove(&victim);
            self.forget_in_client(&victim);
            crate::metrics::with(|m| m.idem_evictions += 1);
        }
        assert!(self.slots.len() == self.order.len());
    }

    fn remove_slot(&mut self, key: &(ClientKey, u64)) {
        if let Some(slot) = self.slots.remove(key) {
            self.order.remove(&slot.tick);
        }
    }

    fn forget_in_client(&mut self, key: &(ClientKey, u64)) {
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
