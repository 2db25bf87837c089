//! Settings a core shard needs (a subset of SPEC §11.1), filled in by the server from its config.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub node_id: u64,
    /// Address peers and clients use to reach this node (reported in GetNodeInfo).
    pub advertise_addr: String,
    /// `{data_dir}`; each group lives in `{data_dir}/groups/gNNNNN/` (SPEC §9.1).
    pub data_dir: PathBuf,
    pub batch_max_size: usize,
    pub batch_max_delay_ms: u64,
    pub batch_eager_commit: bool,
    /// With eager commit and no block in flight, how long a round may wait, in µs, for as many
    /// transactions as the group's last round took (D51; 0 = close at once).
    pub batch_fill_wait_us: u64,
    /// Blocks a group leader may have proposed and not yet applied when its trees are built on
    /// the tree thread (`BLOCKS_IN_FLIGHT_MAX`); otherwise one (D48).
    pub blocks_in_flight_max: usize,
    /// Leaf changes a round must give the tree thread for the next rounds to overlap it
    /// (`PIPELINE_TREE_CHANGES_MIN`, D48); below it a group keeps one block in flight.
    pub pipeline_tree_changes_min: usize,
    pub max_ops_per_tx: usize,
    pub idempotency_cache_entries: usize,
    /// Client write transactions per second admitted per namespace at its group's leader, with
    /// bursts of twice that (SPEC §8.9); 0 = no limit.
    pub rate_limit_rps: u32,
    pub raft_heartbeat_ms: u64,
    pub raft_election_min_ms: u64,
    pub raft_election_max_ms: u64,
    /// Groups per data core created at bootstrap (`groups_per_core`).
    pub groups_per_core: u32,
    /// Items buffered per `WatchBlocks` stream before it ends with `ResourceExhausted`
    /// (`stream_buffer`, SPEC §4.3).
    pub stream_buffer: usize,
    /// SPEC §9.4: snapshot a group every this many group blocks (0 = not on block count).
    pub snapshot_interval_blocks: u64,
    /// SPEC §9.4: snapshot a group that applied something at least this often (0 = never on time).
    pub snapshot_interval_secs: u64,
    /// SPEC §9.4: snapshot files kept per group (newest first).
    pub snapshots_keep: usize,
    /// openraft's `SnapshotPolicy::LogsSinceLast`: a snapshot (the SPEC §9.4 file) after this many
    /// log entries since the last one; the log is then purged behind it (D31).
    pub raft_snapshot_logs: u64,
    /// Log entries kept behind a snapshot for lagging followers (`max_in_snapshot_log_to_keep`,
    /// SPEC §9.4 `raft_log_keep`).
    pub raft_log_keep: u64,
    /// SPEC §9.5: period of the body-compaction pass over Compacted vaults (300 s by default).
    pub retention_interval_secs: u64,
    /// Run at the start and end of the long-lived helper threads that build and free state trees
    /// (the server turns its node-block allocator cache on and off there).
    pub helper_hooks: HelperHooks,
    /// Trees of at least this many leaves are updated on the group's tree thread (D21;
    /// `TREE_THREAD_MIN_LEAVES`, 0 in tests so that every block goes through the thread).
    pub tree_thread_min_leaves: u64,
    /// ... by at least this many leaf changes (D49; `TREE_THREAD_MIN_CHANGES`, 0 in tests).
    pub tree_thread_min_changes: usize,
    /// Fault-injection points (faults.rs); none armed outside tests.
    pub faults: std::sync::Arc<crate::faults::Faults>,
    /// Storage failures and recoveries of this node's groups, for the metrics endpoint.
    pub storage_counters: std::sync::Arc<crate::maintenance::reopen::StorageCounters>,
    /// The largest frame this node sends or accepts, peers included (`max_frame_bytes`).
    pub max_frame_bytes: u32,
    /// The cluster this node was bootstrapped into; `None`: a single node that initializes its
    /// groups alone (`bootstrap_expect = 1`).
    pub cluster: Option<ClusterPlan>,
    /// This node's configured `replication_factor` (SPEC §10.5): what it would start a cluster
    /// with; a member follows the cluster's, recorded in `_system`.
    pub replication_factor: u32,
    /// How long a request forwarded to a group's leader may take, finding the leader included.
    pub forward_timeout: std::time::Duration,
    /// Period of a group's durable checkpoint (`CHECKPOINT_INTERVAL_MS`; tests shorten it).
    pub checkpoint_interval_ms: u64,
    /// The row journal is merged once it holds this many rows or as many as the group
    /// (`JOURNAL_MERGE_ROWS_MIN`; tests lower it to merge often).
    pub journal_merge_rows_min: u64,
    /// Rebuild a Diverged scope automatically, with SPEC §9.9's backoff (ops/vault_repair.rs);
    /// off, only `RecoverVault` rebuilds it.
    pub vault_auto_recovery: bool,
    /// Period of the background integrity check (SPEC §9.7; 0 = off).
    pub integrity_interval_secs: u64,
    /// Period of the leader's GC of expired entities (SPEC §3.8; 0 = off).
    pub gc_interval_secs: u64,
    /// The `_system` leader marks a member silent this long unavailable, and removes it after
    /// as long again (SPEC §10.6, D69; 0 = never).
    pub node_heartbeat_timeout_secs: u64,
    /// A data group's copy this node is no longer a member of is emptied this long after
    /// `_system` lists the members without it (D92; 0 = kept).
    pub replica_release_secs: u64,
    /// Period of the `_system` leader's look at who leads each group (D70; 0 = no balancing).
    pub leader_balance_interval_secs: u64,
    /// A `_system` learner's copy answers routing lookups while it heard from the leader this
    /// recently; `learner_refresh`: how long a voter's answer is reused once it is stale (§10.4).
    pub learner_cache_ttl: std::time::Duration,
    pub learner_refresh: std::time::Duration,
    /// Where core 0 keeps the other members' addresses for discovery (SPEC §10.3, D71); `None`
    /// in the in-process tests.
    pub discovery_cache_path: Option<PathBuf>,
    /// Power-loss tests only: every redb file lives on this simulated disk (storage/sim_disk.rs).
    pub sim_disk: Option<std::sync::Arc<crate::storage::sim_disk::SimDisk>>,
    /// The node's event log (events.rs), which core 0 reads for `GetEvents`; `None` in the
    /// in-process tests (`GetEvents` then answers `FailedPrecondition`).
    pub events: Option<std::sync::Arc<crate::events::EventLog>>,
    /// The secret this node's peer connections present (D42); replaced on SIGHUP.
    pub peer_credential: std::sync::Arc<crate::peer::credential::PeerCredential>,
    /// Connect to peers over TLS, presenting this node's certificate (D43); `None` = plain TCP.
    pub peer_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// The members a coordinated bootstrap agreed on (SPEC §10.2), persisted in `node.redb`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPlan {
    /// Every initial member: node id → the address peers reach it at.
    pub members: std::collections::BTreeMap<u64, String>,
    /// The member with the lowest id (SPEC §10.2); it initializes `_system`.
    pub initializer: u64,
    /// The initializer's `replication_factor` (SPEC §10.5): the voters of each data group.
    /// 0 (a data directory bootstrapped before it existed) or at least the members: every member.
    pub replication_factor: u32,
}

impl ClusterPlan {
    /// The member that initializes `group` (and so usually leads it first): group 0 the lowest
    /// id; a data group whose members are all nodes the g-th member in id order, round robin
    /// (D30); any other data group its first member (`members_of`), so that leaderships start
    /// spread over the nodes. The others wait for its leader.
    pub fn initializer_of(&self, group: ledger_core::types::GroupId) -> u64 {
        if group.0 == 0 || self.members.is_empty() {
            return self.initializer;
        }
        if self.every_member_replicates() {
            let index = group.0 as usize % self.members.len();
            return self.members.keys().nth(index).copied().unwrap_or(self.initializer);
        }
        self.members_of(group).first().map(|(id, _)| *id).unwrap_or(self.initializer)
    }

    fn every_member_replicates(&self) -> bool {
        self.replication_factor == 0 || self.replication_factor as usize >= self.members.len()
    }

    /// The initial voters of data group `group` (SPEC §10.5): `replication_factor` members taken
    /// in id order from where the previous group's stopped, wrapping round, so that every member
    /// hosts as few groups as any other (the "fewest hosted groups" rule for a fresh cluster);
    /// every member when the factor covers them all. `_system` is not placed here (§10.4).
    pub fn members_of(&self, group: ledger_core::types::GroupId) -> Vec<(u64, String)> {
        let all: Vec<(u64, String)> = self.members.iter().map(|(id, addr)| (*id, addr.clone())).collect();
        if group.0 == 0 || self.every_member_replicates() {
            return all;
        }
        let (n, rf) = (all.len(), self.replication_factor as usize);
        let start = (group.0 as usize).saturating_sub(1).wrapping_mul(rf) % n;
        // In the rotation's order: the first is the group's initializer.
        (0..rf).map(|i| all[(start + i) % n].clone()).collect()
    }
}

#[cfg(test)]
mod plan_tests {
    use super::ClusterPlan;
    use ledger_core::types::GroupId;

    fn plan(nodes: u64, rf: u32) -> ClusterPlan {
        ClusterPlan {
            members: (1..=nodes).map(|id| (id * 10, format!("n{id}"))).collect(),
            initializer: 10,
            replication_factor: rf,
        }
    }

    fn ids(plan: &ClusterPlan, group: u32) -> Vec<u64> {
        let mut ids: Vec<u64> = plan.members_of(GroupId(group)).into_iter().map(|(id, _)| id).collect();
        ids.sort_unstable();
        ids
    }

    /// A factor at or above the members (or 0, an old plan) puts every member in every group,
    /// with the initializers round robin as before (D30).
    #[test]
    fn t01_a_factor_covering_every_member_keeps_every_member() {
        for rf in [0, 3, 5] {
            let p = plan(3, rf);
            for g in 1..=4 {
                assert_eq!(ids(&p, g), vec![10, 20, 30]);
            }
            assert_eq!(p.initializer_of(GroupId(1)), 20);
            assert_eq!(p.initializer_of(GroupId(3)), 10);
        }
        assert_eq!(plan(3, 2).members_of(GroupId(0)).len(), 3, "_system is not placed by the factor");
    }

    /// Fewer replicas than members: each group gets exactly the factor, every member hosts as
    /// many groups as any other (±1), and each group's initializer is one of its members.
    #[test]
    fn t02_groups_spread_over_the_members_evenly() {
        for (nodes, rf, groups) in [(3u64, 2u32, 3u32), (4, 3, 4), (5, 3, 2), (7, 3, 10), (4, 1, 6)] {
            let p = plan(nodes, rf);
            let mut hosted = std::collections::BTreeMap::<u64, usize>::new();
            for g in 1..=groups {
                let members = ids(&p, g);
                assert_eq!(members.len(), rf as usize, "group {g} of {nodes} nodes, rf {rf}");
                let unique: std::collections::BTreeSet<u64> = members.iter().copied().collect();
                assert_eq!(unique.len(), members.len(), "a member twice in group {g}");
                assert!(members.contains(&p.initializer_of(GroupId(g))), "group {g}'s initializer");
                for m in members {
                    *hosted.entry(m).or_default() += 1;
                }
            }
            let (min, max) = (hosted.values().min().copied(), hosted.values().max().copied());
            let expected_max = (groups as usize * rf as usize).div_ceil(nodes as usize);
            assert_eq!(max, Some(expected_max), "{nodes} nodes, rf {rf}: {hosted:?}");
            if groups as usize * rf as usize >= nodes as usize {
                assert!(min.unwrap_or(0) + 1 >= expected_max, "{nodes} nodes, rf {rf}: {hosted:?}");
            }
        }
        assert_eq!(ids(&plan(3, 2), 1), vec![10, 20]);
        assert_eq!(ids(&plan(3, 2), 2), vec![10, 30]);
        assert_eq!(ids(&plan(3, 2), 3), vec![20, 30]);
        let initializers: Vec<u64> = (1..=3).map(|g| plan(3, 2).initializer_of(GroupId(g))).collect();
        assert_eq!(initializers, vec![10, 30, 20], "leaderships start spread");
    }
}

/// Functions a helper thread calls when it starts and just before it ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct HelperHooks {
    pub on_start: Option<fn()>,
    pub on_exit: Option<fn()>,
}

impl ShardConfig {
    pub fn for_tests(data_dir: PathBuf) -> Self {
        ShardConfig {
            node_id: 1,
            advertise_addr: "127.0.0.1:0".into(),
            data_dir,
            batch_max_size: 100,
            batch_max_delay_ms: 10,
            batch_eager_commit: true,
            batch_fill_wait_us: 0,
            // With `tree_thread_min_leaves: 0` every tree goes to the thread, so the unit tests
            // run the pipelined rounds (D7).
            blocks_in_flight_max: crate::constants::BLOCKS_IN_FLIGHT_MAX,
            // ... and with 0 here every round lets the next overlap it.
            pipeline_tree_changes_min: 0,
            max_ops_per_tx: 10_000,
            idempotency_cache_entries: 100_000,
            // The in-process tests write as fast as they can; a limit is asked for explicitly.
            rate_limit_rps: 0,
            raft_heartbeat_ms: 50,
            raft_election_min_ms: 150,
            raft_election_max_ms: 300,
            groups_per_core: 1,
            stream_buffer: 1024,
            snapshot_interval_blocks: 10_000,
            snapshot_interval_secs: 3600,
            snapshots_keep: 3,
            raft_snapshot_logs: 10_000,
            raft_log_keep: 1000,
            retention_interval_secs: 300,
            helper_hooks: HelperHooks::default(),
            tree_thread_min_leaves: 0,
            tree_thread_min_changes: 0,
            faults: Default::default(),
            storage_counters: Default::default(),
            max_frame_bytes: 16 * 1024 * 1024,
            cluster: None,
            replication_factor: 3,
            forward_timeout: std::time::Duration::from_secs(10),
            checkpoint_interval_ms: crate::constants::CHECKPOINT_INTERVAL_MS,
            journal_merge_rows_min: crate::constants::JOURNAL_MERGE_ROWS_MIN,
            // Unit tests observe Diverged scopes as apply leaves them; tests/tests/ops.rs covers
            // automatic recovery.
            vault_auto_recovery: false,
            integrity_interval_secs: 0,
            // Unit tests run GC on demand (`ForceGc`, gc.rs tests) so that no block appears
            // by itself.
            gc_interval_secs: 0,
            node_heartbeat_timeout_secs: 0,
            replica_release_secs: 0,
            leader_balance_interval_secs: 0,
            learner_cache_ttl: std::time::Duration::from_secs(5),
            learner_refresh: std::time::Duration::from_secs(1),
            discovery_cache_path: None,
            sim_disk: None,
            events: None,
            peer_credential: Default::default(),
            peer_tls: None,
        }
    }
}
