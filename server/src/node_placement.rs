//! Where a starting node's groups live, decided before any core starts (SPEC §10.2, §10.5): a
//! fresh member of a coordinated bootstrap agrees on the members and the groups with its peers; a
//! fresh node in join mode learns the cluster's groups and waits to be added; any other node plans
//! from what its data directory recorded, moving the groups of cores it no longer has (D77).

use crate::config::Config;
use crate::data_dir::{DataDir, StoredPlan};
use crate::node::NodeError;
use crate::tls::NodeTls;
use ledger_core::types::{CoreId, GroupId};
use ledger_router::ListenSocket;
use std::collections::BTreeMap;
use std::net::TcpListener;

/// The groups' cores and what the node learned on the way.
pub(crate) struct Placed {
    pub placement: BTreeMap<GroupId, CoreId>,
    /// The cluster's members and initializer (`None`: a single node that never was in one).
    pub plan: Option<StoredPlan>,
    /// A fresh member of a coordinated bootstrap listens early, to answer discovery while it
    /// waits for the others; every other node listens once its shards are ready.
    pub early_listeners: Option<Vec<TcpListener>>,
    /// Whether the node asks to be added to the cluster once it runs (join mode).
    pub join_after_start: bool,
}

/// Plans the placement (and records it) for a node whose address `socket` holds; takes the
/// socket when the node must listen early.
pub(crate) fn place_groups(
    config: &Config,
    dir: &DataDir,
    socket: &mut Option<ListenSocket>,
    advertise_addr: &str,
    tls: Option<&NodeTls>,
) -> Result<Placed, NodeError> {
    let previous = dir.load_placement()?;
    let recorded_plan = dir.load_plan()?;
    let mut placed = if previous.is_empty() && config.bootstrap_expect >= 2 {
        agree_with_peers(config, dir, socket, advertise_addr, tls)?
    } else if previous.is_empty() && config.bootstrap_expect == 0 {
        prepare_to_join(config, dir, advertise_addr, tls)?
    } else {
        let placement = plan_from_disk(config, dir, &previous)?;
        Placed { placement, plan: recorded_plan, early_listeners: None, join_after_start: false }
    };
    // A node that started in join mode keeps asking to be added after a restart too (an added
    // node is answered at once: the change is a no-op for a voter).
    placed.join_after_start |=
        config.join_by_itself && placed.plan.as_ref().is_some_and(|p| p.members.is_empty());
    Ok(placed)
}

/// A fresh member of a coordinated bootstrap: listens, agrees with `bootstrap_expect` peers on
/// the members and the data groups, and places the groups.
fn agree_with_peers(
    config: &Config,
    dir: &DataDir,
    socket: &mut Option<ListenSocket>,
    advertise_addr: &str,
    tls: Option<&NodeTls>,
) -> Result<Placed, NodeError> {
    let listeners = socket.take().ok_or(NodeError::ShardStart(0))?.listen(config.cores)?;
    let me = crate::bootstrap::NodeAnswer {
        node_id: dir.node_id,
        address: advertise_addr.to_string(),
        cores: config.cores as u16,
        is_cluster_member: false,
        groups: Vec::new(),
        data_groups: config.data_groups(),
        replication_factor: config.replication_factor,
    };
    let first = listeners.first().ok_or(NodeError::ShardStart(0))?;
    let agreed = crate::bootstrap::coordinate(first, config, me, tls)?;
    let groups = ledger_router::placement::data_groups(agreed.data_groups);
    let placement = ledger_router::placement::plan(&BTreeMap::new(), &groups, config.cores);
    let stored = StoredPlan {
        members: agreed.members.into_iter().collect(),
        initializer: agreed.initializer,
        replication_factor: agreed.replication_factor,
    };
    dir.store_plan(&stored, &placement)?;
    ledger_shard::event!(
        info,
        "bootstrap",
        mode = "cluster",
        members = ?stored.members,
        initializer = stored.initializer,
        data_groups = groups.len().saturating_sub(1),
        replication_factor = stored.replication_factor,
        "the cluster's members agreed; groups placed"
    );
    Ok(Placed { placement, plan: Some(stored), early_listeners: Some(listeners), join_after_start: false })
}

/// Join mode: host the cluster's groups, uninitialized, until a member adds this node.
fn prepare_to_join(
    config: &Config,
    dir: &DataDir,
    advertise_addr: &str,
    tls: Option<&NodeTls>,
) -> Result<Placed, NodeError> {
    let groups: Vec<GroupId> =
        crate::bootstrap::find_cluster(config, tls)?.into_iter().map(GroupId).collect();
    let placement = ledger_router::placement::plan(&BTreeMap::new(), &groups, config.cores);
    let stored = StoredPlan { members: Vec::new(), initializer: 0, replication_factor: 0 };
    dir.store_plan(&stored, &placement)?;
    ledger_shard::event!(
        info,
        "bootstrap",
        mode = "join",
        node = dir.node_id,
        groups = groups.len(),
        hint = %format_args!("ledger-admin join --node {} --address {advertise_addr}", dir.node_id),
        "ready to be added to the cluster"
    );
    Ok(Placed {
        placement,
        plan: Some(stored),
        early_listeners: None,
        join_after_start: config.join_by_itself,
    })
}

/// A restart (or a new single node): the recorded placement, with the groups of cores that no
/// longer exist moved to the others; their logs are copied first, durably, and only then is the
/// new placement recorded (SPEC §10.5, D77).
fn plan_from_disk(
    config: &Config,
    dir: &DataDir,
    previous: &BTreeMap<GroupId, CoreId>,
) -> Result<BTreeMap<GroupId, CoreId>, NodeError> {
    let groups: Vec<GroupId> = if previous.is_empty() {
        ledger_router::placement::data_groups(config.data_groups())
    } else {
        previous.keys().copied().collect()
    };
    let placement = ledger_router::placement::plan(previous, &groups, config.cores);
    for (group, to) in &placement {
        let Some(from) = previous.get(group).filter(|from| *from != to) else { continue };
        let moved = ledger_shard::raft::log_move::move_group(&dir.root, *group, from.0, to.0)
            .map_err(|source| NodeError::GroupMove { group: group.0, from: from.0, to: to.0, source })?;
        ledger_shard::event!(
            warn,
            "group_moved",
            group = group.0,
            from_core = from.0,
            to_core = to.0,
            entries = moved.entries,
            "its core is gone (--cores {}): the group's Raft log now lives in the log of core {}",
            config.cores,
            to.0
        );
    }
    if placement != *previous {
        dir.store_placement(&placement)?;
    }
    for aside in ledger_shard::raft::log_move::set_aside_vanished_cores(&dir.root, config.cores)
        .map_err(|e| NodeError::GroupMoveCleanup(e.to_string()))?
    {
        ledger_shard::event!(info, "core_log_set_aside", path = %aside.display());
    }
    if previous.is_empty() {
        ledger_shard::event!(info, "bootstrap", mode = "single", groups = groups.len(), "a new single node");
    }
    Ok(placement)
}
