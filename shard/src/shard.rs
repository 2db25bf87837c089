//! The owner struct of a core shard and its inbox loop. (being written)

use crate::{config::ShardConfig, error::ShardError, msg::ShardMsg};
use ledger_core::types::{CoreId, GroupId};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Everything `run_shard` needs; built by the server for each core.
pub struct ShardSpec {
    pub core: CoreId,
    pub config: Arc<ShardConfig>,
    /// The groups this core owns (from the node's placement table, SPEC §10.5).
    pub groups: Vec<GroupId>,
    pub inbox: flume::Receiver<ShardMsg>,
    /// Inbox senders of every core, indexed by `CoreId` (this core's own included).
    pub cores: Vec<flume::Sender<ShardMsg>>,
    /// group → owning core for the whole node.
    pub placement: Arc<BTreeMap<GroupId, CoreId>>,
    /// Fired once every owned group is open and led (and, on core 0, `_system` exists).
    pub ready: futures::channel::oneshot::Sender<()>,
}

/// Runs the shard until `ShardMsg::Shutdown`. Must be called inside the core's glommio executor.
pub async fn run_shard(spec: ShardSpec) -> Result<(), ShardError> {
    let _ = spec;
    Err(ShardError::NotReady)
}
