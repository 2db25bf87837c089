//! Every bound of the shard, named (STYLE: "Put a bound on every channel, batch, frame and
//! in-flight count").

/// Log entries kept in memory per group in front of the core's log files (replication and apply
/// read the log from here; older entries are read back from the segment files). Only durable entries are ever evicted. An
/// entry is one block of up to thousands of operations (~200 KB at 1000 100-byte writes), so 4096
/// of them held ~800 MB per group; 512 still cover several seconds of apply or replication lag.
pub const LOG_CACHE_ENTRIES_MAX: usize = 512;
/// A core log segment is closed and a new one started once it would grow past this (a single
/// record larger than it gets a segment of its own).
pub const LOG_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Zeros the core log's thread keeps written and synced ahead of the active segment's end when
/// idle (D38): it tops them up to this once less than half is left.
pub const LOG_ZERO_AHEAD_BYTES: u64 = 4 * 1024 * 1024;
/// The zeros are written and synced this much at a time, the writer's lock released between
/// steps, so a log write the executor wants to make waits behind one step at most (D87).
pub const LOG_ZERO_STEP_BYTES: usize = 512 * 1024;
/// Deleted log segments a core keeps as spares, reused (renamed) as later segments instead of
/// writing zeros ahead of a new one's end (D61).
pub const LOG_SPARE_SEGMENTS_MAX: usize = 8;
/// A group whose live log entries all lie a whole segment behind has them copied forward when a
/// segment starts, if it holds at most this many (and at most a quarter segment's bytes): a quiet
/// group must not keep its busy neighbours' old segments alive (D62).
pub const LOG_RELOCATE_ENTRIES_MAX: usize = 4096;
/// A synced log record larger than this is written by the log thread even when the executor could
/// write it itself (D60): a block of client-batched writes, whose write and sync take long enough
/// that the executor has better to do meanwhile. A block of a hundred single writes is ~30 KB.
pub const LOG_EXECUTOR_WRITE_BYTES_MAX: usize = 64 * 1024;
/// Commands queued to a core's log thread before `append` waits for room.
pub const LOG_WRITER_QUEUE_MAX: usize = 4096;
/// Commands the log thread folds into one write and one fdatasync.
pub const LOG_WRITER_BATCH_MAX: usize = 1024;
/// redb page-cache sizes per group file (redb's default is 1 GiB each). The rows live in memory, so
/// both files are mostly written: caches only cost memory, and on a fresh server the kernel's
/// zeroing of the fresh pages while they fill. `blocks.redb` keeps 16 MiB: its pages are written
/// once and read back rarely (history, watch replays, checks), from the kernel's page cache when
/// not here (D85). `state.redb` keeps 64 MiB: checkpoints append to the row journal (D18) and a
/// merge rewrites the tables in key order, reading each page once (a 1 M-row file is 285 MB; the
/// 1 GiB of D16 made a 1 M-key server 0.7–0.9 GB larger at the same throughput, D88).
pub const BLOCKS_DB_CACHE_BYTES: usize = 16 * 1024 * 1024;
pub const STATE_DB_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// The row journal of `state.redb` is merged into its tables once it holds this many rows or as
/// many rows as the group, whichever is more (row_journal.rs, D18).
pub const JOURNAL_MERGE_ROWS_MIN: u64 = 65_536;
/// Rows per row-journal record (a checkpoint with more appends several records).
pub const JOURNAL_RECORD_ROWS_MAX: usize = 2_048;
/// A merge is spread over this many checkpoints, each writing at least
/// `JOURNAL_MERGE_STEP_ROWS_MIN` rows (so that none runs much longer than usual).
pub const JOURNAL_MERGE_STEPS: usize = 8;
pub const JOURNAL_MERGE_STEP_ROWS_MIN: usize = 32_768;
/// A merge step stops inserting after this long (the rest waits for the next checkpoint), so a
/// checkpoint's durable commit stays well inside its 1 s period (SPEC §8.4) on a slow disk or a
/// large table. Steps of ~50–90 k rows took 0.2–0.4 s of inserts at 1 M keys.
pub const JOURNAL_MERGE_STEP_BUDGET_MS: u64 = 400;
/// Rows a time-bounded merge step writes between two looks at the clock (and at least once).
pub const JOURNAL_MERGE_CLOCK_ROWS: usize = 1_024;
/// Period of the durable state checkpoint while there is applied, un-checkpointed state.
pub const CHECKPOINT_INTERVAL_MS: u64 = 1000;
/// A redb file's first writes after a sync, up to this many bytes, are neither pushed nor paced
/// (D64): a small checkpoint goes at once, as it did before.
pub const CHECKPOINT_PACE_FREE_BYTES: u64 = 4 * 1024 * 1024;
/// Past those, a redb file's writes are pushed to the disk each time this many bytes were written since the
/// last push, and then paced (D64), so a checkpoint never queues megabytes ahead of a log sync.
pub const CHECKPOINT_PUSH_BYTES: u64 = 256 * 1024;
/// The pace of a checkpoint's writes: after each push, the writer sleeps what the pushed bytes
/// take at this rate (D64: 32 MB/s per core left the log's syncs short on the project's disk, and
/// slower rates did not shorten them further).
pub const CHECKPOINT_PACE_BYTES_PER_SEC: u64 = 32 * 1024 * 1024;
/// At most this much pacing sleep between two syncs of a redb file: a large checkpoint (a journal
/// merge step) writes the rest at full speed, so it still ends well inside its period (SPEC §8.5).
pub const CHECKPOINT_PACE_BUDGET_MS: u64 = 300;
/// How long `open_group` retries a redb file still held by a previous incarnation of the same
/// group in this process (its I/O thread or tasks are still releasing it).
pub const DB_OPEN_RETRY_MS_MAX: u64 = 5_000;
/// How long `open_group` waits for this node to become leader of a single-voter group.
pub const LEADER_WAIT_MS_MAX: u64 = 10_000;
/// Entries per AppendEntries payload (openraft `max_payload_entries`).
pub const RAFT_PAYLOAD_ENTRIES_MAX: u64 = 300;
/// An empty AppendEntries within this long of the follower's last acknowledgement (and at most
/// half the heartbeat interval) is answered on the leader if it tells the follower nothing new,
/// or replaced by a notice sent `COMMIT_NOTICE_DELAY` later if it announces a commit (D58).
pub const COMMIT_NOTICE_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);
/// How long a commit announcement waits for the next AppendEntries to carry it (D58).
pub const COMMIT_NOTICE_DELAY: std::time::Duration = std::time::Duration::from_millis(2);
/// Notice attempts while the leader's log is not yet durable up to the commit (then the next
/// heartbeat carries it).
pub const COMMIT_NOTICE_ATTEMPTS_MAX: u32 = 10;
/// Blocks returned by one archive range read (SPEC §3.6 `GetBlockRange`).
pub const ARCHIVE_RANGE_BLOCKS_MAX: u64 = 1000;

// --- service layer (shard.rs, round/group.rs, read/reads.rs, admin/requests.rs)

/// Pending transactions per group, as a multiple of `batch_max_size` (SPEC §8.9); beyond it a
/// write is refused with `ResourceExhausted`.
pub const PENDING_QUEUE_FACTOR: usize = 10;
/// Namespaces whose rate-limit buckets a core keeps before it forgets the full ones (a full
/// bucket is the same as none; round/rate_limit.rs).
pub const RATE_LIMIT_BUCKETS_MAX: usize = 10_000;
/// Cached full write responses per `(scope, client)` (SPEC §6.2); the per-core total is the
/// `idempotency_cache_entries` setting.
pub const IDEM_CACHE_PER_CLIENT_MAX: usize = 1000;
/// How long a block round waits for the group's log to be fully applied (a new leader's no-op)
/// before it builds anyway.
pub const CATCH_UP_WAIT_MS: u64 = 1000;
/// Longest `last_key` a page token may carry (entity keys ≤ 1 KiB, relationship keys ≤ ~1.1 KiB).
pub const PAGE_TOKEN_LAST_KEY_MAX: usize = 4096;

// --- WatchBlocks streams (read/watch.rs, SPEC §4.3, §8.8)

/// Block headers one replay step reads from the archive before it yields the core.
pub const WATCH_REPLAY_CHUNK_BLOCKS: usize = 256;
/// Open streams per core; more are refused with `ResourceExhausted`.
pub const WATCHERS_PER_CORE_MAX: usize = 16_384;
/// How often a replaying stream whose buffer is full looks for room again.
pub const WATCH_CREDIT_POLL_MS: u64 = 5;
/// A replaying stream whose client drains nothing for this long ends with `ResourceExhausted`
/// (a live stream ends at once when its buffer is full: live blocks have nowhere else to wait).
pub const WATCH_REPLAY_STALL_MS_MAX: u64 = 5_000;
/// Period of the sweep that ends streams of scopes no longer Healthy (or deleted) and drops
/// streams whose connection is gone.
pub const WATCH_SWEEP_MS: u64 = 100;
/// A stream relayed from a group's members (D91) gives up after this many attempts in a row
/// that delivered nothing (member unreachable, its stream broken or refused as unavailable).
pub const WATCH_RELAY_ATTEMPTS_MAX: usize = 10;
/// Pause between two such attempts.
pub const WATCH_RELAY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
/// How long opening a relayed stream at a member may take (connect included).
pub const WATCH_RELAY_OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Blocks a group leader may have proposed but not yet applied while its blocks' state trees are
/// built on the tree thread (pipelining, D7, D21). Groups whose trees are built inline keep one
/// block in flight (D48, `Group::in_flight_limit`).
pub const BLOCKS_IN_FLIGHT_MAX: usize = 4;
/// Leaf changes sent to the tree thread by one round from which the next rounds may overlap it
/// (D48): client-batched writes into a 1 M-key vault (~6,400 changes a block) gain ~35 % from
/// the overlap; single writes into 100 k-key vaults (2–40 changes a block) lose 10–28 %.
pub const PIPELINE_TREE_CHANGES_MIN: usize = 512;

// --- snapshots, retention, integrity (storage/snapshot.rs, maintenance/)

/// Largest snapshot header accepted when reading a file (a few hundred bytes per scope).
pub const SNAPSHOT_HEADER_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Period of a group's maintenance task: checks the snapshot triggers and the retention timer.
pub const MAINTENANCE_TICK_MS: u64 = 1000;
/// Issues one integrity check reports at most (the rest are counted in the last one).
pub const INTEGRITY_ISSUES_MAX: usize = 1000;

// --- verified and historical reads (read/history.rs, read/proof_reads.rs, SPEC §5.1 items 3–4, §8.7)

/// Blocks per scope whose tree and row pre-images stay in memory for recent historical reads.
pub const HISTORY_RECENT_HEIGHTS_MAX: usize = 64;
/// Changed rows per scope the recent-history ring holds at most (older blocks are dropped first).
pub const HISTORY_RECENT_ROWS_MAX: usize = 65_536;
/// Key and value bytes of row pre-images per scope the ring holds at most.
pub const HISTORY_RECENT_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Rebuilt `(scope, height)` states kept per core (SPEC §8.7: the last 3).
pub const HISTORY_REBUILT_STATES_MAX: usize = 3;
/// Archived blocks a rebuild replays between two yields of the core.
pub const HISTORY_REPLAY_CHUNK_BLOCKS: u64 = 256;
/// Headers one chain proof may carry (≈ 200 bytes each, well inside a frame).
pub const CHAIN_PROOF_HEADERS_MAX: u64 = 10_000;

// --- state-tree thread (round/tree_worker.rs, decisions D21)

/// A tree with fewer leaves is updated on the executor itself: it fits in the core's caches, so
/// its update costs less than the round trip to the tree thread (measured at 1 k keys: 215 k
/// entity writes/s through the thread against 250–280 k inline).
pub const TREE_THREAD_MIN_LEAVES: u64 = 65_536;
/// ... and an update by fewer leaf changes is made on the executor too, whatever the tree's size:
/// at 1 M leaves one change costs ~9 µs and 100 cost ~490 µs (`ledger-bench`
/// `state_root/1M/k1`, `k100`), so 16 stay under ~100 µs of the core's time, while the round trip
/// to the thread wakes two threads (D49).
pub const TREE_THREAD_MIN_CHANGES: usize = 16;
/// Old tree versions queued to be dropped on a group's tree thread at most. The thread takes
/// them between tree updates and keeps up, one per applied scope block; a full queue means it is
/// this many versions behind, and the executor then drops the version itself (slower for that
/// core, same result), so the memory waiting to be freed stays bounded (at 1 M keys a 100-key
/// block's version holds ~160 KB of nodes of its own: ~40 MB at most).
pub const TREE_RELEASES_QUEUED_MAX: usize = 256;

// --- peers (peer/): outbound connections, forwarding, snapshots over the wire
/// Envelopes packed into one peer `RequestBatch` frame at most (also bounded by the peer's
/// `max_batch_items` and the frame size).
pub const PEER_BATCH_ITEMS_MAX: usize = 1024;
/// How long a connect to a peer may take before it counts as unreachable.
pub const PEER_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);
/// How long the TLS handshake with a peer may take after the connect (D43): two round trips and
/// signature checks on both sides, so more than a connect on a loaded host.
pub const PEER_TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// A core records `node_unreachable` for a peer at most once per this period.
pub const PEER_UNREACHABLE_EVENT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// After a failed connect, calls to that peer fail at once for this long (openraft backs off too).
pub const PEER_RECONNECT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
/// Nodes a request is sent to when looking for its group's leader (SPEC §8.1 step 3: 3 hops).
pub const FORWARD_ATTEMPTS_MAX: usize = 3;
/// Bytes of a snapshot per `InstallSnapshot` chunk (SPEC §5.6 item 43).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Pause before an archive back-fill tries its peers again (peer/backfill.rs).
pub const BACKFILL_RETRY_MS: u64 = 500;
/// How often core 0 of a cluster member checks whether it leads `_system` (registry_keeper).
pub const REGISTRY_KEEPER_TICK_MS: u64 = 100;
/// How long a node being added to a group may take to catch up as a learner (SPEC §10.6).
pub const LEARNER_CATCH_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

// --- event log (events.rs, SPEC §11.6)
/// Events kept in `node.redb` at most; older ones are dropped first (SPEC §11.6: 100,000).
pub const EVENTS_KEPT_MAX: u64 = 100_000;
/// Events older than this are dropped (SPEC §11.6: 7 days).
pub const EVENTS_AGE_MAX_SECS: u64 = 7 * 24 * 3600;
/// Events queued for the writer thread at most; an event that finds the queue full is dropped
/// and counted (recording must never wait).
pub const EVENTS_QUEUED_MAX: usize = 4096;
/// Events the writer inserts in one transaction at most.
pub const EVENTS_BATCH_MAX: usize = 1024;
/// The writer's transactions are not synced; one that is follows within this period.
pub const EVENTS_SYNC_INTERVAL_MS: u64 = 5_000;
/// Events a `GetEvents` answers when its limit is 0, and at most.
pub const EVENTS_LIMIT_DEFAULT: u32 = 1000;
pub const EVENTS_LIMIT_MAX: u32 = 10_000;
/// `integrity_issue` events recorded per integrity check at most (the reply lists every issue).
pub const INTEGRITY_EVENTS_MAX: usize = 100;
/// Bytes of an event's message, or of one field value, kept (longer text is cut).
pub const EVENT_TEXT_BYTES_MAX: usize = 2048;
// --- metrics (metrics.rs, SPEC §11.3)
/// Largest latency a histogram holds, in µs (60 s); larger values count as 60 s.
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Significant digits of every metrics histogram (SPEC §11.3).
pub const LATENCY_DIGITS: u8 = 3;
/// Slots of a latency window and their length: the quantile gauges cover 6 × 10 s.
pub const METRICS_WINDOW_SLOTS: usize = 6;
pub const METRICS_WINDOW_SLOT_SECS: u64 = 10;
/// A healthy scope whose last block is older than this gets no labels of its own (SPEC §11.3:
/// activity in the last hour).
pub const WINDOW_SECS_MAX: u64 = 3600;

/// SPEC §3.8: `ExpireEntity` operations per scope per GC cycle (one transaction).
pub const GC_EXPIRE_PER_SCOPE_MAX: usize = 1000;
/// Rows the GC scans between two chances for the core to run other work (maintenance/gc.rs).
pub const GC_SCAN_CHUNK_ROWS: usize = 4096;

/// D59: a round's fill wait (D51) stretches to the group's last block time, at most this long
/// (µs), so one slow block (a stalled fsync) cannot make every later round wait as long.
pub const FILL_WAIT_BLOCK_TIME_MAX_US: u64 = 2_000;

/// How long a whole-node stepdown keeps the leader balancer from giving that node leaderships
/// (D70): long enough for the maintenance it is usually the first step of; a restart ends it.
pub const LEADER_DRAIN: std::time::Duration = std::time::Duration::from_secs(600);

/// How often core 0 compares `_system`'s members with the peer cache, and rewrites the cache
/// when they differ (D71).
pub const PEER_CACHE_CHECK: std::time::Duration = std::time::Duration::from_secs(5);
/// SPEC §10.3: every 5 minutes a node asks a random subset of its peers for theirs (D76).
pub const PEER_REFRESH: std::time::Duration = std::time::Duration::from_secs(300);
