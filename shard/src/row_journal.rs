//! The row journal of `state.redb` (docs/decisions.md D18): a checkpoint appends the entity and
//! relationship rows it would have written as ONE record under the next sequence number, instead of
//! inserting each row into the `entities`/`relationships` B-trees of SPEC §9.2, and every so often
//! (when the journal holds about as many rows as the state; always at a clean close) a checkpoint
//! merges the whole journal into those tables in key order and empties it.
//!
//! Why: a row lives in a 4 KiB B-tree leaf, so at 1 M rows a second's worth of random-key updates
//! dirtied a leaf per row and the checkpoint wrote ~25× the bytes it changed. A record is written
//! once, sequentially; a merge of as many rows as the table holds rewrites each leaf about once.
//! Recovery reads the tables, then replays the records in order (a later record wins).
//!
//! Record encoding (little-endian): `entities u32 ‖ relationships u32`, then per entity row
//! `key_len u32 ‖ key ‖ 0u8` (deleted) or `… ‖ 1u8 ‖ value_len u32 ‖ value` (the §3.2 row bytes),
//! then per relationship row `key_len u32 ‖ key ‖ 0u8` or `… ‖ 1u8 ‖ version u64`. Keys are the
//! §3.5 storage keys. A record carries no checksum of its own: like a table row, a changed byte
//! in it changes a state root, which recovery checks against the archive (SPEC §9.6 step 5).

use crate::error::ShardError;
use redb::{ReadableTable, Table, TableDefinition};

/// `seq u64 → record`.
pub const ROW_JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("row_journal");

/// Entity rows by storage key: `Some(§3.2 row bytes)` or `None` (deleted).
pub type EntityChanges = Vec<(Vec<u8>, Option<Vec<u8>>)>;
/// Relationship rows by storage key: `Some(version)` or `None` (deleted).
pub type RelationshipChanges = Vec<(Vec<u8>, Option<u64>)>;

/// The rows of one record, in the order they were written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    pub entities: EntityChanges,
    pub relationships: RelationshipChanges,
}

impl JournalRecord {
    pub fn rows(&self) -> usize {
        self.entities.len() + self.relationships.len()
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Keys and values are bounded far below 4 GiB by SPEC §3.6 validation.
    let len = u32::try_from(len).expect("journal field longer than u32::MAX");
    out.extend_from_slice(&len.to_le_bytes());
}

/// Encodes one record.
pub fn encode(entities: &[(Vec<u8>, Option<Vec<u8>>)], relationships: &[(Vec<u8>, Option<u64>)]) -> Vec<u8> {
    let bytes: usize =
        entities.iter().map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, |v| 4 + v.len())).sum::<usize>()
            + relationships.iter().map(|(k, _)| 13 + k.len()).sum::<usize>();
    let mut out = Vec::with_capacity(8 + bytes);
    put_len(&mut out, entities.len());
    put_len(&mut out, relationships.len());
    for (key, value) in entities {
        put_len(&mut out, key.len());
        out.extend_from_slice(key);
        match value {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                put_len(&mut out, value.len());
                out.extend_from_slice(value);
            }
        }
    }
    for (key, version) in relationships {
        put_len(&mut out, key.len());
        out.extend_from_slice(key);
        match version {
            None => out.push(0),
            Some(version) => {
                out.push(1);
                out.extend_from_slice(&version.to_le_bytes());
            }
        }
    }
    out
}

/// A cursor over a record that reports where it ran short.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    seq: u64,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, detail: &str) -> ShardError {
        ShardError::Corrupt {
            what: "row journal record",
            detail: format!("seq {} at byte {}: {detail}", self.seq, self.at),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ShardError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.corrupt("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<usize, ShardError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        usize::try_from(u32::from_le_bytes(b)).map_err(|_| self.corrupt("length"))
    }

    fn u64(&mut self) -> Result<u64, ShardError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn key(&mut self) -> Result<Vec<u8>, ShardError> {
        let len = self.u32()?;
        Ok(self.take(len)?.to_vec())
    }

    fn present(&mut self) -> Result<bool, ShardError> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.corrupt("presence byte")),
        }
    }
}

/// Decodes record `seq` (the number only labels errors).
pub fn decode(seq: u64, bytes: &[u8]) -> Result<JournalRecord, ShardError> {
    let mut r = Reader { bytes, at: 0, seq };
    let (entity_count, relationship_count) = (r.u32()?, r.u32()?);
    // Every row takes at least 5 bytes: a count larger than that allows is corruption, not a
    // reason to reserve gigabytes.
    if entity_count.saturating_add(relationship_count).saturating_mul(5) > bytes.len() {
        return Err(r.corrupt("row count larger than the record"));
    }
    let mut record = JournalRecord {
        entities: Vec::with_capacity(entity_count),
        relationships: Vec::with_capacity(relationship_count),
    };
    for _ in 0..entity_count {
        let key = r.key()?;
        let value = if r.present()? {
            let len = r.u32()?;
            Some(r.take(len)?.to_vec())
        } else {
            None
        };
        record.entities.push((key, value));
    }
    for _ in 0..relationship_count {
        let key = r.key()?;
        let version = if r.present()? { Some(r.u64()?) } else { None };
        record.relationships.push((key, version));
    }
    if r.at != bytes.len() {
        return Err(r.corrupt("trailing bytes"));
    }
    Ok(record)
}

/// Calls `push` for every row of `base` (sorted by key, as a table iterates) as `changes` (sorted
/// by key, one per key: [`JournalMerge::into_changes`]) leave it: replaced, deleted, or added.
pub fn overlay<V>(
    base: impl Iterator<Item = Result<(Vec<u8>, V), ShardError>>,
    changes: Vec<(Vec<u8>, Option<V>)>,
    mut push: impl FnMut(&[u8], V) -> Result<(), ShardError>,
) -> Result<(), ShardError> {
    let mut changes = changes.into_iter().peekable();
    for row in base {
        let (key, value) = row?;
        // Changes to keys before this one add rows the table does not have (or delete nothing).
        while let Some((k, v)) = changes.next_if(|(k, _)| *k < key) {
            if let Some(v) = v {
                push(&k, v)?;
            }
        }
        match changes.next_if(|(k, _)| *k == key) {
            Some((_, Some(newer))) => push(&key, newer)?,
            Some((_, None)) => {}
            None => push(&key, value)?,
        }
    }
    for (k, v) in changes {
        if let Some(v) = v {
            push(&k, v)?;
        }
    }
    Ok(())
}

/// Keeps the last change of every key (the input lists changes oldest first) and sorts by key,
/// which is the order the B-tree merge wants.
pub fn last_per_key<V>(mut changes: Vec<(Vec<u8>, V)>) -> Vec<(Vec<u8>, V)> {
    // Stable: equal keys keep their age order, so the last of each run is the newest.
    changes.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(Vec<u8>, V)> = Vec::with_capacity(changes.len());
    for change in changes {
        match out.last_mut() {
            Some(last) if last.0 == change.0 => *last = change,
            _ => out.push(change),
        }
    }
    out
}

/// A merge of the records up to `through_seq` into the tables, spread over checkpoints so that
/// none of them takes much longer than usual (SPEC §8.4: a durable commit at least once a second).
/// Records appended meanwhile are newer and stay in the journal; recovery replays every record
/// over the tables, which is right at any point of a merge because a merged row is exactly what
/// the merged records say last about its key.
pub struct JournalMerge {
    through_seq: u64,
    /// Rows in the records being merged (the journal holds that many fewer once they are deleted).
    record_rows: u64,
    /// Not yet merged: sorted by key, one change per key.
    entities: EntityChanges,
    relationships: RelationshipChanges,
    /// Changes written per step.
    step_rows: usize,
}

impl JournalMerge {
    /// Reads every record up to `through_seq` into one sorted change set; each later step writes
    /// `1 / steps` of it (at least `step_rows_min` changes).
    pub fn start(
        journal: &impl ReadableTable<u64, &'static [u8]>,
        through_seq: u64,
        steps: usize,
        step_rows_min: usize,
    ) -> Result<JournalMerge, ShardError> {
        let s = |e: redb::StorageError| ShardError::redb("state.redb read row journal", e);
        let (mut entities, mut relationships, mut record_rows) = (Vec::new(), Vec::new(), 0u64);
        for record in journal.range(..=through_seq).map_err(s)? {
            let (seq, bytes) = record.map_err(s)?;
            let record = decode(seq.value(), bytes.value())?;
            record_rows += record.rows() as u64;
            entities.extend(record.entities);
            relationships.extend(record.relationships);
        }
        let entities = last_per_key(entities);
        let relationships = last_per_key(relationships);
        let step_rows = ((entities.len() + relationships.len()).div_ceil(steps.max(1))).max(step_rows_min);
        Ok(JournalMerge { through_seq, record_rows, entities, relationships, step_rows })
    }

    /// A one-step merge of `entities` and `relationships` (not from records: a full rewrite).
    pub fn of_changes(entities: EntityChanges, relationships: RelationshipChanges) -> JournalMerge {
        let (entities, relationships) = (last_per_key(entities), last_per_key(relationships));
        JournalMerge { through_seq: 0, record_rows: 0, entities, relationships, step_rows: usize::MAX }
    }

    /// Rows in the records being merged.
    pub fn record_rows(&self) -> u64 {
        self.record_rows
    }

    /// The not yet written changes (sorted by key, one per key), for a reader that wants the
    /// journal's final word on each key rather than a merge.
    pub fn into_changes(self) -> (EntityChanges, RelationshipChanges) {
        (self.entities, self.relationships)
    }

    /// Changes not yet written.
    pub fn remaining(&self) -> usize {
        self.entities.len() + self.relationships.len()
    }

    pub fn is_done(&self) -> bool {
        self.entities.is_empty() && self.relationships.is_empty()
    }

    /// Writes the next step's changes into the tables in key order; returns how many.
    pub fn step(
        &mut self,
        entities: &mut Table<'_, &'static [u8], &'static [u8]>,
        relationships: &mut Table<'_, &'static [u8], u64>,
    ) -> Result<usize, redb::StorageError> {
        let budget = self.step_rows;
        let n = budget.min(self.entities.len());
        for (k, v) in self.entities.drain(..n) {
            match v {
                Some(v) => entities.insert(k.as_slice(), v.as_slice()).map(|_| ())?,
                None => entities.remove(k.as_slice()).map(|_| ())?,
            }
        }
        let m = (budget - n).min(self.relationships.len());
        for (k, v) in self.relationships.drain(..m) {
            match v {
                Some(v) => relationships.insert(k.as_slice(), v).map(|_| ())?,
                None => relationships.remove(k.as_slice()).map(|_| ())?,
            }
        }
        Ok(n + m)
    }

    /// Deletes the merged records (call once [`Self::is_done`]); returns the rows they held.
    pub fn finish(self, journal: &mut Table<'_, u64, &'static [u8]>) -> Result<u64, redb::StorageError> {
        debug_assert!(self.is_done(), "journal records deleted before their rows were merged");
        journal.retain_in(..=self.through_seq, |_, _| false)?;
        Ok(self.record_rows)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record_strategy() -> impl Strategy<Value = JournalRecord> {
        let key = proptest::collection::vec(any::<u8>(), 0..40);
        let entities = proptest::collection::vec(
            (key.clone(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..60))),
            0..20,
        );
        let relationships = proptest::collection::vec((key, proptest::option::of(any::<u64>())), 0..20);
        (entities, relationships)
            .prop_map(|(entities, relationships)| JournalRecord { entities, relationships })
    }

    proptest! {
        #[test]
        fn p01_records_round_trip(record in record_strategy()) {
            let bytes = encode(&record.entities, &record.relationships);
            prop_assert_eq!(decode(7, &bytes).ok(), Some(record));
        }

        /// A truncated or extended record is an error, never a silently different row set.
        #[test]
        fn p02_cut_or_padded_records_are_rejected(record in record_strategy(), cut in 1usize..16, pad in 1usize..4) {
            let bytes = encode(&record.entities, &record.relationships);
            let cut = cut.min(bytes.len());
            prop_assert!(decode(1, &bytes[..bytes.len() - cut]).is_err());
            let mut padded = bytes.clone();
            padded.extend(std::iter::repeat_n(0u8, pad));
            prop_assert!(decode(1, &padded).is_err());
        }

        /// `last_per_key` equals replaying the changes into a map.
        #[test]
        fn p03_last_per_key_is_a_replay(changes in proptest::collection::vec((proptest::collection::vec(0u8..4, 0..3), any::<u16>()), 0..50)) {
            let mut model = std::collections::BTreeMap::new();
            for (k, v) in &changes {
                model.insert(k.clone(), *v);
            }
            prop_assert_eq!(last_per_key(changes), model.into_iter().collect::<Vec<_>>());
        }
    }

    proptest! {
        /// `overlay` equals replaying the changes into a map of the base rows.
        #[test]
        fn p05_overlay_is_a_replay(
            base in proptest::collection::btree_map(proptest::collection::vec(0u8..4, 0..3), any::<u16>(), 0..20),
            changes in proptest::collection::btree_map(proptest::collection::vec(0u8..4, 0..3), proptest::option::of(any::<u16>()), 0..20),
        ) {
            let mut model = base.clone();
            for (k, v) in &changes {
                match v {
                    Some(v) => model.insert(k.clone(), *v),
                    None => model.remove(k),
                };
            }
            let mut out = Vec::new();
            overlay(base.into_iter().map(Ok), changes.into_iter().collect(), |k, v| {
                out.push((k.to_vec(), v));
                Ok(())
            })
            .unwrap();
            prop_assert_eq!(out, model.into_iter().collect::<Vec<_>>());
        }
    }

    /// One step of the merge scenario: append a record of these changes, or take a merge step.
    #[derive(Debug, Clone)]
    enum Action {
        Append(Vec<(u8, Option<u8>)>),
        Step,
    }

    fn action_strategy() -> impl Strategy<Value = Action> {
        prop_oneof![
            proptest::collection::vec((0u8..12, proptest::option::of(any::<u8>())), 1..6)
                .prop_map(Action::Append),
            Just(Action::Step),
        ]
    }

    const ENTITIES_T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entities");
    const RELATIONSHIPS_T: TableDefinition<&[u8], u64> = TableDefinition::new("relationships");

    /// What recovery sees: the tables, then every record in sequence order.
    fn recovered(db: &redb::Database) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
        use redb::ReadableDatabase;
        let txn = db.begin_read().unwrap();
        let mut rows: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = txn
            .open_table(ENTITIES_T)
            .unwrap()
            .iter()
            .unwrap()
            .map(|r| r.unwrap())
            .map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
            .collect();
        for record in txn.open_table(ROW_JOURNAL).unwrap().iter().unwrap() {
            let (seq, bytes) = record.unwrap();
            for (k, v) in decode(seq.value(), bytes.value()).unwrap().entities {
                match v {
                    Some(v) => rows.insert(k, v),
                    None => rows.remove(&k),
                };
            }
        }
        rows
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Proves a merge spread over steps, with records appended between the steps, never changes
        /// what recovery sees (the tables plus every record replayed equal the model after every
        /// action), and that a finished merge deletes exactly the records it merged.
        #[test]
        fn p04_stepped_merges_keep_the_recovered_rows(actions in proptest::collection::vec(action_strategy(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let db = redb::Database::create(dir.path().join("state.redb")).unwrap();
            let mut model = std::collections::BTreeMap::new();
            let mut merge: Option<JournalMerge> = None;
            let mut next_seq = 0u64;
            for action in actions {
                let txn = db.begin_write().unwrap();
                {
                    let mut entities = txn.open_table(ENTITIES_T).unwrap();
                    let mut relationships = txn.open_table(RELATIONSHIPS_T).unwrap();
                    let mut journal = txn.open_table(ROW_JOURNAL).unwrap();
                    match action {
                        Action::Append(changes) => {
                            // One change per key in a record, as the dirty set guarantees.
                            let changes: std::collections::BTreeMap<u8, Option<u8>> = changes.into_iter().collect();
                            let rows: EntityChanges = changes
                                .into_iter()
                                .map(|(k, v)| (vec![b'k', k], v.map(|v| vec![v; 3])))
                                .collect();
                            for (k, v) in &rows {
                                match v {
                                    Some(v) => model.insert(k.clone(), v.clone()),
                                    None => model.remove(k),
                                };
                            }
                            journal.insert(next_seq, encode(&rows, &[]).as_slice()).unwrap();
                            next_seq += 1;
                        }
                        Action::Step => {
                            let mut m = match merge.take() {
                                Some(m) => m,
                                None => JournalMerge::start(&journal, next_seq.saturating_sub(1), 3, 1).unwrap(),
                            };
                            m.step(&mut entities, &mut relationships).unwrap();
                            if m.is_done() {
                                let through = m.through_seq;
                                m.finish(&mut journal).unwrap();
                                prop_assert!(journal.range(..=through).unwrap().next().is_none());
                            } else {
                                merge = Some(m);
                            }
                        }
                    }
                }
                txn.commit().unwrap();
                prop_assert_eq!(&recovered(&db), &model);
            }
        }
    }

    #[test]
    fn t01_huge_counts_are_corruption_not_allocation() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        assert!(matches!(decode(3, &bytes), Err(ShardError::Corrupt { .. })));
    }
}
