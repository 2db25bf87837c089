//! The volatile per-core cache of recent full write responses (SPEC §6.2): a retried sequence
//! that is still cached gets its original `Success` verbatim (same tx id, height, statuses);
//! otherwise the persisted `ClientState` answers `AlreadyCommitted`. Bounded twice: at most
//! `per_client` entries per `(scope, client)` and at most `total` entries on the core, evicting
//! the least recently used.
//!
//! A full cache inserts and evicts on every write, so both are O(1) and allocate nothing in the
//! steady state (D66): entries live in a slab, linked in LRU order by index; a client's cached
//! sequences are a deque of slab indexes in ascending order (a client commits its sequences in
//! order); an evicted entry's slot, and its boxed response, are reused by the next insert. The
//! slab only grows (to `total`), and each slot is a few words wide (D55: nothing large moves).

use ledger_core::types::ScopeKey;
use ledger_wire::messages::WriteSuccess;
use std::collections::{HashMap, VecDeque};

/// "No slot" in the LRU links.
const NIL: u32 = u32::MAX;

/// One cached response, linked into the LRU list.
struct Entry {
    value: Box<WriteSuccess>,
    client: u32,
    sequence: u64,
    /// Towards the most recently used end.
    newer: u32,
    /// Towards the least recently used end.
    older: u32,
}

/// One `(scope, client)` with at least one cached sequence.
struct ClientSlot {
    scope: ScopeKey,
    id: String,
    /// `(sequence, entry)`, ascending by sequence.
    sequences: VecDeque<(u64, u32)>,
}

pub struct IdemCache {
    total: usize,
    per_client: usize,
    entries: Vec<Entry>,
    free_entries: Vec<u32>,
    /// Most and least recently used entries (NIL when empty).
    newest: u32,
    oldest: u32,
    len: usize,
    clients: Vec<ClientSlot>,
    free_clients: Vec<u32>,
    /// scope → client id → its slot in `clients` (looked up by `&str`, no allocation).
    index: HashMap<ScopeKey, HashMap<String, u32>>,
}

impl IdemCache {
    pub fn new(total: usize, per_client: usize) -> Self {
        IdemCache {
            total: total.clamp(1, NIL as usize - 1),
            per_client: per_client.max(1),
            entries: Vec::new(),
            free_entries: Vec::new(),
            newest: NIL,
            oldest: NIL,
            len: 0,
            clients: Vec::new(),
            free_clients: Vec::new(),
            index: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn client_of(&self, scope: ScopeKey, client_id: &str) -> Option<u32> {
        self.index.get(&scope).and_then(|ids| ids.get(client_id)).copied()
    }

    /// The entry of `sequence` in `client`'s deque: `Ok(position)` or where it would go.
    /// A new sequence goes at the back and an evicted one is at the front, so both ends are
    /// looked at first: a search through a long deque misses the cache at every step.
    fn position(&self, client: u32, sequence: u64) -> Result<usize, usize> {
        let sequences = &self.clients[client as usize].sequences;
        match (sequences.front(), sequences.back()) {
            (None, _) | (_, None) => Err(0),
            (_, Some(&(last, _))) if sequence > last => Err(sequences.len()),
            (_, Some(&(last, _))) if sequence == last => Ok(sequences.len() - 1),
            (Some(&(first, _)), _) if sequence < first => Err(0),
            (Some(&(first, _)), _) if sequence == first => Ok(0),
            _ => sequences.binary_search_by_key(&sequence, |&(s, _)| s),
        }
    }

    /// The cached response for `(scope, client, sequence)`, refreshed as most recently used.
    pub fn get(&mut self, scope: ScopeKey, client_id: &str, sequence: u64) -> Option<WriteSuccess> {
        let found = self
            .client_of(scope, client_id)
            .and_then(|c| self.position(c, sequence).ok().map(|p| self.clients[c as usize].sequences[p].1));
        let Some(entry) = found else {
            crate::metrics::with(|m| m.idem_misses += 1);
            return None;
        };
        crate::metrics::with(|m| m.idem_hits += 1);
        self.unlink(entry);
        self.link_newest(entry);
        Some((*self.entries[entry as usize].value).clone())
    }

    pub fn insert(&mut self, scope: ScopeKey, client_id: &str, sequence: u64, value: WriteSuccess) {
        if let Some(client) = self.client_of(scope, client_id) {
            if let Ok(p) = self.position(client, sequence) {
                // The same sequence again: the newer response replaces the cached one.
                let entry = self.clients[client as usize].sequences[p].1;
                *self.entries[entry as usize].value = value;
                self.unlink(entry);
                self.link_newest(entry);
                return;
            }
        }
        // Room first: the evicted entry may be this client's last, which frees its slot.
        if self.len >= self.total {
            self.evict(self.oldest);
        }
        let client = match self.client_of(scope, client_id) {
            Some(client) => client,
            None => self.add_client(scope, client_id),
        };
        let at = match self.position(client, sequence) {
            Ok(p) | Err(p) => p,
        };
        let entry = self.new_entry(value, client, sequence);
        self.clients[client as usize].sequences.insert(at, (sequence, entry));
        if self.clients[client as usize].sequences.len() > self.per_client {
            if let Some(&(_, oldest)) = self.clients[client as usize].sequences.front() {
                self.evict(oldest);
            }
        }
        assert!(self.len <= self.total, "the idempotency cache outgrew its bound");
    }

    fn add_client(&mut self, scope: ScopeKey, client_id: &str) -> u32 {
        let slot = ClientSlot { scope, id: client_id.to_string(), sequences: VecDeque::new() };
        let client = match self.free_clients.pop() {
            Some(c) => {
                self.clients[c as usize] = slot;
                c
            }
            None => {
                self.clients.push(slot);
                (self.clients.len() - 1) as u32
            }
        };
        self.index.entry(scope).or_default().insert(client_id.to_string(), client);
        client
    }

    fn new_entry(&mut self, value: WriteSuccess, client: u32, sequence: u64) -> u32 {
        let entry = match self.free_entries.pop() {
            Some(e) => {
                let slot = &mut self.entries[e as usize];
                *slot.value = value;
                slot.client = client;
                slot.sequence = sequence;
                e
            }
            None => {
                let value = Box::new(value);
                self.entries.push(Entry { value, client, sequence, newer: NIL, older: NIL });
                (self.entries.len() - 1) as u32
            }
        };
        self.len += 1;
        self.link_newest(entry);
        entry
    }

    /// Drops `entry` from the LRU list and from its client (the client too once it is empty).
    fn evict(&mut self, entry: u32) {
        if entry == NIL {
            return;
        }
        self.unlink(entry);
        let (client, sequence) = {
            let e = &self.entries[entry as usize];
            (e.client, e.sequence)
        };
        if let Ok(p) = self.position(client, sequence) {
            self.clients[client as usize].sequences.remove(p);
        }
        let slot = &self.clients[client as usize];
        if slot.sequences.is_empty() {
            if let Some(ids) = self.index.get_mut(&slot.scope) {
                ids.remove(slot.id.as_str());
                if ids.is_empty() {
                    self.index.remove(&slot.scope);
                }
            }
            self.free_clients.push(client);
        }
        self.free_entries.push(entry);
        self.len -= 1;
        crate::metrics::with(|m| m.idem_evictions += 1);
    }

    fn unlink(&mut self, entry: u32) {
        let (newer, older) = {
            let e = &self.entries[entry as usize];
            (e.newer, e.older)
        };
        match newer {
            NIL => self.newest = older,
            n => self.entries[n as usize].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            o => self.entries[o as usize].newer = newer,
        }
        let e = &mut self.entries[entry as usize];
        e.newer = NIL;
        e.older = NIL;
    }

    fn link_newest(&mut self, entry: u32) {
        let old_newest = self.newest;
        {
            let e = &mut self.entries[entry as usize];
            e.older = old_newest;
            e.newer = NIL;
        }
        match old_newest {
            NIL => self.oldest = entry,
            n => self.entries[n as usize].newer = entry,
        }
        self.newest = entry;
    }

    /// O(n) self-check of the links, the client deques and the counts (tests, debug builds).
    #[cfg(any(test, debug_assertions))]
    pub fn check(&self) {
        let mut walked = 0;
        let mut at = self.newest;
        let mut newer = NIL;
        while at != NIL {
            let e = &self.entries[at as usize];
            assert_eq!(e.newer, newer, "LRU back link");
            let slot = &self.clients[e.client as usize];
            assert!(
                slot.sequences.iter().any(|&(s, i)| s == e.sequence && i == at),
                "entry not in its client"
            );
            walked += 1;
            newer = at;
            at = e.older;
        }
        assert_eq!(newer, self.oldest, "LRU tail");
        assert_eq!(walked, self.len, "LRU length");
        let in_clients: usize = self
            .index
            .values()
            .flat_map(|ids| ids.values())
            .map(|&c| {
                let q = &self.clients[c as usize].sequences;
                assert!(q.iter().zip(q.iter().skip(1)).all(|(a, b)| a.0 < b.0), "client sequences ascend");
                assert!(q.len() <= self.per_client, "per-client bound");
                q.len()
            })
            .sum();
        assert_eq!(in_clients, self.len, "entries in clients");
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
        assert!(c.client_of(scope(), "b").is_none());
        c.check();
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
            }
            c.check();
        }
        assert_eq!(c.len(), 1000);
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
    /// Against a plain model (a list in LRU order, oldest first) under random inserts, repeats
    /// and gets over a few scopes and clients: the same entries, the same answers, every step.
    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            /// Insert the client's next sequence (or repeat its last one).
            Insert {
                scope: u8,
                client: u8,
                repeat: bool,
            },
            Get {
                scope: u8,
                client: u8,
                back: u8,
            },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0..2u8, 0..5u8, proptest::bool::weighted(0.1))
                    .prop_map(|(scope, client, repeat)| Op::Insert { scope, client, repeat }),
                1 => (0..2u8, 0..5u8, 0..8u8).prop_map(|(scope, client, back)| Op::Get { scope, client, back }),
            ]
        }

        fn key(scope: u8) -> ScopeKey {
            ScopeKey { namespace_id: NamespaceId(1), vault_id: VaultId(i64::from(scope)) }
        }

        proptest! {
            #[test]
            fn p01_matches_a_plain_lru(ops in proptest::collection::vec(op(), 1..400), total in 1..12usize, per in 1..5usize) {
                let mut cache = IdemCache::new(total, per);
                // (scope, client, sequence) in LRU order, oldest first.
                let mut model: Vec<(u8, u8, u64)> = Vec::new();
                let mut next = std::collections::HashMap::<(u8, u8), u64>::new();
                for op in ops {
                    match op {
                        Op::Insert { scope, client, repeat } => {
                            let last = next.get(&(scope, client)).copied().unwrap_or(0);
                            let seq = if repeat && last > 0 { last } else { last + 1 };
                            next.insert((scope, client), seq);
                            cache.insert(key(scope), &format!("c{client}"), seq, success(seq));
                            if let Some(i) = model.iter().position(|e| *e == (scope, client, seq)) {
                                model.remove(i);
                            } else if model.len() >= total {
                                model.remove(0);
                            }
                            model.push((scope, client, seq));
                            let mine: Vec<usize> = model.iter().enumerate()
                                .filter(|(_, e)| e.0 == scope && e.1 == client).map(|(i, _)| i).collect();
                            if mine.len() > per {
                                let oldest_seq = mine.iter().map(|&i| model[i].2).min().unwrap();
                                model.retain(|e| *e != (scope, client, oldest_seq));
                            }
                        }
                        Op::Get { scope, client, back } => {
                            let last = next.get(&(scope, client)).copied().unwrap_or(0);
                            let seq = last.saturating_sub(u64::from(back));
                            let got = cache.get(key(scope), &format!("c{client}"), seq);
                            match model.iter().position(|e| *e == (scope, client, seq)) {
                                Some(i) => {
                                    prop_assert_eq!(got, Some(success(seq)));
                                    let e = model.remove(i);
                                    model.push(e);
                                }
                                None => prop_assert_eq!(got, None),
                            }
                        }
                    }
                    cache.check();
                    prop_assert_eq!(cache.len(), model.len());
                }
            }
        }
    }
}
