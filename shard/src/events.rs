//! The node's event log (SPEC §11.6): the things an operator asks about after the fact —
//! leader and membership changes, divergences and recoveries, snapshots and retention runs,
//! integrity findings, unreachable peers, failed groups — kept as a bounded ring in `node.redb`
//! (table `events`, the last `EVENTS_KEPT_MAX` events of at most `EVENTS_AGE_MAX_SECS`) and served
//! by `GetEvents` (`ledger-admin logs`).
//!
//! **Recording an event** is a `tracing` event with target [`TARGET`], most simply through the
//! [`event!`](crate::event) macro: a level (`error`, `warn`, `info`, `debug`), the kind, then
//! fields and an optional message exactly as `tracing`'s macros take them:
//!
//! ```ignore
//! ledger_shard::event!(warn, "state_root_divergence",
//!     group = %group_id, scope = %scope, height = at_height,
//!     expected = %hex(&expected), computed = %hex(&computed),
//!     "vault {scope} diverged at height {at_height}");
//! ```
//!
//! The same line goes to the node's log (stderr, text or JSON per `log_format`), where the kind
//! reads `event=state_root_divergence`. Fields with a meaning of their own: `group` (a group id),
//! `scope` (`ns/vault`, as `ScopeKey` displays) or `namespace` and `vault`; every other field is
//! kept as text in the event's `fields`. Use `%` for values shown with `Display`.
//!
//! **Where events go**: the server installs [`layer`] in its `tracing` subscriber and
//! [`attach`]es the log it opened on `node.redb`; the layer turns each event into a wire
//! [`Event`] and [`EventLog::record`]s it, which only `try_send`s on a bounded queue (a full
//! queue drops the event and counts it: recording never waits, on a core's executor or
//! anywhere). The log's writer thread inserts what is queued in one redb transaction, unsynced
//! (events are diagnostics: a power loss may take the last few seconds of them), with a synced
//! commit at least every `EVENTS_SYNC_INTERVAL_MS`, and trims the ring in the same transaction
//! (D39). Without a subscriber (the in-process tests) events are simply not recorded.

use crate::constants::{
    EVENTS_AGE_MAX_SECS, EVENTS_BATCH_MAX, EVENTS_KEPT_MAX, EVENTS_LIMIT_DEFAULT, EVENTS_LIMIT_MAX,
    EVENTS_QUEUED_MAX, EVENTS_SYNC_INTERVAL_MS, EVENT_TEXT_BYTES_MAX,
};
use crate::error::ShardError;
use crate::shard::Shard;
use ledger_core::types::Timestamp;
use ledger_wire::messages::{Response, Status, StatusCode};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub use ledger_wire::messages::{Event, EventLevel};
#[doc(hidden)]
pub use tracing as __tracing;

/// The `tracing` target that marks an event for the event log.
pub const TARGET: &str = "ledger::event";

/// `node.redb` table of the ring: (unix nanoseconds, sequence) → rkyv [`Event`].
const EVENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("events");

/// Records an event (see the module documentation): `event!(level, "kind", fields…, "message")`
/// with `level` one of `error`, `warn`, `info`, `debug`.
#[macro_export]
macro_rules! event {
    ($level:ident, $kind:expr) => {
        $crate::events::__tracing::$level!(target: "ledger::event", event = %$kind)
    };
    ($level:ident, $kind:expr, $($rest:tt)+) => {
        $crate::events::__tracing::$level!(target: "ledger::event", event = %$kind, $($rest)+)
    };
}

/// The ring's bounds (the constants, smaller in tests).
#[derive(Debug, Clone, Copy)]
pub struct EventBounds {
    pub kept_max: u64,
    pub age_max: Duration,
    pub queued_max: usize,
}

impl Default for EventBounds {
    fn default() -> Self {
        EventBounds {
            kept_max: EVENTS_KEPT_MAX,
            age_max: Duration::from_secs(EVENTS_AGE_MAX_SECS),
            queued_max: EVENTS_QUEUED_MAX,
        }
    }
}

/// What `GetEvents` asks for (SPEC §5.3 item 34).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Look-back window in seconds; 0 = all.
    pub since_secs: u64,
    /// Substring of the kind, the message or a `key=value` field.
    pub filter: Option<String>,
    /// The least severe level returned (`Warn` returns Error and Warn); None = all.
    pub min_level: Option<EventLevel>,
    /// Events returned at most, the newest ones; 0 = `EVENTS_LIMIT_DEFAULT`.
    pub limit: u32,
}

impl EventQuery {
    fn matches(&self, event: &Event) -> bool {
        if self.min_level.is_some_and(|least| event.level > least) {
            return false;
        }
        let Some(needle) = self.filter.as_deref() else { return true };
        event.kind.contains(needle)
            || event.message.contains(needle)
            || event.fields.iter().any(|(k, v)| format!("{k}={v}").contains(needle))
    }
}

enum Command {
    Record(Event),
    /// Write everything queued before it, sync, then answer.
    Flush(flume::Sender<()>),
    /// As `Flush`, then end the writer.
    Close,
}

/// The persistent ring and its writer thread. Shared (`Arc`) by the tracing layer, core 0's
/// shard (queries) and the server (which closes it at shutdown).
pub struct EventLog {
    db: Arc<Database>,
    queue: flume::Sender<Command>,
    dropped: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog").field("dropped", &self.dropped()).finish_non_exhaustive()
    }
}

impl EventLog {
    /// Opens the ring in `db` (creating the table), trims it, and starts the writer thread.
    pub fn open(db: Arc<Database>, bounds: EventBounds) -> Result<Arc<EventLog>, ShardError> {
        let mut writer =
            Writer { db: db.clone(), bounds, next_seq: 0, synced_at: Instant::now(), unsynced: false };
        writer.next_seq = writer.prepare()?;
        let (queue, inbox) = flume::bounded(bounds.queued_max);
        let thread = crate::helper_threads::spawn_helper("event-log", move || writer.run(inbox))
            .map_err(|source| ShardError::Io { path: "event-log thread".into(), source })?;
        Ok(Arc::new(EventLog { db, queue, dropped: AtomicU64::new(0), writer: Mutex::new(Some(thread)) }))
    }

    /// Queues `event` for the writer; never waits. A full (or closed) queue drops it and counts.
    pub fn record(&self, event: Event) {
        if self.queue.try_send(Command::Record(event)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events dropped because the queue was full or the log closed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until everything recorded so far is written and synced (tests, shutdown). Blocks:
    /// not for an executor.
    pub fn flush(&self) {
        let (done, wait) = flume::bounded(1);
        if self.queue.send(Command::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// Writes and syncs what is queued and stops the writer; later events are dropped
    /// (counted). Blocks until the writer has ended.
    pub fn close(&self) {
        let thread = self.writer.lock().ok().and_then(|mut writer| writer.take());
        if let Some(thread) = thread {
            if self.queue.send(Command::Close).is_ok() {
                let _ = thread.join();
            }
        }
    }

    /// The events `query` selects, oldest first (the newest `limit` of those that match). A
    /// read transaction over the ring: blocking, run it off the executor ([`query`]).
    pub fn query(&self, query: &EventQuery) -> Result<Vec<Event>, ShardError> {
        let txn = self.db.begin_read().map_err(|e| ShardError::redb("events: begin read", e))?;
        let table = match txn.open_table(EVENTS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(ShardError::redb("events: open table", e)),
        };
        let limit = match query.limit {
            0 => EVENTS_LIMIT_DEFAULT,
            n => n.min(EVENTS_LIMIT_MAX),
        } as usize;
        let from = match query.since_secs {
            0 => 0,
            secs => unix_nanos(&now()).saturating_sub(secs.saturating_mul(1_000_000_000)),
        };
        let mut found = Vec::new();
        let rows = table.range((from, 0)..).map_err(|e| ShardError::redb("events: range", e))?;
        for row in rows.rev() {
            let (_, value) = row.map_err(|e| ShardError::redb("events: read", e))?;
            let event: Event = crate::codec::decode("event", value.value())?;
            if query.matches(&event) {
                found.push(event);
                if found.len() == limit {
                    break;
                }
            }
        }
        found.reverse();
        Ok(found)
    }
}

/// The writer thread's state.
struct Writer {
    db: Arc<Database>,
    bounds: EventBounds,
    next_seq: u64,
    synced_at: Instant,
    /// Commits since the last synced one.
    unsynced: bool,
}

impl Writer {
    /// Creates the table, trims it, and returns the next sequence number.
    fn prepare(&mut self) -> Result<u64, ShardError> {
        let txn = self.db.begin_write().map_err(|e| ShardError::redb("events: begin write", e))?;
        let next = {
            let mut table = txn.open_table(EVENTS).map_err(|e| ShardError::redb("events: open table", e))?;
            let last = table.last().map_err(|e| ShardError::redb("events: last", e))?;
            let next = last.map(|(key, _)| key.value().1 + 1).unwrap_or(0);
            self.trim(&mut table)?;
            next
        };
        txn.commit().map_err(|e| ShardError::redb("events: commit", e))?;
        Ok(next)
    }

    fn run(mut self, inbox: flume::Receiver<Command>) {
        let period = Duration::from_millis(EVENTS_SYNC_INTERVAL_MS);
        loop {
            let first = match inbox.recv_timeout(period) {
                Ok(command) => command,
                Err(flume::RecvTimeoutError::Timeout) => {
                    self.sync_if_due(true);
                    continue;
                }
                Err(flume::RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = Vec::new();
            let mut flushes = Vec::new();
            let mut closing = false;
            for command in std::iter::once(first).chain(inbox.try_iter().take(EVENTS_BATCH_MAX)) {
                match command {
                    Command::Record(event) => batch.push(event),
                    Command::Flush(done) => flushes.push(done),
                    Command::Close => closing = true,
                }
            }
            if !batch.is_empty() {
                if let Err(e) = self.write(&batch) {
                    // Not an event: recording it would fail the same way.
                    tracing::error!(error = %e, cause = ?std::error::Error::source(&e), lost = batch.len(), "event log write failed");
                }
            }
            self.sync_if_due(!flushes.is_empty() || closing);
            for done in flushes {
                let _ = done.send(());
            }
            if closing {
                // Events recorded from here on wait in the queue unwritten: the node is stopping.
                return;
            }
        }
        self.sync_if_due(true);
    }

    /// One transaction: insert `batch`, trim the ring. Synced if the last sync is a period old.
    fn write(&mut self, batch: &[Event]) -> Result<(), ShardError> {
        let mut txn = self.db.begin_write().map_err(|e| ShardError::redb("events: begin write", e))?;
        let sync = self.synced_at.elapsed() >= Duration::from_millis(EVENTS_SYNC_INTERVAL_MS);
        txn.set_durability(if sync { Durability::Immediate } else { Durability::None })
            .map_err(|e| ShardError::redb("events: durability", e))?;
        {
            let mut table = txn.open_table(EVENTS).map_err(|e| ShardError::redb("events: open table", e))?;
            for event in batch {
                let bytes = crate::codec::encode(event);
                table
                    .insert((unix_nanos(&event.ts), self.next_seq), bytes.as_slice())
                    .map_err(|e| ShardError::redb("events: insert", e))?;
                self.next_seq += 1;
            }
            self.trim(&mut table)?;
        }
        txn.commit().map_err(|e| ShardError::redb("events: commit", e))?;
        self.note_commit(sync);
        Ok(())
    }

    /// Drops events older than the age bound, then the oldest beyond the count bound.
    fn trim(&self, table: &mut redb::Table<'_, (u64, u64), &[u8]>) -> Result<(), ShardError> {
        let oldest_kept = unix_nanos(&now()).saturating_sub(self.bounds.age_max.as_nanos() as u64);
        table.retain_in(..(oldest_kept, 0), |_, _| false).map_err(|e| ShardError::redb("events: trim", e))?;
        let len = table.len().map_err(|e| ShardError::redb("events: len", e))?;
        for _ in self.bounds.kept_max..len {
            table.pop_first().map_err(|e| ShardError::redb("events: trim", e))?;
        }
        Ok(())
    }

    /// A synced (empty) commit when there are unsynced ones and `now` or a period has passed.
    fn sync_if_due(&mut self, now: bool) {
        let due = now || self.synced_at.elapsed() >= Duration::from_millis(EVENTS_SYNC_INTERVAL_MS);
        if !self.unsynced || !due {
            return;
        }
        let synced = match self.db.begin_write() {
            Ok(txn) => txn.commit().map_err(redb::Error::from),
            Err(e) => Err(redb::Error::from(e)),
        };
        match synced {
            Ok(()) => self.note_commit(true),
            Err(e) => tracing::error!(error = %e, "event log sync failed"),
        }
    }

    fn note_commit(&mut self, synced: bool) {
        if synced {
            self.synced_at = Instant::now();
            self.unsynced = false;
        } else {
            self.unsynced = true;
        }
    }
}

fn now() -> Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() }
}

fn unix_nanos(ts: &Timestamp) -> u64 {
    (ts.secs.max(0) as u64).saturating_mul(1_000_000_000).saturating_add(ts.nanos as u64)
}

// ---------------------------------------------------------------------------------------------
// The tracing side

/// The log the process-wide [`layer`] records into (set by the server once `node.redb` is open).
static ATTACHED: RwLock<Option<Arc<EventLog>>> = RwLock::new(None);

/// Makes `log` the one [`layer`] records into (None: record nowhere).
pub fn attach(log: Option<Arc<EventLog>>) {
    if let Ok(mut attached) = ATTACHED.write() {
        *attached = log;
    }
}

/// The layer that records every event with target [`TARGET`] into the attached log. It carries
/// its own filter (that target only), so it enables no other callsite: add it beside the fmt
/// layer, whose level filter must then be a per-layer filter too.
pub fn layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    layer_into(None)
}

/// [`layer`] recording into `log` rather than the attached one (tests).
pub fn layer_into<S>(log: Option<Arc<EventLog>>) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    let only_events = tracing_subscriber::filter::filter_fn(|meta| meta.target() == TARGET);
    EventLayer { log }.with_filter(only_events)
}

struct EventLayer {
    /// None: the attached log.
    log: Option<Arc<EventLog>>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EventLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        let log = match &self.log {
            Some(log) => Some(log.clone()),
            None => ATTACHED.read().ok().and_then(|attached| attached.clone()),
        };
        if let Some(log) = log {
            log.record(from_tracing(event));
        }
    }
}

/// The wire [`Event`] of a tracing event: `event`/`kind`, `message`, `group`, `scope`,
/// `namespace` and `vault` have their places, everything else becomes a text field.
pub fn from_tracing(event: &tracing::Event<'_>) -> Event {
    let level = match *event.metadata().level() {
        tracing::Level::ERROR => EventLevel::Error,
        tracing::Level::WARN => EventLevel::Warn,
        tracing::Level::INFO => EventLevel::Info,
        _ => EventLevel::Debug,
    };
    let mut visitor = EventVisitor {
        event: Event {
            ts: now(),
            level,
            kind: String::new(),
            group_id: None,
            namespace_id: None,
            vault_id: None,
            message: String::new(),
            fields: Vec::new(),
        },
    };
    event.record(&mut visitor);
    if visitor.event.kind.is_empty() {
        visitor.event.kind = "unnamed".into();
    }
    visitor.event
}

struct EventVisitor {
    event: Event,
}

impl EventVisitor {
    fn put(&mut self, name: &str, mut text: String) {
        truncate(&mut text);
        let event = &mut self.event;
        match name {
            "event" | "kind" => event.kind = text,
            "message" => event.message = text,
            "group" if text.parse::<u32>().is_ok() => event.group_id = text.parse().ok(),
            "namespace" if text.parse::<i64>().is_ok() => event.namespace_id = text.parse().ok(),
            // Vault 0 is the namespace scope, which the wire writes as no vault.
            "vault" if text.parse::<i64>().is_ok() => event.vault_id = text.parse().ok().filter(|v| *v != 0),
            "scope" => match text.split_once('/').map(|(n, v)| (n.parse::<i64>(), v.parse::<i64>())) {
                Some((Ok(namespace), Ok(vault))) => {
                    event.namespace_id = Some(namespace);
                    // Vault 0 is the namespace scope, which the wire writes as no vault.
                    event.vault_id = (vault != 0).then_some(vault);
                }
                _ => event.fields.push((name.to_string(), text)),
            },
            _ => event.fields.push((name.to_string(), text)),
        }
    }
}

impl tracing::field::Visit for EventVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.put(field.name(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.put(field.name(), value.to_string());
    }
}

/// Cuts `text` to `EVENT_TEXT_BYTES_MAX` bytes at a character boundary.
fn truncate(text: &mut String) {
    if text.len() > EVENT_TEXT_BYTES_MAX {
        let mut end = EVENT_TEXT_BYTES_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

// ---------------------------------------------------------------------------------------------
// GetEvents

/// `GetEvents` (SPEC §5.3 item 34): this node's events, read on a blocking thread.
pub async fn query(
    shard: &Shard,
    since_secs: u64,
    filter: Option<String>,
    min_level: Option<EventLevel>,
    limit: u32,
) -> Result<Response, Status> {
    let Some(log) = shard.config.events.clone() else {
        return Err(Status::new(StatusCode::FailedPrecondition, "this node keeps no event log"));
    };
    let query = EventQuery { since_secs, filter, min_level, limit };
    let events = glommio::executor()
        .spawn_blocking(move || log.query(&query))
        .await
        .map_err(|e| Status::new(StatusCode::Internal, format!("reading the event log: {e}")))?;
    Ok(Response::GetEvents { events })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn database(dir: &tempfile::TempDir) -> Arc<Database> {
        Arc::new(Database::create(dir.path().join("node.redb")).unwrap())
    }

    fn bounds(kept_max: u64) -> EventBounds {
        EventBounds { kept_max, ..EventBounds::default() }
    }

    fn at(secs_ago: u64, level: EventLevel, kind: &str, message: &str) -> Event {
        let mut ts = now();
        ts.secs -= secs_ago as i64;
        Event {
            ts,
            level,
            kind: kind.into(),
            group_id: None,
            namespace_id: None,
            vault_id: None,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    fn all(log: &EventLog) -> Vec<Event> {
        log.query(&EventQuery { limit: EVENTS_LIMIT_MAX, ..EventQuery::default() }).unwrap()
    }

    fn messages(events: &[Event]) -> Vec<String> {
        events.iter().map(|e| e.message.clone()).collect()
    }

    /// The ring keeps the newest `kept_max` events: 25 recorded into a ring of 10 leave the
    /// last 10, in order, and the first 15 are gone.
    #[test]
    fn t01_ring_trims_by_count() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(database(&dir), bounds(10)).unwrap();
        for i in 0..25 {
            log.record(at(0, EventLevel::Info, "k", &format!("{i}")));
        }
        log.flush();
        let kept = messages(&all(&log));
        assert_eq!(kept, (15..25).map(|i| i.to_string()).collect::<Vec<_>>());
        assert!(!kept.contains(&"14".to_string()));
        assert_eq!(log.dropped(), 0);
    }

    /// Events older than the age bound are dropped when the writer next writes and when the log
    /// opens; younger ones stay.
    #[test]
    fn t02_ring_trims_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir);
        let day = 24 * 3600;
        let log = EventLog::open(db.clone(), bounds(100)).unwrap();
        log.record(at(8 * day, EventLevel::Info, "k", "too old"));
        log.record(at(6 * day, EventLevel::Info, "k", "six days"));
        log.flush();
        assert_eq!(messages(&all(&log)), vec!["six days"]);
        log.close();
        drop(log);
        // A ring of one day, opened over the six-day-old event, trims it at open.
        let log =
            EventLog::open(db, EventBounds { age_max: Duration::from_secs(day), ..bounds(100) }).unwrap();
        assert!(all(&log).is_empty());
    }

    /// GetEvents semantics: `min_level` Warn returns Error and Warn only; the filter matches the
    /// kind, the message or a `key=value` field; `since_secs` leaves out older events (0 = all);
    /// `limit` returns the newest events, oldest first.
    #[test]
    fn t03_query_filter_level_since_limit() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(database(&dir), bounds(100)).unwrap();
        let mut with_field = at(10, EventLevel::Debug, "retention_run", "pass done");
        with_field.fields.push(("bodies_deleted".into(), "7".into()));
        for event in [
            at(7200, EventLevel::Error, "group_failed", "old failure"),
            at(30, EventLevel::Warn, "node_unreachable", "peer 2 down"),
            at(20, EventLevel::Info, "snapshot_created", "snapshot of group 1"),
            with_field,
        ] {
            log.record(event);
        }
        log.flush();
        let ask = |query: EventQuery| messages(&log.query(&query).unwrap());
        let warn = ask(EventQuery { min_level: Some(EventLevel::Warn), ..EventQuery::default() });
        assert_eq!(warn, vec!["old failure", "peer 2 down"]);
        let errors = ask(EventQuery { min_level: Some(EventLevel::Error), ..EventQuery::default() });
        assert_eq!(errors, vec!["old failure"]);
        assert_eq!(ask(EventQuery::default()).len(), 4, "no level: every level");
        let by = |filter: &str| ask(EventQuery { filter: Some(filter.into()), ..EventQuery::default() });
        assert_eq!(by("snapshot_"), vec!["snapshot of group 1"], "kind");
        assert_eq!(by("peer 2"), vec!["peer 2 down"], "message");
        assert_eq!(by("bodies_deleted=7"), vec!["pass done"], "field");
        assert!(by("no such text").is_empty());
        let recent = ask(EventQuery { since_secs: 3600, ..EventQuery::default() });
        assert_eq!(recent, vec!["peer 2 down", "snapshot of group 1", "pass done"]);
        assert_eq!(ask(EventQuery { since_secs: 0, ..EventQuery::default() }).len(), 4);
        let newest = ask(EventQuery { limit: 2, ..EventQuery::default() });
        assert_eq!(newest, vec!["snapshot of group 1", "pass done"]);
    }

    /// Events survive closing the log and the database; after reopening, new events are added
    /// behind them (the sequence goes on, nothing is overwritten).
    #[test]
    fn t04_events_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(database(&dir), bounds(100)).unwrap();
        log.record(at(5, EventLevel::Warn, "leader_changed", "first"));
        log.record(at(5, EventLevel::Info, "bootstrap", "second"));
        log.close();
        drop(log);
        let log = EventLog::open(database(&dir), bounds(100)).unwrap();
        let events = all(&log);
        assert_eq!(messages(&events), vec!["first", "second"]);
        assert_eq!(events[0].kind, "leader_changed");
        assert_eq!(events[0].level, EventLevel::Warn);
        log.record(at(5, EventLevel::Info, "bootstrap", "third"));
        log.flush();
        assert_eq!(messages(&all(&log)), vec!["first", "second", "third"]);
    }

    /// With the writer stuck (another write transaction holds `node.redb`), recording does not
    /// wait: events beyond the queue's bound are dropped and counted, and once the writer goes
    /// on, every event not dropped is stored.
    #[test]
    fn t05_full_queue_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir);
        let log = EventLog::open(db.clone(), EventBounds { queued_max: 4, ..bounds(1000) }).unwrap();
        let blocker = db.begin_write().unwrap();
        let started = Instant::now();
        // The writer takes at most one batch (its first event and `EVENTS_BATCH_MAX` more) before
        // it blocks on the held transaction, and the queue holds 4 more: whatever the threads'
        // timing, at most that many of these are accepted, and at least the queue's 4.
        const RECORDED: u64 = 10_000;
        for i in 0..RECORDED {
            log.record(at(0, EventLevel::Info, "k", &format!("{i}")));
        }
        assert!(started.elapsed() < Duration::from_secs(1), "recording waited: {:?}", started.elapsed());
        let dropped = log.dropped();
        let accepted_max = 1 + EVENTS_BATCH_MAX as u64 + 4;
        assert!(dropped >= RECORDED - accepted_max, "{dropped}");
        assert!(dropped <= RECORDED - 4, "{dropped}");
        drop(blocker);
        log.flush();
        assert_eq!(all(&log).len() as u64 + dropped, RECORDED);
    }

    /// The layer records only events with the event target, with the kind, level, group and
    /// scope in their places, the message, and the other fields as text.
    #[test]
    fn t06_layer_records_tracing_events() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(database(&dir), bounds(100)).unwrap();
        let subscriber = tracing_subscriber::registry().with(layer_into(Some(log.clone())));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("not an event");
            let group = ledger_core::types::GroupId(3);
            let height = 10u64;
            crate::event!(warn, "snapshot_created", group = %group, scope = "1/2", height, "snapshot at {height}");
            crate::event!(info, "bootstrap");
        });
        log.flush();
        let events = all(&log);
        assert_eq!(events.len(), 2, "{events:?}");
        let first = &events[0];
        assert_eq!(first.kind, "snapshot_created");
        assert_eq!(first.level, EventLevel::Warn);
        assert_eq!(first.group_id, Some(3));
        assert_eq!((first.namespace_id, first.vault_id), (Some(1), Some(2)));
        assert_eq!(first.message, "snapshot at 10");
        assert_eq!(first.fields, vec![("height".to_string(), "10".to_string())]);
        assert_eq!(events[1].kind, "bootstrap");
        assert_eq!(events[1].group_id, None);
        assert!(events[1].message.is_empty());
    }
}
