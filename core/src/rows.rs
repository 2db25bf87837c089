//! The entity rows of one scope: a hash map for point access plus an ordered key set for lists.
//!
//! A write looks its key up (conditions, Created/Updated) and later replaces the row; in an ordered
//! map of 1 M string keys each of those walks ~7 cold B-tree levels and compares a key (one more
//! pointer chase) at every level, a measured ~2 µs. The hash map answers with one or two cache
//! misses. Order is needed only by lists, snapshots and checkpoints, and changes only when a key
//! is created or deleted, so updating an existing row never touches the ordered set.

use crate::state::EntityRow;
use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::ops::Bound;

/// Longest key kept inside the hash map's bucket.
const INLINE_KEY_BYTES_MAX: usize = 22;

/// A row key as the hash map holds it: short keys (most keys; the load generator's are 11 bytes)
/// inside the 24-byte bucket field, so that confirming a match compares bytes already loaded
/// instead of chasing a pointer to a cold heap string (one dependent cache miss per lookup at 1 M
/// rows). Hashes and compares exactly as the `str` it holds, so lookups by `&str` work.
#[derive(Debug, Clone)]
enum RowKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY_BYTES_MAX] },
    Heap(Box<str>),
}

const _: () = assert!(std::mem::size_of::<RowKey>() == 24);

impl RowKey {
    fn new(key: String) -> RowKey {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= INLINE_KEY_BYTES_MAX => {
                let mut bytes = [0u8; INLINE_KEY_BYTES_MAX];
                bytes[..key.len()].copy_from_slice(key.as_bytes());
                RowKey::Inline { len, bytes }
            }
            _ => RowKey::Heap(key.into_boxed_str()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Whole strings are copied in, so the bytes are always UTF-8.
            RowKey::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            RowKey::Heap(key) => key,
        }
    }
}

impl Borrow<str> for RowKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Hash for RowKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialEq for RowKey {
    fn eq(&self, other: &RowKey) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RowKey {}

#[derive(Debug, Clone, Default)]
pub struct EntityRows {
    rows: HashMap<RowKey, EntityRow>,
    /// Every key of `rows`, in order.
    order: BTreeSet<String>,
}

impl EntityRows {
    pub fn get(&self, key: &str) -> Option<&EntityRow> {
        self.rows.get(key)
    }

    /// Looks `keys` up one after another and discards the answers. The lookups do not depend on
    /// each other, so the core overlaps their cache misses (in a 1 M-row map each is ~3 dependent
    /// misses: control bytes, bucket, key bytes), and the lookups that follow find the lines cached.
    pub fn warm<'k>(&self, keys: impl IntoIterator<Item = &'k str>) {
        for key in keys {
            std::hint::black_box(self.rows.get(key).map(|row| row.version));
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Sets `key`'s row; returns the row it replaced.
    pub fn insert(&mut self, key: String, row: EntityRow) -> Option<EntityRow> {
        if let Some(slot) = self.rows.get_mut(key.as_str()) {
            return Some(std::mem::replace(slot, row));
        }
        self.rows.insert(RowKey::new(key.clone()), row);
        self.order.insert(key);
        debug_assert_eq!(self.rows.len(), self.order.len());
        None
    }

    /// Removes `key`; returns its row if it was present.
    pub fn remove(&mut self, key: &str) -> Option<EntityRow> {
        let row = self.rows.remove(key)?;
        let was_ordered = self.order.remove(key);
        assert!(was_ordered, "entity key missing from the ordered set");
        Some(row)
    }

    /// Every row in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &EntityRow)> {
        self.ordered((Bound::Unbounded, Bound::Unbounded))
    }

    /// Rows from `lower` on, in key order.
    pub fn range_from<'a>(
        &'a self,
        lower: Bound<&'a str>,
    ) -> impl Iterator<Item = (&'a String, &'a EntityRow)> {
        self.ordered((lower, Bound::Unbounded))
    }

    fn ordered<'a>(
        &'a self,
        bounds: (Bound<&'a str>, Bound<&'a str>),
    ) -> impl Iterator<Item = (&'a String, &'a EntityRow)> {
        self.order.range::<str, _>(bounds).map(|key| {
            let row = self.rows.get(key.as_str()).expect("ordered entity key without a row");
            (key, row)
        })
    }
}

impl FromIterator<(String, EntityRow)> for EntityRows {
    fn from_iter<I: IntoIterator<Item = (String, EntityRow)>>(iter: I) -> Self {
        let mut rows = EntityRows::default();
        for (key, row) in iter {
            rows.insert(key, row);
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn row(version: u64) -> EntityRow {
        EntityRow { value: vec![version as u8], expires_at: 0, version }
    }

    #[test]
    fn row_keys_are_the_strings_they_hold_on_both_sides_of_the_inline_limit() {
        for key in ["", "k0000123456", &"a".repeat(22), &"a".repeat(23), &"é".repeat(11), &"é".repeat(12)] {
            let row_key = RowKey::new(key.to_string());
            assert_eq!(row_key.as_str(), key);
            assert_eq!(matches!(row_key, RowKey::Inline { .. }), key.len() <= INLINE_KEY_BYTES_MAX, "{key}");
            let hash = |value: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                value(&mut hasher);
                hasher.finish()
            };
            // `Borrow<str>` requires the same hash as the `str`.
            assert_eq!(hash(&|h| row_key.hash(h)), hash(&|h| key.hash(h)));
        }
    }

    proptest! {
        #[test]
        fn behaves_like_an_ordered_map(ops in proptest::collection::vec((0u8..3, 0u16..64, 1u64..100), 0..300),
                                       probe in 0u16..70) {
            // Random inserts, overwrites and removes agree with a BTreeMap in every answer:
            // returned old rows, lookups, length, full order and ordered ranges.
            let mut rows = EntityRows::default();
            let mut model: BTreeMap<String, EntityRow> = BTreeMap::new();
            for (kind, key, version) in ops {
                // Every third key is too long to be kept inline in the map.
                let key = if key % 3 == 0 { format!("k{key:02}{}", "-".repeat(30)) } else { format!("k{key:02}") };
                if kind < 2 {
                    prop_assert_eq!(rows.insert(key.clone(), row(version)), model.insert(key, row(version)));
                } else {
                    prop_assert_eq!(rows.remove(&key), model.remove(&key));
                }
            }
            prop_assert_eq!(rows.len(), model.len());
            let all: Vec<_> = rows.iter().map(|(k, r)| (k.clone(), r.clone())).collect();
            let expected: Vec<_> = model.iter().map(|(k, r)| (k.clone(), r.clone())).collect();
            prop_assert_eq!(all, expected);
            let lower = format!("k{probe:02}");
            let from: Vec<_> = rows.range_from(Bound::Excluded(lower.as_str())).map(|(k, _)| k.clone()).collect();
            let expected: Vec<_> = model
                .range::<str, _>((Bound::Excluded(lower.as_str()), Bound::Unbounded))
                .map(|(k, _)| k.clone())
                .collect();
            prop_assert_eq!(from, expected);
            prop_assert_eq!(rows.get(&lower), model.get(&lower));
        }
    }
}
