//! The row journal of `state.redb` (docs/decisions.md D18): a checkpoint appends the entity and
//! relationship rows it would have written as records of at most `JOURNAL_RECORD_ROWS_MAX` rows
//! under the next sequence numbers, instead of
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

use crate::constants::JOURNAL_MERGE_CLOCK_ROWS;
use crate::error::ShardError;
use redb::{ReadableTable, Table, TableDefinition};
use std::collections::HashMap;
use std::time::Instant;

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

/// Keeps the last row of each key, in their order (what replaying `rows` in order leaves). The
/// checkpoint runs it on its blocking thread, off the core, over the dirty rows apply recorded (one
/// per block that changed a key). A hash index of the keys, not a sort: no key comparisons through
/// the rows' scattered heap keys.
pub fn keep_last_per_key(rows: &mut EntityChanges) {
    let keep: Vec<bool> = {
        let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(rows.len());
        for (i, (key, _)) in rows.iter().enumerate() {
            last.insert(key.as_slice(), i);
        }
        if last.len() == rows.len() {
            return;
        }
        rows.iter().enumerate().map(|(i, (key, _))| last.get(key.as_slice()) == Some(&i)).collect()
    };
    let mut index = 0;
    rows.retain(|_| {
        index += 1;
        keep[index - 1]
    });
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

    /// A `len u32 ‖ bytes` field; returns where the bytes start and how many.
    fn field(&mut self) -> Result<(usize, usize), ShardError> {
        let len = self.u32()?;
        let at = self.at;
        self.take(len)?;
        Ok((at, len))
    }

    fn present(&mut self) -> Result<bool, ShardError> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.corrupt("presence byte")),
        }
    }
}

/// Where one row of a record lies in the record's bytes: the key, then (if present) the value: an
/// entity's `value_len` bytes, or a relationship's 8-byte version.
#[derive(Debug, Clone, Copy)]
struct RowAt {
    key_at: usize,
    key_len: usize,
    /// `None`: the row is deleted.
    value: Option<(usize, usize)>,
}

/// Walks record `seq`, checking every length, and reports each entity row, then each relationship
/// row, in the order written. The one parser of the format: decoding and merging both use it.
fn walk(
    seq: u64,
    bytes: &[u8],
    mut entity: impl FnMut(RowAt),
    mut relationship: impl FnMut(RowAt),
) -> Result<(), ShardError> {
    let mut r = Reader { bytes, at: 0, seq };
    let (entity_count, relationship_count) = read_counts(&mut r)?;
    for _ in 0..entity_count {
        let (key_at, key_len) = r.field()?;
        let value = if r.present()? { Some(r.field()?) } else { None };
        entity(RowAt { key_at, key_len, value });
    }
    for _ in 0..relationship_count {
        let (key_at, key_len) = r.field()?;
        let value = if r.present()? {
            let at = r.at;
            r.take(8)?;
            Some((at, 8))
        } else {
            None
        };
        relationship(RowAt { key_at, key_len, value });
    }
    if r.at != bytes.len() {
        return Err(r.corrupt("trailing bytes"));
    }
    Ok(())
}

/// A record's entity and relationship row counts, from its header.
fn record_counts(seq: u64, bytes: &[u8]) -> Result<(usize, usize), ShardError> {
    read_counts(&mut Reader { bytes, at: 0, seq })
}

fn read_counts(r: &mut Reader<'_>) -> Result<(usize, usize), ShardError> {
    let (entity_count, relationship_count) = (r.u32()?, r.u32()?);
    // Every row takes at least 5 bytes: a count larger than that allows is corruption, not a
    // reason to reserve memory.
    if entity_count.saturating_add(relationship_count).saturating_mul(5) > r.bytes.len() {
        return Err(r.corrupt("row count larger than the record"));
    }
    Ok((entity_count, relationship_count))
}

fn version_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Decodes record `seq` (the number only labels errors).
pub fn decode(seq: u64, bytes: &[u8]) -> Result<JournalRecord, ShardError> {
    let (mut entities, mut relationships) = (Vec::new(), Vec::new());
    walk(seq, bytes, |row| entities.push(row), |row| relationships.push(row))?;
    let key = |row: &RowAt| bytes[row.key_at..row.key_at + row.key_len].to_vec();
    Ok(JournalRecord {
        entities: entities
            .iter()
            .map(|row| (key(row), row.value.map(|(at, len)| bytes[at..at + len].to_vec())))
            .collect(),
        relationships: relationships
            .iter()
            .map(|row| (key(row), row.value.map(|(at, _)| version_at(bytes, at))))
            .collect(),
    })
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

/// One row of a merge: where it lies in the merge's record buffers, and the first 24 bytes of its
/// key (zero-padded; storage keys start with an 8-byte scope id) so that most comparisons of the
/// sort are decided without reaching into the records.
#[derive(Debug, Clone, Copy)]
struct MergeRow {
    key_tail: u128,
    key_head: u64,
    buffer: u32,
    row: RowAt,
}

impl MergeRow {
    fn new(buffer: u32, bytes: &[u8], row: RowAt) -> MergeRow {
        let key = &bytes[row.key_at..row.key_at + row.key_len];
        let (mut head, mut tail) = ([0u8; 8], [0u8; 16]);
        let n = key.len().min(8);
        head[..n].copy_from_slice(&key[..n]);
        let rest = key.get(8..).unwrap_or_default();
        let m = rest.len().min(16);
        tail[..m].copy_from_slice(&rest[..m]);
        MergeRow { key_head: u64::from_be_bytes(head), key_tail: u128::from_be_bytes(tail), buffer, row }
    }
}

/// Bytes of a key held in a [`MergeRow`].
const PREFIX_BYTES: usize = 24;

/// Sorts `rows` by key and keeps the newest row of each key (rows come in age order: buffer, then
/// place in it), which is the order the B-tree merge wants and exactly what replaying them says.
fn last_per_key(buffers: &[Vec<u8>], rows: &mut Vec<MergeRow>) {
    let key = |r: &MergeRow| &buffers[r.buffer as usize][r.row.key_at..r.row.key_at + r.row.key_len];
    // Zero-padded prefixes order keys as the keys do, except that equal prefixes decide nothing.
    // Two keys that both fit in the prefix and pad to the same bytes differ only in length (the
    // shorter is a prefix of the longer), so the length decides without reading the records.
    let rest_cmp = |a: &MergeRow, b: &MergeRow| {
        if a.row.key_len <= PREFIX_BYTES && b.row.key_len <= PREFIX_BYTES {
            a.row.key_len.cmp(&b.row.key_len)
        } else {
            key(a).cmp(key(b))
        }
    };
    rows.sort_unstable_by(|a, b| {
        (a.key_head, a.key_tail)
            .cmp(&(b.key_head, b.key_tail))
            .then_with(|| rest_cmp(a, b))
            .then_with(|| (a.buffer, a.row.key_at).cmp(&(b.buffer, b.row.key_at)))
    });
    let same_key = |a: &MergeRow, b: &MergeRow| {
        (a.key_head, a.key_tail) == (b.key_head, b.key_tail) && rest_cmp(a, b).is_eq()
    };
    let mut kept = 0;
    for i in 0..rows.len() {
        if kept > 0 && same_key(&rows[kept - 1], &rows[i]) {
            rows[kept - 1] = rows[i];
        } else {
            rows[kept] = rows[i];
            kept += 1;
        }
    }
    rows.truncate(kept);
}

/// Buffers of finished merges, kept for the next one. A merge's row index is one allocation of
/// tens of MB and its records a few hundred of ~300 KB: fresh memory of that size comes from the
/// kernel, zeroed page by page on first touch (57% of the preparation's time at 1 M keys), while
/// memory a finished merge leaves here is simply reused (the server keeps its peak footprint
/// anyway, D16). One set is kept; a second merge at the same time allocates its own.
static SPARE: std::sync::Mutex<Spare> =
    std::sync::Mutex::new(Spare { rows: Vec::new(), buffers: Vec::new() });

struct Spare {
    rows: Vec<Vec<MergeRow>>,
    buffers: Vec<Vec<u8>>,
}

/// Spare record buffers kept at most (a merge of ~1 M rows reads ~500 records), and their bytes
/// (a merge of ~1 M 100-byte rows reads ~150 MB): records of large values are not all kept.
const SPARE_BUFFERS_MAX: usize = 4_096;
const SPARE_BUFFER_BYTES_MAX: usize = 512 << 20;

fn spare() -> std::sync::MutexGuard<'static, Spare> {
    // The pool holds only empty buffers: a panic elsewhere leaves nothing inconsistent in it.
    SPARE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An empty row list with room for `rows`, reusing a finished merge's if there is one.
fn spare_rows(rows: usize) -> Vec<MergeRow> {
    let mut list = spare().rows.pop().unwrap_or_default();
    list.clear();
    list.reserve(rows);
    list
}

fn give_back(rows: Vec<Vec<MergeRow>>, buffers: Vec<Vec<u8>>) {
    let mut spare = spare();
    for mut list in rows {
        if spare.rows.len() < 2 && list.capacity() > 0 {
            list.clear();
            spare.rows.push(list);
        }
    }
    let mut bytes: usize = spare.buffers.iter().map(Vec::capacity).sum();
    for mut buffer in buffers {
        if spare.buffers.len() >= SPARE_BUFFERS_MAX || bytes + buffer.capacity() > SPARE_BUFFER_BYTES_MAX {
            continue;
        }
        bytes += buffer.capacity();
        buffer.clear();
        spare.buffers.push(buffer);
    }
}

/// A merge of the records up to `through_seq` into the tables, spread over checkpoints so that
/// none of them takes much longer than usual (SPEC §8.4: a durable commit at least once a second).
/// Records appended meanwhile are newer and stay in the journal; recovery replays every record
/// over the tables, which is right at any point of a merge because a merged row is exactly what
/// the merged records say last about its key.
///
/// It holds the records' bytes and, per key, where its newest row lies in them: preparing a merge
/// allocates per record, not per row, and sorts small fixed-size entries.
pub struct JournalMerge {
    through_seq: u64,
    /// Rows in the records being merged (the journal holds that many fewer once they are deleted).
    record_rows: u64,
    buffers: Vec<Vec<u8>>,
    /// Sorted by key, one per key; those before `*_next` are written.
    entities: Vec<MergeRow>,
    relationships: Vec<MergeRow>,
    entities_next: usize,
    relationships_next: usize,
    /// Changes written per step.
    step_rows: usize,
}

impl Drop for JournalMerge {
    fn drop(&mut self) {
        give_back(
            vec![std::mem::take(&mut self.entities), std::mem::take(&mut self.relationships)],
            std::mem::take(&mut self.buffers),
        );
    }
}

impl JournalMerge {
    /// Indexes the rows of `records` (`(seq, bytes)`, oldest first), keeps the newest per key and
    /// sorts them.
    fn of_records(
        through_seq: u64,
        records: Vec<(u64, Vec<u8>)>,
        steps: usize,
        step_rows_min: usize,
    ) -> Result<JournalMerge, ShardError> {
        // The counts each record starts with size the row lists.
        let (mut entity_rows, mut relationship_rows) = (0usize, 0usize);
        for (seq, bytes) in &records {
            let (entities, relationships) = record_counts(*seq, bytes)?;
            entity_rows += entities;
            relationship_rows += relationships;
        }
        let (mut entities, mut relationships) = (spare_rows(entity_rows), spare_rows(relationship_rows));
        for (i, (seq, bytes)) in records.iter().enumerate() {
            let buffer = u32::try_from(i).map_err(|_| ShardError::Corrupt {
                what: "row journal",
                detail: "more than 2^32 records".into(),
            })?;
            walk(
                *seq,
                bytes,
                |row| entities.push(MergeRow::new(buffer, bytes, row)),
                |row| relationships.push(MergeRow::new(buffer, bytes, row)),
            )?;
        }
        let buffers: Vec<Vec<u8>> = records.into_iter().map(|(_, bytes)| bytes).collect();
        let record_rows = (entities.len() + relationships.len()) as u64;
        last_per_key(&buffers, &mut entities);
        last_per_key(&buffers, &mut relationships);
        let step_rows = ((entities.len() + relationships.len()).div_ceil(steps.max(1))).max(step_rows_min);
        Ok(JournalMerge {
            through_seq,
            record_rows,
            buffers,
            entities,
            relationships,
            entities_next: 0,
            relationships_next: 0,
            step_rows,
        })
    }

    /// Reads every record up to `through_seq` into one sorted change set; each later step writes
    /// `1 / steps` of it (at least `step_rows_min` changes).
    pub fn start(
        journal: &impl ReadableTable<u64, &'static [u8]>,
        through_seq: u64,
        steps: usize,
        step_rows_min: usize,
    ) -> Result<JournalMerge, ShardError> {
        let s = |e: redb::StorageError| ShardError::redb("state.redb read row journal", e);
        let mut records = Vec::new();
        let mut buffers = std::mem::take(&mut spare().buffers);
        for record in journal.range(..=through_seq).map_err(s)? {
            let (seq, bytes) = record.map_err(s)?;
            let mut buffer = buffers.pop().unwrap_or_default();
            buffer.extend_from_slice(bytes.value());
            records.push((seq.value(), buffer));
        }
        give_back(Vec::new(), buffers);
        JournalMerge::of_records(through_seq, records, steps, step_rows_min)
    }

    /// A one-step merge of `entities` and `relationships` (not from records: a full rewrite).
    pub fn of_changes(entities: EntityChanges, relationships: RelationshipChanges) -> JournalMerge {
        let bytes = encode(&entities, &relationships);
        drop((entities, relationships));
        let merge = JournalMerge::of_records(0, vec![(0, bytes)], 1, usize::MAX);
        // `encode` wrote what `walk` reads: a failure here is a bug in this file.
        let mut merge = merge.expect("an encoded record decodes");
        merge.record_rows = 0;
        merge
    }

    fn key(&self, row: &MergeRow) -> &[u8] {
        &self.buffers[row.buffer as usize][row.row.key_at..row.row.key_at + row.row.key_len]
    }

    fn entity_value(&self, row: &MergeRow) -> Option<&[u8]> {
        row.row.value.map(|(at, len)| &self.buffers[row.buffer as usize][at..at + len])
    }

    fn version(&self, row: &MergeRow) -> Option<u64> {
        row.row.value.map(|(at, _)| version_at(&self.buffers[row.buffer as usize], at))
    }

    /// Rows in the records being merged.
    pub fn record_rows(&self) -> u64 {
        self.record_rows
    }

    /// The not yet written changes (sorted by key, one per key), for a reader that wants the
    /// journal's final word on each key rather than a merge.
    pub fn into_changes(self) -> (EntityChanges, RelationshipChanges) {
        let entities = self.entities[self.entities_next..]
            .iter()
            .map(|row| (self.key(row).to_vec(), self.entity_value(row).map(<[u8]>::to_vec)))
            .collect();
        let relationships = self.relationships[self.relationships_next..]
            .iter()
            .map(|row| (self.key(row).to_vec(), self.version(row)))
            .collect();
        (entities, relationships)
    }

    /// Changes not yet written.
    pub fn remaining(&self) -> usize {
        (self.entities.len() - self.entities_next) + (self.relationships.len() - self.relationships_next)
    }

    pub fn is_done(&self) -> bool {
        self.remaining() == 0
    }

    /// Writes the next step's changes into the tables in key order; returns how many.
    pub fn step(
        &mut self,
        entities: &mut Table<'_, &'static [u8], &'static [u8]>,
        relationships: &mut Table<'_, &'static [u8], u64>,
    ) -> Result<usize, redb::StorageError> {
        self.step_until(entities, relationships, None)
    }

    /// [`Self::step`] that also stops at `deadline`, looked at every `JOURNAL_MERGE_CLOCK_ROWS`
    /// rows (so it always writes at least that many, or what is left).
    pub fn step_until(
        &mut self,
        entities: &mut Table<'_, &'static [u8], &'static [u8]>,
        relationships: &mut Table<'_, &'static [u8], u64>,
        deadline: Option<Instant>,
    ) -> Result<usize, redb::StorageError> {
        let mut written = 0;
        while written < self.step_rows && !self.is_done() {
            if written > 0 && deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                break;
            }
            let budget = JOURNAL_MERGE_CLOCK_ROWS.min(self.step_rows - written);
            let n = budget.min(self.entities.len() - self.entities_next);
            for row in &self.entities[self.entities_next..self.entities_next + n] {
                match self.entity_value(row) {
                    Some(value) => entities.insert(self.key(row), value).map(|_| ())?,
                    None => entities.remove(self.key(row)).map(|_| ())?,
                }
            }
            self.entities_next += n;
            let m = (budget - n).min(self.relationships.len() - self.relationships_next);
            for row in &self.relationships[self.relationships_next..self.relationships_next + m] {
                match self.version(row) {
                    Some(version) => relationships.insert(self.key(row), version).map(|_| ())?,
                    None => relationships.remove(self.key(row)).map(|_| ())?,
                }
            }
            self.relationships_next += m;
            written += n + m;
        }
        if self.is_done() {
            // Nothing points into the records any more.
            give_back(Vec::new(), std::mem::take(&mut self.buffers));
        }
        Ok(written)
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
        fn p06_keep_last_per_key_is_what_replaying_in_order_leaves(
            rows in proptest::collection::vec(
                (proptest::collection::vec(0u8..4, 0..3), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..4))),
                0..200,
            ),
        ) {
            let mut model = std::collections::BTreeMap::new();
            for (key, value) in &rows {
                model.insert(key.clone(), value.clone());
            }
            // The last row of each key, in the order those rows came.
            let mut expected: EntityChanges = Vec::new();
            for (i, (key, value)) in rows.iter().enumerate() {
                if !rows[i + 1..].iter().any(|(later, _)| later == key) {
                    expected.push((key.clone(), value.clone()));
                }
            }
            prop_assert_eq!(expected.len(), model.len());
            let mut kept = rows;
            keep_last_per_key(&mut kept);
            prop_assert_eq!(kept, expected);
        }
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

        /// A merge's rows are the records replayed into a map: newest row per key, in key order,
        /// across records, with keys that share long prefixes (the sort's shortcut) or none.
        #[test]
        fn p03_merge_rows_are_a_replay(
            records in proptest::collection::vec(
                proptest::collection::vec((merge_key_strategy(), proptest::option::of(any::<u16>())), 0..12),
                0..5,
            ),
        ) {
            let mut model = std::collections::BTreeMap::new();
            let mut encoded: Vec<(u64, Vec<u8>)> = Vec::new();
            for (i, record) in records.iter().enumerate() {
                let entities: EntityChanges = record
                    .iter()
                    .map(|(k, v)| (k.clone(), v.map(|v| v.to_le_bytes().to_vec())))
                    .collect();
                // The same changes as relationships, with the value as a version.
                let relationships: RelationshipChanges =
                    record.iter().map(|(k, v)| (k.clone(), v.map(|v| u64::from(v) + i as u64))).collect();
                for ((k, v), (_, version)) in entities.iter().zip(&relationships) {
                    model.insert(k.clone(), (v.clone(), *version));
                }
                encoded.push((i as u64, encode(&entities, &relationships)));
            }
            let merge = JournalMerge::of_records(9, encoded, 2, 1).unwrap();
            prop_assert_eq!(merge.remaining(), 2 * model.len());
            let (entities, relationships) = merge.into_changes();
            let want_entities: EntityChanges = model.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect();
            let want_relationships: RelationshipChanges = model.iter().map(|(k, (_, v))| (k.clone(), *v)).collect();
            prop_assert_eq!(entities, want_entities);
            prop_assert_eq!(relationships, want_relationships);
        }
    }

    /// Short keys, and keys that agree on their first 24 bytes and differ after them.
    fn merge_key_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(0u8..3, 0..4),
            proptest::collection::vec(0u8..3, 0..4).prop_map(|tail| [vec![7u8; 22], tail].concat()),
            proptest::collection::vec(0u8..3, 0..4).prop_map(|tail| [vec![7u8; 26], tail].concat()),
        ]
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
                            // One change per key in a record, as `keep_last_per_key` guarantees.
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

    /// Proves a step past its deadline still writes one clock interval of rows, and that steps
    /// cut short by the clock finish the merge with every row in the table.
    #[test]
    fn t02_time_bounded_steps_make_progress_and_finish() {
        use redb::ReadableTableMetadata;
        let rows = 3 * JOURNAL_MERGE_CLOCK_ROWS + 10;
        let entities: EntityChanges =
            (0..rows).map(|i| (format!("k{i:06}").into_bytes(), Some(vec![i as u8]))).collect();
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("state.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut journal = txn.open_table(ROW_JOURNAL).unwrap();
            journal.insert(0, encode(&entities, &[]).as_slice()).unwrap();
            let mut merge = JournalMerge::start(&journal, 0, 1, 0).unwrap();
            let mut table = txn.open_table(ENTITIES_T).unwrap();
            let mut relationships = txn.open_table(RELATIONSHIPS_T).unwrap();
            let past = Some(Instant::now());
            let mut steps = 0;
            while !merge.is_done() {
                let written = merge.step_until(&mut table, &mut relationships, past).unwrap();
                assert_eq!(written, JOURNAL_MERGE_CLOCK_ROWS.min(rows - steps * JOURNAL_MERGE_CLOCK_ROWS));
                steps += 1;
            }
            assert_eq!(steps, 4);
            assert_eq!(table.len().unwrap(), rows as u64);
            merge.finish(&mut journal).unwrap();
            assert!(journal.is_empty().unwrap());
        }
        txn.commit().unwrap();
    }

    #[test]
    fn t01_huge_counts_are_corruption_not_allocation() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        assert!(matches!(decode(3, &bytes), Err(ShardError::Corrupt { .. })));
    }
}
